"""Issue 9: never touch an unnamed file (behaviour spec items 1-9).

Existing outputs refused before any work, directory and odd DSTs, several files for
verify/info/optimize --in-place, symlinks and hard links in place, the signal windows around
temporary files (in test_faults.py, with every other fault point), stale temporaries of a
killed run, closed standard streams, terminals, clearer messages, and pack taking only
vzdump's configs from a directory with stray files.

Archives come from the independent fixture writer (Proxmox order, random uuid: never
canonical).  Optimize and pack output is checked by content (vmafixture.restore) and by
`vma-tool info --json` reporting "canonical": true, never byte for byte against the fixture's
canonical writer (the canonical layout has its own tests).  Every subprocess has a timeout.
"""

import gzip
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import tty
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import support  # noqa: E402
import vmafixture as vf  # noqa: E402

try:
    import resource
except ImportError:  # pragma: no cover - non-POSIX
    resource = None

try:
    import lzma
except ImportError:  # pragma: no cover - Python built without lzma
    lzma = None

TIMEOUT = 20            # seconds, every subprocess
TERMINAL_DEADLINE = 10  # seconds a command on a terminal may take before it counts as hanging
CLUSTER = 65536
NOT_VMA = (b"This is a plain text file, certainly not a VMA archive.\n" * 2)[:100]


# --------------------------------------------------------------------------------------------
# fixtures (built once per process)

def _vm():
    """Small VM: efidisk0 128 KiB, scsi0 a little over 1 MiB (not 4K aligned)."""
    return support.cached(("test_safety", "vm"), lambda: vf.make_vm(
        9101, devices=[("drive-efidisk0", 2 * CLUSTER), ("drive-scsi0", 16 * CLUSTER + 36352)]))


def _archive(seed=11):
    """Proxmox-order archive of _vm() with a random uuid (not canonical)."""
    return support.cached(("test_safety", "archive", seed),
                          lambda: bytes(vf.write_archive(_vm(), None, seed=seed)))


def _reverse_archive():
    """Reversed cluster order: from a pipe nearly every cluster arrives before its turn."""
    return support.cached(("test_safety", "reverse"),
                          lambda: bytes(vf.write_archive(_vm(), None, seed=13, order="reverse")))


def _truncated_archive():
    """An incomplete archive cut at an extent boundary (every extent before it is intact), with
    clusters of every device missing."""
    def build():
        data = bytes(vf.write_archive(_vm(), None, seed=17, per_extent=3))
        lay = vf.parse_layout(data)
        ndev = len(_vm().devices)
        for ext in lay.extents[1:]:
            present = {}
            for e in lay.extents:
                if e.offset >= ext.offset:
                    break
                for _mask, dev_id, cl in e.slots:
                    if dev_id:
                        present.setdefault(dev_id, set()).add(cl)
            total = [(dev_id, -(-size // CLUSTER)) for dev_id, (_n, size) in lay.devices.items()]
            if len(total) == ndev and all(len(present.get(d, ())) < n for d, n in total) and present:
                return data[:ext.offset]
        raise AssertionError("fixture: no cut leaves every device incomplete")
    return support.cached(("test_safety", "truncated"), build)


def _cut_archive():
    """An archive cut in the middle of an extent's data."""
    return support.cached(("test_safety", "cut"), lambda: _archive()[:len(_archive()) // 2 + 1000])


def _text(b):
    return (b or b"").decode("utf-8", "replace")


def _wrapped(redirect, args):
    """Command running vma-tool with one standard stream closed by the shell."""
    return ["sh", "-c", 'exec "$@" ' + redirect, "sh"] + support.tool_argv() + list(args)


def _limit_fsize(limit):
    def fn():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return fn


class SafetyCase(support.ScratchCase):
    """Commands run with cwd = self.tmp, so file names in messages are the short ones given."""

    TMP_PREFIX = "vmatest-safety-"

    # ---- running

    def run_cmd(self, cmd, input=None, stdin=None, stdout=subprocess.PIPE, env=None, cwd=None,
                preexec_fn=None, timeout=TIMEOUT):
        full_env = dict(os.environ)
        full_env.pop("VMA_TOOL_FAULT", None)
        full_env.update(env or {})
        kw = {}
        if input is not None:
            kw["input"] = input
        else:
            kw["stdin"] = subprocess.DEVNULL if stdin is None else stdin
        try:
            return subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, env=full_env,
                                  cwd=self.tmp if cwd is None else cwd, preexec_fn=preexec_fn,
                                  timeout=timeout, **kw)
        except subprocess.TimeoutExpired:
            self.fail("%r did not finish within %d s (killed)" % (cmd[1:], timeout))

    def tool(self, *args, **kw):
        return self.run_cmd(support.tool_argv() + [str(a) for a in args], **kw)

    def closed(self, redirect, *args, **kw):
        """Run vma-tool with `>&-`, `2>&-` or `<&-` (stdin then is not redirected by us)."""
        return self.run_cmd(_wrapped(redirect, [str(a) for a in args]), **kw)

    # ---- files

    def write(self, name, data):
        p = self.path(name)
        d = os.path.dirname(p)
        if not os.path.isdir(d):
            os.makedirs(d)
        with open(p, "wb") as f:
            f.write(data)
        return p

    def mkdir(self, name):
        os.makedirs(self.path(name))
        return self.path(name)

    def pack_dir(self, name="vm100", vm=None):
        """The directory unpack writes (configs and disk-<device>.raw) of vm (default _vm())."""
        support.write_unpacked_dir(_vm() if vm is None else vm, self.path(name))
        return name

    def listing(self, name="."):
        return sorted(os.listdir(self.path(name)))

    def tree(self):
        out = []
        for root, dirs, files in os.walk(self.tmp):
            rel = os.path.relpath(root, self.tmp)
            out.extend(os.path.normpath(os.path.join(rel, n)) for n in dirs + files)
        return sorted(out)

    # ---- checks

    def err(self, r):
        return _text(r.stderr)

    def assertError(self, r, *keywords, code=None, multiple=None):
        """assert_clean_error plus: no temporary name shown."""
        support.assert_clean_error(self, r, *keywords, code=code, multiple=multiple)
        self.assertNoTempNames(r)

    def assertNoTempNames(self, r):
        err = self.err(r).replace(self.tmp, "<tmp>")
        self.assertNotIn(".vma-tool-", err, "a temporary name in a message:\n" + err)
        self.assertNotIn(".tmp", err, "a temporary name in a message:\n" + err)

    def assertCanonical(self, name, stdout=False):
        """info calls name canonical; written to stdout (stdout), canonical but for the digests
        blob standard output cannot carry."""
        r = self.tool("info", "--json", name)
        self.assertOk(r)
        obj = json.loads(_text(r.stdout))
        self.assertIsInstance(obj, dict)
        if stdout:
            self.assertEqual(obj.get("not_canonical"), ["no digests"], name)
            return
        self.assertIs(obj.get("canonical"), True, "%s is not canonical: %r" % (name, obj.get("not_canonical")))

    def assertOptimized(self, name, vm=None, stdout=False):
        """name restores to vm (default _vm()) and info calls it canonical (see assertCanonical)."""
        vf.assert_same_content(self, self.path(name), _vm() if vm is None else vm)
        self.assertCanonical(name, stdout)

    def assertBytes(self, name, data, what=None):
        self.assertTrue(self.read(self.path(name)) == data, what or "%s changed" % name)


# --------------------------------------------------------------------------------------------
# 1. existing output

class OverwriteTest(SafetyCase):
    """Spec item 1: an existing output is refused before any work (exit 3, the line names DST and
    contains --force); -f/--force replaces it; stdout is not a named file and never refused."""

    def test_optimize_existing_dst_refused(self):
        self.write("a.vma", _archive())
        self.write("b.vma", b"precious\n")
        r = self.tool("optimize", "a.vma", "b.vma")
        self.assertError(r, "b.vma", "--force", "--in-place", code=3)
        self.assertBytes("a.vma", _archive())
        self.assertBytes("b.vma", b"precious\n")
        self.assertEqual(self.listing(), ["a.vma", "b.vma"])

    def test_optimize_existing_dst_checked_before_src_is_read(self):
        self.write("a.vma", NOT_VMA)
        self.write("b.vma", b"precious\n")
        r = self.tool("optimize", "a.vma", "b.vma")
        self.assertError(r, "b.vma", "--force", code=3)
        self.assertNotIn("not a vma", self.err(r).lower())
        self.assertBytes("b.vma", b"precious\n")

    def stopped_before_install(self, *args, dst, meanwhile=None, point="before-install"):
        """Run vma-tool, stopped (SIGSTOP fault point) right before its output takes its name; create dst
        meanwhile (or call meanwhile()), then let it go on.  Returns (returncode, stderr)."""
        env = dict(os.environ, VMA_TOOL_FAULT=point + ":STOP")
        p = subprocess.Popen(support.tool_argv() + list(args), cwd=self.tmp, env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, status = os.waitpid(p.pid, os.WUNTRACED)
            self.assertTrue(os.WIFSTOPPED(status), "the run did not stop at before-install")
            if meanwhile is None:
                self.write(dst, b"appeared meanwhile\n")
            else:
                meanwhile()
            os.kill(p.pid, signal.SIGCONT)
            err = p.stderr.read()
            return p.wait(timeout=TIMEOUT), err
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stderr.close()

    def test_dst_that_appears_during_the_run_is_kept(self):
        """DST did not exist when the run began but does when the output is about to take its name
        (another job, a second vma-tool): it is not replaced, the run fails and leaves nothing."""
        self.write("a.vma", _archive())
        for args, dst in ((["optimize", "a.vma", "b.vma"], "b.vma"),
                          (["unpack", "a.vma", "out"], "out/qemu-server.conf")):
            with self.subTest(command=args[0]):
                rc, err = self.stopped_before_install(*args, dst=dst)
                self.assertEqual(rc, 3, err)
                self.assertIn("appeared while we were writing it", err.decode())
                self.assertBytes(dst, b"appeared meanwhile\n")
                self.assertFalse([n for n in self.tree() if ".vma-tool-" in n], self.tree())
                if args[0] == "unpack":
                    self.assertEqual(self.listing("out"), ["qemu-server.conf"])

    def test_unpack_that_fails_between_two_renames_takes_back_the_first(self):
        """Another run creates the second name after the first file took its name: the run fails and
        removes the file it had installed, so a failed unpack still leaves nothing."""
        self.write("a.vma", _archive())
        self.assertOk(self.tool("unpack", "a.vma", "planned"))
        planned = self.listing("planned")
        created = []

        def meanwhile():
            installed = [n for n in self.listing("out") if ".vma-tool-" not in n]
            self.assertEqual(len(installed), 1, installed)
            created.append([n for n in planned if n not in installed][0])
            self.write(os.path.join("out", created[0]), b"appeared meanwhile\n")
        rc, err = self.stopped_before_install("unpack", "a.vma", "out", dst=None, meanwhile=meanwhile,
                                              point="installed@1")
        self.assertEqual(rc, 3, err)
        self.assertIn("appeared while we were writing it", err.decode())
        self.assertEqual(self.listing("out"), created)
        self.assertFalse([n for n in self.tree() if ".vma-tool-" in n], self.tree())

    def test_in_place_file_replaced_during_the_run_is_kept(self):
        """optimize in place (plain, compressed, the hook's job) while another program replaces or
        removes the file: the newcomer is never overwritten by the old archive's optimized copy."""
        newer = b"a newer backup\n"
        for name in ("x.vma", "x.vma.gz"):
            for removed in (False, True):
                with self.subTest(name=name, removed=removed):
                    self.write(name, _archive() if name == "x.vma" else gzip.compress(_archive(), 1))

                    def meanwhile():
                        os.unlink(self.path(name))
                        if not removed:
                            self.write(name, newer)
                    rc, err = self.stopped_before_install("optimize", name, dst=name, meanwhile=meanwhile)
                    self.assertEqual(rc, 3, err)
                    self.assertIn("replaced or removed while we optimized it", err.decode())
                    if removed:
                        self.assertFalse(os.path.exists(self.path(name)))
                    else:
                        self.assertBytes(name, newer)
                    self.assertFalse([n for n in self.tree() if ".vma-tool-" in n], self.tree())

    def test_directory_that_appears_during_a_forced_run_is_kept(self):
        """The rename itself fails (a directory took the name): the message names DST, never the
        temporary file, and nothing is left behind."""
        self.write("a.vma", _archive())
        rc, err = self.stopped_before_install("optimize", "-f", "a.vma", "b.vma", dst="b.vma",
                                              meanwhile=lambda: os.makedirs(self.path("b.vma", "inside")))
        self.assertEqual(rc, 3, err)
        self.assertEqual(support.error_lines(err.decode()),
                         ["vma-tool: error: cannot replace b.vma: Is a directory"])
        self.assertEqual(self.listing("b.vma"), ["inside"])
        self.assertFalse([n for n in self.tree() if ".vma-tool-" in n], self.tree())

    def test_optimize_force_replaces(self):
        for flag in ("-f", "--force"):
            with self.subTest(flag=flag):
                self.write("a.vma", _archive())
                self.write("b.vma", b"old contents\n")
                r = self.tool("optimize", flag, "a.vma", "b.vma")
                self.assertOk(r)
                self.assertBytes("a.vma", _archive())
                self.assertOptimized("b.vma")
                self.assertEqual(self.listing(), ["a.vma", "b.vma"])

    def test_pack_existing_dst_refused(self):
        self.pack_dir("vm100")
        self.write("out.vma", b"precious\n")
        r = self.tool("pack", "vm100", "out.vma")
        self.assertError(r, "out.vma", "--force", code=3)
        self.assertBytes("out.vma", b"precious\n")
        self.assertEqual(self.listing(), ["out.vma", "vm100"])

    def test_pack_force_replaces(self):
        for flag in ("-f", "--force"):
            with self.subTest(flag=flag):
                if not os.path.isdir(self.path("vm100")):
                    self.pack_dir("vm100")
                self.write("out.vma", b"old contents\n")
                r = self.tool("pack", flag, "vm100", "out.vma")
                self.assertOk(r)
                self.assertOptimized("out.vma")
                self.assertEqual(self.listing(), ["out.vma", "vm100"])

    def test_unpack_existing_file_refused(self):
        self.write("a.vma", _archive())
        self.write("out/disk-drive-scsi0.raw", b"precious\n")
        r = self.tool("unpack", "a.vma", "out")
        self.assertError(r, "disk-drive-scsi0.raw", "--force", code=3)
        self.assertBytes("out/disk-drive-scsi0.raw", b"precious\n")

    def test_unpack_f_is_force(self):
        self.write("a.vma", _archive())
        self.write("out/disk-drive-scsi0.raw", b"old contents\n")
        r = self.tool("unpack", "-f", "a.vma", "out")
        self.assertOk(r)
        self.assertBytes("out/disk-drive-scsi0.raw", _vm().disk_bytes(1), "disk-drive-scsi0.raw not replaced")

    def test_stdout_pipe_not_refused(self):
        self.write("a.vma", _archive())
        self.pack_dir("vm100")
        for args in (("optimize", "a.vma", "-"), ("pack", "vm100", "-")):
            with self.subTest(args=args):
                r = self.tool(*args)
                self.assertOk(r)
                vf.assert_same_content(self, r.stdout, _vm())

    def test_stdout_existing_file_not_refused(self):
        self.write("a.vma", _archive())
        self.pack_dir("vm100")
        for args in (("optimize", "a.vma", "-"), ("pack", "vm100", "-")):
            with self.subTest(args=args):
                self.write("out.vma", b"this file exists already\n")
                with open(self.path("out.vma"), "wb") as f:
                    r = self.tool(*args, stdout=f)
                self.assertOk(r)
                self.assertOptimized("out.vma", stdout=True)


# --------------------------------------------------------------------------------------------
# 2. destination checks

class DestinationTest(SafetyCase):
    """Spec item 2: DST checks before any work: an existing directory means DIR/<name>; stdin into
    a directory and an empty DST are usage errors; a trailing slash on a non-directory and a
    missing parent are exit 3 naming the path; temporary names are never shown; an unwritable
    unpack DIR is exit 3."""

    def test_optimize_into_directory(self):
        self.write("src/a.vma", _archive())
        for dst in ("d", "e/"):
            with self.subTest(dst=dst):
                d = dst.rstrip("/")
                self.mkdir(d)
                r = self.tool("optimize", "src/a.vma", dst)
                self.assertOk(r)
                self.assertEqual(self.listing(d), ["a.vma"])
                self.assertOptimized(d + "/a.vma")
                self.assertBytes("src/a.vma", _archive())

    def test_optimize_into_directory_existing_refused(self):
        self.write("a.vma", _archive())
        self.write("d/a.vma", b"precious\n")
        for dst in ("d", "d/"):
            with self.subTest(dst=dst):
                r = self.tool("optimize", "a.vma", dst)
                self.assertError(r, "a.vma", "--force", code=3)
                self.assertBytes("d/a.vma", b"precious\n")
                self.assertBytes("a.vma", _archive())
                self.assertEqual(self.listing("d"), ["a.vma"])

    def test_pack_into_directory(self):
        self.pack_dir("vm100")
        for dst in ("d", "e/"):
            with self.subTest(dst=dst):
                d = dst.rstrip("/")
                self.mkdir(d)
                r = self.tool("pack", "vm100", dst)
                self.assertOk(r)
                self.assertEqual(self.listing(d), ["vm100.vma"])
                self.assertOptimized(d + "/vm100.vma")

    def test_stdin_into_directory_is_usage_error(self):
        self.mkdir("d")
        r = self.tool("optimize", "-", "d/", input=_archive())
        self.assertError(r, "directory", code=2)
        self.assertEqual(self.listing("d"), [])

    def test_empty_dst_is_usage_error(self):
        self.write("a.vma", _archive())
        self.pack_dir("vm100")
        for args in (("optimize", "a.vma", ""), ("pack", "vm100", ""), ("unpack", "a.vma", "")):
            with self.subTest(args=args):
                r = self.tool(*args)
                self.assertError(r, code=2)
                self.assertEqual(self.listing(), ["a.vma", "vm100"])

    def test_trailing_slash_not_a_directory(self):
        self.write("a.vma", _archive())
        self.write("bad.vma", NOT_VMA)
        self.pack_dir("vm100")
        self.write("plain", b"a file, not a directory\n")
        before = self.tree()
        for args in (("optimize", "a.vma", "newdir/"), ("optimize", "bad.vma", "newdir/"),
                     ("pack", "vm100", "newdir/"), ("optimize", "a.vma", "plain/")):
            with self.subTest(args=args):
                r = self.tool(*args)
                self.assertError(r, args[2].rstrip("/"), code=3)
                self.assertEqual(self.tree(), before, "something was created")
                self.assertBytes("plain", b"a file, not a directory\n")

    def test_missing_parent(self):
        self.write("a.vma", _archive())
        self.write("bad.vma", NOT_VMA)
        self.pack_dir("vm100")
        before = self.tree()
        for args in (("optimize", "a.vma", "nodir/x.vma"), ("optimize", "bad.vma", "nodir/x.vma"),
                     ("pack", "vm100", "nodir/x.vma")):
            with self.subTest(args=args):
                r = self.tool(*args)
                self.assertError(r, "nodir/x.vma", code=3)
                self.assertEqual(self.tree(), before)

    @unittest.skipIf(resource is None, "needs the resource module")
    def test_write_failure_names_no_temporary(self):
        """A write that fails half way (RLIMIT_FSIZE): the message shows DST, never the
        temporary file it was writing, and nothing is left beside DST."""
        self.write("a.vma", _archive())
        self.pack_dir("vm100")
        for out, args in (("out1", ("optimize", "a.vma", "out1/b.vma")), ("out2", ("pack", "vm100", "out2/b.vma")),
                          ("out3", ("unpack", "a.vma", "out3"))):
            with self.subTest(args=args):
                self.mkdir(out)
                r = self.tool(*args, preexec_fn=_limit_fsize(64 * 1024))
                self.assertError(r, code=3)
                self.assertEqual(self.listing(out), [])
                self.assertBytes("a.vma", _archive())

    @unittest.skipIf(os.geteuid() == 0, "root ignores file modes")
    def test_unpack_into_read_only_dir(self):
        self.write("a.vma", _archive())
        d = self.mkdir("ro")
        os.chmod(d, 0o555)
        try:
            r = self.tool("unpack", "a.vma", "ro")
            self.assertError(r, "ro", code=3)
            self.assertEqual(self.listing("ro"), [])
        finally:
            os.chmod(d, 0o755)

    @unittest.skipIf(os.geteuid() == 0, "root ignores file modes")
    def test_optimize_in_place_read_only_dir(self):
        """In place, the temporary goes beside the file: an unwritable directory is exit 3 and the
        message shows no temporary name."""
        self.write("ro/a.vma", _archive())
        d = self.path("ro")
        os.chmod(d, 0o555)
        try:
            r = self.tool("optimize", "ro/a.vma")
            self.assertError(r, code=3)
            self.assertEqual(self.listing("ro"), ["a.vma"])
            self.assertBytes("ro/a.vma", _archive())
        finally:
            os.chmod(d, 0o755)


# --------------------------------------------------------------------------------------------
# 3. several files

class ManyFilesTest(SafetyCase):
    """Spec item 3: verify and info check every file and exit with the worst status;
    optimize --in-place A B C optimizes each file with one result line, a corrupt one left
    untouched; three positionals without --in-place are a usage error."""

    RESULT = re.compile(r"^(\S+): optimized \((\d+) bytes -> (\d+) bytes\)$")

    def error_lines(self, r):
        return [ln for ln in self.err(r).splitlines() if ln.startswith(support.ERROR_PREFIX)]

    def test_verify_every_file_checked(self):
        self.write("a.vma", _archive())
        self.write("c.vma", _archive(12))
        self.write("bad.vma", _truncated_archive())
        r = self.tool("verify", "bad.vma", "a.vma", "c.vma")
        self.assertError(r, "bad.vma", code=1, multiple=True)
        out = _text(r.stdout).splitlines()
        self.assertIn("a.vma: ok", out)
        self.assertIn("c.vma: ok", out)
        for ln in self.error_lines(r):
            self.assertIn("bad.vma", ln)

    def test_verify_worst_status(self):
        self.write("a.vma", _archive())
        self.write("bad.vma", _truncated_archive())
        cases = ((("a.vma", "bad.vma"), 1, ["bad.vma"]),
                 (("a.vma", "nope.vma"), 3, ["nope.vma"]),
                 (("nope.vma", "a.vma"), 3, ["nope.vma"]),
                 (("bad.vma", "nope.vma"), 3, ["bad.vma", "nope.vma"]),
                 (("nope.vma", "bad.vma"), 3, ["bad.vma", "nope.vma"]))
        for files, code, bad in cases:
            with self.subTest(files=files):
                r = self.tool("verify", *files)
                self.assertError(r, *bad, code=code, multiple=True)
                lines = self.error_lines(r)
                for name in bad:
                    self.assertTrue(any(name in ln for ln in lines), "no error line names " + name)
                out = _text(r.stdout).splitlines()
                if "a.vma" in files:
                    self.assertIn("a.vma: ok", out)
                self.assertFalse(any(ln.startswith("bad.vma: ok") or ln.startswith("nope.vma: ok")
                                     for ln in out))

    def test_verify_all_good(self):
        self.write("a.vma", _archive())
        self.write("c.vma", _archive(12))
        r = self.tool("verify", "a.vma", "c.vma")
        self.assertOk(r)
        out = _text(r.stdout).splitlines()
        self.assertIn("a.vma: ok", out)
        self.assertIn("c.vma: ok", out)

    def test_info_one_report_per_file(self):
        self.write("a.vma", _archive())
        self.write("c.vma", _archive(12))
        r = self.tool("info", "a.vma", "c.vma")
        self.assertOk(r)
        out = _text(r.stdout)
        self.assertTrue(out.startswith("file:        a.vma\n"), out[:200])
        heads = [ln for ln in out.splitlines() if ln.startswith("file:")]
        self.assertEqual(heads, ["file:        a.vma", "file:        c.vma"])

    def test_info_worst_status(self):
        self.write("a.vma", _archive())
        self.write("bad.vma", _truncated_archive())
        for files, code in ((("a.vma", "bad.vma"), 1), (("bad.vma", "a.vma"), 1),
                            (("a.vma", "nope.vma"), 3), (("nope.vma", "a.vma"), 3),
                            (("bad.vma", "nope.vma"), 3)):
            with self.subTest(files=files):
                r = self.tool("info", *files)
                self.assertEqual(r.returncode, code, self.err(r))
                self.assertNotIn("Traceback", self.err(r))
                if "a.vma" in files:
                    self.assertIn("file:        a.vma", _text(r.stdout).splitlines())

    def test_info_json(self):
        self.write("a.vma", _archive())
        self.write("c.vma", _archive(12))
        singles = []
        for name in ("a.vma", "c.vma"):
            r = self.tool("info", "--json", name)
            self.assertOk(r)
            obj = json.loads(_text(r.stdout))
            self.assertIsInstance(obj, dict, "info --json of one file is not one object")
            singles.append(obj)
        r = self.tool("info", "--json", "a.vma", "c.vma")
        self.assertOk(r)
        arr = json.loads(_text(r.stdout))
        self.assertIsInstance(arr, list)
        self.assertEqual(len(arr), 2)
        self.assertEqual(arr, singles)

    def check_result_line(self, line, name, before, after):
        m = self.RESULT.match(line)
        self.assertTrue(m, "not a result line: %r" % line)
        self.assertEqual(m.group(1), name)
        self.assertEqual(int(m.group(2)), before)
        self.assertEqual(int(m.group(3)), after)

    def test_in_place_several(self):
        self.write("a.vma", _archive())
        self.write("b.vma", _truncated_archive())
        self.write("c.vma", _archive(12))
        r = self.tool("optimize", "--in-place", "a.vma", "b.vma", "c.vma")
        self.assertError(r, "b.vma", code=1)
        self.assertBytes("b.vma", _truncated_archive(), "the corrupt file was changed")
        self.assertOptimized("a.vma")
        self.assertOptimized("c.vma")
        lines = _text(r.stdout).splitlines()
        self.assertEqual(len(lines), 2, lines)
        self.check_result_line(lines[0], "a.vma", len(_archive()), os.path.getsize(self.path("a.vma")))
        self.check_result_line(lines[1], "c.vma", len(_archive(12)), os.path.getsize(self.path("c.vma")))
        self.assertEqual(self.listing(), ["a.vma", "b.vma", "c.vma"])

    def test_in_place_already_canonical(self):
        self.write("a.vma", _archive())
        self.write("c.vma", _archive(12))
        self.assertOk(self.tool("optimize", "--in-place", "a.vma"))
        canon = self.read(self.path("a.vma"))
        ino = os.stat(self.path("a.vma")).st_ino
        r = self.tool("optimize", "--in-place", "a.vma", "c.vma")
        self.assertOk(r)
        lines = _text(r.stdout).splitlines()
        self.assertEqual(len(lines), 2, lines)
        self.assertEqual(lines[0], "a.vma: already canonical, left untouched")
        self.check_result_line(lines[1], "c.vma", len(_archive(12)), os.path.getsize(self.path("c.vma")))
        self.assertBytes("a.vma", canon)
        self.assertEqual(os.stat(self.path("a.vma")).st_ino, ino, "a canonical file was replaced")
        self.assertOptimized("c.vma")

    def test_in_place_quiet(self):
        self.write("a.vma", _archive())
        self.write("c.vma", _archive(12))
        r = self.tool("optimize", "-q", "--in-place", "a.vma", "c.vma")
        self.assertOk(r)
        self.assertEqual(r.stdout, b"")
        self.assertOptimized("a.vma")
        self.assertOptimized("c.vma")

    def test_in_place_refuses_stdin(self):
        self.write("a.vma", _archive())
        for args in (("-",), ("a.vma", "-")):
            with self.subTest(args=args):
                r = self.tool("optimize", "--in-place", *args, input=_archive())
                self.assertError(r, code=2)
                self.assertEqual(r.stdout, b"")
                self.assertBytes("a.vma", _archive())

    def test_three_positionals_without_in_place(self):
        self.write("a.vma", _archive())
        self.write("b.vma", _archive(12))
        self.write("c.vma", _archive(14))
        r = self.tool("optimize", "a.vma", "b.vma", "c.vma")
        self.assertError(r, "--in-place", code=2)
        self.assertBytes("a.vma", _archive())
        self.assertBytes("b.vma", _archive(12))
        self.assertBytes("c.vma", _archive(14))

    def test_one_positional_in_place(self):
        self.write("a.vma", _archive())
        r = self.tool("optimize", "a.vma")
        self.assertOk(r)
        lines = _text(r.stdout).splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.check_result_line(lines[0], "a.vma", len(_archive()), os.path.getsize(self.path("a.vma")))
        self.assertOptimized("a.vma")
        r = self.tool("optimize", "a.vma")
        self.assertOk(r)
        self.assertEqual(_text(r.stdout).splitlines(), ["a.vma: already canonical, left untouched"])


# --------------------------------------------------------------------------------------------
# 4. links

class LinkTest(SafetyCase):
    """Spec item 4: in place, a symlink stays a symlink and its target is optimized; a file with a
    second hard link is refused (exit 3, "hard link", --force) unless --force, which replaces only
    the name given."""

    def test_symlink_stays_symlink(self):
        self.write("store/real.vma", _archive())
        os.symlink(os.path.join("store", "real.vma"), self.path("link.vma"))
        r = self.tool("optimize", "link.vma")
        self.assertOk(r)
        self.assertTrue(os.path.islink(self.path("link.vma")), "link.vma is no longer a symlink")
        self.assertEqual(os.readlink(self.path("link.vma")), os.path.join("store", "real.vma"))
        self.assertFalse(os.path.islink(self.path("store/real.vma")))
        self.assertOptimized("store/real.vma")
        self.assertEqual(self.listing(), ["link.vma", "store"])
        self.assertEqual(self.listing("store"), ["real.vma"])

    def test_symlink_in_place_option(self):
        self.write("real.vma", _archive())
        os.symlink("real.vma", self.path("link.vma"))
        r = self.tool("optimize", "--in-place", "link.vma")
        self.assertOk(r)
        self.assertTrue(os.path.islink(self.path("link.vma")))
        self.assertEqual(os.readlink(self.path("link.vma")), "real.vma")
        self.assertOptimized("real.vma")
        self.assertEqual(self.listing(), ["link.vma", "real.vma"])

    def test_hard_link_refused(self):
        self.write("a.vma", _archive())
        os.link(self.path("a.vma"), self.path("other.vma"))
        r = self.tool("optimize", "a.vma")
        self.assertError(r, "hard link", "--force", code=3)
        self.assertBytes("a.vma", _archive())
        self.assertBytes("other.vma", _archive())
        self.assertTrue(os.path.samefile(self.path("a.vma"), self.path("other.vma")))
        self.assertEqual(self.listing(), ["a.vma", "other.vma"])

    def test_hard_link_already_canonical_is_reported_as_such(self):
        canonical = bytes(vf.canonical_archive(_vm()))
        for name in ("a.vma", "a.vma.gz"):
            self.write(name, canonical if name == "a.vma" else gzip.compress(canonical, 6, mtime=0))
            os.link(self.path(name), self.path("other-" + name))
            r = self.tool("optimize", name)
            self.assertOk(r)
            self.assertIn(b"already canonical", r.stdout)
            self.assertTrue(os.path.samefile(self.path(name), self.path("other-" + name)))

    def test_hard_link_force(self):
        self.write("a.vma", _archive())
        os.link(self.path("a.vma"), self.path("other.vma"))
        r = self.tool("optimize", "--force", "a.vma")
        self.assertOk(r)
        self.assertOptimized("a.vma")
        self.assertBytes("other.vma", _archive(), "the other hard link lost its bytes")
        self.assertFalse(os.path.samefile(self.path("a.vma"), self.path("other.vma")))
        self.assertEqual(self.listing(), ["a.vma", "other.vma"])


# --------------------------------------------------------------------------------------------
# 5. signals

# The signal windows (VMA_TOOL_FAULT=POINT:SIG at start, output-created, scratch-created, ...) for
# every command are in test_faults.py, one harness with the shared checks.


class StaleTempTest(SafetyCase):
    """Spec item 5 (stale temporaries), as issue 18 changed it: a temporary of a killed run of this
    host (pid not running, lock free) in DIR is removed by the next unpack, without --force, and said
    once; the unpack itself is unchanged.  (More cases in test_outputs.py.)"""

    def setUp(self):
        if support.pid_alive(999999):
            self.skipTest("pid 999999 is running here")
        self.stale = ".disk-drive-scsi0.raw.vma-tool-%s-999999-abcdef.tmp" % getattr(
            support.load_tool_module(), "HOST_TAG", os.uname().nodename.split(".")[0])

    def test_removed_with_one_notice(self):
        for force in ([], ["--force"]):
            with self.subTest(force=force):
                self.write("a.vma", _archive())
                self.write("out/" + self.stale, b"half a disk image")
                r = self.tool("unpack", *force, "a.vma", "out")
                self.assertOk(r)
                self.assertEqual([ln for ln in self.err(r).splitlines() if "stale" in ln],
                                 ["vma-tool: removed 1 stale temporary file of interrupted runs from out"])
                self.assertNoTempNames(r)
                self.assertEqual(self.listing("out"),
                                 sorted([n for n, _ in _vm().configs] + ["disk-%s.raw" % d.name for d in _vm().devices]))
                self.assertBytes("out/disk-drive-scsi0.raw", _vm().disk_bytes(1), "unpack output wrong")
                support._rmtree(self.path("out"))


# --------------------------------------------------------------------------------------------
# 6. closed standard streams

class ClosedStreamTest(SafetyCase):
    """Spec item 6: with stdout, stderr or stdin closed, vma-tool exits with the right status
    and never a traceback; it does not hang."""

    def test_stdout_closed_output_commands(self):
        self.write("a.vma", _archive())
        for args in (("info", "a.vma"), ("config", "a.vma"), ("cat", "a.vma", "drive-scsi0"),
                     ("optimize", "a.vma", "-")):
            with self.subTest(args=args):
                r = self.closed(">&-", *args)
                self.assertError(r, "standard output", code=3)
                self.assertBytes("a.vma", _archive())
                self.assertEqual(self.listing(), ["a.vma"])

    def test_stdout_closed_verify(self):
        self.write("a.vma", _archive())
        self.write("bad.vma", _truncated_archive())
        r = self.closed(">&-", "verify", "a.vma")
        self.assertOk(r)
        r = self.closed(">&-", "verify", "bad.vma")
        self.assertError(r, "bad.vma", code=1, multiple=True)

    def test_stderr_closed(self):
        self.write("a.vma", _archive())
        self.write("existing.vma", b"precious\n")
        self.write("bad.vma", _truncated_archive())
        r = self.closed("2>&-", "optimize", "a.vma", "existing.vma")
        self.assertEqual(r.returncode, 3)
        self.assertNotIn(b"Traceback", r.stdout)
        self.assertBytes("existing.vma", b"precious\n")
        self.assertBytes("a.vma", _archive())
        r = self.closed("2>&-", "verify", "bad.vma")
        self.assertEqual(r.returncode, 1)
        self.assertNotIn(b"Traceback", r.stdout)
        self.assertBytes("bad.vma", _truncated_archive())
        self.assertEqual(self.listing(), ["a.vma", "bad.vma", "existing.vma"])

    def test_stdin_closed(self):
        r = self.closed("<&-", "verify", "-")
        self.assertIn(r.returncode, (1, 3), self.err(r))
        self.assertError(r, multiple=True)


# --------------------------------------------------------------------------------------------
# 7. terminals

class TerminalTest(SafetyCase):
    """Spec item 7: binary output to a terminal is refused (exit 2, "terminal", --force) with
    nothing written to it, --force proceeds; an archive is never read from a terminal (exit 2 at
    once)."""

    def run_on_pty(self, args, side):
        """Run vma-tool with stdout (side="stdout") or stdin (side="stdin") on a new pty in raw
        mode.  Returns (returncode or None if it had to be killed, stderr, bytes on the terminal,
        seconds)."""
        master, slave = pty.openpty()
        try:
            tty.setraw(slave)
            env = dict(os.environ)
            env.pop("VMA_TOOL_FAULT", None)
            cmd = support.tool_argv() + list(args)
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, cwd=self.tmp, env=env, stderr=subprocess.PIPE,
                                    stdin=slave if side == "stdin" else subprocess.DEVNULL,
                                    stdout=slave if side == "stdout" else subprocess.DEVNULL)
            got, err = [], []
            errfd = proc.stderr.fileno()
            deadline = t0 + TERMINAL_DEADLINE
            try:
                open_fds = {master, errfd}
                while True:
                    if proc.poll() is not None and errfd not in open_fds:
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    ready, _, _ = select.select(list(open_fds), [], [], min(left, 0.2))
                    for fd in ready:
                        try:
                            chunk = os.read(fd, 65536)
                        except OSError:
                            chunk = b""
                        if fd == master:
                            if chunk:
                                got.append(chunk)
                        elif chunk:
                            err.append(chunk)
                        else:
                            open_fds.discard(fd)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=TIMEOUT)
                    rc = None
                else:
                    rc = proc.returncode
                proc.stderr.close()
            elapsed = time.monotonic() - t0
            # whatever is still buffered on the terminal
            os.set_blocking(master, False)
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                got.append(chunk)
            return rc, b"".join(err), b"".join(got), elapsed
        finally:
            os.close(slave)
            os.close(master)

    def assertRefusedOnTerminal(self, args, side, *keywords):
        rc, err, got, elapsed = self.run_on_pty(args, side)
        self.assertIsNotNone(rc, "%r with %s on a terminal did not exit within %d s" % (
            args, side, TERMINAL_DEADLINE))
        r = subprocess.CompletedProcess(args, rc, b"", err)
        self.assertError(r, "terminal", *keywords, code=2)
        return got

    def test_stdout_terminal_refused(self):
        self.write("a.vma", _archive())
        self.pack_dir("vm100")
        for args in (("optimize", "a.vma", "-"), ("cat", "a.vma", "drive-scsi0"), ("pack", "vm100", "-")):
            with self.subTest(args=args):
                got = self.assertRefusedOnTerminal(args, "stdout", "--force")
                self.assertEqual(got, b"", "bytes written to the terminal")

    def test_stdout_terminal_force(self):
        self.write("a.vma", _archive())
        for flag in ("-f", "--force"):
            with self.subTest(flag=flag):
                rc, err, got, _ = self.run_on_pty(("cat", flag, "a.vma", "drive-efidisk0"), "stdout")
                self.assertEqual(rc, 0, _text(err))
                self.assertTrue(got == _vm().disk_bytes(0), "cat --force to a terminal: %d bytes" % len(got))

    def test_stdin_terminal_refused(self):
        self.mkdir("out")
        for args in (("verify", "-"), ("unpack", "-", "out"), ("info", "-"), ("optimize", "-", "out.vma")):
            with self.subTest(args=args):
                self.assertRefusedOnTerminal(args, "stdin")
                self.assertEqual(self.listing("out"), [])
                self.assertFalse(os.path.exists(self.path("out.vma")))


# --------------------------------------------------------------------------------------------
# 8. messages

class MessageTest(SafetyCase):
    """Spec item 8: not-an-archive, unsupported compression (output suffix: exit 2; input: exit 3),
    missing device/config messages, unpack of a truncated archive leaves no new DIR, info of an
    incomplete archive shows what is missing."""

    def test_not_a_vma_archive(self):
        self.write("notvma.vma", NOT_VMA)
        self.write("empty.vma", b"")
        for name in ("notvma.vma", "empty.vma"):
            for args in (("verify", name), ("info", name), ("optimize", name, "out.vma"),
                         ("unpack", name, "out"), ("config", name), ("cat", name, "drive-scsi0")):
                with self.subTest(args=args):
                    r = self.tool(*args)
                    self.assertError(r, "not a vma archive", code=1)
                    self.assertNotIn("truncated", self.err(r).lower())
                    self.assertFalse(os.path.exists(self.path("out.vma")))

    def test_unsupported_output_compression(self):
        self.write("a.vma", _archive())
        for suffix in ("xz", "lz4", "lzma"):
            with self.subTest(suffix=suffix):
                try:
                    r = self.tool("optimize", "a.vma", "out.vma." + suffix)
                    self.assertError(r, suffix, "not supported", code=2)
                    self.assertEqual(self.listing(), ["a.vma"])
                finally:
                    for name in set(self.listing()) - {"a.vma"}:
                        os.unlink(self.path(name))

    @unittest.skipIf(lzma is None, "needs the lzma module to build an xz file")
    def test_unsupported_input_compression(self):
        data = lzma.compress(_archive(), format=lzma.FORMAT_XZ, preset=0)
        self.assertEqual(data[:6], bytes.fromhex("FD377A585A00"))
        self.write("x.vma", data)
        for args in (("verify", "x.vma"), ("info", "x.vma"), ("optimize", "x.vma", "out.vma"),
                     ("unpack", "x.vma", "out")):
            with self.subTest(args=args):
                r = self.tool(*args)
                self.assertError(r, "xz", "not supported", code=3)
                self.assertEqual(self.listing(), ["x.vma"])
        with self.subTest(stdin=True):
            r = self.tool("verify", "-", input=data)
            self.assertError(r, "xz", "not supported", code=3)

    def test_cat_missing_device(self):
        self.write("a.vma", _archive())
        r = self.tool("cat", "a.vma", "nodev")
        self.assertError(r, "nodev", *[d.name for d in _vm().devices], code=1)
        self.assertEqual(self.err(r).count("a.vma"), 1, self.err(r))
        self.assertEqual(r.stdout, b"")

    def test_config_missing(self):
        self.write("a.vma", _archive())
        r = self.tool("config", "-c", "nope", "a.vma")
        self.assertError(r, "nope", "qemu-server.conf", code=1)

    def test_unpack_truncated_leaves_no_new_dir(self):
        for what, data in (("at an extent", _truncated_archive()), ("inside an extent", _cut_archive())):
            with self.subTest(truncated=what):
                self.write("t.vma", data)
                r = self.tool("unpack", "t.vma", "newdir")
                self.assertError(r, code=1)
                self.assertFalse(os.path.exists(self.path("newdir")), "unpack left the new DIR")
                self.mkdir("empty")
                r = self.tool("unpack", "t.vma", "empty")
                self.assertError(r, code=1)
                self.assertTrue(os.path.isdir(self.path("empty")), "unpack removed an existing DIR")
                self.assertEqual(self.listing("empty"), [])
                os.rmdir(self.path("empty"))

    def test_info_incomplete_text(self):
        self.write("t.vma", _truncated_archive())
        r = self.tool("info", "t.vma")
        self.assertEqual(r.returncode, 1, self.err(r))
        self.assertNotIn("Traceback", self.err(r))
        lines = _text(r.stdout).splitlines()
        for dev in _vm().devices:
            idx = [i for i, ln in enumerate(lines) if dev.name in ln]
            self.assertTrue(idx, "%s not in info output" % dev.name)
            i = idx[0]
            block = [lines[i]]
            for ln in lines[i + 1:]:
                if not ln[:1].isspace():
                    break
                block.append(ln)
            text = "\n".join(block).lower()
            self.assertTrue(re.search(r"\d[^\n]*missing|missing[^\n]*\d", text),
                            "no missing figure for %s:\n%s" % (dev.name, text))

    def test_info_incomplete_json(self):
        self.write("t.vma", _truncated_archive())
        r = self.tool("info", "--json", "t.vma")
        self.assertEqual(r.returncode, 1, self.err(r))
        self.assertNotIn("Traceback", self.err(r))
        obj = json.loads(_text(r.stdout))
        self.assertIsInstance(obj, dict)
        devs = obj.get("devices")
        self.assertIsInstance(devs, list)
        self.assertEqual(len(devs), len(_vm().devices))
        sizes = dict(_vm().devices)
        for d in devs:
            self.assertIn("missing_bytes", d)
            self.assertGreater(d["missing_bytes"], 0, d)
            self.assertEqual(d["stored_bytes"] + d["zero_bytes"] + d["missing_bytes"], d["size"], d)
            self.assertEqual(d["size"], sizes[d["name"]])

    def test_info_complete_json_missing_zero(self):
        self.write("a.vma", _archive())
        r = self.tool("info", "--json", "a.vma")
        self.assertOk(r)
        for d in json.loads(_text(r.stdout))["devices"]:
            self.assertEqual(d.get("missing_bytes", 0), 0, d)
            self.assertEqual(d["stored_bytes"] + d["zero_bytes"] + d.get("missing_bytes", 0), d["size"], d)


# --------------------------------------------------------------------------------------------
# 9. pack and stray files

class PackStrayFilesTest(SafetyCase):
    """Spec item 9: pack takes only vzdump's configs (qemu-server.conf, qemu-server.fw) and the
    disk images from DIR, with one notice naming the files it skipped (-q silences it);
    --config adds a file explicitly."""

    def make_dir(self):
        vm = _vm()
        support.write_unpacked_dir(vm, self.path("vm100"))
        self.write("vm100/notes.txt", b"remember the milk\n")
        self.write("vm100/qemu-server.conf~", dict(vm.configs)["qemu-server.conf"] + b"# old\n")
        return vm

    def configs_of(self, name):
        configs, disks = vf.restore(self.path(name))
        return dict(configs), disks

    def test_stray_files_skipped_with_notice(self):
        vm = self.make_dir()
        r = self.tool("pack", "vm100", "out.vma")
        self.assertOk(r)
        configs, disks = self.configs_of("out.vma")
        self.assertEqual(sorted(configs), ["qemu-server.conf", "qemu-server.fw"])
        self.assertEqual(configs["qemu-server.fw"], dict(vm.configs)["qemu-server.fw"])
        self.assertEqual(disks, vm.contents()[1])
        lines = self.err(r).splitlines()
        notices = [ln for ln in lines if ln.startswith("vma-tool: ") and "notes.txt" in ln]
        self.assertEqual(len(notices), 1, lines)
        self.assertIn("qemu-server.conf~", notices[0])
        self.assertFalse(notices[0].startswith(support.ERROR_PREFIX), notices[0])
        self.assertEqual(len([ln for ln in lines if "qemu-server.conf~" in ln]), 1, lines)

    def test_quiet(self):
        self.make_dir()
        r = self.tool("pack", "-q", "vm100", "out.vma")
        self.assertOk(r)
        self.assertNotIn("notes.txt", self.err(r))
        self.assertNotIn("qemu-server.conf~", self.err(r))
        configs, _ = self.configs_of("out.vma")
        self.assertEqual(sorted(configs), ["qemu-server.conf", "qemu-server.fw"])

    def test_config_option_adds(self):
        self.make_dir()
        r = self.tool("pack", "--config", "vm100/notes.txt", "vm100", "out.vma")
        self.assertOk(r)
        configs, _ = self.configs_of("out.vma")
        self.assertEqual(sorted(configs), ["notes.txt", "qemu-server.conf", "qemu-server.fw"])
        self.assertEqual(configs["notes.txt"], b"remember the milk\n")


# --------------------------------------------------------------------------------------------
# new options

class OptionsTest(SafetyCase):
    """Spec preamble (new options): optimize --memory SIZE accepts 0, 64M and 1G; clusters that
    arrive early wait in memory, then in a scratch file in --tmpdir that is gone afterwards."""

    def test_memory_sizes(self):
        self.mkdir("scratch")
        for size in ("0", "64M", "1G"):
            with self.subTest(memory=size):
                out = "out-%s.vma" % size
                r = self.tool("optimize", "--memory", size, "--tmpdir", "scratch", "-", out,
                              input=_reverse_archive())
                self.assertOk(r)
                self.assertOptimized(out)
                self.assertEqual(self.listing("scratch"), [])


if __name__ == "__main__":
    unittest.main()
