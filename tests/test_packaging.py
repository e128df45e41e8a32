"""Packaging: the man page (generated from the parser, up to date, renders), the bash completion
(commands, every option of the parser, archives by suffix, device and config names), the commented
/etc/vma-tool.conf, `make install` and `make deb`."""

import argparse
import os
import shutil
import subprocess
import sys
import unittest
from unittest import mock

from support import REPO, TOOL, ScratchCase, load_tool_module, tool_argv
import vmafixture

MAN_PAGE = os.path.join(REPO, "vma-tool.1")
MAKE_MAN = os.path.join(REPO, "packaging", "make_man.py")
COMPLETION = os.path.join(REPO, "packaging", "vma-tool.bash-completion")
CONF = os.path.join(REPO, "packaging", "vma-tool.conf")


def parser_commands():
    """{command name: set of its option strings} from vma-tool's own parser (aliases included)."""
    parser = load_tool_module().build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: {option for action in sub._actions for option in action.option_strings}
            for name, sub in subparsers.choices.items()}


class ManPage(unittest.TestCase):
    def test_committed_page_is_what_the_parser_gives(self):
        generated = subprocess.run([sys.executable, MAKE_MAN, TOOL], stdout=subprocess.PIPE, check=True).stdout
        with open(MAN_PAGE, "rb") as handle:
            committed = handle.read()
        self.assertEqual(committed.decode(), generated.decode(),
                         "vma-tool.1 is out of date with vma-tool's parser: run `make man`")

    def test_every_command_and_option_is_on_the_page(self):
        with open(MAN_PAGE) as handle:
            page = handle.read().replace("\\-", "-")
        for name, options in parser_commands().items():
            self.assertIn(name, page)
            for option in options - {"-h", "--help"}:
                self.assertTrue(option in page, "%s %s is not on the man page" % (name, option))
        for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "VZDUMP HOOK", "FILES", "EXIT STATUS"):
            self.assertIn(".SH " + section, page)

    @unittest.skipUnless(shutil.which("mandoc"), "mandoc not installed")
    def test_mandoc_finds_nothing_wrong(self):
        lint = subprocess.run(["mandoc", "-Tlint", "-Wwarning", MAN_PAGE], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, universal_newlines=True)
        problems = [line for line in lint.stdout.splitlines() if "missing date" not in line]
        self.assertEqual(problems, [])

    @unittest.skipUnless(shutil.which("man"), "man not installed")
    def test_man_renders_it(self):
        shown = subprocess.run(["man", "-l", MAN_PAGE], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True, env=dict(os.environ, MANPAGER="cat", PAGER="cat",
                                                                 MANWIDTH="80"))
        self.assertEqual(shown.returncode, 0, shown.stderr)
        self.assertIn("vma-tool - read, check, unpack, pack and optimize", shown.stdout)
        self.assertIn("EXIT STATUS", shown.stdout)


@unittest.skipUnless(shutil.which("bash"), "bash not installed")
class Completion(ScratchCase):
    def setUp(self):
        self.work = self.path("work")       # the completion's current directory
        os.makedirs(self.path("work", "sub"))
        vmafixture.write_archive(vmafixture.make_vm(3), self.path("work", "a.vma"), seed=1)
        for name in ("b.vma.zst", "c.vma.gz", "d.vma.bz2", "e.vma.lzo", "notes.txt", "f.vma.xz"):
            self.put(os.path.join("work", name), b"")
        # `vma-tool` as the completion runs it: the tool under test, with this interpreter.
        bindir = self.path("bin")
        os.mkdir(bindir)
        with open(os.path.join(bindir, "vma-tool"), "w") as handle:
            handle.write("#!/bin/sh\nexec %s \"$@\"\n" % " ".join("'%s'" % arg for arg in tool_argv()))
        os.chmod(os.path.join(bindir, "vma-tool"), 0o755)
        self.env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""))

    def complete(self, *words, cword=None):
        """COMPREPLY for the words (the cursor on the last one unless cword), as a sorted list."""
        words = ("vma-tool",) + words
        script = ('source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=%d; _vma_tool; '
                  'printf "%%s\\n" "${COMPREPLY[@]}"' % (len(words) - 1 if cword is None else cword))
        result = subprocess.run(["bash", "-c", script, "bash", COMPLETION] + list(words), cwd=self.work,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                                env=self.env, timeout=60)
        self.assertEqual(result.stderr, "")
        return sorted(line for line in result.stdout.splitlines() if line)

    def test_commands(self):
        self.assertEqual(set(self.complete("")) - {"-h", "--help", "--version"}, set(parser_commands()))
        self.assertEqual(self.complete("op"), ["optimize"])

    def test_options_are_the_parsers(self):
        for name, options in parser_commands().items():
            self.assertEqual(set(self.complete(name, "-")), options, name)

    def test_archives_by_suffix(self):
        archives = ["a.vma", "b.vma.zst", "c.vma.gz", "d.vma.bz2", "e.vma.lzo", "sub"]
        self.assertEqual(self.complete("verify", ""), archives)
        self.assertEqual(self.complete("optimize", "-f", ""), archives)
        self.assertEqual(self.complete("unpack", "a.vma", ""), ["sub"])

    def test_device_names_from_the_archive(self):
        devices = ["drive-efidisk0", "drive-scsi0", "drive-scsi1"]
        self.assertEqual(self.complete("cat", "a.vma", ""), devices)
        self.assertEqual(self.complete("cat", "-q", "a.vma", "drive-s"), ["drive-scsi0", "drive-scsi1"])
        self.assertEqual(self.complete("unpack", "a.vma", "-d", ""), devices)
        self.assertEqual(self.complete("unpack", "-d", "", "a.vma", "out", cword=3), devices)
        self.assertEqual(self.complete("unpack", "-d", "drive-scsi0", "--device", "", "a.vma", cword=5), devices)
        self.assertEqual(self.complete("config", "a.vma", "-c", ""), ["qemu-server.conf", "qemu-server.fw"])
        self.assertEqual(self.complete("cat", "notes.txt", ""), [])     # not an archive: nothing, quietly


class ConfigFile(unittest.TestCase):
    def test_every_setting_is_documented_and_the_file_sets_only_defaults(self):
        tool = load_tool_module()
        with open(CONF) as handle:
            text = handle.read()
        for name in tool.HOOK_SETTINGS:
            self.assertIn("\n#%s = " % name, text, "document %s in packaging/vma-tool.conf" % name)
        environment = {key: value for key, value in os.environ.items() if not key.startswith("VMA_TOOL_")}
        with mock.patch.dict(os.environ, environment, clear=True):
            os.environ["VMA_TOOL_CONFIG"] = CONF
            settings = tool.hook_settings()
        self.assertEqual(settings, {name: default for name, (default, _) in tool.HOOK_SETTINGS.items()})


@unittest.skipUnless(shutil.which("make"), "make not installed")
class Install(ScratchCase):
    FILES = {"usr/bin/vma-tool": 0o755, "usr/share/man/man1/vma-tool.1": 0o644,
             "usr/share/bash-completion/completions/vma-tool": 0o644, "etc/vma-tool.conf": 0o644}

    def make(self, *arguments):
        result = subprocess.run(["make", "--no-print-directory", "-C", REPO] + list(arguments),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                                timeout=120)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        return result.stdout

    def test_install_honours_prefix_and_destdir_and_keeps_the_conf(self):
        root = self.path("root")
        os.makedirs(os.path.join(root, "etc"))
        self.put("root/etc/vma-tool.conf", b"compressed = plain\n")
        output = self.make("install", "DESTDIR=" + root, "PREFIX=/usr")
        for name, mode in self.FILES.items():
            self.assertEqual(os.stat(os.path.join(root, name)).st_mode & 0o777, mode, name)
        self.assertEqual(self.read(os.path.join(root, "etc/vma-tool.conf")), b"compressed = plain\n")
        self.assertIn("script: /usr/bin/vma-tool", output)
        fresh = self.path("fresh")
        self.make("install", "DESTDIR=" + fresh)
        self.assertTrue(os.path.isfile(os.path.join(fresh, "usr/local/bin/vma-tool")))
        self.assertEqual(self.read(os.path.join(fresh, "etc/vma-tool.conf")), self.read(CONF))

    @unittest.skipUnless(shutil.which("dpkg-deb"), "dpkg-deb not installed")
    def test_deb(self):
        version = load_tool_module().__version__
        self.make("deb", "DEBDIR=" + self.tmp)
        deb = self.path("vma-tool_%s_all.deb" % version)
        self.assertEqual(os.listdir(self.tmp), [os.path.basename(deb)])
        listing = subprocess.run(["dpkg-deb", "-c", deb], stdout=subprocess.PIPE, check=True,
                                 universal_newlines=True).stdout
        entries = {line.split()[-1]: line.split()[0] for line in listing.splitlines()}
        expected = {"./usr/bin/vma-tool": "-rwxr-xr-x", "./usr/share/man/man1/vma-tool.1.gz": "-rw-r--r--",
                    "./usr/share/bash-completion/completions/vma-tool": "-rw-r--r--",
                    "./etc/vma-tool.conf": "-rw-r--r--"}
        for name, mode in expected.items():
            self.assertEqual(entries.get(name), mode, name)
        self.assertIn("root/root", listing.splitlines()[0])

        def field(name):
            return subprocess.run(["dpkg-deb", "-f", deb, name], stdout=subprocess.PIPE, check=True,
                                  universal_newlines=True).stdout.strip()
        self.assertEqual(field("Version"), version)
        self.assertEqual(field("Architecture"), "all")
        self.assertEqual(field("Depends"), "python3 (>= 3.9)")
        self.assertEqual(field("Recommends"), "zstd, libzstd1")
        conffiles = subprocess.run(["dpkg-deb", "-I", deb, "conffiles"], stdout=subprocess.PIPE, check=True,
                                   universal_newlines=True).stdout
        self.assertEqual(conffiles.split(), ["/etc/vma-tool.conf"])


if __name__ == "__main__":
    unittest.main()
