"""What a production host and its scripts rely on (issue 18): a stream that a failed vma-tool run
marked INCOMPLETE is named as such by every reader, one vocabulary of --json results, a plain
refusal of Python older than 3.9, and the smaller papercuts (quoted paths, -q before the
command, a result line for optimize SRC DST, refused empty -u values)."""

import glob
import json
import os
import shutil
import subprocess
import sys
import unittest

import support
import vmafixture as vf

CLUSTER = 65536
MARK = b"\nvma-tool: INCOMPLETE ARCHIVE, writing failed here: do not restore\n"     # vma-tool's INCOMPLETE_MARK
FAILED_RUN = "written by a vma-tool run that failed"


def optimized_archive():
    """A canonical archive with several data extents (so that the mark can fall anywhere)."""
    def make():
        vm = vf.make_vm(1801, devices=[("drive-scsi0", 40 * CLUSTER), ("drive-efidisk0", 3 * 4096)], fill=0.9)
        return bytes(vf.canonical_archive(vm))
    return support.cached("production-archive", make)


def mark_positions(data):
    """Where a failed stream's bytes may stop so that the mark lands in every kind of place:
    inside a header, filling a header exactly, across a header and its data, inside data,
    filling the last read data exactly (the input then ends on an extent boundary)."""
    extent = [e for e in vf.walk_extents(data) if e.block_count][1]
    header, data_start, end = extent.offset, extent.data_offset, extent.end
    return {"inside a header": header + 100, "filling a header": data_start - len(MARK),
            "across header and data": data_start - 30, "inside data": data_start + 5000,
            "filling the data": end - len(MARK), "across data and next header": end - 30}


class IncompleteMarkTest(support.ScratchCase):
    """Sink.abort ends a failed stream with INCOMPLETE_MARK; verify, info and unpack must say that the
    archive is the output of a failed run, wherever the mark falls, from a file and from a pipe."""

    def check_named(self, r):
        support.assert_clean_error(self, r, FAILED_RUN, code=1)
        self.assertNotIn(b"truncated", r.stderr)

    def test_every_position_from_a_file_and_a_pipe(self):
        data = optimized_archive()
        for where, stop in mark_positions(data).items():
            with self.subTest(where=where):
                cut = self.put("cut.vma", data[:stop] + MARK)
                self.check_named(support.run_tool("verify", cut))
                self.check_named(support.run_tool("verify", "-", input=data[:stop] + MARK))
                self.check_named(support.run_tool("info", cut))

    def test_unpack_and_info_json(self):
        data = optimized_archive()
        for where in ("inside data", "filling the data"):
            stop = mark_positions(data)[where]
            cut = self.put("cut.vma", data[:stop] + MARK)
            r = support.run_tool("unpack", "-", self.path("out"), input=data[:stop] + MARK)
            self.check_named(r)
            self.assertFalse(os.path.exists(self.path("out")))
            self.check_named(support.run_tool("unpack", cut, self.path("out")))
            r = support.run_tool("info", "--json", cut)
            report = json.loads(r.stdout)
            self.assertEqual((report["result"], report["exit_status"]), ("invalid", 1))
            self.assertIn(FAILED_RUN, report["error"])

    def test_a_real_failed_stream(self):
        """What `optimize - -` stopped by Ctrl-C midway really writes."""
        vm = vf.make_vm(1802, devices=[("drive-scsi0", 120 * CLUSTER)], fill=0.9)
        data = bytes(vf.write_archive(vm, None, seed=3))
        r = support.run_tool("optimize", "-", "-", input=data, env={"VMA_TOOL_FAULT": "data-written:INT"})
        support.assert_clean_error(self, r, "interrupted", code=130)
        if not r.stdout.endswith(MARK):
            self.skipTest("the pipe had no room for the mark this time")
        self.check_named(support.run_tool("verify", "-", input=r.stdout))

    def test_a_plain_cut_is_still_truncated(self):
        data = optimized_archive()
        stop = mark_positions(data)["inside data"]
        r = support.run_tool("verify", "-", input=data[:stop])
        support.assert_clean_error(self, r, "truncated", code=1)
        self.assertNotIn(FAILED_RUN.encode(), r.stderr)


class JsonVocabularyTest(support.ScratchCase):
    """One set of result words for every command: ok, optimized, already canonical, invalid (any
    archive defect, exit 1), error (environment or command line, exit 2 or 3)."""

    def test_archive_defects_are_invalid_for_every_command(self):
        data = bytearray(optimized_archive())
        bad_header = bytearray(data)
        bad_header[100] ^= 1                           # the header's checksum fails
        bad_extent = bytearray(data)
        bad_extent[vf.walk_extents(data)[0].offset + 100] ^= 1     # an extent header's checksum fails
        files = {"bad header": self.put("h.vma", bytes(bad_header)),
                 "bad extent": self.put("e.vma", bytes(bad_extent)),
                 "truncated": self.put("t.vma", bytes(data[:-5000])),
                 "not an archive": self.put("n.vma", b"hello\n")}
        for what, path in files.items():
            for command in (["verify", "--json"], ["info", "--json"], ["optimize", "--json", "--in-place"]):
                with self.subTest(what=what, command=command[0]):
                    r = support.run_tool(*command, path)
                    self.assertEqual(r.returncode, 1)
                    [result] = [json.loads(r.stdout)] if command[0] == "info" else \
                        [json.loads(line) for line in r.stdout.decode().splitlines()]
                    self.assertEqual((result["file"], result["result"], result["exit_status"]), (path, "invalid", 1))
                    self.assertTrue(result["error"])
                    self.assertIn(result["error"], r.stderr.decode())
                    self.assertEqual(result["problems"][0], result["error"])

    def test_environment_problems_are_errors(self):
        missing = self.path("missing.vma")
        for command in (["verify", "--json"], ["info", "--json"], ["optimize", "--json", "--in-place"]):
            with self.subTest(command=command[0]):
                r = support.run_tool(*command, missing)
                self.assertEqual(r.returncode, 3)
                out = json.loads(r.stdout) if command[0] == "info" else json.loads(r.stdout.decode().splitlines()[0])
                self.assertEqual((out["result"], out["exit_status"]), ("error", 3))
                self.assertNotIn("problems", out)

    def test_successes(self):
        good = self.put("good.vma", optimized_archive())
        r = support.run_tool("info", "--json", good)
        self.assertOk(r)
        self.assertEqual((json.loads(r.stdout)["result"], json.loads(r.stdout)["exit_status"]), ("ok", 0))
        r = support.run_tool("verify", "--json", good)
        self.assertEqual(json.loads(r.stdout)["result"], "ok")
        r = support.run_tool("optimize", "--json", good)
        self.assertEqual(json.loads(r.stdout)["result"], "already canonical")


def old_pythons():
    """Interpreters older than 3.9 found on PATH or under pyenv (Proxmox VE 6 ships 3.7)."""
    found = []
    candidates = ["python3.%d" % minor for minor in range(5, 9)]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.[5-8].*/bin/python3")))
    for candidate in candidates:
        try:
            r = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] < (3, 9))"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30)
        except OSError:
            continue
        if r.returncode == 0 and r.stdout.strip() == b"True":
            found.append(candidate)
    return found


class PythonVersionTest(support.ScratchCase):
    """Before anything else runs: one line naming the version needed, exit 3."""

    def check_refusal(self, r):
        support.assert_clean_error(self, r, "python 3.9 or newer is needed", code=3)
        self.assertEqual(r.stdout, b"")

    def test_version_check_runs_first(self):
        # The current interpreter, told it is 3.8: the check must come before anything 3.9 needs.
        code = ("import sys; sys.version_info = (3, 8, 10, 'final', 0); sys.argv = ['vma-tool', 'verify', '-'];"
                "exec(compile(open(%r).read(), 'vma-tool', 'exec'), {'__name__': '__main__'})" % support.TOOL)
        r = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, timeout=60)
        self.check_refusal(r)

    def test_real_old_interpreters(self):
        pythons = old_pythons()
        if not pythons:
            self.skipTest("no Python older than 3.9 here")
        for python in pythons:
            with self.subTest(python=python):
                for argv in (["--version"], ["verify", self.put("x.vma", b"x")], ["backup-end", "snapshot", "100"]):
                    self.check_refusal(subprocess.run([python, support.SCRIPT] + argv, stdout=subprocess.PIPE,
                                                      stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                                      timeout=60))



def run_on_terminal(*args):
    """Run vma-tool with stderr on a pseudo-terminal (progress is shown only there); returns
    (exit status, what the terminal got)."""
    master, slave = os.openpty()
    try:
        process = subprocess.Popen([sys.executable, support.TOOL] + list(args), stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=slave)
    finally:
        os.close(slave)
    screen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:                 # EIO: the other side is closed
            break
        if not chunk:
            break
        screen += chunk
    os.close(master)
    return process.wait(timeout=60), screen.decode(errors="replace")


class PapercutTest(support.ScratchCase):

    def test_progress_of_a_compressed_file_is_a_share_of_the_file(self):
        if not shutil.which("zstd"):
            self.skipTest("zstd is not installed")
        plain = self.put("x.vma", optimized_archive())
        subprocess.run(["zstd", "-q", plain], check=True)
        size = os.path.getsize(plain + ".zst")
        status, screen = run_on_terminal("verify", plain + ".zst")
        self.assertEqual(status, 0, screen)
        self.assertRegex(screen, r"verify +\d+% [\d.]+ [KM]iB of [\d.]+ [KM]iB compressed")
        self.assertIn("of %s compressed" % support.load_tool_module().human(size), screen)
        status, screen = run_on_terminal("verify", plain)        # a plain file: a share of the archive
        self.assertRegex(screen, r"verify +\d+% ")
        self.assertNotIn("compressed", screen)

    def test_quiet_before_the_command(self):
        plain = self.put("x.vma", optimized_archive())
        for argv in (["-q", "verify", plain], ["verify", "-q", plain], ["--quiet", "optimize", plain]):
            with self.subTest(argv=argv):
                r = support.run_tool(*argv)
                self.assertOk(r)
                self.assertEqual((r.stdout, r.stderr), (b"", b""))
        status, screen = run_on_terminal("-q", "verify", plain)
        self.assertEqual((status, screen), (0, ""))

    def test_optimize_src_dst_prints_a_result_line(self):
        vm = vf.make_vm(1803, devices=[("drive-scsi0", 20 * CLUSTER)])
        data = bytes(vf.write_archive(vm, None, seed=1))
        src = self.put("a b.vma", data)
        dst = self.path("c.vma")
        r = support.run_tool("optimize", src, dst)
        self.assertOk(r)
        self.assertEqual(r.stdout.decode(), "%s -> %s: optimized (%d bytes -> %d bytes)\n"
                         % (src, dst, len(data), os.path.getsize(dst)))
        r = support.run_tool("optimize", "-f", "-", dst, input=data)
        self.assertEqual(r.stdout.decode(), "<stdin> -> %s: optimized (%d bytes)\n" % (dst, os.path.getsize(dst)))
        r = support.run_tool("optimize", "-q", "-f", src, dst)
        self.assertEqual(r.stdout, b"")
        r = support.run_tool("optimize", src, "-")
        # nothing but the archive on stdout (without the digests blob stdout cannot carry)
        self.assertEqual(r.stdout, bytes(vf.canonical_archive_v3(vm)))

    def test_empty_update_value_is_refused(self):
        src = self.put("a.vma", optimized_archive())
        for value in ("name=", "name=  "):
            r = support.run_tool("optimize", "-u", value, src, self.path("b.vma"))
            support.assert_clean_error(self, r, "-u " + value, "empty", code=2)
            self.assertFalse(os.path.exists(self.path("b.vma")))

    def small_tmpfs(self, size):
        """A tmpfs of size at self.path("small"), unmounted at the end (root only: skips)."""
        if os.geteuid() != 0:
            self.skipTest("mounting a small tmpfs needs root")
        small = self.path("small")
        os.mkdir(small)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", small],
                          stderr=subprocess.DEVNULL).returncode:
            self.skipTest("cannot mount a tmpfs here")
        self.addCleanup(subprocess.run, ["umount", small])
        return small

    def test_unpack_errors_name_dir_and_file(self):
        """A full disk while unpack writes an image names DIR/disk-....raw, not the bare file name."""
        small = self.small_tmpfs("256k")
        src = self.put("a.vma", optimized_archive())
        out = os.path.join(small, "out")
        r = support.run_tool("unpack", src, out)
        support.assert_clean_error(self, r, "cannot write %s/disk-drive-scsi0.raw" % out, "no space", code=3)
        self.assertEqual(os.listdir(small), [])

    def test_a_full_disk_while_writing_an_archive_is_one_line_and_leaves_nothing(self):
        """optimize to a plain file and to a .vma.zst on a file system that fills up midway:
        written with O_DIRECT where it allows (a tmpfs does from Linux 6.6), through the page
        cache where not; either way one line naming the file and nothing left behind."""
        small = self.small_tmpfs("6m")
        big = vf.make_vm(77, devices=[("drive-scsi0", 24 << 20)], fill=0.9)
        src = self.put("big.vma", bytes(vf.write_archive(big, None, seed=77)))
        names = ["out.vma"] + (["out.vma.zst"] if shutil.which("zstd") else [])
        for name in names:
            with self.subTest(output=name):
                out = os.path.join(small, name)
                r = support.run_tool("optimize", src, out)
                support.assert_clean_error(self, r, "cannot write %s" % out, "no space", code=3)
                self.assertEqual(os.listdir(small), [])

    def test_messages_quote_paths_and_name_the_directory(self):
        data = optimized_archive()
        spaced = self.path("my dumps")
        os.mkdir(spaced)
        src = os.path.join(spaced, "a b.vma")
        with open(src, "wb") as handle:
            handle.write(data[:-3000])
        r = support.run_tool("verify", src)
        support.assert_clean_error(self, r, "'%s': offset" % src, code=1)
        r = support.run_tool("optimize", self.put("x.vma", data), os.path.join(spaced, "none", "c d.vma"))
        support.assert_clean_error(self, r, "cannot create '%s/none/c d.vma': no such directory" % spaced, code=3)
        r = support.run_tool("info", os.path.join(spaced, "missing.vma"))
        support.assert_clean_error(self, r, "cannot open '%s/missing.vma'" % spaced, code=3)
        r = support.run_tool("verify", self.put("plain.vma", data[:-3000]))       # nothing to quote
        self.assertIn(("%s: offset" % self.path("plain.vma")).encode(), r.stderr)
        if os.geteuid() != 0:
            return
        # a directory that refuses us is named (root may write anywhere: run as nobody)
        os.chmod(self.tmp, 0o755)
        os.chmod(spaced, 0o755)
        os.chmod(self.path("x.vma"), 0o644)

        def as_nobody():
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
        python = shutil.which("python3", path="/usr/bin:/bin")     # one that nobody may run
        if python is None:
            self.skipTest("no system python3 for uid nobody")

        def run_as_nobody(*args):
            return subprocess.run([python, "-S", support.SCRIPT] + list(args), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, preexec_fn=as_nobody,
                                  timeout=60)
        if run_as_nobody("info", self.path("x.vma")).returncode != 0:
            self.skipTest("uid nobody cannot run the tool or read the test directory here")
        r = run_as_nobody("optimize", self.path("x.vma"), os.path.join(spaced, "c.vma"))
        support.assert_clean_error(self, r, "cannot create '%s/c.vma': directory '%s' is not writable"
                                   % (spaced, spaced), code=3)


class StartupTest(support.ScratchCase):
    """A run starts without what it does not use (the vzdump hook starts in every phase, the tests
    thousands of times): shlex, shutil and subprocess would add 8 ms to the 50 or so that `info`
    of a small archive takes.  argparse would import shutil for the terminal's width: vma-tool tells it."""

    PROBE = ("import runpy, sys\n"
             "sys.argv = sys.argv[1:]\n"
             "try:\n"
             "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit:\n"
             "    pass\n"
             "sys.stderr.write('\\nimported: %s\\n' % [m for m in ('shlex', 'shutil', 'subprocess') if m in sys.modules])\n")

    def test_reading_commands_import_no_process_or_shell_modules(self):
        plain = self.put("x.vma", optimized_archive())
        for argv in (["info", plain], ["verify", plain], ["optimize", plain], ["--help"]):
            with self.subTest(argv=argv):
                r = subprocess.run([sys.executable, "-S", "-c", self.PROBE, support.TOOL] + argv,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
                self.assertEqual(r.stderr.decode().splitlines()[-1:], ["imported: []"], r.stderr.decode())

    def test_help_follows_the_terminal_width(self):
        for columns in (60, 200):
            with self.subTest(columns=columns):
                r = support.run_tool("optimize", "--help", env=dict(os.environ, COLUMNS=str(columns)))
                self.assertOk(r)
                options = r.stdout.decode().split("options:" if b"options:" in r.stdout else "optional arguments:")[1]
                lines = options.splitlines()
                self.assertLessEqual(max(map(len, lines)), columns - 2)
                at = [n for n, line in enumerate(lines) if line.startswith("  --json")][0]    # 130 characters
                self.assertEqual(lines[at + 1].startswith(" " * 10), columns == 60)    # wrapped, or not


if __name__ == "__main__":
    unittest.main()
