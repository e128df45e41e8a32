"""Issue 18, parts 2 and 4: no stray temporaries, one run per file in place, owner and mode kept.

* Outputs are created unnamed (O_TMPFILE) where the directory allows, so SIGKILL leaves nothing; where
  it does not (VMA_TOOL_NO_TMPFILE=1 forces that way here), the named temporary a killed run leaves is
  removed by the next run on that directory, with one notice.  A temporary of another host, of a live
  process, or one whose lock is held, is kept; so is anything that only looks like one.
* optimize in place (and the hook) locks its file: a second run on it refuses at once (exit 3).
* In place keeps owner and mode, or refuses before any work when it cannot (a user who is not root);
  --force then makes the result the user's, and says so.

Where links through /proc/self/fd fail (some sandboxes; the tool then falls back to named temporaries
by itself), the unnamed way is tested through support.LINK_SHIM, which names the file with
linkat(AT_EMPTY_PATH) instead (root only).
"""

import fcntl
import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import support  # noqa: E402
import vmafixture as vf  # noqa: E402
from test_hook import fake_vzdump  # noqa: E402

TIMEOUT = 30
CLUSTER = 65536
NOBODY = 65534
NOTICE = "vma-tool: removed %d stale temporary file%s of interrupted runs from %s"


def _vm():
    return support.cached(("test_outputs", "vm"), lambda: vf.make_vm(
        9181, devices=[("drive-scsi0", 24 * CLUSTER + 4096), ("drive-virtio1", 6 * CLUSTER)]))


def _archive():
    """Proxmox order, random uuid: never canonical."""
    return support.cached(("test_outputs", "archive"), lambda: bytes(vf.write_archive(_vm(), None, seed=3)))


class OutputsCase(support.ScratchCase):
    TMP_PREFIX = "vmatest-outputs-"

    def setUp(self):
        self.host = getattr(support.load_tool_module(), "HOST_TAG", os.uname().nodename.split(".")[0])
        self.cwd = None

    def path(self, *parts):
        return os.path.join(self.cwd or self.tmp, *parts)

    def fresh(self):
        """A new empty working directory for the next subtest."""
        self.cwd = os.path.join(self.tmp, "w%d" % len(os.listdir(self.tmp)))
        os.mkdir(self.cwd)

    def run_tool(self, *args, env=None, argv=None, preexec_fn=None):
        full = dict(os.environ)
        full.pop("VMA_TOOL_FAULT", None)
        full.pop("VMA_TOOL_NO_TMPFILE", None)
        full.update(env or {})
        return subprocess.run((argv or support.tool_argv()) + list(args), cwd=self.cwd or self.tmp, env=full,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=TIMEOUT, preexec_fn=preexec_fn)

    def err(self, r):
        return r.stderr.decode("utf-8", "replace")

    def notices(self, r):
        return [line for line in self.err(r).splitlines() if "stale" in line]

    def write(self, name, data):
        path = self.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def listing(self, name="."):
        return sorted(os.listdir(self.path(name)))

    def temporaries(self):
        return sorted(os.path.relpath(os.path.join(d, n), self.path()) for d, dirs, files in os.walk(self.path())
                      for n in dirs + files if ".vma-tool-" in n)

    def assertOptimized(self, name):
        vf.assert_same_content(self, self.path(name), _vm())
        r = self.run_tool("verify", name)
        self.assertOk(r)


class StaleTemporariesTest(OutputsCase):
    """What the next run removes (a temporary of this host whose process is gone and whose lock is
    free), what it keeps, and its one notice."""

    def setUp(self):
        super().setUp()
        if support.pid_alive(999999):
            self.skipTest("pid 999999 is running here")

    def name(self, host, pid, final="x.vma"):
        return ".%s.vma-tool-%s%d-abcdef.tmp" % (final, "" if host is None else host + "-", pid)

    def test_only_stale_ones_of_this_host_go(self):
        self.write("a.vma", _archive())
        stale = self.name(self.host, 999999)
        old_style = self.name(None, 999998)         # vma-tool 1.0's names: no host
        kept = {
            "other host": self.name(self.host + "x", 999999),
            "live process": self.name(self.host, os.getpid()),
            "lock held": self.name(self.host, 999997),
            "old style, recent": self.name(None, 999996),
            "not hex": ".x.vma.vma-tool-%s-999999-abcdeg.tmp" % self.host,
            "no final name": ".vma-tool-%s-999999-abcdef.tmp" % self.host,
        }
        for name in [stale, old_style] + list(kept.values()):
            self.write(name, b"half an archive")
        two_days_ago = time.time() - 2 * 86400
        os.utime(self.path(old_style), (two_days_ago, two_days_ago))
        os.symlink("a.vma", self.path(self.name(self.host, 999995)))
        os.mkdir(self.path(self.name(self.host, 999994)))
        kept_names = set(kept.values()) | {self.name(self.host, 999995), self.name(self.host, 999994)}
        with open(self.path(kept["lock held"]), "r+b") as holder:
            fcntl.flock(holder, fcntl.LOCK_EX)
            r = self.run_tool("optimize", "a.vma", "out.vma")
        self.assertOk(r)
        self.assertEqual(self.notices(r), [NOTICE % (2, "s", ".")])
        self.assertEqual(self.listing(), sorted(kept_names | {"a.vma", "out.vma"}))
        self.assertOptimized("out.vma")
        kept_names.discard(kept["lock held"])     # its lock is free now
        r = self.run_tool("optimize", "-f", "a.vma", "out.vma")
        self.assertOk(r)
        self.assertEqual(self.notices(r), [NOTICE % (1, "", ".")])
        self.assertEqual(self.listing(), sorted(kept_names | {"a.vma", "out.vma"}))

    def test_in_place_even_quiet_and_already_canonical(self):
        """In place (the hook's way) cleans the file's directory before it knows whether it writes;
        the notice comes with -q too: files went that the user did not name."""
        self.write("d/a.vma", _archive())
        self.assertOk(self.run_tool("optimize", "-q", "d/a.vma"))
        for name in (self.name(self.host, 999999, "a.vma"), self.name(self.host, 999993, "b.vma")):
            self.write("d/" + name, b"half an archive")
        r = self.run_tool("optimize", "-q", "d/a.vma")
        self.assertOk(r)
        self.assertEqual(self.err(r).splitlines(), [NOTICE % (2, "s", "d")])
        self.assertEqual(self.listing("d"), ["a.vma"])


class HookTest(OutputsCase):
    """The hook cleans its dump directory like any in-place run (its other output goes to the task log
    on stdout; the notice on stderr)."""

    def test_hook_removes_stale_temporaries(self):
        if support.pid_alive(999999):
            self.skipTest("pid 999999 is running here")
        dump = "vzdump-qemu-100-2026_12_04-01_00_00.vma"
        self.write("dump/" + dump, _archive())
        self.write("dump/.%s.vma-tool-%s-999999-0a1b2c.tmp" % (dump, self.host), b"half an archive")
        r = fake_vzdump("backup-end", self.path("dump", dump), dumpdir=self.path("dump"))
        self.assertOk(r)
        self.assertEqual(self.notices(r), [NOTICE % (1, "", self.path("dump"))])
        self.assertIn(b"optimized", r.stdout)
        self.assertEqual(self.listing("dump"), [dump])


class KilledRunTest(OutputsCase):
    """SIGKILL in the middle of writing (VMA_TOOL_FAULT=data-written@1:KILL): unnamed outputs leave
    nothing; named ones (VMA_TOOL_NO_TMPFILE=1) leave their temporaries, which the next run on that
    directory removes, saying so once."""

    COMMANDS = {
        "in place": (["optimize", "d/a.vma"], "d"),
        "unpack": (["unpack", "a.vma", "d/out"], "d/out"),
        "pack": (["pack", "--ctime", "1700000000", "vm", "d/packed.vma"], "d"),
    }

    def prepare(self):
        self.write("a.vma", _archive())
        self.write("d/a.vma", _archive())
        support.write_unpacked_dir(_vm(), self.path("vm"))

    def unnamed_argv(self):
        argv = support.unnamed_tool_argv()
        if argv is None:
            self.skipTest("this file system cannot name O_TMPFILE files here")
        return argv

    def test_unnamed_outputs_leave_nothing(self):
        argv = self.unnamed_argv()
        for what, (args, _) in self.COMMANDS.items():
            with self.subTest(what):
                self.fresh()
                self.prepare()
                before = support.snapshot(self.path())
                r = self.run_tool(*args, env={"VMA_TOOL_FAULT": "data-written@1:KILL"}, argv=argv)
                self.assertEqual(r.returncode, -signal.SIGKILL, self.err(r))
                after = support.snapshot(self.path())
                new = sorted(set(after) - set(before))
                self.assertEqual(new, ["d/out"] if what == "unpack" else [])
                self.assertEqual({p: e for p, e in after.items() if p in before}, before)
                r = self.run_tool(*args, argv=argv)
                self.assertOk(r)
                self.assertEqual(self.notices(r), [])
                self.assertEqual(self.temporaries(), [])

    def test_named_outputs_are_removed_by_the_next_run(self):
        for what, (args, directory) in self.COMMANDS.items():
            with self.subTest(what):
                self.fresh()
                self.prepare()
                r = self.run_tool(*args, env={"VMA_TOOL_FAULT": "data-written@1:KILL", "VMA_TOOL_NO_TMPFILE": "1"})
                self.assertEqual(r.returncode, -signal.SIGKILL, self.err(r))
                left = self.temporaries()
                self.assertTrue(left, "the killed run left no temporary: was it named?")
                self.assertTrue(all(os.path.dirname(p) == directory and self.host in p for p in left), left)
                r = self.run_tool(*args, env={"VMA_TOOL_NO_TMPFILE": "1"})
                self.assertOk(r)
                self.assertEqual(self.notices(r), [NOTICE % (len(left), "" if len(left) == 1 else "s", directory)])
                self.assertEqual(self.temporaries(), [])
                if what == "in place":
                    self.assertOptimized("d/a.vma")


class InPlaceLockTest(OutputsCase):
    """Two runs on the same file: the second refuses at once while the first works."""

    def test_second_run_refuses(self):
        for name in ("a.vma", "a.vma.gz"):
            with self.subTest(name):
                self.fresh()
                data = _archive()
                if name.endswith(".gz"):
                    data = gzip.compress(data, 1)
                self.write(name, data)
                env = dict(os.environ, VMA_TOOL_FAULT="data-written:STOP")
                env.pop("VMA_TOOL_NO_TMPFILE", None)
                first = subprocess.Popen(support.tool_argv() + ["optimize", name], cwd=self.cwd, env=env,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                try:
                    _, status = os.waitpid(first.pid, os.WUNTRACED)
                    self.assertTrue(os.WIFSTOPPED(status), "the first run did not stop while writing")
                    second = self.run_tool("optimize", name)
                    support.assert_clean_error(self, second, name, "being optimized by another vma-tool run",
                                               code=3)
                    hook = fake_vzdump("backup-end", self.path(name), dumpdir=self.path())
                    support.assert_clean_error(self, hook, name, "being optimized by another vma-tool run",
                                               code=3)
                    os.kill(first.pid, signal.SIGCONT)
                    out, err = first.communicate(timeout=TIMEOUT)
                finally:
                    if first.poll() is None:
                        first.kill()
                        first.communicate()
                self.assertEqual(first.returncode, 0, err.decode())
                self.assertIn(b"optimized", out)
                self.assertEqual(self.temporaries(), [])


@unittest.skipUnless(os.geteuid() == 0, "needs root to run as another user")
class OwnerTest(OutputsCase):
    """In place keeps owner and mode; a user who cannot refuses before any work unless --force."""

    def as_nobody(self, *args, argv=None):
        def drop():
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        python = shutil.which("python3", path="/usr/bin:/bin") or "python3"
        return self.run_tool(*args, argv=argv or [python, "-S", support.TOOL], preexec_fn=drop)

    def setUp(self):
        super().setUp()
        os.chmod(self.tmp, 0o777)
        self.write("probe.vma", _archive())
        os.chmod(self.path("probe.vma"), 0o644)
        try:
            usable = self.as_nobody("info", "probe.vma").returncode == 0
        except OSError:
            usable = False
        os.unlink(self.path("probe.vma"))
        if not usable:
            self.skipTest("the tool or a Python 3.9+ is out of reach of uid %d here" % NOBODY)

    def test_root_owned_file_refused_then_forced(self):
        self.write("a.vma", _archive())
        os.chown(self.path("a.vma"), 0, 0)
        os.chmod(self.path("a.vma"), 0o644)
        before = support.snapshot(self.tmp)
        r = self.as_nobody("optimize", "a.vma")
        support.assert_clean_error(self, r, "a.vma", "root:root", "--force", code=3)
        self.assertEqual(support.snapshot(self.tmp), before)
        r = self.as_nobody("optimize", "--force", "a.vma")
        self.assertOk(r)
        self.assertIn("a.vma: it belonged to root:root and becomes yours (--force)", self.err(r))
        info = os.stat(self.path("a.vma"))
        self.assertEqual((info.st_uid, oct(info.st_mode & 0o7777)), (NOBODY, "0o644"))
        self.assertOptimized("a.vma")

    def test_owner_not_given_at_commit_is_an_error(self):
        """Were the check before the work ever wrong, the commit does not quietly change the owner."""
        script = ("import importlib.machinery, importlib.util, sys\n"
                  "loader = importlib.machinery.SourceFileLoader('vma_tool', sys.argv[1])\n"
                  "tool = importlib.util.module_from_spec(importlib.util.spec_from_loader('vma_tool', loader))\n"
                  "loader.exec_module(tool)\n"
                  "outputs = tool.OutputFiles('.', False)\n"
                  "tool.os.write(outputs.create('x.vma'), b'data')\n"
                  "try:\n"
                  "    outputs.commit(0o644, (0, 0))\n"
                  "except tool.EnvironmentProblem as error:\n"
                  "    outputs.abort()\n"
                  "    print(error)\n")
        python = shutil.which("python3", path="/usr/bin:/bin") or "python3"
        r = self.as_nobody(support.TOOL, argv=[python, "-S", "-c", script])
        self.assertOk(r)
        self.assertIn("cannot give ./x.vma the owner root:root of the original", r.stdout.decode())
        self.assertEqual(self.listing(), [])

    def test_root_keeps_another_users_owner_and_mode(self):
        self.write("a.vma", _archive())
        os.chown(self.path("a.vma"), NOBODY, NOBODY)
        os.chmod(self.path("a.vma"), 0o604)
        r = self.run_tool("optimize", "a.vma")
        self.assertOk(r)
        info = os.stat(self.path("a.vma"))
        self.assertEqual((info.st_uid, info.st_gid, oct(info.st_mode & 0o7777)), (NOBODY, NOBODY, "0o604"))
        self.assertOptimized("a.vma")

    def test_own_file_needs_no_force(self):
        self.write("a.vma", _archive())
        os.chown(self.path("a.vma"), NOBODY, NOBODY)
        os.chmod(self.path("a.vma"), 0o640)
        r = self.as_nobody("optimize", "a.vma")
        self.assertOk(r)
        info = os.stat(self.path("a.vma"))
        self.assertEqual((info.st_uid, info.st_gid, oct(info.st_mode & 0o7777)), (NOBODY, NOBODY, "0o640"))


if __name__ == "__main__":
    unittest.main()
