"""Faults from the environment: disk full, SIGINT/SIGTERM at random points, SIGKILL during an in-place optimize,
a reader that goes away.  Afterwards the source must be intact, no partial file may sit under a final name,
temporary files must be gone (except after SIGKILL, where the stale one must be recognizable and harmless),
and exit status and message must say what happened (130 SIGINT, 143 SIGTERM, 3 disk full).

Set VMA_FAULT_SEED to vary the random signal points (the seed is printed in every failure message).
"""
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import fuzz  # noqa: E402
from support import write_unpacked_dir  # noqa: E402

MiB = 1 << 20
SEED = int(os.environ.get("VMA_FAULT_SEED", "20240601"))
FULL_WORDS = ("space", "full", "too large", "file size", "efbig", "enospc", "write")

_FIX = {}


def sha_file(path):
    return fuzz.sha(path)


def fixtures():
    """big: a ~90 MiB archive (two devices, Proxmox order); small: ~6 MiB archive; plus their VMs."""
    if not _FIX:
        import vmafixture as vf
        root = tempfile.mkdtemp(prefix="vma-faults-fix-")
        big_vm = vf.make_vm(31, devices=[("drive-scsi0", 72 * MiB), ("drive-scsi1", 36 * MiB)], fill=0.95)
        big = os.path.join(root, "big.vma")
        vf.write_archive(big_vm, big, seed=5, order="proxmox")
        small_vm = vf.make_vm(32, devices=[("drive-scsi0", 6 * MiB), ("drive-virtio0", 2 * MiB + 512)], fill=0.9)
        small = os.path.join(root, "small.vma")
        vf.write_archive(small_vm, small, seed=6, order="proxmox")
        _FIX.update(root=root, big=big, big_vm=big_vm, big_sha=sha_file(big), small=small, small_vm=small_vm,
                    small_sha=sha_file(small))
    return _FIX


def tearDownModule():
    if _FIX:
        shutil.rmtree(_FIX["root"], ignore_errors=True)


def vm_content(vm):
    return ([(n, bytes(d)) for n, d in vm.configs], {n: bytes(d) for (n, _), d in zip(vm.devices, vm.disks)})


def tool_cmd(*args):
    return fuzz.tool_argv() + list(args)


def _env(tmpdir):
    env = dict(os.environ)
    env["TMPDIR"] = tmpdir
    return env


def listing(*dirs):
    out = {}
    for d in dirs:
        out.update({os.path.join(d, k): v for k, v in fuzz.snapshot(d).items()})
    return out


class _Sandbox(unittest.TestCase):
    def setUp(self):
        self.fix = fixtures()
        self.dir = tempfile.mkdtemp(prefix="vma-faults-")
        self.dest = os.path.join(self.dir, "dest")
        self.tmp = os.path.join(self.dir, "tmp")
        self.cwd = os.path.join(self.dir, "cwd")
        for d in (self.dest, self.tmp, self.cwd):
            os.makedirs(d)

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def details(self, args, rc, err):
        return "\n  $ vma-tool %s\n  rc=%r seed=%d\n  stderr: %s" % (
            " ".join(os.path.basename(a) if os.path.isabs(a) else a for a in args), rc, SEED,
            err.decode("utf-8", "replace")[-800:])

    def assert_no_noise(self, err, msg):
        text = err.decode("utf-8", "replace")
        self.assertNotIn("Traceback", text, msg)
        self.assertNotIn("Exception ignored", text, msg)
        self.assertNotIn("BrokenPipeError", text, msg)

    def assert_nothing_new(self, before, msg, allowed=()):
        after = listing(self.dir)
        new = sorted(p for p in set(after) - set(before) if p not in allowed)
        self.assertEqual([os.path.relpath(p, self.dir) for p in new], [], "left files behind" + msg)


# ------------------------------------------------------------------------------------------------------------

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

    def run_full(self, args, names, final=None, source=None, source_sha=None):
        """names: the error line must name one of these (the file that could not be written)."""
        before = listing(self.dir)
        p = subprocess.run(tool_cmd(*args), cwd=self.cwd, env=_env(self.tmp), stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120,
                           preexec_fn=_fsize_limit(self.LIMIT))
        msg = self.details(args, p.returncode, p.stderr)
        self.assert_no_noise(p.stderr, msg)
        self.assertEqual(p.returncode, 3, "disk full must exit 3" + msg)
        text = p.stderr.decode("utf-8", "replace")
        self.assertEqual(len(fuzz.error_lines(text)), 1, "want exactly one error line" + msg)
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
        self.run_full(["optimize", self.fix["small"], os.path.join(self.dest, "out.vma")], ["out.vma"],
                      final=os.path.join(self.dest, "out.vma"), source=self.fix["small"], source_sha=self.fix["small_sha"])

    def test_optimize_in_place(self):
        src = os.path.join(self.dest, "inplace.vma")
        shutil.copyfile(self.fix["small"], src)
        self.run_full(["optimize", src], ["inplace.vma"], source=src, source_sha=self.fix["small_sha"])

    def test_optimize_in_place_tmpdir(self):
        src = os.path.join(self.dest, "inplace.vma")
        shutil.copyfile(self.fix["small"], src)
        self.run_full(["optimize", "--tmpdir", self.tmp, src], ["inplace.vma", "spool", self.tmp],
                      source=src, source_sha=self.fix["small_sha"])

    def test_unpack(self):
        out = os.path.join(self.dest, "out")
        self.run_full(["unpack", self.fix["small"], out], ["disk-drive-"], final=out, source=self.fix["small"],
                      source_sha=self.fix["small_sha"])

    def test_pack(self):
        d = os.path.join(self.dir, "unpacked")
        write_unpacked_dir(self.fix["small_vm"], d)
        out = os.path.join(self.dest, "packed.vma")
        self.run_full(["pack", d, out], ["packed.vma"], final=out)

    def test_pack_works_without_limit(self):
        """Control for test_pack: the same pack succeeds when the disk is not full."""
        d = os.path.join(self.dir, "unpacked")
        write_unpacked_dir(self.fix["small_vm"], d)
        out = os.path.join(self.dest, "packed.vma")
        p = subprocess.run(tool_cmd("pack", d, out), cwd=self.cwd, env=_env(self.tmp), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=120)
        self.assertEqual(p.returncode, 0, self.details(["pack", d, out], p.returncode, p.stderr))
        import vmafixture as vf
        cfgs, disks = vf.restore(out)
        self.assertEqual(disks, vm_content(self.fix["small_vm"])[1])


# ------------------------------------------------------------------------------------------------------------

def _reset_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Signals(_Sandbox):
    """SIGINT / SIGTERM at a random point of a run over a ~90 MiB archive.

    The first time an operation is used, one uninterrupted run measures how long it takes (T) and when its
    first output/temp file appears (A).  Each signal is then sent once the tool is busy (an output or temp
    file appeared) plus a uniformly random part of the remaining time T - A.  If the run ends first (or the
    signal only lands during interpreter shutdown), its result must equal the uninterrupted one and the
    attempt is repeated earlier.  The right_after_rename tests aim exactly at the commit."""
    _timing = {}

    def progress_files(self, watch, before):
        now = listing(*watch)
        return [p for p, (kind, size) in now.items() if kind == "f" and (p not in before or before[p] != (kind, size))]

    def fingerprint(self, path):
        if path is None:
            return None
        if os.path.isdir(path):
            return {n: sha_file(os.path.join(path, n)) for n in sorted(os.listdir(path))}
        return sha_file(path) if os.path.exists(path) else None

    def measure(self, op, args, watch, reset, result_path):
        """(T, A, fingerprint of the result) of an uninterrupted run (cached per operation)."""
        if op not in self._timing:
            before = listing(*watch)
            t0 = time.monotonic()
            p = subprocess.Popen(tool_cmd(*args), cwd=self.cwd, env=_env(self.tmp), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
            a = None
            while p.poll() is None:
                if a is None and self.progress_files(watch, before):
                    a = time.monotonic() - t0
                time.sleep(0.002)
            t = time.monotonic() - t0
            err = p.stderr.read()
            p.stderr.close()
            self.assertEqual(p.returncode, 0, "uninterrupted run failed" + self.details(args, p.returncode, err))
            self.assertIsNotNone(a, "no output or temporary file ever appeared during the run" +
                                 self.details(args, p.returncode, err))
            self._timing[op] = (t, a, self.fingerprint(result_path))
            reset()
        return self._timing[op]

    def interrupt(self, args, sig, watch, rng, stdin_feed=None, delay=0.0):
        """Start the tool, wait until it is busy (an output/temp file appears or grows; never during interpreter
        start-up, before the tool could install its handlers), then delay seconds, then send sig.
        Returns (rc, stderr, was_running)."""
        before = listing(*watch)
        errf = tempfile.TemporaryFile(dir=self.dir)
        p = subprocess.Popen(tool_cmd(*args), cwd=self.cwd, env=_env(self.tmp), stdout=subprocess.DEVNULL,
                             stderr=errf, stdin=subprocess.PIPE if stdin_feed else subprocess.DEVNULL,
                             preexec_fn=_reset_sigint)
        try:
            if stdin_feed:
                with open(stdin_feed, "rb") as f:
                    total = os.fstat(f.fileno()).st_size
                    part = int(total * rng.uniform(0.2, 0.7))
                    sent = 0
                    while sent < part:
                        chunk = f.read(min(1 << 20, part - sent))
                        p.stdin.write(chunk)
                        sent += len(chunk)
                    p.stdin.flush()
                time.sleep(0.2)      # the tool is now blocked reading stdin
            else:
                t0 = time.monotonic()
                while p.poll() is None and time.monotonic() - t0 < 60 and not self.progress_files(watch, before):
                    time.sleep(0.002)
                time.sleep(delay)
            running = p.poll() is None
            if running:
                p.send_signal(sig)
            try:
                rc = p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                rc = "hang after signal"
        finally:
            if p.stdin:
                try:
                    p.stdin.close()
                except OSError:
                    pass
        errf.seek(0)
        err = errf.read()
        errf.close()
        return rc, err, running

    def check(self, op, sig, use_stdin=False):
        rng = random.Random("%d:%s:%d:%s" % (SEED, op, sig, use_stdin))
        big = self.fix["big"]
        final = None
        watch = [self.dest, self.tmp]
        if op == "optimize":
            final = os.path.join(self.dest, "out.vma")
            args = ["optimize", "-" if use_stdin else big, final]
        elif op == "inplace":
            src = os.path.join(self.dest, "big.vma")
            shutil.copyfile(big, src)
            args = ["optimize", src]
        elif op == "unpack":
            final = os.path.join(self.dest, "out")
            args = ["unpack", big, final]
        elif op == "pack":
            d = os.path.join(self.dir, "unpacked")
            write_unpacked_dir(self.fix["big_vm"], d)
            final = os.path.join(self.dest, "packed.vma")
            args = ["pack", "--ctime", "1700000000", d, final]

        def reset():
            if final and os.path.isdir(final):
                shutil.rmtree(final)
            elif final and os.path.exists(final):
                os.unlink(final)
            if op == "inplace":
                shutil.copyfile(big, args[-1])
        before = listing(self.dir)
        if use_stdin:
            delay = 0.0
        else:
            total, active, _ = self.measure(op, args, watch, reset, args[-1] if op == "inplace" else final)
            delay = rng.random() * max(0.0, total - active) * 0.9
        for attempt in range(4):
            rc, err, running = self.interrupt(args, sig, watch, rng, stdin_feed=big if use_stdin else None,
                                              delay=delay)
            if running and rc not in (0, -sig):
                break
            # finished before the signal could be sent, or the signal arrived after the work was committed
            # (during interpreter shutdown Python restores SIG_DFL, so the process dies by the signal): the
            # result must then be complete and clean; undo and retry earlier
            raced = "\n  (signal raced with the end of the run: rc %r)" % rc
            self.assertIn(rc, (0, -sig), self.details(args, rc, err) + raced)
            self.assertEqual(fuzz.error_lines(err.decode("utf-8", "replace")), [], self.details(args, rc, err) + raced)
            if not use_stdin:
                want_fp = self._timing[op][2]
                got_fp = self.fingerprint(args[-1] if op == "inplace" else final)
                self.assertEqual(got_fp, want_fp, "result differs from an uninterrupted run" + self.details(args, rc, err) + raced)
            allowed = set(listing(final)) | {final} if final and os.path.isdir(final) else {final}
            self.assert_nothing_new(before, self.details(args, rc, err) + raced, allowed=allowed)
            reset()
            delay /= 3
        else:
            self.fail("the run always finished before the signal (%s)" % op)
        msg = self.details(args, rc, err) + "\n  signal after busy + %.3fs" % delay
        want = 130 if sig == signal.SIGINT else 143
        self.assert_no_noise(err, msg)
        self.assertEqual(rc, want, "exit status" + msg)
        text = err.decode("utf-8", "replace").lower()
        words = ("interrupt", "sigint") if sig == signal.SIGINT else ("terminat", "sigterm")
        self.assertTrue(any(w in text for w in words), "message does not say %r%s" % (words, msg))
        self.assertLessEqual(len(fuzz.error_lines(err.decode("utf-8", "replace"))), 1, msg)
        self.assertEqual(sha_file(big), self.fix["big_sha"], "source changed" + msg)
        if op == "inplace":
            got = sha_file(args[-1])
            if got != self.fix["big_sha"]:
                what = ("it holds the complete optimized result: the rename was committed, yet the tool reports "
                        "failure" if not use_stdin and got == self._timing[op][2] else "it is NOT the optimized result")
                self.fail("in-place original changed although the run reports %r (%s)%s" % (rc, what, msg))
        if final:
            complete = (not use_stdin and op in self._timing and self.fingerprint(final) == self._timing[op][2])
            what = (" (it is the complete result: the output was committed, yet the tool reports failure)" if complete
                    else " (it is NOT the complete result)")
            if os.path.isdir(final):
                self.assertEqual(os.listdir(final), [], "files under final names" + what + msg)
            else:
                self.assertFalse(os.path.exists(final), "output under the final name" + what + msg)
        allowed = (final,) if final and os.path.isdir(final) else ()
        self.assert_nothing_new(before, msg, allowed=allowed)

    def signal_right_after_rename(self, sig):
        """Send sig the moment the in-place temp file disappears (the rename is done) while the tool still runs.
        The original has then been replaced by the optimized result, so the tool must not report a failure:
        exit 0, or death by the signal during interpreter shutdown, are fine; 130/143 + "interrupted" is not."""
        big = self.fix["big"]
        src = os.path.join(self.dest, "big.vma")
        shutil.copyfile(big, src)
        p = subprocess.Popen(tool_cmd("optimize", src), cwd=self.cwd, env=_env(self.tmp), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, preexec_fn=_reset_sigint)
        seen_temp, sent = False, False
        t0 = time.monotonic()
        while p.poll() is None and time.monotonic() - t0 < 60:
            names = os.listdir(self.dest)
            if len(names) > 1:
                seen_temp = True
            elif seen_temp:
                try:
                    p.send_signal(sig)
                    sent = True
                except OSError:
                    pass
                break
        rc = p.wait(timeout=60)
        err = p.stderr.read()
        p.stderr.close()
        msg = self.details(["optimize", src], rc, err)
        self.assertTrue(seen_temp, "never saw the temporary file" + msg)
        if not sent:
            self.skipTest("the tool exited before the signal could be sent after the rename")
        self.assert_no_noise(err, msg)
        self.assertNotEqual(sha_file(src), self.fix["big_sha"], "rename seen but the file is unchanged" + msg)
        self.assertIn(rc, (0, -sig), "the optimized file was already committed, yet the tool reports a failure" + msg)
        self.assertEqual(os.listdir(self.dest), ["big.vma"], msg)

    def test_sigint_right_after_rename_in_place(self):
        self.signal_right_after_rename(signal.SIGINT)

    def test_sigterm_right_after_rename_in_place(self):
        self.signal_right_after_rename(signal.SIGTERM)

    def test_sigint_optimize(self):
        self.check("optimize", signal.SIGINT)

    def test_sigterm_optimize(self):
        self.check("optimize", signal.SIGTERM)

    def test_sigint_in_place(self):
        self.check("inplace", signal.SIGINT)

    def test_sigterm_in_place(self):
        self.check("inplace", signal.SIGTERM)

    def test_sigint_unpack(self):
        self.check("unpack", signal.SIGINT)

    def test_sigterm_unpack(self):
        self.check("unpack", signal.SIGTERM)

    def test_sigterm_pack(self):
        self.check("pack", signal.SIGTERM)

    def test_sigint_optimize_from_stdin(self):
        self.check("optimize", signal.SIGINT, use_stdin=True)

    def test_sigterm_optimize_from_stdin(self):
        self.check("optimize", signal.SIGTERM, use_stdin=True)


# ------------------------------------------------------------------------------------------------------------

class Kill(_Sandbox):
    """SIGKILL during an in-place optimize: source intact, stale temp recognizable, next run fine."""

    def test_sigkill_in_place(self):
        src = os.path.join(self.dest, "big.vma")
        shutil.copyfile(self.fix["big"], src)
        before = listing(self.dir)
        p = subprocess.Popen(tool_cmd("optimize", src), cwd=self.cwd, env=_env(self.tmp), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        t0 = time.monotonic()
        stale = []
        while p.poll() is None and time.monotonic() - t0 < 60:
            now = listing(self.dir)
            stale = [x for x, (k, size) in now.items() if x not in before and k == "f" and size > 256 * 1024]
            if stale:
                break
            time.sleep(0.002)
        running = p.poll() is None
        if running:
            p.kill()
        p.wait()
        err = p.stderr.read()
        p.stderr.close()
        msg = self.details(["optimize", src], p.returncode, err)
        self.assertTrue(running and stale, "never saw a growing temporary file before the run ended" + msg)
        self.assertEqual(sha_file(src), self.fix["big_sha"], "source changed by a killed in-place optimize" + msg)
        after = listing(self.dir)
        new = sorted(x for x in set(after) - set(before) if after[x][0] == "f")
        self.assertTrue(new, msg)
        for x in new:
            self.assertIn("vma-tool", os.path.basename(x), "stale temp file not recognizable: %s%s" % (x, msg))
        stale_state = {x: after[x] for x in new}
        # a following run succeeds and does not collide with the stale file
        p2 = subprocess.run(tool_cmd("optimize", src), cwd=self.cwd, env=_env(self.tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=120)
        msg2 = self.details(["optimize", src], p2.returncode, p2.stderr)
        self.assertEqual(p2.returncode, 0, "rerun after SIGKILL failed" + msg2)
        self.assert_no_noise(p2.stderr, msg2)
        after2 = listing(self.dir)
        for x, st in stale_state.items():
            self.assertEqual(after2.get(x), st, "stale temp file %s was reused/overwritten%s" % (x, msg2))
        extra = sorted(set(after2) - set(after))
        self.assertEqual(extra, [], "rerun left files" + msg2)
        import vmafixture as vf
        got = vf.restore(src)
        exp = vm_content(self.fix["big_vm"])
        self.assertEqual(got[0], exp[0])
        self.assertTrue(got[1] == exp[1], "content changed by optimize after the kill")


# ------------------------------------------------------------------------------------------------------------

class BrokenPipe(_Sandbox):
    """`vma-tool ... - | head -c 1M`: no traceback; non-zero exit or death by SIGPIPE."""

    def head(self, args, nbytes=MiB):
        errf = tempfile.TemporaryFile(dir=self.dir)
        p = subprocess.Popen(tool_cmd(*args), cwd=self.cwd, env=_env(self.tmp), stdout=subprocess.PIPE,
                             stderr=errf, stdin=subprocess.DEVNULL, preexec_fn=_reset_sigint)
        got = 0
        while got < nbytes:
            chunk = p.stdout.read(min(65536, nbytes - got))
            if not chunk:
                break
            got += len(chunk)
        p.stdout.close()
        try:
            rc = p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = "hang"
        errf.seek(0)
        err = errf.read()
        errf.close()
        return got, rc, err

    def check(self, args):
        before = listing(self.dir)
        got, rc, err = self.head(args)
        msg = self.details(args, rc, err)
        self.assertEqual(got, MiB, "produced less than 1 MiB before the pipe closed" + msg)
        self.assertNotEqual(rc, "hang", msg)
        self.assert_no_noise(err, msg)
        self.assertNotEqual(rc, 0, "exit 0 although the output was cut" + msg)
        if rc in (-signal.SIGPIPE, 128 + signal.SIGPIPE):
            pass
        else:
            self.assertIn(rc, (1, 3), "exit status" + msg)
            self.assertLessEqual(len(fuzz.error_lines(err.decode("utf-8", "replace"))), 1, msg)
            self.assertLessEqual(len(err.splitlines()), 1, "more than one line on stderr" + msg)
        self.assertEqual(sha_file(self.fix["big"]), self.fix["big_sha"], msg)
        self.assert_nothing_new(before, msg)

    def test_optimize_to_closed_pipe(self):
        self.check(["optimize", self.fix["big"], "-"])

    def test_cat_to_closed_pipe(self):
        self.check(["cat", self.fix["big"], "drive-scsi0"])


class StalledReader(_Sandbox):
    """`vma-tool ... - | less` and Ctrl-C while the reader does not read: the tool
    must still stop promptly (not wait to flush into the full pipe)."""

    def check(self, args):
        before = listing(self.dir)
        errf = tempfile.TemporaryFile(dir=self.dir)
        p = subprocess.Popen(tool_cmd(*args), cwd=self.cwd, env=_env(self.tmp), stdout=subprocess.PIPE,
                             stderr=errf, stdin=subprocess.DEVNULL, preexec_fn=_reset_sigint)
        try:
            time.sleep(1.5)                 # the pipe and every buffer fill up, then writes block
            self.assertIsNone(p.poll(), "finished before the test could interrupt it")
            p.send_signal(signal.SIGINT)
            try:
                rc = p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                rc = "hang"
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
        self.assert_no_noise(err, msg)
        self.assertEqual(fuzz.error_lines(err.decode("utf-8", "replace")), ["vma-tool: error: interrupted"], msg)
        self.assert_nothing_new(before, msg)

    def test_optimize_to_stalled_pipe(self):
        self.check(["optimize", self.fix["big"], "-"])

    def test_cat_to_stalled_pipe(self):
        self.check(["cat", self.fix["big"], "drive-scsi0"])

    def test_pack_to_stalled_pipe(self):
        unpacked = os.path.join(self.dir, "unpacked")
        r = subprocess.run(tool_cmd("unpack", "-q", self.fix["big"], unpacked), stderr=subprocess.PIPE)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.check(["pack", unpacked, "-"])


if __name__ == "__main__":
    unittest.main()
