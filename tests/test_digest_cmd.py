"""Content digests where the data is read: unpack and cat check what they write, info says
whether an archive carries digests, and `vma-tool digest` computes the same per-device digest
for raw images and block devices (FORMAT.md, "Content digests").

Archives with digests are written by the fixture with the blob added as their last config
(vmafixture.digests_blob, written from the definition); expected digests come from
vmafixture.content_digest, never from vma-tool.  (verify's checks are in test_verify.py.)
"""

import hashlib
import json
import os
import shutil
import struct
import subprocess
import time
import unittest

import support
import vmafixture as vf
from support import run_tool, assert_clean_error

CLUSTER, BLOCK = vf.CLUSTER, 4096
DEVICES = [
    ("drive-efidisk0", 540672),
    ("drive-scsi0", 20 * CLUSTER + 8192 + 512),         # ends inside a block
    ("drive-scsi1", 6 * CLUSTER + 8192),
]


def digest_vm():
    return support.cached(("digest-cmd-vm",), lambda: vf.make_vm(107, devices=DEVICES, fill=0.6))


def with_digests(vm, blob=None):
    """A copy of vm whose configs end with a vma-tool.digests blob (the right one by default)."""
    copy = vm.copy()
    copy.configs = copy.configs + [("vma-tool.digests", vf.digests_blob(vm) if blob is None else blob)]
    return copy


def digest_archive(order="proxmox", seed=3):
    """A Proxmox-ordered archive of digest_vm() carrying its digests."""
    return support.cached(("digest-cmd-archive", order, seed),
                          lambda: bytes(vf.write_archive(with_digests(digest_vm()), None, seed=seed,
                                                         order=order)))


def flip_data_byte(data, dev_id):
    """Flip one byte inside the first full stored cluster of dev_id; returns a bytearray."""
    data = bytearray(data)
    pos = next(pos for _, _, mask, dev, _, pos in vf.parse_layout(bytes(data)).entries()
               if dev == dev_id and mask == 0xFFFF)
    data[pos + 1000] ^= 0x40
    return data


def zero_digest(size):
    """The digest of an all-zero device: no leaves, sum 0 (the definition)."""
    return hashlib.sha256(b"vma-tool content" + struct.pack(">Q", size) + bytes(32)).hexdigest()


def write_sparse(path, data):
    """Write data leaving every all-zero 4 KiB block a hole (holes inside clusters)."""
    with open(path, "wb") as f:
        for at in range(0, len(data), BLOCK):
            block = data[at:at + BLOCK]
            if block.count(0) != len(block):
                f.seek(at)
                f.write(block)
        f.truncate(len(data))


class DigestCase(support.ScratchCase):
    def archive(self, data=None, name="x.vma"):
        return self.put(name, digest_archive() if data is None else bytes(data))

    def expected(self, index):
        dev = digest_vm().devices[index]
        return vf.content_digest(digest_vm().disk_bytes(index), dev.size)[0]


class UnpackCatTest(DigestCase):
    def test_unpack_checks_and_writes_no_digest_file(self):
        out = self.path("out")
        self.assertOk(run_tool("unpack", self.archive(), out))
        vm = digest_vm()
        self.assertEqual(sorted(os.listdir(out)),
                         sorted([n for n, _ in vm.configs] + ["disk-%s.raw" % d.name for d in vm.devices]))
        r = run_tool("config", "-c", "vma-tool.digests", self.path("x.vma"))
        self.assertOk(r)
        self.assertEqual(r.stdout, vf.digests_blob(vm))

    def test_unpack_of_a_flipped_byte_leaves_nothing(self):
        src = self.archive(flip_data_byte(digest_archive(), 2))
        before = os.listdir(self.tmp)
        for pipe in (False, True):
            with self.subTest(pipe=pipe):
                out = self.path("out")
                if pipe:
                    with open(src, "rb") as f:
                        r = run_tool("unpack", "-", out, stdin=f)
                else:
                    r = run_tool("unpack", src, out)
                assert_clean_error(self, r, "device 2 (drive-scsi0)", "does not match", code=1)
                self.assertFalse(os.path.lexists(out))
                self.assertEqual(sorted(os.listdir(self.tmp)), sorted(before))

    def test_unpack_of_one_device_checks_only_it(self):
        src = self.archive(flip_data_byte(digest_archive(), 2))
        self.assertOk(run_tool("unpack", "-d", "drive-scsi1", src, self.path("one")))
        assert_clean_error(self, run_tool("unpack", "-d", "drive-scsi0", src, self.path("two")),
                           "drive-scsi0", code=1)
        self.assertFalse(os.path.lexists(self.path("two")))

    def test_unpack_allow_missing_does_not_check_an_incomplete_device(self):
        vm = with_digests(digest_vm())
        src = self.archive(vf.write_archive(vm, None, seed=3, omit=[(1, 4)]))
        r = run_tool("unpack", "--allow-missing", src, self.path("out"))
        self.assertOk(r)
        self.assertIn(b"missing clusters left as zeros", r.stderr)
        data = flip_data_byte(vf.write_archive(vm, None, seed=3, omit=[(1, 4)]), 3)
        assert_clean_error(self, run_tool("unpack", "--allow-missing", self.archive(data), self.path("two")),
                           "device 3 (drive-scsi1)", code=1)

    def test_cat_fails_after_writing_a_flipped_byte(self):
        src = self.archive(flip_data_byte(digest_archive(), 2))
        size = DEVICES[1][1]
        for pipe in (False, True):
            with self.subTest(pipe=pipe):
                with open(src, "rb") as f:
                    r = run_tool("cat", "-" if pipe else src, "drive-scsi0", stdin=f if pipe else None)
                assert_clean_error(self, r, "device 2 (drive-scsi0)", "does not match", code=1)
                self.assertEqual(len(r.stdout), size)
                r = run_tool("cat", src, "drive-scsi1")
                self.assertOk(r)
                self.assertEqual(r.stdout, digest_vm().disk_bytes(2))

    def test_cat_of_a_good_archive(self):
        src = self.archive(digest_archive(order="random"))
        for pipe in (False, True):
            with self.subTest(pipe=pipe), open(src, "rb") as f:
                r = run_tool("cat", "-" if pipe else src, "drive-scsi0", stdin=f if pipe else None)
                self.assertOk(r)
                self.assertEqual(r.stdout, digest_vm().disk_bytes(1))


class InfoTest(DigestCase):
    def info(self, data, pipe=False):
        if pipe:                        # a real pipe: a redirected file would be seekable
            r = run_tool("info", "--json", "-", input=bytes(data))
        else:
            r = run_tool("info", "--json", self.archive(data))
        return r, json.loads(r.stdout)

    def test_info_says_whether_digests_are_present(self):
        r, report = self.info(digest_archive())
        self.assertEqual((r.returncode, report["digests"]), (0, "present"))
        r, report = self.info(vf.write_archive(digest_vm(), None, seed=3))
        self.assertEqual((r.returncode, report["digests"]), (0, "absent"))
        r = run_tool("info", self.archive())
        self.assertOk(r)
        self.assertIn(b"digests:     present", r.stdout)

    def test_info_checks_the_digests_when_it_reads_the_data(self):
        r, report = self.info(digest_archive(), pipe=True)
        self.assertEqual((r.returncode, report["digests"]), (0, "checked"))
        r, report = self.info(vf.canonical_archive(with_digests(digest_vm())))
        self.assertEqual((r.returncode, report["digests"]), (0, "checked"))
        r, report = self.info(flip_data_byte(digest_archive(), 3), pipe=True)
        self.assertEqual((r.returncode, report["digests"], report["result"]), (1, "mismatch", "invalid"))
        assert_clean_error(self, r, "device 3 (drive-scsi1)", code=1)


class DigestCommandTest(DigestCase):
    def digest(self, *args, **kw):
        return run_tool("digest", *args, **kw)

    def unpacked(self):
        out = self.path("out")
        if not os.path.isdir(out):
            self.assertOk(run_tool("unpack", self.archive(), out))
        return out

    def test_images_give_the_archive_digests(self):
        out = self.unpacked()
        paths = [os.path.join(out, "disk-%s.raw" % name) for name, _ in DEVICES]
        r = self.digest(*paths)
        self.assertOk(r)
        self.assertEqual(r.stdout.decode().splitlines(),
                         ["%s  %d  %s" % (self.expected(i), size, path)
                          for i, ((_, size), path) in enumerate(zip(DEVICES, paths))])

    def test_sparse_dense_and_piped_images_agree(self):
        disk = digest_vm().disk_bytes(1)
        self.put("dense.raw", disk)
        write_sparse(self.path("sparse.raw"), disk)
        want = "%s  %d  " % (self.expected(1), len(disk))
        for name in ("dense.raw", "sparse.raw"):
            r = self.digest(self.path(name))
            self.assertOk(r)
            self.assertEqual(r.stdout.decode(), want + self.path(name) + "\n")
        r = self.digest("-", input=disk)
        self.assertOk(r)
        self.assertEqual(r.stdout.decode(), want + "-\n")

    def test_size_digests_a_prefix(self):
        disk = digest_vm().disk_bytes(1)
        self.put("bigger.raw", disk + b"\x55" * 5000 + bytes(CLUSTER))      # a volume rounded up
        for size in ("%d" % len(disk), "%gK" % (len(disk) / 1024)):
            with self.subTest(size=size):
                r = self.digest("--size", size, self.path("bigger.raw"))
                self.assertOk(r)
                self.assertTrue(r.stdout.decode().startswith(self.expected(1) + "  %d  " % len(disk)))
        with open(self.path("bigger.raw"), "rb") as f:
            r = self.digest("--size", str(len(disk)), "-", stdin=f)
        self.assertTrue(r.stdout.decode().startswith(self.expected(1)))
        r = self.digest(self.path("bigger.raw"))
        self.assertNotIn(self.expected(1), r.stdout.decode())

    def test_like_matches(self):
        out = self.unpacked()
        src = self.path("x.vma")
        r = self.digest("--like", src, *[os.path.join(out, "disk-%s.raw" % n) for n, _ in DEVICES])
        self.assertOk(r)
        self.assertIn("disk-drive-scsi0.raw: matches device 2 (drive-scsi0) of %s" % src, r.stdout.decode())
        self.assertEqual(len(r.stdout.splitlines()), 3)
        # a restored volume: another name, rounded up past the device size
        with open(os.path.join(out, "disk-drive-scsi1.raw"), "rb") as f:
            self.put("vm-100-disk-1", f.read() + bytes(3 * CLUSTER) + b"\x01")
        r = self.digest("--like", src, "--device", "drive-scsi1", "--json", self.path("vm-100-disk-1"))
        self.assertOk(r)
        result = json.loads(r.stdout)
        self.assertEqual((result["result"], result["matches"], result["device"], result["sha256"]),
                         ("ok", True, {"id": 3, "name": "drive-scsi1"}, self.expected(2)))

    def test_like_mismatch(self):
        out = self.unpacked()
        image = os.path.join(out, "disk-drive-scsi0.raw")
        with open(image, "r+b") as f:
            f.seek(5 * CLUSTER + 77)
            byte = f.read(1)
            f.seek(5 * CLUSTER + 77)
            f.write(bytes([byte[0] ^ 1]))
        r = self.digest("--like", self.archive(), image)
        assert_clean_error(self, r, "does not match device 2 (drive-scsi0)",
                           "bytes 0-%d" % (DEVICES[1][1] - 1), code=1)
        r = self.digest("--like", self.path("x.vma"), "--json", image)
        result = json.loads(r.stdout)
        self.assertEqual((r.returncode, result["result"], result["matches"], result["exit_status"]),
                         (1, "invalid", False, 1))
        r = self.digest("--like", self.path("x.vma"), "--device", "drive-scsi1", image)
        assert_clean_error(self, r, code=1)     # shorter than drive-scsi1? no: larger, and other data

    def test_like_archive_without_digests(self):
        src = self.put("plain.vma", vf.write_archive(digest_vm(), None, seed=3))
        self.put("img", b"\1" * 4096)
        assert_clean_error(self, self.digest("--like", src, self.path("img")), "no content digests", code=1)

    def test_like_compressed_archive(self):
        if not shutil.which("zstd"):
            self.skipTest("zstd not installed")
        out = self.unpacked()
        subprocess.run(["zstd", "-q", self.path("x.vma"), "-o", self.path("x.vma.zst")], check=True)
        r = self.digest("--like", self.path("x.vma.zst"), os.path.join(out, "disk-drive-efidisk0.raw"))
        self.assertOk(r)
        self.assertIn(b"matches device 1 (drive-efidisk0)", r.stdout)

    def test_like_needs_to_know_the_device(self):
        self.put("image", digest_vm().disk_bytes(1))
        assert_clean_error(self, self.digest("--like", self.archive(), self.path("image")), "--device", code=2)
        assert_clean_error(self, self.digest("--like", self.archive(), "--device", "nope", self.path("image")),
                           "no device named", code=1)
        one = vf.make_vm(5, devices=[("drive-virtio0", 3 * CLUSTER)])
        src = self.put("one.vma", vf.write_archive(with_digests(one), None, seed=1))
        self.put("any-name", one.disk_bytes(0))
        self.assertOk(self.digest("--like", src, self.path("any-name")))

    def test_errors_are_one_line(self):
        self.put("small", b"\1" * 1000)
        assert_clean_error(self, self.digest(self.path("missing")), "missing", code=3)
        assert_clean_error(self, self.digest(self.tmp), "directory", code=3)
        assert_clean_error(self, self.digest("--size", "1M", self.path("small")), "shorter", code=3)
        assert_clean_error(self, self.digest("--size", "1M", "-", input=b"\1" * 1000), "ended", code=3)
        assert_clean_error(self, self.digest("--size", "1x", self.path("small")), code=2)
        assert_clean_error(self, self.digest("--device", "drive-scsi0", self.path("small")), "--like", code=2)
        assert_clean_error(self, self.digest("--size", "1K", "--like", self.archive(), self.path("small")),
                           code=2)
        # one bad input among good ones: the others are still digested
        r = self.digest(self.path("missing"), self.path("small"))
        self.assertEqual(r.returncode, 3)
        self.assertIn(self.path("small").encode(), r.stdout)

    def test_empty_and_sparse_terabyte(self):
        self.put("empty", b"")
        r = self.digest(self.path("empty"))
        self.assertOk(r)
        self.assertEqual(r.stdout.decode().split()[:2], [zero_digest(0), "0"])
        with open(self.path("tib"), "wb") as f:
            f.truncate(1 << 40)
            f.seek((1 << 40) - CLUSTER)
            f.write(b"\1" * 100)
        disk_tail = b"\1" * 100 + bytes(CLUSTER - 100)
        cluster = (1 << 40) // CLUSTER - 1
        leaf = int.from_bytes(hashlib.sha256(struct.pack(">Q", cluster) + disk_tail).digest(), "big")
        want = hashlib.sha256(b"vma-tool content" + struct.pack(">Q", 1 << 40) + leaf.to_bytes(32, "big"))
        started = time.monotonic()
        r = self.digest(self.path("tib"))
        self.assertLess(time.monotonic() - started, 30)
        self.assertOk(r)
        self.assertEqual(r.stdout.decode().split()[:2], [want.hexdigest(), str(1 << 40)])
        r = self.digest("--size", "1T", self.path("tib"))
        self.assertEqual(r.stdout.decode().split()[0], want.hexdigest())
        r = self.digest("--size", "512G", self.path("tib"))
        self.assertEqual(r.stdout.decode().split()[0], zero_digest(1 << 39))

    def test_block_device(self):
        if os.geteuid() != 0 or not shutil.which("losetup"):
            self.skipTest("needs root and losetup")
        disk = digest_vm().disk_bytes(2)        # 6 clusters + 8192 bytes: a multiple of 512
        self.put("loop.img", disk)
        made = subprocess.run(["losetup", "-f", "--show", self.path("loop.img")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if made.returncode != 0:
            self.skipTest("no loop device: %s" % made.stderr.decode().strip())
        loop = made.stdout.decode().strip()
        try:
            r = self.digest(loop)
            self.assertOk(r)
            self.assertEqual(r.stdout.decode(), "%s  %d  %s\n" % (self.expected(2), len(disk), loop))
            r = self.digest("--like", self.archive(), "--device", "drive-scsi1", loop)
            self.assertOk(r)
        finally:
            subprocess.run(["losetup", "-d", loop])


if __name__ == "__main__":
    unittest.main()
