"""Tests for `vma-tool unpack SRC|- DIR`.

Archives are built with the independent fixture writer (tests/vmafixture.py); the expected output is the
fixture VM's own content, never anything computed by vma-tool.
"""
import os
import random
import re
import resource
import signal
import stat
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import vmafixture as fx  # noqa: E402
from support import TOOL, run_tool, assert_clean_error, fixture_vm, fixture_archive, first_diff  # noqa: E402
import support  # noqa: E402

CLUSTER = 65536
BLOCK = 4096
GIB = 1 << 30


def default_vm():
    """Default small VM: efidisk0 540672 bytes, scsi0 ~3 MiB odd size, scsi1 ~1 MiB."""
    return fixture_vm(4101)


def default_archive():
    return fixture_archive(4101)


def small_conf(devices):
    lines = [b"boot: order=scsi0", b"cores: 1", b"memory: 512", b"name: hostile"]
    for name, _size in devices:
        key = name[6:] if name.startswith("drive-") else name
        lines.append(("#qmdump#map:%s:%s:local-lvm:raw:" % (key, name)).encode("utf-8", "surrogateescape"))
    return b"\n".join(lines) + b"\n"


def output_name(dev_name):
    return "vmstate.bin" if dev_name == "vmstate" else "disk-%s.raw" % dev_name


def expected_files(vm, devices=None, configs=True, zero_clusters=None):
    """name -> bytes that unpack must produce for vm. zero_clusters: {dev_index: [cluster, ...]} zeroed."""
    out = {}
    if configs:
        for name, data in vm.configs:
            out[name] = bytes(data)
    for idx, ((name, size), disk) in enumerate(zip(vm.devices, vm.disks)):
        if devices is not None and name not in devices:
            continue
        data = bytearray(disk)
        assert len(data) == size
        for c in (zero_clusters or {}).get(idx, ()):
            start = c * CLUSTER
            end = min(start + CLUSTER, size)
            data[start:end] = bytes(end - start)
        out[output_name(name)] = bytes(data)
    return out


_RANGE = re.compile(r"(?<![\w-])(\d+)\s*(?:-|\.\.|to)\s*(\d+)(?!\w)")
_NUMBER = re.compile(r"(?<![\w-])(\d+)(?!\w)")


def mentions_cluster(line, cluster):
    """line names cluster as a number or inside a range like 5-9 / 5..9 / 5 to 9."""
    for m in _RANGE.finditer(line):
        if int(m.group(1)) <= cluster <= int(m.group(2)):
            return True
    return any(int(m.group(1)) == cluster for m in _NUMBER.finditer(line))


def nonzero_blocks(data):
    z = bytes(BLOCK)
    n = 0
    for off in range(0, len(data), BLOCK):
        blk = data[off:off + BLOCK]
        if blk != z[:len(blk)]:
            n += 1
    return n


class UnpackCase(support.ScratchCase):
    maxDiff = 2000
    TMP_PREFIX = "vmatest-unpack-"

    def archive_file(self, data=None, name="x.vma"):
        return self.put(name, default_archive() if data is None else data)

    def unpack(self, *args, **kw):
        return run_tool("unpack", *args, **kw)

    def assertTree(self, d, expected):
        """d contains exactly the files of expected (regular files, exact content and size)."""
        self.assertTrue(os.path.isdir(d), "%s is not a directory" % d)
        self.assertEqual(sorted(os.listdir(d)), sorted(expected), "unexpected set of files in output dir")
        for name, data in expected.items():
            p = os.path.join(d, name)
            st = os.lstat(p)
            self.assertTrue(stat.S_ISREG(st.st_mode), "%s is not a regular file" % name)
            self.assertEqual(st.st_size, len(data), "%s has wrong size" % name)
            with open(p, "rb") as f:
                got = f.read()
            if got != data:
                self.fail("%s differs from the original at byte offset %d" % (name, first_diff(got, data)))

    def assertNothingWritten(self, d, before=None):
        """After a failure: DIR is absent or empty (no final files, no temp files) and nothing appeared
        next to DIR (before = listing of self.tmp taken before the run, DIR excluded)."""
        if os.path.lexists(d):
            self.assertTrue(os.path.isdir(d))
            self.assertEqual(sorted(os.listdir(d)), [], "files left in the output dir after a failure")
        if before is not None:
            after = set(os.listdir(self.tmp)) - {os.path.basename(d)}
            self.assertEqual(sorted(after), sorted(before), "files created outside the output dir")

    def listing(self, exclude=()):
        return sorted(set(os.listdir(self.tmp)) - set(exclude))


# --------------------------------------------------------------------------------------------------
class UnpackBasicTests(UnpackCase):

    def test_layout_and_content(self):
        vm = default_vm()
        src = self.archive_file()
        d = self.path("out")
        r = self.unpack(src, d)
        self.assertOk(r)
        self.assertTree(d, expected_files(vm))

    def test_file_names(self):
        # The default VM must give exactly these names (Proxmox `vma extract` layout).
        src = self.archive_file()
        d = self.path("out")
        self.assertOk(self.unpack(src, d))
        self.assertEqual(sorted(os.listdir(d)),
                         sorted(["qemu-server.conf", "qemu-server.fw", "disk-drive-efidisk0.raw",
                                 "disk-drive-scsi0.raw", "disk-drive-scsi1.raw"]))
        self.assertEqual(os.path.getsize(os.path.join(d, "disk-drive-efidisk0.raw")), 540672)

    def test_from_pipe(self):
        vm = default_vm()
        d = self.path("out")
        r = self.unpack("-", d, input=default_archive())
        self.assertOk(r)
        self.assertTree(d, expected_files(vm))

    def test_existing_empty_dir(self):
        d = self.path("out")
        os.mkdir(d)
        self.assertOk(self.unpack(self.archive_file(), d))
        self.assertTree(d, expected_files(default_vm()))

    def test_quiet(self):
        d = self.path("out")
        r = self.unpack("-q", self.archive_file(), d)
        self.assertOk(r)
        self.assertEqual(r.stdout, b"")
        self.assertEqual(r.stderr, b"")
        self.assertTree(d, expected_files(default_vm()))

    def _roundtrip(self, vm, seed, pipe=False, **kw):
        data = bytes(fx.write_archive(vm, None, seed=seed, **kw))
        d = self.path("out")
        if pipe:
            r = self.unpack("-", d, input=data)
        else:
            r = self.unpack(self.archive_file(data), d)
        self.assertOk(r)
        self.assertTree(d, expected_files(vm))

    def test_random_order_from_pipe(self):
        self._roundtrip(default_vm(), 5, pipe=True, order="random", per_extent="random")

    def test_reverse_order(self):
        self._roundtrip(default_vm(), 6, order="reverse", per_extent=1)

    def test_sequential_59_per_extent(self):
        self._roundtrip(default_vm(), 7, order="sequential", per_extent=59)

    def test_empty_extents_and_stored_zero_blocks(self):
        self._roundtrip(default_vm(), 8, pipe=True, empty_extents=True, stored_zero_blocks=True)

    def test_tail_garbage_is_cut(self):
        # bytes past the device end inside the last 4K block must not leak into the image
        vm = fx.make_vm(4108, devices=[("drive-scsi0", 3 * CLUSTER + 512 * 7), ("drive-scsi1", 540672)])
        self._roundtrip(vm, 9, tail_garbage=True)

    def test_odd_sizes(self):
        devs = [("drive-efidisk0", 540672), ("drive-ide0", 512), ("drive-sata0", 512 * 4097),
                ("drive-scsi0", CLUSTER * 5), ("drive-virtio0", CLUSTER * 3 + 512)]
        vm = fx.make_vm(4110, devices=devs)
        self._roundtrip(vm, 10, pipe=True)

    def test_dev_id_gaps(self):
        vm = default_vm()
        self._roundtrip(vm, 11, dev_ids=[3, 9, 200])

    def test_vmstate(self):
        vm = fx.make_vm(4112, devices=[("drive-scsi0", CLUSTER * 4), ("vmstate", CLUSTER * 3 + 4096)])
        self._roundtrip(vm, 12, order="sequential")
        self.assertTrue(os.path.isfile(self.path("out", "vmstate.bin")))

    def test_diskless(self):
        vm = fx.make_vm(4113, devices=[])
        self._roundtrip(vm, 13)
        self.assertEqual(sorted(os.listdir(self.path("out"))), sorted(n for n, _ in vm.configs))

    def test_other_config_names(self):
        # names that are unusual but legal are written as-is
        devs = [("drive-scsi0", CLUSTER * 2)]
        configs = [("qemu-server.conf", small_conf(devs)), ("qemu-server.fw", b"[OPTIONS]\nenable: 1\n"),
                   ("my notes.txt", b"hello\x00world"), ("..hidden", b""), (".x", b"dot")]
        vm = fx.make_vm(4114, devices=devs, configs=configs)
        self._roundtrip(vm, 14)


# --------------------------------------------------------------------------------------------------
class UnpackSelectionTests(UnpackCase):

    def disk_files(self, d):
        return sorted(n for n in os.listdir(d) if n.startswith("disk-") or n == "vmstate.bin")

    def test_one_device(self):
        vm = default_vm()
        d = self.path("out")
        self.assertOk(self.unpack("-d", "drive-scsi1", self.archive_file(), d))
        self.assertEqual(self.disk_files(d), ["disk-drive-scsi1.raw"])
        exp = expected_files(vm, devices=["drive-scsi1"])
        with open(os.path.join(d, "disk-drive-scsi1.raw"), "rb") as f:
            self.assertTrue(f.read() == exp["disk-drive-scsi1.raw"])

    def test_repeated_option(self):
        vm = default_vm()
        d = self.path("out")
        self.assertOk(self.unpack("--device", "drive-efidisk0", "-d", "drive-scsi1", "-", d,
                                  input=default_archive()))
        self.assertEqual(self.disk_files(d), ["disk-drive-efidisk0.raw", "disk-drive-scsi1.raw"])
        exp = expected_files(vm, devices=["drive-efidisk0", "drive-scsi1"])
        for n in self.disk_files(d):
            with open(os.path.join(d, n), "rb") as f:
                self.assertTrue(f.read() == exp[n], n)

    def test_comma_list(self):
        d = self.path("out")
        self.assertOk(self.unpack("-d", "drive-scsi0,drive-scsi1", self.archive_file(), d))
        self.assertEqual(self.disk_files(d), ["disk-drive-scsi0.raw", "disk-drive-scsi1.raw"])
        exp = expected_files(default_vm())
        for n in self.disk_files(d):
            with open(os.path.join(d, n), "rb") as f:
                self.assertTrue(f.read() == exp[n], n)

    def test_unknown_device(self):
        d = self.path("out")
        src = self.archive_file()
        before = self.listing()
        r = self.unpack("-d", "drive-scsi7", src, d)
        assert_clean_error(self, r, "drive-scsi7", code=1)
        self.assertNothingWritten(d, before)

    def test_unknown_device_in_list(self):
        d = self.path("out")
        r = self.unpack("-d", "drive-scsi0,drive-nope", "-", d, input=default_archive())
        assert_clean_error(self, r, "drive-nope", code=1)
        self.assertNothingWritten(d)

    def test_config_only(self):
        vm = default_vm()
        d = self.path("out")
        self.assertOk(self.unpack("--config-only", self.archive_file(), d))
        self.assertTree(d, dict((n, bytes(b)) for n, b in vm.configs))

    def test_config_only_from_pipe(self):
        vm = default_vm()
        d = self.path("out")
        self.assertOk(self.unpack("--config-only", "-", d, input=default_archive()))
        self.assertTree(d, dict((n, bytes(b)) for n, b in vm.configs))

    def test_selected_device_missing_cluster_elsewhere(self):
        # missing clusters of a device that was not asked for do not matter
        vm = default_vm()
        data = bytes(fx.write_archive(vm, None, seed=21, omit=[(1, 3)]))
        d = self.path("out")
        self.assertOk(self.unpack("-d", "drive-scsi1", self.archive_file(data), d))
        exp = expected_files(vm, devices=["drive-scsi1"])
        with open(os.path.join(d, "disk-drive-scsi1.raw"), "rb") as f:
            self.assertTrue(f.read() == exp["disk-drive-scsi1.raw"])

    def test_selected_device_missing_cluster(self):
        vm = default_vm()
        data = bytes(fx.write_archive(vm, None, seed=22, omit=[(2, 4)]))
        d = self.path("out")
        r = self.unpack("-d", "drive-scsi1", self.archive_file(data), d)
        assert_clean_error(self, r, "missing cluster", "drive-scsi1", code=1)
        self.assertNothingWritten(d)


# --------------------------------------------------------------------------------------------------
class UnpackExistingFilesTests(UnpackCase):

    def assertRefusedExisting(self, r):
        assert_clean_error(self, r, code=3)
        err = r.stderr.decode("utf-8", "replace").lower()
        self.assertTrue("exist" in err or "--force" in err, "error does not say the file exists: %r" % err)

    def test_existing_disk_refused(self):
        d = self.path("out")
        os.mkdir(d)
        victim = os.path.join(d, "disk-drive-scsi0.raw")
        with open(victim, "wb") as f:
            f.write(b"precious data")
        r = self.unpack(self.archive_file(), d)
        self.assertRefusedExisting(r)
        self.assertIn("disk-drive-scsi0.raw", r.stderr.decode("utf-8", "replace"))
        with open(victim, "rb") as f:
            self.assertEqual(f.read(), b"precious data")
        self.assertEqual(os.listdir(d), ["disk-drive-scsi0.raw"], "other files written or temp files left")

    def test_existing_config_refused_from_pipe(self):
        d = self.path("out")
        os.mkdir(d)
        victim = os.path.join(d, "qemu-server.conf")
        with open(victim, "wb") as f:
            f.write(b"name: mine\n")
        r = self.unpack("-", d, input=default_archive())
        self.assertRefusedExisting(r)
        with open(victim, "rb") as f:
            self.assertEqual(f.read(), b"name: mine\n")
        self.assertEqual(os.listdir(d), ["qemu-server.conf"])

    def test_force_overwrites(self):
        d = self.path("out")
        os.mkdir(d)
        for n in ("disk-drive-scsi0.raw", "qemu-server.conf"):
            with open(os.path.join(d, n), "wb") as f:
                f.write(b"x" * 10000000)  # longer than the new content: must be replaced, not overlaid
        self.assertOk(self.unpack("--force", self.archive_file(), d))
        self.assertTree(d, expected_files(default_vm()))

    def test_symlink_not_followed(self):
        outside = self.put("outside.txt", b"outside")
        d = self.path("out")
        os.mkdir(d)
        link = os.path.join(d, "disk-drive-scsi1.raw")
        os.symlink(outside, link)
        r = self.unpack(self.archive_file(), d)
        self.assertRefusedExisting(r)
        with open(outside, "rb") as f:
            self.assertEqual(f.read(), b"outside")
        self.assertTrue(os.path.islink(link))
        self.assertEqual(os.listdir(d), ["disk-drive-scsi1.raw"])

    def test_symlink_replaced_with_force(self):
        outside = self.put("outside.txt", b"outside")
        d = self.path("out")
        os.mkdir(d)
        os.symlink(outside, os.path.join(d, "disk-drive-scsi1.raw"))
        os.symlink(outside, os.path.join(d, "qemu-server.conf"))
        self.assertOk(self.unpack("--force", self.archive_file(), d))
        with open(outside, "rb") as f:
            self.assertEqual(f.read(), b"outside", "wrote through a symlink")
        self.assertTree(d, expected_files(default_vm()))  # also checks: regular files, not links

    def test_dangling_symlink_with_force(self):
        target = self.path("created-outside")
        d = self.path("out")
        os.mkdir(d)
        os.symlink(target, os.path.join(d, "disk-drive-efidisk0.raw"))
        os.symlink(target + ".conf", os.path.join(d, "qemu-server.fw"))
        self.assertOk(self.unpack("--force", "-", d, input=default_archive()))
        self.assertFalse(os.path.lexists(target), "file created through a dangling symlink")
        self.assertFalse(os.path.lexists(target + ".conf"), "file created through a dangling symlink")
        self.assertTree(d, expected_files(default_vm()))

    def test_dangling_symlink_without_force(self):
        target = self.path("created-outside")
        d = self.path("out")
        os.mkdir(d)
        os.symlink(target, os.path.join(d, "disk-drive-scsi0.raw"))
        r = self.unpack(self.archive_file(), d)
        self.assertRefusedExisting(r)
        self.assertFalse(os.path.lexists(target))

    def test_force_onto_directory(self):
        # an output name taken by a directory cannot be replaced: clean error, no temp files left
        d = self.path("out")
        os.makedirs(os.path.join(d, "disk-drive-scsi1.raw", "keep"))
        r = self.unpack("--force", self.archive_file(), d)
        assert_clean_error(self, r, code=3)
        self.assertTrue(os.path.isdir(os.path.join(d, "disk-drive-scsi1.raw", "keep")))
        leftovers = [n for n in os.listdir(d) if n not in expected_files(default_vm())]
        self.assertEqual(leftovers, [], "temporary files left behind")

    def test_dir_is_a_file(self):
        d = self.put("notadir", b"x")
        r = self.unpack(self.archive_file(), d)
        assert_clean_error(self, r)
        self.assertIn(r.returncode, (2, 3))
        with open(d, "rb") as f:
            self.assertEqual(f.read(), b"x")

    def test_missing_source(self):
        d = self.path("out")
        r = self.unpack(self.path("nonexistent.vma"), d)
        assert_clean_error(self, r, code=3)
        self.assertNothingWritten(d)


# --------------------------------------------------------------------------------------------------
class UnpackHostileNameTests(UnpackCase):
    """Names from the archive header are untrusted: refuse before writing anything."""

    DEVS = [("drive-scsi0", CLUSTER * 2 + 4096), ("drive-scsi1", CLUSTER)]

    def run_hostile(self, devices=None, configs=None, order="proxmox", extra=()):
        devices = list(devices if devices is not None else self.DEVS)
        if configs is None:
            configs = [("qemu-server.conf", small_conf(devices))]
        vm = fx.make_vm(4120, devices=devices, configs=configs)
        data = bytes(fx.write_archive(vm, None, seed=20, order=order))
        src = self.archive_file(data)
        d = self.path("out")
        before = self.listing()
        r = self.unpack(*(list(extra) + [src, d]))
        assert_clean_error(self, r, "name", code=1)
        self.assertNothingWritten(d, before)
        return r

    def hostile_device(self, name):
        return self.run_hostile(devices=[("drive-scsi0", CLUSTER * 2), (name, CLUSTER + 512)])

    def hostile_config(self, name, **kw):
        configs = [("qemu-server.conf", small_conf(self.DEVS)), (name, b"evil\n")]
        return self.run_hostile(configs=configs, **kw)

    # devices
    def test_device_empty(self):
        self.hostile_device("")

    def test_device_dot(self):
        self.hostile_device(".")

    def test_device_dotdot(self):
        self.hostile_device("..")

    def test_device_slash(self):
        self.hostile_device("a/b")

    def test_device_parent_path(self):
        self.hostile_device("/../../escaped")

    def test_device_nul(self):
        self.hostile_device("drive-scsi1\x00/../../escaped")

    def test_device_same_name_twice(self):
        self.run_hostile(devices=[("drive-scsi0", CLUSTER * 2), ("drive-scsi0", CLUSTER)])

    # configs
    def test_config_empty(self):
        self.hostile_config("")

    def test_config_dot(self):
        self.hostile_config(".")

    def test_config_dotdot(self):
        self.hostile_config("..")

    def test_config_parent(self):
        self.hostile_config("../escaped")

    def test_config_absolute(self):
        self.hostile_config(self.path("escaped"))
        self.assertFalse(os.path.lexists(self.path("escaped")))

    def test_config_subdir(self):
        self.hostile_config("sub/x.conf")

    def test_config_nul(self):
        self.hostile_config("qemu-server.fw\x00../escaped")

    def test_config_collides_with_disk(self):
        self.hostile_config("disk-drive-scsi0.raw")

    def test_config_parent_config_only(self):
        # a hostile config path is refused in --config-only mode too
        self.hostile_config("../escaped", extra=["--config-only"])

    def test_config_same_name_twice(self):
        conf = small_conf(self.DEVS)
        self.run_hostile(configs=[("qemu-server.conf", conf), ("qemu-server.conf", conf + b"name: x\n")])

    def test_config_collides_with_vmstate(self):
        devs = [("drive-scsi0", CLUSTER * 2), ("vmstate", CLUSTER * 2)]
        self.run_hostile(devices=devs, configs=[("qemu-server.conf", small_conf(devs)),
                                                ("vmstate.bin", b"x")], order="sequential")

    def test_hostile_from_pipe(self):
        vm = fx.make_vm(4121, devices=[("drive-scsi0", CLUSTER), ("../../escaped", CLUSTER)],
                        configs=[("qemu-server.conf", b"name: x\n")])
        data = bytes(fx.write_archive(vm, None, seed=21))
        d = self.path("out")
        before = self.listing()
        r = self.unpack("-", d, input=data)
        assert_clean_error(self, r, "name", code=1)
        self.assertNothingWritten(d, before)


# --------------------------------------------------------------------------------------------------
class UnpackFaultTests(UnpackCase):

    def check_failure(self, data, *keywords, **kw):
        pipe = kw.pop("pipe", False)
        d = self.path("out")
        before = self.listing()
        if pipe:
            r = self.unpack("-", d, input=data)
        else:
            src = self.archive_file(data, name="bad.vma")
            before = self.listing()
            r = self.unpack(src, d)
        assert_clean_error(self, r, *keywords, code=1)
        self.assertNothingWritten(d, before)
        return r

    def test_corrupt_last_extent_checksum(self):
        data = bytearray(default_archive())
        lay = fx.parse_layout(bytes(data))
        last = lay.extents[-1].offset
        data[last + 30] ^= 0x40  # inside the md5 field
        self.check_failure(bytes(data), "extent checksum")

    def test_corrupt_last_extent_checksum_pipe(self):
        data = bytearray(default_archive())
        lay = fx.parse_layout(bytes(data))
        data[lay.extents[-1].offset + 30] ^= 0x01
        self.check_failure(bytes(data), "extent checksum", pipe=True)

    def test_bad_header_checksum(self):
        data = bytearray(default_archive())
        data[40] ^= 0xFF
        self.check_failure(bytes(data), "header checksum")

    def test_not_vma(self):
        self.check_failure(b"hello world, definitely not a VMA archive" * 400, "not a vma archive", pipe=True)

    def test_truncated_mid_extent(self):
        data = default_archive()
        self.check_failure(data[:-5000], "truncated")

    def test_truncated_extent_header_pipe(self):
        data = default_archive()
        hs = fx.parse_layout(data).header_size
        self.check_failure(data[:hs + 300], "truncated", pipe=True)

    def test_trailing_bytes(self):
        self.check_failure(default_archive() + b"\x01" * 100)

    def test_duplicate_cluster(self):
        data = bytes(fx.write_archive(default_vm(), None, seed=30, duplicate=[(1, 7)]))
        self.check_failure(data, "duplicate")

    def test_missing_clusters_named(self):
        vm = default_vm()
        data = bytes(fx.write_archive(vm, None, seed=31, omit=[(0, 2), (1, 5), (1, 9)]))
        r = self.check_failure(data, "missing cluster")
        self.assertMissingListed(r, [(vm.devices[0][0], 2), (vm.devices[1][0], 5)])

    def test_missing_clusters_pipe(self):
        vm = default_vm()
        last = (vm.devices[2][1] + CLUSTER - 1) // CLUSTER - 1
        data = bytes(fx.write_archive(vm, None, seed=32, omit=[(2, last)]))
        r = self.check_failure(data, "missing cluster", pipe=True)
        self.assertMissingListed(r, [(vm.devices[2][0], last)])

    def test_header_only(self):
        data = default_archive()
        hs = fx.parse_layout(data).header_size
        r = self.check_failure(data[:hs], "missing cluster")
        vm = default_vm()
        self.assertMissingListed(r, [(n, 0) for n, _ in vm.devices])

    def assertMissingListed(self, r, pairs):
        lines = r.stderr.decode("utf-8", "replace").splitlines()
        for name, cluster in pairs:
            self.assertTrue(any(name in ln and mentions_cluster(ln, cluster) for ln in lines),
                            "cluster %d of %s not named in: %r" % (cluster, name, lines))

    def test_allow_missing(self):
        vm = default_vm()
        omit = [(0, 2), (1, 5), (1, 9), (2, 0)]
        data = bytes(fx.write_archive(vm, None, seed=33, omit=omit))
        d = self.path("out")
        r = self.unpack("--allow-missing", self.archive_file(data), d)
        self.assertOk(r)
        self.assertTree(d, expected_files(vm, zero_clusters={0: [2], 1: [5, 9], 2: [0]}))
        err = r.stderr.decode("utf-8", "replace")
        self.assertIn("missing", err.lower())
        for idx, c in omit:
            name = vm.devices[idx][0]
            self.assertTrue(any(name in ln and mentions_cluster(ln, c) for ln in err.splitlines()),
                            "missing cluster %d of %s not listed: %r" % (c, name, err))

    def test_allow_missing_whole_device_pipe(self):
        vm = default_vm()
        n1 = (vm.devices[1][1] + CLUSTER - 1) // CLUSTER
        data = bytes(fx.write_archive(vm, None, seed=34, omit=[(1, c) for c in range(n1)]))
        d = self.path("out")
        r = self.unpack("--allow-missing", "-", d, input=data)
        self.assertOk(r)
        self.assertTree(d, expected_files(vm, zero_clusters={1: range(n1)}))
        self.assertIn(vm.devices[1][0], r.stderr.decode("utf-8", "replace"))

    def test_allow_missing_header_only(self):
        vm = default_vm()
        data = default_archive()
        hs = fx.parse_layout(data).header_size
        d = self.path("out")
        r = self.unpack("--allow-missing", self.archive_file(data[:hs]), d)
        self.assertOk(r)
        zc = dict((i, range((s + CLUSTER - 1) // CLUSTER)) for i, (_n, s) in enumerate(vm.devices))
        self.assertTree(d, expected_files(vm, zero_clusters=zc))

    def test_allow_missing_still_rejects_corruption(self):
        data = bytearray(fx.write_archive(default_vm(), None, seed=35, omit=[(1, 1)]))
        lay = fx.parse_layout(bytes(data))
        data[lay.extents[-1].offset + 30] ^= 0x01
        d = self.path("out")
        r = self.unpack("--allow-missing", self.archive_file(bytes(data)), d)
        assert_clean_error(self, r, "extent checksum", code=1)
        self.assertNothingWritten(d)

    def test_disk_full(self):
        # RLIMIT_FSIZE makes writes past 1 MiB fail with EFBIG (SIGXFSZ ignored) - like a full disk.
        vm = default_vm()
        self.assertGreater(max(s for _n, s in vm.devices), 2 << 20)
        src = self.archive_file()
        d = self.path("out")
        before = self.listing()
        limit = 1 << 20

        def preexec():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        r = subprocess.run(support.tool_argv() + ["unpack", src, d], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, preexec_fn=preexec, timeout=120)
        assert_clean_error(self, r, code=3)
        self.assertNothingWritten(d, before)

    def _interrupt(self, sig, code):
        data = default_archive()
        d = self.path("out")
        before = self.listing()
        p = subprocess.Popen(support.tool_argv() + ["unpack", "-", d], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            try:
                p.stdin.write(data[:len(data) * 2 // 3])
                p.stdin.flush()
            except BrokenPipeError:
                pass
            # wait until the tool has created its target (its images are unnamed until the end), or a
            # little while
            deadline = time.time() + 5
            while time.time() < deadline and p.poll() is None and not os.path.isdir(d):
                time.sleep(0.05)
            time.sleep(0.3)
            if p.poll() is not None:
                self.fail("tool exited (%d) before the signal: %r" % (p.returncode, p.stderr.read()))
            p.send_signal(sig)
            rc = p.wait(timeout=30)  # stdin stays open: the tool must react to the signal itself
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            try:
                p.stdin.close()
            except BrokenPipeError:
                pass
        err = p.stderr.read().decode("utf-8", "replace")
        p.stdout.close()
        p.stderr.close()
        self.assertNotIn("Traceback", err)
        self.assertEqual(rc, code, "exit status after signal %d: %r" % (sig, err))
        self.assertNothingWritten(d, before)

    def test_sigint(self):
        self._interrupt(signal.SIGINT, 130)

    def test_sigterm(self):
        self._interrupt(signal.SIGTERM, 143)


# --------------------------------------------------------------------------------------------------
class UnpackWriteErrorTests(UnpackCase):
    """A write that fails (a full disk that the RLIMIT tests cannot reach: the image is already
    created at its full size) is one error naming the image, not a bare OS message."""

    def test_failed_image_write_names_the_file(self):
        tool = support.load_tool_module()
        device = tool.Device(1, "drive-scsi0", 4 * CLUSTER)
        path = self.put("disk-drive-scsi0.raw", bytes(4 * CLUSTER))
        fd = os.open(path, os.O_RDONLY)         # every pwrite fails (EBADF), like ENOSPC would
        self.addCleanup(os.close, fd)
        extent = tool.ExtentHeader(16, bytes(16), [0xFFFF << 48 | 1 << 32 | 2])
        data = memoryview(bytearray(b"\x5a" * CLUSTER))
        with self.assertRaises(tool.EnvironmentProblem) as caught:
            images = tool.ImageFiles()
            images.add(fd, device, "out/disk-drive-scsi0.raw")
            images.add_extent(extent, data)
        self.assertIn("out/disk-drive-scsi0.raw", str(caught.exception))


class UnpackSparseTests(UnpackCase):

    def test_default_images_sparse(self):
        vm = default_vm()
        d = self.path("out")
        data = bytes(fx.write_archive(vm, None, seed=40, stored_zero_blocks=True))
        self.assertOk(self.unpack("-", d, input=data))
        for (name, size), disk in zip(vm.devices, vm.disks):
            st = os.stat(os.path.join(d, output_name(name)))
            self.assertEqual(st.st_size, size)
            allowed = nonzero_blocks(disk) * BLOCK + 128 * 1024
            self.assertLessEqual(st.st_blocks * 512, allowed,
                                 "%s: %d bytes allocated, only %d non-zero" % (name, st.st_blocks * 512,
                                                                            allowed))

    @staticmethod
    def big_vm():
        """1 GiB device with ~1 MiB of data in a few places (plus a small efidisk)."""
        vm = fx.make_vm(4150, devices=[("drive-scsi0", GIB), ("drive-efidisk0", 540672)], fill=0.0)
        disk = vm.disks[0]
        rnd = random.Random(4150)
        for off in (0, 5 * CLUSTER + 4096, 300 << 20, GIB - 3 * CLUSTER, GIB - 4096):
            n = min(3 * CLUSTER, GIB - off)
            disk[off:off + n] = rnd.randbytes(n)
        return vm

    def test_one_gib_mostly_empty(self):
        vm = self.big_vm()
        data = fx.write_archive(vm, None, seed=41)
        self.assertLess(len(data), 4 << 20)
        d = self.path("out")
        r = self.unpack("-", d, input=data, timeout=300)
        self.assertOk(r)
        p = os.path.join(d, "disk-drive-scsi0.raw")
        st = os.stat(p)
        self.assertEqual(st.st_size, GIB)
        self.assertLess(st.st_blocks * 512, 4 << 20, "image not sparse")
        # Holes read as zeros: they are compared with the expected disk without being read (reading
        # 1 GiB of holes through the page cache took 16 s on a test VM); what SEEK_DATA finds is read.
        disk = vm.disks[0]
        zeros = bytes(16 << 20)
        fd = os.open(p, os.O_RDONLY)
        try:
            off = 0
            while off < GIB:
                try:
                    data_at = os.lseek(fd, off, os.SEEK_DATA)
                except OSError:         # ENXIO: only a hole after off
                    data_at = GIB
                for at in range(off, data_at, 16 << 20):
                    end = min(at + (16 << 20), data_at)
                    if disk[at:end] != zeros[:end - at]:
                        self.fail("image differs near offset %d (a hole where the disk has data)" % at)
                if data_at == GIB:
                    off = GIB
                    break
                hole_at = os.lseek(fd, data_at, os.SEEK_HOLE)
                for at in range(data_at, hole_at, 16 << 20):
                    chunk = os.pread(fd, min(16 << 20, hole_at - at), at)
                    if chunk != disk[at:at + len(chunk)]:
                        self.fail("image differs near offset %d" % at)
                off = hole_at
        finally:
            os.close(fd)
        self.assertEqual(off, GIB)

    def test_bounded_memory_from_pipe(self):
        # 80 MiB of non-zero data through a pipe: a tool that buffers images or the archive shows up.
        def build():
            vm = fx.make_vm(4151, devices=[("drive-scsi0", 80 << 20)], fill=0.0)
            disk = vm.disks[0]
            pattern = bytes(range(1, 256)) * 258
            for off in range(0, len(disk), CLUSTER):
                disk[off:off + CLUSTER] = (off.to_bytes(8, "big") + pattern)[:CLUSTER]
            return bytes(fx.write_archive(vm, None, seed=42))
        data = build()
        d = self.path("out")
        wrapper = ("import resource, subprocess, sys\n"
                   "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
                   "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
                   "sys.exit(r.returncode)\n")
        r = subprocess.run([sys.executable, "-c", wrapper, sys.executable, TOOL, "unpack", "-q", "-", d],
                           input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr.decode("utf-8", "replace"))
        maxrss_kib = int(r.stdout.split()[-1])
        self.assertEqual(os.path.getsize(os.path.join(d, "disk-drive-scsi0.raw")), 80 << 20)
        if os.environ.get("VMATEST_SHOW_RSS"):
            sys.stderr.write("[unpack max RSS %d KiB] " % maxrss_kib)
        self.assertLess(maxrss_kib, 64 * 1024, "unpack used %d KiB of memory for 80 MiB of data"
                        % maxrss_kib)


if __name__ == "__main__":
    unittest.main()
