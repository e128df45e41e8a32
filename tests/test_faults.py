"""Faults from the environment: SIGINT/SIGTERM/SIGKILL at every window of a run, a full disk, a reader
that goes away or stops reading.

The signals come from vma-tool itself: VMA_TOOL_FAULT=NAME[@N]:INT|TERM|KILL makes it send itself the
signal the Nth time it reaches the fault point NAME (start, output-created, scratch-created, data-written,
before-install, installed).  Every case therefore hits the same moment on every run; nothing here sleeps
to aim at a window.

One harness (FaultHarness) runs a command with a fault in a sandbox of its own, takes a snapshot of the
whole sandbox (every file's mode, size and content digest) before and after, and checks the outcome
against an uninterrupted run of the same command (the reference, run once per process, which also counts
how often data-written is reached, so that @1, @middle and @last hit the first, a middle and the last
write).  The shared assertions:

* no traceback or other noise on stderr, no temporary name in a message;
* interrupted (SIGINT 130, SIGTERM 143): exactly one `vma-tool: error: ...` line saying interrupted or
  terminated, and the sandbox is exactly as before: source intact, nothing under a final name, no
  temporary left (also none in TMPDIR or --tmpdir), a directory unpack created is gone again; what went to
  stdout is not the complete result;
* complete (the signal came after the point of no return: before-install and installed, where signals
  are held for good, or a data-written count past the last write): exit 0, no error line, and the sandbox
  and stdout are exactly those of the uninterrupted run.  In place this is the right-after-rename rule:
  once the original is replaced, the tool must not report a failure;
* SIGKILL: the source is intact, nothing new: outputs are created unnamed (O_TMPFILE) where the file system
  allows (with support.LINK_SHIM where links through /proc fail); else (the *_named operations force that way) only the stale temporaries
  `.NAME.vma-tool-HOST-PID-XXXXXX.tmp` (PID the killed process), and they are harmless: the same command
  run again succeeds, gives the reference result, removes them and says so in one line.
"""
import ast
import concurrent.futures
import fcntl
import gzip
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import support  # noqa: E402
import vmafixture as vf  # noqa: E402

MiB = 1 << 20
TIMEOUT = 60                    # seconds, every run of the tool
CTIME = "1700000000"            # pack: a fixed creation time, so that its output is reproducible
FULL_WORDS = ("space", "full", "too large", "file size", "efbig", "enospc", "write")
SIG_EXIT = {"INT": 130, "TERM": 143}
SIG_WORDS = {"INT": ("interrupt",), "TERM": ("terminat",)}
ERROR_PREFIX = support.ERROR_PREFIX
TEMP_RE = re.compile(r"^\.(?P<name>.+)\.vma-tool-(?P<host>[^/]+)-(?P<pid>\d+)-[0-9a-f]{6}\.tmp$")
NAMED = {"VMA_TOOL_NO_TMPFILE": "1"}    # outputs under temporary names, as where O_TMPFILE is refused
JOBS = max(2, min(4, os.cpu_count() or 1))     # runs of one test at a time (each in its own sandbox)


tool_argv = support.tool_argv
sha_file = support.sha256_file
error_lines = support.error_lines


# ------------------------------------------------------------------------------------------------------------
# fixtures

_FIX = {}
_FIX_LOCK = threading.Lock()


def fixtures():
    """archive: ~1.8 MiB, two devices, Proxmox order (random uuid, never canonical); reverse: the same VM with
    every cluster in reverse order (from a pipe nearly all of them wait in the scratch file with --memory 0);
    big: ~4.5 MiB for the pipe tests, more than the tool's 1 MiB pipe plus what a reader takes first."""
    with _FIX_LOCK:
        if not _FIX:
            vm = vf.make_vm(31, devices=[("drive-scsi0", 3 * MiB // 2), ("drive-virtio0", MiB // 2 + 512)],
                            fill=0.9)
            big_vm = vf.make_vm(32, devices=[("drive-scsi0", 4 * MiB), ("drive-virtio0", MiB + 512)], fill=0.9)
            archive = bytes(vf.write_archive(vm, None, seed=5, order="proxmox"))
            root = tempfile.mkdtemp(prefix="vma-faults-fix-")
            big = os.path.join(root, "big.vma")
            vf.write_archive(big_vm, big, seed=6, order="proxmox")
            _FIX.update(root=root, vm=vm, archive=archive, big=big, big_vm=big_vm, big_sha=sha_file(big),
                        reverse=bytes(vf.write_archive(vm, None, seed=13, order="reverse")),
                        gz=gzip.compress(archive, 1), big_bytes=open(big, "rb").read())
    return _FIX


def tearDownModule():
    if _FIX:
        shutil.rmtree(_FIX["root"], ignore_errors=True)


def _put(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# ------------------------------------------------------------------------------------------------------------
# the operations: a command, what its sandbox holds before, what it reads on stdin, and its fault points

class Op:
    """A command run with cwd = the sandbox, which holds src/, dest/, tmp/ (TMPDIR) and scratch/.
    inputs: {path in the sandbox: fixture key ("archive", "gz", ...), or "vm" for an unpacked directory};
    stdin: fixture key fed through a pipe; stdout: whether the result goes to stdout;
    points: [(point, count)] for INT and TERM, count "mid"/"last"/"past" relative to the reference's
    data-written count; kill: the same for SIGKILL; last_write_commits: the last data write finishes the job
    (a raw image on stdout has no end mark, so from there on a signal must not fail it); env: variables
    for the tool."""

    def __init__(self, args, inputs=(), stdin=None, stdout=False, points=(), kill=(), last_write_commits=False,
                 env=None):
        self.args = list(args)
        self.env = dict(env or {})
        self.last_write_commits = last_write_commits
        self.inputs = dict(inputs)
        self.stdin = stdin
        self.stdout = stdout
        self.points = list(points)
        self.kill = list(kill)

    def build(self, root):
        fix = fixtures()
        for d in ("src", "dest", "tmp", "scratch"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        for path, key in self.inputs.items():
            full = os.path.join(root, path)
            if key == "vm":
                support.write_unpacked_dir(fix["vm"], full)
            else:
                _put(full, fix[key] if key in fix else key)


DATA_POINTS = [("data-written", 1), ("data-written", "mid"), ("data-written", "last"), ("data-written", "past")]
FILE_POINTS = [("output-created", 1)] + DATA_POINTS + [("before-install", 1), ("installed", 1)]
STDOUT_POINTS = DATA_POINTS
START = [("start", 1)]          # before the imports: the same for every command, so checked for a few

OPS = {
    "optimize": Op(["optimize", "src/a.vma", "dest/out.vma"], {"src/a.vma": "archive"}, points=FILE_POINTS,
                   kill=[("data-written", "mid")]),
    "optimize_stdin": Op(["optimize", "-", "dest/out.vma"], stdin="archive",
                         points=FILE_POINTS),
    "optimize_stdin_scratch": Op(["optimize", "--memory", "0", "--tmpdir", "scratch", "-", "dest/out.vma"],
                                 stdin="reverse", points=[("scratch-created", 1), ("data-written", "mid")]),
    # -q: no notice that standard output carries no digests; the error line stays alone
    "optimize_stdout": Op(["optimize", "-q", "src/a.vma", "-"], {"src/a.vma": "archive"}, stdout=True,
                          points=STDOUT_POINTS),
    "in_place": Op(["optimize", "dest/a.vma"], {"dest/a.vma": "archive"}, points=START + FILE_POINTS,
                   kill=[("output-created", 1), ("data-written", 1), ("data-written", "mid"),
                         ("before-install", 1), ("installed", 1)]),
    "in_place_named": Op(["optimize", "dest/a.vma"], {"dest/a.vma": "archive"}, env=NAMED,
                         points=[("output-created", 1), ("data-written", "mid"), ("before-install", 1),
                                 ("installed", 1)],
                         kill=[("output-created", 1), ("data-written", "mid"), ("before-install", 1)]),
    "in_place_option": Op(["optimize", "--in-place", "dest/a.vma"], {"dest/a.vma": "archive"},
                          points=[("output-created", 1), ("data-written", "mid"), ("installed", 1)]),
    # compressed: read through a decompressor in one pass; with --memory 0 early clusters go to the scratch
    # file in TMPDIR (tmp/ of the sandbox)
    "in_place_gz": Op(["optimize", "--memory", "0", "dest/a.vma.gz"], {"dest/a.vma.gz": "gz"},
                      points=[("output-created", 1), ("scratch-created", 1), ("data-written", "mid"),
                              ("before-install", 1), ("installed", 1)],
                      kill=[("data-written", "mid")]),
    "unpack": Op(["unpack", "src/a.vma", "dest/new"], {"src/a.vma": "archive"}, points=START + FILE_POINTS,
                 kill=[("data-written", "mid")]),
    "unpack_named": Op(["unpack", "src/a.vma", "dest/new"], {"src/a.vma": "archive"}, env=NAMED,
                       points=[("output-created", 1), ("data-written", "mid"), ("before-install", 1)],
                       kill=[("output-created", 1), ("data-written", "mid"), ("before-install", 1)]),
    "unpack_existing_dir": Op(["unpack", "src/a.vma", "dest"], {"src/a.vma": "archive", "dest/keep.txt": b"mine\n"},
                              points=[("output-created", 1), ("data-written", "mid"), ("installed", 1)]),
    "pack": Op(["pack", "--ctime", CTIME, "src/vm", "dest/packed.vma"], {"src/vm": "vm"}, points=FILE_POINTS,
               kill=[("data-written", "mid")]),
    "pack_named": Op(["pack", "--ctime", CTIME, "src/vm", "dest/packed.vma"], {"src/vm": "vm"}, env=NAMED,
                     points=[("data-written", "mid"), ("before-install", 1)], kill=[("data-written", "mid")]),
    "cat": Op(["cat", "src/a.vma", "drive-scsi0"], {"src/a.vma": "big_bytes"}, stdout=True, points=STDOUT_POINTS,
              last_write_commits=True),
    "cat_stdin_scratch": Op(["cat", "--memory", "0", "--tmpdir", "scratch", "-", "drive-scsi0"], stdin="reverse",
                            stdout=True, points=[("scratch-created", 1)]),
    "info": Op(["info", "src/a.vma"], {"src/a.vma": "archive"}, stdout=True, points=START),
    "verify": Op(["verify", "src/a.vma"], {"src/a.vma": "archive"}, stdout=True, points=START),
}


# ------------------------------------------------------------------------------------------------------------
# running and snapshots

snapshot = support.snapshot


def tree_diff(want, got):
    """Readable difference of two snapshots ("" if equal)."""
    lines = []
    for p in sorted(set(want) | set(got)):
        if p not in got:
            lines.append("  missing: %s" % p)
        elif p not in want:
            lines.append("  new:     %s %s" % (p, got[p][:3]))
        elif want[p] != got[p]:
            lines.append("  changed: %s %s -> %s" % (p, want[p][:3], got[p][:3]))
    return "\n".join(lines)


# Runs the tool and, at its end, writes how often each fault point was reached (the tool counts a point
# only while VMA_TOOL_FAULT names it; "@0" names it without ever firing).
_COUNTER = r"""
import sys
tool, out = sys.argv[1], sys.argv[2]
sys.argv = [tool] + sys.argv[3:]
g = {"__name__": "__main__", "__file__": tool, "__builtins__": __builtins__}
status = 0
try:
    with open(tool, "rb") as f:
        code = compile(f.read(), tool, "exec")
    exec(code, g)
except SystemExit as e:
    status = e.code
finally:
    with open(out, "w") as f:
        f.write(repr(g.get("FAULT_REACHED")))
sys.exit(status)
"""


class Outcome:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def describe(self):
        err = self.err.decode("utf-8", "replace")
        return "\n  $ VMA_TOOL_FAULT=%s vma-tool %s\n  rc=%r\n  stderr: %s" % (
            self.fault or "", " ".join(self.args), self.rc, err[-1500:] if err else "(empty)")


_REFS = {}
_REF_LOCK = threading.Lock()


def _tool_env(root, fault, extra):
    env = dict(os.environ)
    env.pop("VMA_TOOL_FAULT", None)
    env.pop("VMA_TOOL_NO_TMPFILE", None)
    env.update(extra)
    env["TMPDIR"] = os.path.join(root, "tmp")
    if fault:
        env["VMA_TOOL_FAULT"] = fault
    return env


def run_tool(op, root, fault=None, counter=None, drive=None):
    """Run op in the sandbox root (built by the caller) with VMA_TOOL_FAULT=fault.  drive(proc) instead of
    the plain feeding of stdin: it gets the Popen (stdin a pipe) and must end with the tool stopped."""
    argv = (support.unnamed_tool_argv() or tool_argv()) + op.args
    if counter:
        shim = support.LINK_SHIM if support.link_shim_needed() else ""
        argv = [sys.executable, "-S", "-c", shim + _COUNTER, support.TOOL, counter] + op.args
    stdin_data = fixtures()[op.stdin] if op.stdin else None
    outf = tempfile.TemporaryFile()
    errf = tempfile.TemporaryFile()
    p = subprocess.Popen(argv, cwd=root, env=_tool_env(root, fault, op.env), stdout=outf, stderr=errf,
                         stdin=subprocess.PIPE if stdin_data is not None or drive else subprocess.DEVNULL,
                         start_new_session=True)
    try:
        if drive:
            drive(p)
        elif stdin_data is not None:
            try:
                p.stdin.write(stdin_data)
            except BrokenPipeError:
                pass                    # the tool stopped reading: that is what a fault does
            try:
                p.stdin.close()
            except BrokenPipeError:
                pass
        rc = p.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        rc = "hang (killed after %d s)" % TIMEOUT
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        if p.stdin:
            try:
                p.stdin.close()
            except OSError:
                pass
    # A compressor the tool started may outlive a SIGKILL for a moment (it still writes what it was given
    # into the temporary file): the snapshot waits until the whole process group is gone.
    left = _wait_group(p.pid)
    outf.seek(0)
    errf.seek(0)
    out, err = outf.read(), errf.read()
    outf.close()
    errf.close()
    return Outcome(args=op.args, fault=fault, rc=rc, out=out, err=err, pid=p.pid, root=root, left=left,
                   after=snapshot(root))


def _wait_group(pgid, timeout=10):
    """Wait until no process of the group is left; returns False if some still ran after timeout (then
    killed)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return True
        if time.monotonic() > deadline:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
            return False
        time.sleep(0.005)


def reference(name):
    """The uninterrupted run of OPS[name]: (before, after snapshot, stdout, data-written count), once per
    process; the run must succeed."""
    with _REF_LOCK:
        if name not in _REFS:
            op = OPS[name]
            root = tempfile.mkdtemp(prefix="vma-faults-ref-")
            try:
                op.build(root)
                before = snapshot(root)
                counts = os.path.join(os.path.dirname(root), os.path.basename(root) + ".counts")
                o = run_tool(op, root, fault="data-written@0:INT", counter=counts)
                try:
                    with open(counts) as f:
                        reached = ast.literal_eval(f.read())    # a dict written with repr() above
                finally:
                    if os.path.exists(counts):
                        os.unlink(counts)
                _REFS[name] = (o, before, reached)
            finally:
                shutil.rmtree(root, ignore_errors=True)
        o, before, reached = _REFS[name]
        if o.rc != 0:
            raise AssertionError("the uninterrupted run fails" + o.describe())
        if not isinstance(reached, dict):
            raise AssertionError("the counting run did not report FAULT_REACHED (%r)%s" % (reached, o.describe()))
        return o, before, reached.get("data-written", 0)


# ------------------------------------------------------------------------------------------------------------
# the harness

class FaultHarness(unittest.TestCase):
    """Runs cases (op, point, count, signal) in sandboxes of their own and checks them (module docstring)."""

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="vma-faults-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.serial = 0

    def sandbox(self, op):
        self.serial += 1
        root = os.path.join(self.root, "run%d" % self.serial)
        os.mkdir(root)
        op.build(root)
        return root

    @staticmethod
    def resolve(count, writes):
        """A data-written count: 1, "mid", "last" or "past" (one more than the last: never reached)."""
        if isinstance(count, int):
            return count
        return {"mid": (writes + 1) // 2, "last": writes, "past": writes + 1}[count]

    def fault(self, name, point, count, sig):
        """The VMA_TOOL_FAULT value, or None when the case cannot be expressed (the point is never reached)."""
        if point != "data-written":
            return "%s@%d:%s" % (point, count, sig)
        writes = reference(name)[2]
        if writes == 0:
            return None
        return "%s@%d:%s" % (point, self.resolve(count, writes), sig)

    def run_cases(self, name, cases):
        """Run [(point, count, sig)] of op name at once; returns [(case, fault, outcome or None)]."""
        reference(name)                                         # once, before the runs start
        jobs = [(case, self.fault(name, *case)) for case in cases]
        roots = [self.sandbox(OPS[name]) if fault else None for _, fault in jobs]
        with concurrent.futures.ThreadPoolExecutor(JOBS) as pool:
            futures = [pool.submit(run_tool, OPS[name], root, fault) if fault else None
                       for (_, fault), root in zip(jobs, roots)]
            return [(case, fault, f.result() if f else None) for (case, fault), f in zip(jobs, futures)]

    # ---- the shared assertions

    def assert_quiet(self, o, msg):
        self.assertTrue(o.left, "a process of the tool (a compressor?) still ran 10 s after it ended" + msg)
        text = o.err.decode("utf-8", "replace")
        for noise in ("Traceback", "Exception ignored", "BrokenPipeError", "KeyboardInterrupt"):
            self.assertNotIn(noise, text, "noise on stderr" + msg)
        self.assertNotIn(".vma-tool-", text, "a temporary name in a message" + msg)
        self.assertNotIn(".tmp", text, "a temporary name in a message" + msg)

    def assert_interrupted(self, name, o, sig):
        """Exit 130/143 with one line saying so; the sandbox exactly as before; stdout not the whole result."""
        ref, before, _ = reference(name)
        msg = o.describe()
        self.assert_quiet(o, msg)
        self.assertNotEqual(o.rc, 0, "the run was not interrupted: the fault point was not reached?" + msg)
        self.assertEqual(o.rc, SIG_EXIT[sig], "exit status" + msg)
        lines = [ln for ln in o.err.decode("utf-8", "replace").splitlines() if ln.strip()]
        self.assertEqual(len(lines), 1, "want exactly one line on stderr" + msg)
        self.assertTrue(lines[0].startswith(ERROR_PREFIX), "not an error line" + msg)
        self.assertTrue(any(w in lines[0].lower() for w in SIG_WORDS[sig]),
                        "the message does not say %s" % "/".join(SIG_WORDS[sig]) + msg)
        diff = tree_diff(before, o.after)
        if diff:
            complete = " (the files are those of the uninterrupted run: it completed, yet reports failure)" \
                if not tree_diff(ref.after, o.after) else ""
            self.fail("the sandbox changed%s:\n%s%s" % (complete, diff, msg))
        if OPS[name].stdout and ref.out:
            self.assertTrue(o.out != ref.out, "stdout holds the whole result and nothing marks it incomplete, "
                                              "yet the tool reports failure" + msg)

    def assert_complete(self, name, o):
        """Exit 0, nothing on stderr, the sandbox and stdout exactly as after the uninterrupted run."""
        ref, before, _ = reference(name)
        msg = o.describe()
        self.assert_quiet(o, msg)
        self.assertEqual(o.rc, 0, "the result was complete (the point of no return passed), yet the tool "
                                  "reports failure" + msg)
        self.assertEqual(o.err, ref.err, "stderr differs from the uninterrupted run" + msg)
        diff = tree_diff(ref.after, o.after)
        if diff:
            self.fail("the files differ from the uninterrupted run:\n%s%s" % (diff, msg))
        self.assertTrue(o.out == ref.out, "stdout differs from the uninterrupted run" + msg)

    def stale_temporaries(self, name, o):
        """After SIGKILL: the new files, each a recognizable temporary of the killed process (checked)."""
        _, before, _ = reference(name)
        msg = o.describe()
        finals = {os.path.basename(p) for p in reference(name)[0].after} - {os.path.basename(p) for p in before}
        stale = {}
        for p, entry in o.after.items():
            if before.get(p) == entry:
                continue
            if entry[0] == "d" and p not in before:
                continue                                        # unpack's new directory stays (harmless)
            m = TEMP_RE.match(os.path.basename(p))
            self.assertTrue(m and entry[0] == "f", "after SIGKILL %s is not a recognizable temporary%s%s"
                            % (p, "\n" + tree_diff(before, o.after), msg))
            self.assertEqual(int(m.group("pid")), o.pid, "%s does not name the killed process%s" % (p, msg))
            self.assertIn(m.group("name"), finals | {os.path.basename(a) for a in OPS[name].args},
                          "%s is not named after an output%s" % (p, msg))
            stale[p] = entry
        return stale

    def assert_killed(self, name, o, complete=False):
        """SIGKILL: source intact, only stale temporaries new (none where outputs are created unnamed; or,
        complete, the reference result and none), then the same command succeeds, gives the reference result,
        and removes the stale files saying so in one line."""
        ref, before, _ = reference(name)
        msg = o.describe()
        self.assertEqual(o.rc, -signal.SIGKILL, "not killed" + msg)
        if complete:
            diff = tree_diff(ref.after, o.after)
            if diff:
                self.fail("killed after the final name was given: the files differ from the uninterrupted "
                          "run:\n%s%s" % (diff, msg))
            return
        stale = self.stale_temporaries(name, o)
        if OPS[name].env == NAMED:
            self.assertTrue(stale, "named temporaries, yet the killed run left none" + msg)
        for p, entry in before.items():
            self.assertEqual(o.after.get(p), entry, "%s changed by a killed run%s" % (p, msg))
        again = run_tool(OPS[name], o.root)
        msg2 = "\n  after SIGKILL, the same command again:" + again.describe()
        self.assertEqual(again.rc, 0, "the run after SIGKILL failed" + msg2)
        self.assertNotIn(b"Traceback", again.err, msg2)
        self.assertTrue(again.left, "a process of the tool still ran 10 s after it ended" + msg2)
        notices = [line for line in again.err.decode("utf-8", "replace").splitlines() if "stale temporary" in line]
        if stale:
            directory = os.path.dirname(next(iter(stale)))
            self.assertEqual(notices, ["vma-tool: removed %d stale temporary file%s of interrupted runs from %s"
                                       % (len(stale), "" if len(stale) == 1 else "s", directory)], msg2)
        else:
            self.assertEqual(notices, [], msg2)
        diff = tree_diff(ref.after, again.after)
        if diff:
            self.fail("after SIGKILL the next run's result differs from an uninterrupted run:\n%s%s" % (diff, msg2))

    def expect_complete(self, name, point, count):
        if OPS[name].last_write_commits and count == "last":
            return True
        return point in ("before-install", "installed") or count == "past"

    def check_matrix(self, name, sigs=("INT", "TERM")):
        """Every point of OPS[name] with each of sigs, plus its SIGKILL cases (with INT, so once per op)."""
        op = OPS[name]
        cases = []
        for sig in sigs:
            cases += [(point, count, sig) for point, count in op.points if count != "past" or sig == "INT"]
        if "INT" in sigs:
            cases += [(point, count, "KILL") for point, count in op.kill]
        skipped = []
        for (point, count, sig), fault, o in self.run_cases(name, cases):
            with self.subTest(op=name, point=point, count=count, sig=sig, fault=fault):
                if o is None:
                    skipped.append("%s@%s" % (point, count))
                    continue
                if sig == "KILL":
                    self.assert_killed(name, o, complete=point == "installed")
                elif self.expect_complete(name, point, count):
                    self.assert_complete(name, o)
                else:
                    self.assert_interrupted(name, o, sig)
        if skipped:
            self.skipTest("vma-tool never reaches data-written in `%s` (no fault point there): %s not run"
                          % (" ".join(op.args), ", ".join(sorted(set(skipped)))))


def _matrix_test(name, sig):
    def test(self):
        self.check_matrix(name, (sig,))
    test.__doc__ = "%s: %s at %s" % (name, sig, ", ".join("%s@%s" % pc for pc in OPS[name].points))
    return test


class Signals(FaultHarness):
    """SIGINT and SIGTERM at every fault point of each operation (the generated test_<op>_<sig> methods),
    SIGKILL where a temporary output exists (in test_<op>_int)."""


for _name in OPS:
    for _sig in ("INT", "TERM"):
        setattr(Signals, "test_%s_%s" % (_name, _sig.lower()), _matrix_test(_name, _sig))


class SignalWhileBlocked(FaultHarness):
    """A signal from outside while the tool waits for the rest of its input on a pipe (nothing it could do
    sends the signal itself there): the first part of the archive is fed, the tool has read all of it and
    created its output, the pipe stays open."""

    def drive_blocked(self, sig, sent):
        data = fixtures()["archive"]

        def drive(p):
            p.stdin.write(data[:len(data) * 2 // 5])
            p.stdin.flush()
            fd = p.stdin.fileno()
            buf = bytearray(4)
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline and p.poll() is None:
                fcntl.ioctl(fd, termios.FIONREAD, buf)
                if int.from_bytes(buf, sys.byteorder) == 0 and self._output_created(p):
                    break
                time.sleep(0.002)
            if p.poll() is None:
                p.send_signal(sig)
                sent.append(True)
            p.wait(timeout=TIMEOUT)
        return drive

    def _output_created(self, p):
        """A temporary in dest/, or (created unnamed) a descriptor of the tool on a file in dest/."""
        dest = os.path.join(self._root, "dest")
        if any(TEMP_RE.match(n) for n in os.listdir(dest)):
            return True
        try:
            fds = os.listdir("/proc/%d/fd" % p.pid)
        except OSError:
            return False
        for fd in fds:
            try:
                if os.readlink("/proc/%d/fd/%s" % (p.pid, fd)).startswith(dest + os.sep):
                    return True
            except OSError:
                continue
        return False

    def check(self, sig_name):
        name = "optimize_stdin"
        reference(name)
        op = OPS[name]
        self._root = self.sandbox(op)
        sent = []
        o = run_tool(op, self._root, drive=self.drive_blocked(getattr(signal, "SIG" + sig_name), sent))
        self.assertTrue(sent, "the tool ended while its input was still open" + o.describe())
        self.assert_interrupted(name, o, sig_name)

    def test_sigint_reading_stdin(self):
        self.check("INT")

    def test_sigterm_reading_stdin(self):
        self.check("TERM")


# ------------------------------------------------------------------------------------------------------------

class _Sandbox(unittest.TestCase):
    def setUp(self):
        self.fix = fixtures()
        self.dir = tempfile.mkdtemp(prefix="vma-faults-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.dest = os.path.join(self.dir, "dest")
        self.tmp = os.path.join(self.dir, "tmp")
        self.cwd = os.path.join(self.dir, "cwd")
        for d in (self.dest, self.tmp, self.cwd):
            os.makedirs(d)

    def env(self):
        env = dict(os.environ)
        env.pop("VMA_TOOL_FAULT", None)
        env["TMPDIR"] = self.tmp
        return env

    def details(self, args, rc, err):
        return "\n  $ vma-tool %s\n  rc=%r\n  stderr: %s" % (
            " ".join(os.path.basename(a) if os.path.isabs(a) else a for a in args), rc,
            err.decode("utf-8", "replace")[-800:])

    def assert_no_noise(self, err, msg):
        text = err.decode("utf-8", "replace")
        self.assertNotIn("Traceback", text, msg)
        self.assertNotIn("Exception ignored", text, msg)
        self.assertNotIn("BrokenPipeError", text, msg)

    def assert_nothing_new(self, before, msg, allowed=()):
        after = snapshot(self.dir)
        new = sorted(p for p in set(after) - set(before) if os.path.join(self.dir, p) not in allowed)
        self.assertEqual(new, [], "left files behind" + msg)


def _fsize_limit(limit):
    def pre():
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


class DiskFull(_Sandbox):
    """RLIMIT_FSIZE (SIGXFSZ ignored) makes writes past LIMIT fail like a full disk: exit 3, one clear line,
    nothing left under the final name, no temp file, source intact."""
    LIMIT = 1 * MiB

    def setUp(self):
        super().setUp()
        self.src = os.path.join(self.dir, "src.vma")
        shutil.copyfile(self.fix["big"], self.src)

    def run_full(self, args, names, final=None, source=None):
        """names: the error line must name one of these (the file that could not be written)."""
        before = snapshot(self.dir)
        source_sha = sha_file(source) if source else None
        p = subprocess.run(tool_argv() + args, cwd=self.cwd, env=self.env(), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=TIMEOUT,
                           preexec_fn=_fsize_limit(self.LIMIT))
        msg = self.details(args, p.returncode, p.stderr)
        self.assert_no_noise(p.stderr, msg)
        self.assertEqual(p.returncode, 3, "disk full must exit 3" + msg)
        text = p.stderr.decode("utf-8", "replace")
        self.assertEqual(len(error_lines(text)), 1, "want exactly one error line" + msg)
        self.assertTrue(any(w in text.lower() for w in FULL_WORDS), "message does not say the disk is full" + msg)
        self.assertTrue(any(name in text for name in names), "message does not name the file" + msg)
        if final:
            if os.path.isdir(final):
                self.assertEqual(os.listdir(final), [], "partial files under final names" + msg)
            else:
                self.assertFalse(os.path.exists(final), "partial output under the final name" + msg)
        self.assert_nothing_new(before, msg, allowed=(final,) if final and os.path.isdir(final) else ())
        if source:
            self.assertEqual(sha_file(source), source_sha, "source changed" + msg)
        return p

    def test_optimize_to_file(self):
        self.run_full(["optimize", self.src, os.path.join(self.dest, "out.vma")], ["out.vma"],
                      final=os.path.join(self.dest, "out.vma"), source=self.src)

    def test_optimize_in_place(self):
        src = os.path.join(self.dest, "inplace.vma")
        shutil.copyfile(self.src, src)
        self.run_full(["optimize", src], ["inplace.vma"], source=src)

    def test_optimize_in_place_tmpdir(self):
        src = os.path.join(self.dest, "inplace.vma")
        shutil.copyfile(self.src, src)
        self.run_full(["optimize", "--tmpdir", self.tmp, src], ["inplace.vma", "spool", self.tmp], source=src)

    def test_unpack(self):
        out = os.path.join(self.dest, "out")
        self.run_full(["unpack", self.src, out], ["disk-drive-"], final=out, source=self.src)

    def test_pack(self):
        d = os.path.join(self.dir, "unpacked")
        support.write_unpacked_dir(self.fix["big_vm"], d)
        out = os.path.join(self.dest, "packed.vma")
        self.run_full(["pack", d, out], ["packed.vma"], final=out)

    def test_pack_works_without_limit(self):
        """Control for test_pack: the same pack succeeds when the disk is not full."""
        d = os.path.join(self.dir, "unpacked")
        support.write_unpacked_dir(self.fix["big_vm"], d)
        out = os.path.join(self.dest, "packed.vma")
        p = subprocess.run(tool_argv() + ["pack", d, out], cwd=self.cwd, env=self.env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=TIMEOUT)
        self.assertEqual(p.returncode, 0, self.details(["pack", d, out], p.returncode, p.stderr))
        vf.assert_same_content(self, out, self.fix["big_vm"])


# ------------------------------------------------------------------------------------------------------------
# readers that go away or stop reading

def _reset_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _blocked_on_pipe(pid, fd):
    """Is the process stuck writing into the pipe we read from fd: a thread of it sleeps in the kernel's
    pipe_write (Linux /proc/PID/task/TID/wchan), or the pipe holds as many bytes as fit?  None where
    neither can be told."""
    known = False
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/wchan" % (pid, tid)) as f:
                wchan = f.read().strip()
            if wchan not in ("", "0"):
                known = True
            if wchan.endswith("pipe_write"):
                return True
    except OSError:
        pass
    buf = bytearray(4)
    try:
        fcntl.ioctl(fd, termios.FIONREAD, buf)
        size = fcntl.fcntl(fd, getattr(fcntl, "F_GETPIPE_SZ", 1032))
    except OSError:
        return False if known else None
    return int.from_bytes(buf, sys.byteorder) >= size


class BrokenPipe(_Sandbox):
    """`vma-tool ... - | head -c 256K`: no traceback; non-zero exit or death by SIGPIPE.  The output is far
    more than the tool's pipe (1 MiB) plus what was read, so the tool cannot have finished before the close."""
    READ = 256 * 1024

    def check(self, args):
        before = snapshot(self.dir)
        errf = tempfile.TemporaryFile()
        p = subprocess.Popen(tool_argv() + args, cwd=self.cwd, env=self.env(), stdout=subprocess.PIPE,
                             stderr=errf, stdin=subprocess.DEVNULL, preexec_fn=_reset_sigint)
        got = 0
        while got < self.READ:
            chunk = p.stdout.read(min(65536, self.READ - got))
            if not chunk:
                break
            got += len(chunk)
        p.stdout.close()
        try:
            rc = p.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = "hang"
        errf.seek(0)
        err = errf.read()
        errf.close()
        msg = self.details(args, rc, err)
        self.assertEqual(got, self.READ, "produced less than %d bytes before the pipe closed" % self.READ + msg)
        self.assertNotEqual(rc, "hang", msg)
        self.assert_no_noise(err, msg)
        self.assertNotEqual(rc, 0, "exit 0 although the output was cut" + msg)
        if rc not in (-signal.SIGPIPE, 128 + signal.SIGPIPE):
            self.assertIn(rc, (1, 3), "exit status" + msg)
            self.assertLessEqual(len(err.splitlines()), 1, "more than one line on stderr" + msg)
        self.assertEqual(sha_file(self.fix["big"]), self.fix["big_sha"], msg)
        self.assert_nothing_new(before, msg)

    def test_optimize_to_closed_pipe(self):
        self.check(["optimize", self.fix["big"], "-"])

    def test_cat_to_closed_pipe(self):
        self.check(["cat", self.fix["big"], "drive-scsi0"])


class StalledReader(_Sandbox):
    """`vma-tool ... - | less` and Ctrl-C while the reader does not read: the tool must still stop promptly
    (not wait to flush into the full pipe).  The signal goes out once the pipe is full (the tool cannot
    finish: its output is several times the pipe)."""

    def check(self, args):
        before = snapshot(self.dir)
        errf = tempfile.TemporaryFile()
        p = subprocess.Popen(tool_argv() + args, cwd=self.cwd, env=self.env(), stdout=subprocess.PIPE,
                             stderr=errf, stdin=subprocess.DEVNULL, preexec_fn=_reset_sigint)
        try:
            deadline = time.monotonic() + TIMEOUT
            while p.poll() is None and time.monotonic() < deadline:
                full = _blocked_on_pipe(p.pid, p.stdout.fileno())
                if full is None:
                    self.skipTest("cannot tell whether a process waits on a full pipe here")
                if full:
                    break
                time.sleep(0.002)
            self.assertIsNone(p.poll(), "finished although nobody read its output")
            p.send_signal(signal.SIGINT)
            started = time.monotonic()
            try:
                rc = p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                rc = "hang"
            seconds = time.monotonic() - started
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
        errf.seek(0)
        err = errf.read()
        errf.close()
        msg = self.details(args, rc, err)
        self.assertEqual(rc, 130, msg)
        self.assertLess(seconds, 5, "took %.1f s to stop" % seconds + msg)
        self.assert_no_noise(err, msg)
        self.assertEqual(error_lines(err.decode("utf-8", "replace")), ["vma-tool: error: interrupted"], msg)
        self.assert_nothing_new(before, msg)

    def test_optimize_to_stalled_pipe(self):
        self.check(["optimize", self.fix["big"], "-"])

    def test_cat_to_stalled_pipe(self):
        self.check(["cat", self.fix["big"], "drive-scsi0"])

    def test_pack_to_stalled_pipe(self):
        unpacked = os.path.join(self.dir, "unpacked")
        support.write_unpacked_dir(self.fix["big_vm"], unpacked)
        self.check(["pack", unpacked, "-"])


if __name__ == "__main__":
    unittest.main()
