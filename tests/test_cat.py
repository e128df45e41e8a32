"""Tests for `vma-tool cat SRC|- DEVICE` (one device's raw image on stdout, in order)."""
import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import vmafixture as fx  # noqa: E402
from support import run_tool, assert_clean_error, fixture_vm, fixture_archive, first_diff  # noqa: E402
import support  # noqa: E402

CLUSTER = 65536

def default_vm():
    return fixture_vm(6101)


def default_archive():
    return fixture_archive(6101)


class CatCase(support.ScratchCase):
    TMP_PREFIX = "vmatest-cat-"

    def assertImage(self, r, disk, what="image"):
        err = r.stderr.decode("utf-8", "replace")
        self.assertNotIn("Traceback", err)
        self.assertEqual(r.returncode, 0, "exit %d: %s" % (r.returncode, err))
        exp = bytes(disk)
        self.assertEqual(len(r.stdout), len(exp), "%s: wrong length" % what)
        if r.stdout != exp:
            self.fail("%s differs from the disk at byte %d" % (what, first_diff(r.stdout, exp)))


class CatTests(CatCase):

    def test_each_device_from_file(self):
        vm = default_vm()
        src = self.put("x.vma", default_archive())
        for (name, _size), disk in zip(vm.devices, vm.disks):
            self.assertImage(run_tool("cat", src, name), disk, name)

    def test_from_pipe_proxmox_order(self):
        vm = default_vm()
        self.assertImage(run_tool("cat", "-", "drive-scsi0", input=default_archive()), vm.disks[1])

    def test_from_pipe_random_order(self):
        vm = default_vm()
        data = bytes(fx.write_archive(vm, None, seed=2, order="random", per_extent="random",
                                      empty_extents=True))
        self.assertImage(run_tool("cat", "-", "drive-efidisk0", input=data), vm.disks[0])
        self.assertImage(run_tool("cat", "-", "drive-scsi1", input=data), vm.disks[2])

    def test_all_zero_cells(self):
        """A device with whole cells (56 clusters) of zeros between data: the zero cells are written
        as zeros, from a file (no index entries) and from a pipe (no cluster kept)."""
        vm = fx.make_vm(6102, devices=[("drive-scsi0", 200 * CLUSTER)], fill=0.6)
        disk = vm.disks[0]
        disk[10 * CLUSTER:180 * CLUSTER] = bytes(170 * CLUSTER)
        data = bytes(fx.write_archive(vm, None, seed=4, order="proxmox"))
        self.assertImage(run_tool("cat", self.put("x.vma", data), "drive-scsi0"), disk, "from a file")
        self.assertImage(run_tool("cat", "-", "drive-scsi0", input=data), disk, "from a pipe")

    def test_stream_interrupted_after_the_image_still_fails(self):
        """From a stream the archive after the device is still read and checked: a signal after the
        image's last byte (the device Proxmox writes first) interrupts that check, so cat fails; from a
        file everything was checked before the first byte, so the same signal cannot fail it."""
        vm = fx.make_vm(6103, devices=[("drive-scsi0", 2 * 1024 * 1024), ("drive-virtio0", 1024 * 1024)],
                        fill=0.8)
        data = bytes(fx.write_archive(vm, None, seed=5, order="proxmox"))
        fault = {"VMA_TOOL_FAULT": "data-written@1:INT"}       # the one cell of drive-virtio0
        r = run_tool("cat", "-", "drive-virtio0", input=data, env=fault)
        self.assertEqual(r.returncode, 130, r.stderr)
        self.assertIn(b"interrupted", r.stderr)
        self.assertImage(run_tool("cat", self.put("x.vma", data), "drive-virtio0", env=fault), vm.disks[1])

    def test_reverse_order_file(self):
        vm = default_vm()
        src = self.put("x.vma", fx.write_archive(vm, None, seed=3, order="reverse", per_extent=1))
        self.assertImage(run_tool("cat", src, "drive-scsi0"), vm.disks[1])

    def test_tail_garbage_and_stored_zeros(self):
        vm = fx.make_vm(6102, devices=[("drive-scsi0", 5 * CLUSTER + 512 * 3), ("drive-scsi1", 512)])
        data = bytes(fx.write_archive(vm, None, seed=4, tail_garbage=True, stored_zero_blocks=True))
        self.assertImage(run_tool("cat", "-", "drive-scsi0", input=data), vm.disks[0])
        self.assertImage(run_tool("cat", "-", "drive-scsi1", input=data), vm.disks[1])

    def test_dev_id_gaps(self):
        vm = default_vm()
        data = bytes(fx.write_archive(vm, None, seed=5, dev_ids=[7, 3, 254]))
        self.assertImage(run_tool("cat", "-", "drive-scsi1", input=data), vm.disks[2])

    def test_vmstate(self):
        vm = fx.make_vm(6103, devices=[("drive-scsi0", CLUSTER * 2), ("vmstate", CLUSTER * 3 + 4096)])
        data = bytes(fx.write_archive(vm, None, seed=6, order="sequential"))
        self.assertImage(run_tool("cat", "-", "vmstate", input=data), vm.disks[1])

    def test_quiet_same_output(self):
        vm = default_vm()
        src = self.put("x.vma", default_archive())
        r = run_tool("cat", "-q", src, "drive-scsi1")
        self.assertImage(r, vm.disks[2])
        self.assertEqual(r.stderr, b"")

    def test_unknown_device(self):
        src = self.put("x.vma", default_archive())
        r = run_tool("cat", src, "drive-scsi9")
        assert_clean_error(self, r, "drive-scsi9", code=1)
        self.assertEqual(r.stdout, b"")

    def test_unknown_device_pipe(self):
        r = run_tool("cat", "-", "disk-drive-scsi0.raw", input=default_archive())
        assert_clean_error(self, r, code=1)
        self.assertEqual(r.stdout, b"")

    def test_missing_cluster(self):
        vm = default_vm()
        data = bytes(fx.write_archive(vm, None, seed=7, omit=[(1, 20)]))
        r = run_tool("cat", "-", "drive-scsi0", input=data)
        assert_clean_error(self, r, "missing cluster", code=1)
        self.assertLess(len(r.stdout), vm.devices[1].size, "a complete-looking image was written")

    def test_missing_cluster_other_device_ok(self):
        vm = default_vm()
        data = bytes(fx.write_archive(vm, None, seed=8, omit=[(1, 20)]))
        self.assertImage(run_tool("cat", "-", "drive-scsi1", input=data), vm.disks[2])

    def test_corrupt_archive(self):
        data = bytearray(default_archive())
        lay = fx.parse_layout(bytes(data))
        data[lay.extents[-1].offset + 25] ^= 0x10
        r = run_tool("cat", "-", "drive-scsi0", input=bytes(data))
        assert_clean_error(self, r, "extent checksum", code=1)

    def test_truncated_archive(self):
        r = run_tool("cat", "-", "drive-efidisk0", input=default_archive()[:-3000])
        assert_clean_error(self, r, "truncated", code=1)

    def test_not_vma(self):
        r = run_tool("cat", "-", "drive-scsi0", input=b"\0" * 20000)
        assert_clean_error(self, r, "not a vma archive", code=1)

    def test_missing_file(self):
        r = run_tool("cat", os.path.join(self.tmp, "nope.vma"), "drive-scsi0")
        assert_clean_error(self, r, code=3)

    def test_closed_stdout(self):
        # a reader that stops early (like `| head -c`) must not produce a traceback
        src = self.put("x.vma", default_archive())
        p = subprocess.Popen(support.tool_argv() + ["cat", src, "drive-scsi0"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        head = p.stdout.read(1000)
        p.stdout.close()
        err = p.stderr.read().decode("utf-8", "replace")
        p.wait(timeout=60)
        p.stderr.close()
        self.assertEqual(head, bytes(default_vm().disks[1][:1000]))
        self.assertNotIn("Traceback", err)
        self.assertNotIn("Exception ignored", err)

    def test_to_file_matches(self):
        vm = default_vm()
        src = self.put("x.vma", default_archive())
        outp = os.path.join(self.tmp, "img.raw")
        with open(outp, "wb") as f:
            r = subprocess.run(support.tool_argv() + ["cat", src, "drive-efidisk0"], stdout=f,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(outp, "rb") as f:
            self.assertTrue(f.read() == bytes(vm.disks[0]))


if __name__ == "__main__":
    unittest.main()
