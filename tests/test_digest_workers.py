"""Content digests hashed by worker processes (FORMAT.md "Content digests"; vma-tool's
DigestWorkers): past the first 16 MiB of stored data the leaves are hashed by forked workers, one
a core up to four, or VMA_TOOL_DIGEST_WORKERS of them (0: all in the process).  The digests, and
so every output, must not depend on how many there are; a worker that dies fails the run cleanly
with nothing installed; no worker outlives its run."""

import os
import shutil
import time
import unittest

import support
import vmafixture as vf

SEED = 1717
ZSTD = shutil.which("zstd")
DIGESTS = "vma-tool.digests"
# About 30 MiB of stored data (the first 16 MiB are hashed in the process), with partly stored
# clusters, a device whose size is not a multiple of 64 KiB and a zero-filled one.
DEVICES = [("drive-efidisk0", 540672), ("drive-scsi0", 40 << 20), ("drive-scsi1", (12 << 20) + 12288),
           ("drive-virtio2", 4 << 20)]


def big_vm():
    def make():
        vm = vf.make_vm(SEED, devices=DEVICES[:3], fill=0.6)
        zero = bytearray(DEVICES[3][1])
        return vf.VM(vm.ctime, vf.default_configs(SEED, DEVICES), DEVICES, list(vm.disks) + [zero])
    return support.cached(("digest-workers-vm", SEED), make)


def big_archive():
    return support.cached(("digest-workers-archive", SEED),
                          lambda: bytes(vf.write_archive(big_vm(), None, seed=SEED)))


def workers(count):
    return {"VMA_TOOL_DIGEST_WORKERS": str(count)}


def processes_naming(text):
    """Pids of live processes whose command line holds text (our workers are forks: they carry
    their parent's)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as f:
                cmdline = f.read()
            with open("/proc/%s/stat" % name, "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if text.encode() in cmdline and state != b"Z":
            found.append(int(name))
    return found


class DigestWorkers(support.ScratchCase):
    TMP_PREFIX = "vmatest-digest-workers-"

    def test_every_worker_count_gives_the_same_outputs(self):
        src = self.put("a.vma", big_archive())
        want = vf.digests_blob(big_vm())
        udir = self.tmp_path("unpacked")
        self.assertOk(support.run_tool("unpack", "-q", src, udir, env=workers(0)))
        outputs = {}
        for count in (0, 1, 2, 3):
            with self.subTest(workers=count):
                names = ["o%d.vma" % count] + (["o%d.vma.zst" % count] if ZSTD else [])
                for name in names:
                    self.assertOk(support.run_tool("optimize", "-q", src, self.tmp_path(name), env=workers(count)))
                r = support.run_tool("config", "-c", DIGESTS, self.tmp_path(names[0]))
                self.assertOk(r)
                self.assertEqual(r.stdout, want)
                names.append("p%d.vma" % count)
                self.assertOk(support.run_tool("pack", "-q", "--ctime", "1700000000", udir, self.tmp_path(names[-1]),
                                               env=workers(count)))
                for name in names:
                    self.assertOk(support.run_tool("verify", self.tmp_path(name), env=workers(count)))
                outputs[count] = [support.sha256_file(self.tmp_path(name)) for name in names]
        for count in (1, 2, 3):
            self.assertEqual(outputs[count], outputs[0], "output differs with %d workers" % count)

    def test_workers_hash_stored_zero_blocks_where_they_lie(self):
        """A worker hashes a job in its shared slot (an mmap), whose zero test differs from a
        bytearray's: zero blocks stored by the input, zero clusters among them, must count as
        zero there too."""
        src = self.put("z.vma", bytes(vf.write_archive(big_vm(), None, seed=SEED, stored_zero_blocks=True)))
        want = vf.digests_blob(big_vm())
        for count in (0, 2):
            with self.subTest(workers=count):
                out = self.tmp_path("z%d.vma" % count)
                self.assertOk(support.run_tool("optimize", "-q", src, out, env=workers(count)))
                r = support.run_tool("config", "-c", DIGESTS, out)
                self.assertOk(r)
                self.assertEqual(r.stdout, want)

    def test_verify_finds_damage_with_workers(self):
        data = bytearray(big_archive())
        good = self.put("good.vma", data)
        self.assertOk(support.run_tool("optimize", "-q", good, self.tmp_path("o.vma"), env=workers(0)))
        damaged = bytearray(self.read(self.tmp_path("o.vma")))
        damaged[-5000] ^= 0x40          # in the last extent's data: hashed by a worker
        bad = self.put("bad.vma", bytes(damaged))
        r = support.run_tool("verify", bad, env=workers(2))
        support.assert_clean_error(self, r, "does not match its digest", code=1)

    def test_a_worker_that_dies_fails_the_run_and_installs_nothing(self):
        src = self.put("a.vma", big_archive())
        env = dict(workers(2), VMA_TOOL_FAULT="digest-worker:KILL")
        for name in ["b.vma"] + (["c.vma.zst"] if ZSTD else []):
            with self.subTest(output=name):
                r = support.run_tool("optimize", "-q", src, self.tmp_path(name), env=env)
                support.assert_clean_error(self, r, "content digests", code=3)
                self.assertFalse(os.path.exists(self.tmp_path(name)))
        before = self.read(src)
        r = support.run_tool("optimize", "-q", "--in-place", src, env=env)
        support.assert_clean_error(self, r, "content digests", code=3)
        self.assertEqual(self.read(src), before)
        self.assertEqual(sorted(os.listdir(self.tmp)), ["a.vma"], "a temporary was left behind")
        self.assertOk(support.run_tool("optimize", "-q", src, self.tmp_path("d.vma"), env=workers(0)))
        r = support.run_tool("verify", self.tmp_path("d.vma"), env=env)
        support.assert_clean_error(self, r, "content digests", code=3)

    def test_nothing_hashed_where_digests_are_neither_written_nor_checked(self):
        """To standard output (no blob) from an input without digests the digests would serve
        nothing: no worker starts (the fault would kill it), the run succeeds.  With digests in
        the input they are checked, so workers run."""
        src = self.put("a.vma", big_archive())
        env = dict(workers(2), VMA_TOOL_FAULT="digest-worker:KILL")
        r = support.run_tool("optimize", "-q", src, "-", env=env)
        self.assertOk(r)
        self.assertOk(support.run_tool("verify", "-", input=r.stdout))
        self.assertOk(support.run_tool("optimize", "-q", src, self.tmp_path("d.vma"), env=workers(0)))
        r = support.run_tool("optimize", "-q", self.tmp_path("d.vma"), "-", env=env)
        support.assert_clean_error(self, r, "content digests", code=3)

    def test_no_worker_outlives_an_interrupted_run(self):
        src = self.put("a.vma", big_archive())
        for fault in ("data-written@12:INT", "data-written@12:TERM", "data-written@12:KILL"):
            with self.subTest(fault=fault):
                r = support.run_tool("optimize", "-q", src, self.tmp_path("b.vma"),
                                     env=dict(workers(2), VMA_TOOL_FAULT=fault))
                self.assertNotEqual(r.returncode, 0)
                deadline = time.monotonic() + 5
                while processes_naming(self.tmp) and time.monotonic() < deadline:
                    time.sleep(0.05)
                self.assertEqual(processes_naming(self.tmp), [], "a worker outlived its run")
                if not fault.endswith("KILL"):
                    self.assertEqual(sorted(os.listdir(self.tmp)), ["a.vma"])


if __name__ == "__main__":
    unittest.main()
