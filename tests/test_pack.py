"""Tests for `vma-tool pack DIR DST|-`.

The expected archive is always computed by the independent fixture writer: pack output must be the
canonical form (FORMAT.md "Canonical form (version 3)"), i.e. byte-identical to
vmafixture.canonical_archive() of the expected VM.
"""
import datetime
import os
import random
import resource
import signal
import subprocess
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import vmafixture as fx  # noqa: E402
from support import run_tool, assert_clean_error, cached, fixture_vm, first_diff  # noqa: E402
import support  # noqa: E402

CLUSTER = 65536
BLOCK = 4096
GIB = 1 << 30


def default_vm():
    return fixture_vm(5101)


def write_image(path, disk):
    """Write a disk image sparsely (holes for all-zero 64 KiB clusters), exact length."""
    zero = bytes(CLUSTER)
    with open(path, "wb") as f:
        for off in range(0, len(disk), CLUSTER):
            piece = disk[off:off + CLUSTER]
            if piece != zero[:len(piece)]:
                f.seek(off)
                f.write(piece)
        f.truncate(len(disk))


def write_dir(d, vm, configs=None, skip_devices=()):
    os.makedirs(d, exist_ok=True)
    for name, data in (vm.configs if configs is None else configs):
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
    for (name, _size), disk in zip(vm.devices, vm.disks):
        if name in skip_devices:
            continue
        write_image(os.path.join(d, "disk-%s.raw" % name), disk)
    return d


def conf_text(lines):
    return ("\n".join(lines) + "\n").encode()


def map_line(name, storage="local-lvm"):
    key = name[6:] if name.startswith("drive-") else name
    return "#qmdump#map:%s:%s:%s:raw:" % (key, name, storage)


def expected_archive(vm, configs=None, order=None, ctime=None, stdout=False):
    """Canonical archive of vm with configs replaced and devices reordered (order: list of names);
    stdout: as written there, without the digests blob."""
    devs = list(zip(vm.devices, vm.disks))
    if order is not None:
        byname = dict((d.name, (d, disk)) for d, disk in devs)
        devs = [byname[n] for n in order]
    v = fx.VM(vm.ctime if ctime is None else ctime, vm.configs if configs is None else configs,
              [d for d, _ in devs], [disk for _, disk in devs])
    return (fx.canonical_archive_v3 if stdout else fx.canonical_archive)(v)


class PackCase(support.ScratchCase):
    TMP_PREFIX = "vmatest-pack-"

    def pack(self, *args, **kw):
        return run_tool("pack", *args, **kw)

    def assertArchiveEqual(self, got, expected, what="pack output"):
        if got != expected:
            lay_g = fx.parse_layout(got)
            lay_e = fx.parse_layout(expected)
            self.fail("%s is not the expected canonical archive: %d vs %d bytes, first difference at "
                      "offset %d; devices %r vs %r; configs %r vs %r" % (
                          what, len(got), len(expected), first_diff(got, expected), lay_g.devices,
                          lay_e.devices, [n for n, _ in lay_g.configs], [n for n, _ in lay_e.configs]))

    def packed_conf(self, data):
        return dict(fx.parse_layout(data).configs)["qemu-server.conf"]


# --------------------------------------------------------------------------------------------------
class PackBasicTests(PackCase):

    def test_canonical_output(self):
        vm = default_vm()
        d = write_dir(self.path("d"), vm)
        out = self.path("y.vma")
        self.assertOk(self.pack("--ctime", str(vm.ctime), d, out))
        self.assertArchiveEqual(self.read(out), expected_archive(vm))

    def test_stdout(self):
        vm = default_vm()
        d = write_dir(self.path("d"), vm)
        r = self.pack("--ctime", str(vm.ctime), d, "-")
        self.assertOk(r)
        self.assertArchiveEqual(r.stdout, expected_archive(vm, stdout=True))

    def test_odd_sizes(self):
        devs = [("drive-efidisk0", 540672), ("drive-ide0", 512), ("drive-sata0", 512 * 4097),
                ("drive-scsi0", CLUSTER * 5), ("drive-virtio0", CLUSTER * 3 + 512)]
        vm = fx.make_vm(5102, devices=devs)
        d = write_dir(self.path("d"), vm)
        out = self.path("y.vma")
        self.assertOk(self.pack("-q", "--ctime", str(vm.ctime), d, out))
        self.assertArchiveEqual(self.read(out), expected_archive(vm))
        fx.assert_same_content(self, out, vm)

    def test_conf_only_no_fw(self):
        vm = default_vm()
        conf = [vm.configs[0]]
        d = write_dir(self.path("d"), vm, configs=conf)
        out = self.path("y.vma")
        self.assertOk(self.pack("--ctime", str(vm.ctime), d, out))
        self.assertArchiveEqual(self.read(out), expected_archive(vm, configs=conf))

    def test_diskless(self):
        vm = fx.make_vm(5103, devices=[])
        d = write_dir(self.path("d"), vm)
        out = self.path("y.vma")
        self.assertOk(self.pack("--ctime", str(vm.ctime), d, out))
        exp = expected_archive(vm)
        self.assertEqual(len(exp), fx.parse_layout(exp).header_size + 512)
        self.assertArchiveEqual(self.read(out), exp)

    def test_other_configs_only_with_config_option(self):
        vm = default_vm()
        extra = [("notes.txt", b"some notes\n"), ("hook.pl", b"#!/usr/bin/perl\n\x00binary\xff")]
        d = write_dir(self.path("d"), vm, configs=list(vm.configs) + extra)
        out = self.path("x.vma")
        r = self.pack("--ctime", str(vm.ctime), d, out)
        self.assertOk(r)
        self.assertIn(b"notes.txt", r.stderr)          # named in the notice, not packed
        configs, _ = fx.restore(out)
        self.assertEqual(sorted(configs), sorted(vm.configs))
        out = self.path("y.vma")
        self.assertOk(self.pack("--ctime", str(vm.ctime), "--config", os.path.join(d, "notes.txt"),
                                "--config", os.path.join(d, "hook.pl"), d, out))
        configs, disks = fx.restore(out)
        self.assertEqual(sorted(configs), sorted(list(vm.configs) + extra))
        self.assertEqual(configs[0][0], "qemu-server.conf", "qemu-server.conf should come first")
        self.assertEqual(sorted(disks), sorted(n for n, _ in vm.devices))

    def test_missing_conf(self):
        vm = default_vm()
        d = write_dir(self.path("d"), vm, configs=[vm.configs[1]])
        out = self.path("y.vma")
        r = self.pack(d, out)
        assert_clean_error(self, r, "qemu-server.conf")
        self.assertFalse(os.path.exists(out), "output written despite the error")

    def test_missing_dir(self):
        r = self.pack(self.path("nonexistent"), self.path("y.vma"))
        assert_clean_error(self, r)
        self.assertIn(r.returncode, (2, 3))
        self.assertFalse(os.path.exists(self.path("y.vma")))

    def test_size_not_multiple_of_512(self):
        vm = default_vm()
        d = write_dir(self.path("d"), vm)
        self.put("d/disk-drive-scsi5.raw", b"\x01" * 1000)
        out = self.path("y.vma")
        r = self.pack(d, out)
        assert_clean_error(self, r, "512")
        self.assertIn(r.returncode, (1, 2))
        self.assertFalse(os.path.exists(out), "output written despite the error")

    def test_size_not_multiple_of_512_device_option(self):
        vm = default_vm()
        d = write_dir(self.path("d"), vm)
        img = self.put("elsewhere/img", b"\x01" * (CLUSTER + 100))
        r = self.pack("--device", "drive-virtio3=" + img, d, "-")
        assert_clean_error(self, r, "512")
        self.assertIn(r.returncode, (1, 2))

    def test_device_option(self):
        vm = default_vm()
        d = write_dir(self.path("d"), vm, skip_devices=["drive-scsi1"])
        img = self.path("elsewhere", "some-image.img")
        os.makedirs(os.path.dirname(img))
        write_image(img, vm.disks[2])
        out = self.path("y.vma")
        self.assertOk(self.pack("--ctime", str(vm.ctime), "--device", "drive-scsi1=" + img, d, out))
        # the conf already maps drive-scsi1 as the third device: same archive as with the file in DIR
        self.assertArchiveEqual(self.read(out), expected_archive(vm))

    def test_config_option(self):
        vm = default_vm()
        d = write_dir(self.path("d"), vm, configs=[vm.configs[0]])
        fw = self.put("elsewhere/qemu-server.fw", vm.configs[1][1])
        out = self.path("y.vma")
        self.assertOk(self.pack("--ctime", str(vm.ctime), "--config", fw, d, out))
        self.assertArchiveEqual(self.read(out), expected_archive(vm))

    def test_config_option_supplies_conf(self):
        vm = default_vm()
        d = write_dir(self.path("d"), vm, configs=[])
        conf = self.put("elsewhere/qemu-server.conf", vm.configs[0][1])
        out = self.path("y.vma")
        self.assertOk(self.pack("--ctime", str(vm.ctime), "--config", conf, d, out))
        self.assertArchiveEqual(self.read(out), expected_archive(vm, configs=[vm.configs[0]]))


# --------------------------------------------------------------------------------------------------
class PackDeviceOrderTests(PackCase):
    """dev_ids follow the #qmdump#map: lines, then unmapped devices sorted by name (which get a map
    line added)."""

    def vm(self):
        devs = [("drive-efidisk0", 540672), ("drive-scsi0", CLUSTER * 3 + 4096), ("drive-scsi1", CLUSTER * 2),
                ("drive-virtio0", CLUSTER), ("drive-sata0", CLUSTER + 512)]
        return cached(("test_pack", "ordervm"), lambda: fx.make_vm(5110, devices=devs, configs=[]))

    def base_lines(self):
        return ["boot: order=scsi0", "cores: 2", "memory: 2048", "name: web", "ostype: l26",
                "scsi0: local-lvm:vm-100-disk-1,size=196K"]

    def run_pack(self, conf, extra=()):
        vm = self.vm()
        d = write_dir(self.path("d"), vm, configs=[("qemu-server.conf", conf)])
        out = self.path("y.vma")
        self.assertOk(self.pack(*(list(extra) + ["--ctime", "1700000000", d, out])))
        return vm, self.read(out)

    def check(self, data, vm, order, conf_lines_expected_subset, added):
        lay = fx.parse_layout(data)
        self.assertEqual([lay.devices[i][0] for i in sorted(lay.devices)], order)
        self.assertEqual(sorted(lay.devices), list(range(1, len(order) + 1)))
        conf = self.packed_conf(data).decode()
        lines = conf.splitlines()
        for ln in added:
            self.assertEqual(lines.count(ln), 1, "map line %r not added exactly once:\n%s" % (ln, conf))
        rest = [ln for ln in lines if ln not in added]
        self.assertEqual(rest, conf_lines_expected_subset, "other config lines changed")
        # the whole archive is canonical with that conf and order
        self.assertArchiveEqual(data, expected_archive(vm, configs=[("qemu-server.conf", conf.encode())],
                                                       order=order, ctime=1700000000))

    def test_map_order_then_sorted(self):
        lines = self.base_lines() + [map_line("drive-scsi1"), map_line("drive-efidisk0")]
        vm, data = self.run_pack(conf_text(lines))
        order = ["drive-scsi1", "drive-efidisk0", "drive-sata0", "drive-scsi0", "drive-virtio0"]
        added = [map_line("drive-sata0"), map_line("drive-scsi0"), map_line("drive-virtio0")]
        self.check(data, vm, order, lines, added)

    def test_all_mapped_any_order(self):
        names = ["drive-virtio0", "drive-scsi0", "drive-efidisk0", "drive-sata0", "drive-scsi1"]
        lines = self.base_lines() + [map_line(n) for n in names]
        vm, data = self.run_pack(conf_text(lines))
        self.check(data, vm, names, lines, [])

    def test_no_map_lines_storage_option(self):
        lines = self.base_lines()
        vm, data = self.run_pack(conf_text(lines), extra=["--storage", "ceph-pool"])
        order = sorted(n for n, _ in vm.devices)
        self.check(data, vm, order, lines, [map_line(n, "ceph-pool") for n in order])

    def test_default_storage(self):
        lines = self.base_lines() + [map_line("drive-scsi0", "nfs-store")]
        vm, data = self.run_pack(conf_text(lines))
        order = ["drive-scsi0", "drive-efidisk0", "drive-sata0", "drive-scsi1", "drive-virtio0"]
        self.check(data, vm, order, lines, [map_line(n) for n in order[1:]])

    def test_key_without_drive_prefix(self):
        vm = fx.make_vm(5111, devices=[("disk0", CLUSTER * 2), ("disk1", CLUSTER)], configs=[])
        conf = conf_text(["name: plain"])
        d = write_dir(self.path("d"), vm, configs=[("qemu-server.conf", conf)])
        r = self.pack("--ctime", "1700000000", d, "-")
        self.assertOk(r)
        lines = self.packed_conf(r.stdout).decode().splitlines()
        self.assertIn("#qmdump#map:disk0:disk0:local-lvm:raw:", lines)
        self.assertIn("#qmdump#map:disk1:disk1:local-lvm:raw:", lines)

    def test_device_option_order(self):
        vm = self.vm()
        d = write_dir(self.path("d"), vm, configs=[("qemu-server.conf", conf_text(
            self.base_lines() + [map_line("drive-virtio0")]))], skip_devices=["drive-virtio0"])
        img = self.path("img.raw")
        write_image(img, vm.disks[3])
        r = self.pack("--ctime", "1700000000", "--device", "drive-virtio0=" + img, d, "-")
        self.assertOk(r)
        lay = fx.parse_layout(r.stdout)
        self.assertEqual([lay.devices[i][0] for i in sorted(lay.devices)],
                         ["drive-virtio0", "drive-efidisk0", "drive-sata0", "drive-scsi0", "drive-scsi1"])
        _configs, disks = fx.restore(r.stdout)
        self.assertEqual(sorted(disks), sorted(n for n, _ in vm.devices))
        for (name, _s), disk in zip(vm.devices, vm.disks):
            self.assertTrue(disks[name] == bytes(disk), "content of %s differs" % name)


# --------------------------------------------------------------------------------------------------
class PackCtimeTests(PackCase):

    def ctime_of(self, *args):
        vm = fx.make_vm(5120, devices=[("drive-scsi0", CLUSTER)])
        d = write_dir(self.path("d"), vm)
        r = self.pack(*(list(args) + [d, "-"]))
        self.assertOk(r)
        return fx.parse_layout(r.stdout).ctime

    def test_epoch(self):
        self.assertEqual(self.ctime_of("--ctime", "1700000000"), 1700000000)

    def test_iso_z(self):
        self.assertEqual(self.ctime_of("--ctime", "2023-11-14T22:13:20Z"), 1700000000)

    def test_iso_offset(self):
        self.assertEqual(self.ctime_of("--ctime", "2023-11-14T23:13:20+01:00"), 1700000000)

    def test_default_now(self):
        t0 = int(time.time())
        c = self.ctime_of()
        t1 = int(time.time()) + 1
        self.assertTrue(t0 <= c <= t1, "ctime %d not between %d and %d" % (c, t0, t1))

    def test_invalid(self):
        vm = fx.make_vm(5121, devices=[("drive-scsi0", CLUSTER)])
        d = write_dir(self.path("d"), vm)
        r = self.pack("--ctime", "yesterday-ish", d, self.path("y.vma"))
        assert_clean_error(self, r, "ctime", code=2)
        self.assertFalse(os.path.exists(self.path("y.vma")))


# --------------------------------------------------------------------------------------------------
SNAP_CONF = [
    "#Web server",
    "#name: not-a-key (comment)",
    "agent: 1",
    "boot: order=scsi0",
    "cores: 2",
    "memory: 2048",
    "name: web",
    "ostype: l26",
    "scsi0: local-lvm:vm-100-disk-0,size=128K",
    "#qmdump#map:scsi0:drive-scsi0:local-lvm:raw:",
    "",
    "[before-upgrade]",
    "cores: 1",
    "memory: 1024",
    "name: web",
    "snaptime: 1690000000",
]


class PackUpdateTests(PackCase):

    def run_update(self, *args, conf_lines=None):
        vm = fx.make_vm(5130, devices=[("drive-scsi0", CLUSTER * 2)], configs=[])
        conf = conf_text(SNAP_CONF if conf_lines is None else conf_lines)
        d = write_dir(self.path("d"), vm, configs=[("qemu-server.conf", conf)])
        out = self.path("y.vma")
        r = self.pack(*(list(args) + ["--ctime", "1700000000", d, out]))
        return r, out, vm

    def expect_conf(self, r, out, vm, lines):
        self.assertOk(r)
        data = self.read(out)
        got = self.packed_conf(data).decode()
        self.assertEqual(got, "\n".join(lines) + "\n")
        self.assertArchiveEqual(data, expected_archive(vm, configs=[("qemu-server.conf", got.encode())],
                                                       ctime=1700000000))

    def test_update_name(self):
        r, out, vm = self.run_update("-u", "name=restored-web")
        lines = list(SNAP_CONF)
        lines[6] = "name: restored-web"
        self.expect_conf(r, out, vm, lines)

    def test_update_several(self):
        r, out, vm = self.run_update("-u", "cores=8", "--update", "memory=16384", "-u", "name=x")
        lines = list(SNAP_CONF)
        lines[4] = "cores: 8"
        lines[5] = "memory: 16384"
        lines[6] = "name: x"
        self.expect_conf(r, out, vm, lines)

    def test_update_value_with_spaces_and_equals(self):
        r, out, vm = self.run_update("-u", "boot=order=scsi0;net0 x")
        lines = list(SNAP_CONF)
        lines[3] = "boot: order=scsi0;net0 x"
        self.expect_conf(r, out, vm, lines)

    def test_unknown_key(self):
        r, out, _vm = self.run_update("-u", "onboot=1")
        assert_clean_error(self, r, "onboot", code=2)
        self.assertFalse(os.path.exists(out))

    def test_key_only_in_snapshot_is_unknown(self):
        r, out, _vm = self.run_update("-u", "snaptime=5")
        assert_clean_error(self, r, "snaptime", code=2)
        self.assertFalse(os.path.exists(out))

    def test_bad_syntax(self):
        r, out, _vm = self.run_update("-u", "name")
        assert_clean_error(self, r, code=2)
        self.assertFalse(os.path.exists(out))

    def test_add(self):
        r, out, vm = self.run_update("--add", "-u", "onboot=1", "-u", "name=new")
        self.assertOk(r)
        got = self.packed_conf(self.read(out)).decode().split("\n")
        self.assertEqual(got.count("onboot: 1"), 1, got)
        i = got.index("onboot: 1")
        self.assertLess(i, got.index("[before-upgrade]"), "added key not in the top section")
        del got[i]
        lines = list(SNAP_CONF)
        lines[6] = "name: new"
        self.assertEqual(got, lines + [""])

    def test_add_without_snapshots(self):
        lines = SNAP_CONF[:10]
        r, out, vm = self.run_update("--add", "-u", "onboot=1", conf_lines=lines)
        self.assertOk(r)
        got = self.packed_conf(self.read(out)).decode().split("\n")
        self.assertEqual(got.count("onboot: 1"), 1, got)
        got.remove("onboot: 1")
        self.assertEqual(got, lines + [""])


# --------------------------------------------------------------------------------------------------
class PackRoundTripTests(PackCase):

    def roundtrip(self, vm, seed, **kw):
        x = self.path("x.vma")
        fx.write_archive(vm, x, seed=seed, **kw)
        d = self.path("d")
        r = run_tool("unpack", x, d)
        self.assertOk(r)
        y = self.path("y.vma")
        self.assertOk(self.pack("--ctime", str(vm.ctime), d, y))
        o = self.path("o.vma")
        self.assertOk(run_tool("optimize", x, o))
        self.assertArchiveEqual(self.read(y), self.read(o), "pack(unpack(x)) vs optimize(x)")
        self.assertArchiveEqual(self.read(y), expected_archive(vm))

    def test_default_vm(self):
        self.roundtrip(default_vm(), 1)

    def test_random_order_odd_sizes(self):
        devs = [("drive-efidisk0", 540672), ("drive-scsi0", 512 * 3001), ("drive-tpmstate0-backup", 4 << 20)]
        vm = fx.make_vm(5140, devices=devs)
        self.roundtrip(vm, 2, order="random", per_extent="random", tail_garbage=True,
                       stored_zero_blocks=True)

    def test_iso_ctime_roundtrip_via_pipe(self):
        vm = default_vm()
        d = write_dir(self.path("d"), vm)
        iso = datetime.datetime.fromtimestamp(vm.ctime, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        r = self.pack("--ctime", iso, d, "-")
        self.assertOk(r)
        r2 = run_tool("unpack", "-", self.path("d2"), input=r.stdout)
        self.assertOk(r2)
        r3 = self.pack("--ctime", str(vm.ctime), self.path("d2"), "-")
        self.assertOk(r3)
        self.assertArchiveEqual(r3.stdout, r.stdout)


# --------------------------------------------------------------------------------------------------
class PackSparseTests(PackCase):

    def test_sparse_one_gib(self):
        vm = fx.make_vm(5150, devices=[("drive-scsi0", GIB)], fill=0.0)
        disk = vm.disks[0]
        rnd = random.Random(5150)
        for off in (4096, 7 * CLUSTER, 512 << 20, GIB - 2 * CLUSTER - 4096):
            disk[off:off + 2 * CLUSTER] = rnd.randbytes(2 * CLUSTER)
        d = self.path("d")
        os.makedirs(d)
        for name, data in vm.configs:
            self.put("d/" + name, data)
        write_image(os.path.join(d, "disk-drive-scsi0.raw"), disk)
        st = os.stat(os.path.join(d, "disk-drive-scsi0.raw"))
        self.assertLess(st.st_blocks * 512, 4 << 20, "test setup: image not sparse")
        out = self.path("y.vma")
        t0 = time.time()
        r = self.pack("--ctime", str(vm.ctime), d, out, timeout=300)
        elapsed = time.time() - t0
        self.assertOk(r)
        got = self.read(out)
        self.assertLess(len(got), 2 << 20)
        self.assertArchiveEqual(got, fx.canonical_archive(vm))
        self.assertLess(elapsed, 30, "packing a sparse 1 GiB image took %.1f s" % elapsed)


# --------------------------------------------------------------------------------------------------
class PackFaultTests(PackCase):

    def test_disk_full(self):
        vm = default_vm()
        d = write_dir(self.path("d"), vm)
        out = self.path("y.vma")
        limit = 512 * 1024

        def preexec():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        r = subprocess.run(support.tool_argv() + ["pack", d, out], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, preexec_fn=preexec, timeout=120)
        assert_clean_error(self, r, code=3)

    def test_output_dir_missing(self):
        vm = default_vm()
        d = write_dir(self.path("d"), vm)
        r = self.pack(d, self.path("no", "such", "dir", "y.vma"))
        assert_clean_error(self, r, code=3)

    def test_unreadable_device_option(self):
        vm = default_vm()
        d = write_dir(self.path("d"), vm)
        r = self.pack("--device", "drive-scsi9=" + self.path("missing.img"), d, self.path("y.vma"))
        assert_clean_error(self, r, "missing.img")
        self.assertFalse(os.path.exists(self.path("y.vma")))


if __name__ == "__main__":
    unittest.main()
