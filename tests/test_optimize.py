"""Tests for `vma-tool optimize`: canonical form, determinism, no cluster lost,
stdin/stdout, in place (atomic, untouched when canonical), DST == SRC refusal,
fault injection (RLIMIT_FSIZE, SIGTERM/SIGINT), invalid inputs, -u/--add.

The canonical form is checked three ways: against an independent canonical
writer in this file (built from FORMAT.md "Canonical form (version 3)" only), structurally (via
vmafixture.parse_layout and a raw walk), and by content (vmafixture.restore).
"""
import gzip
import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import support  # noqa: E402
import vmafixture as vf  # noqa: E402

try:
    import resource
except ImportError:  # pragma: no cover - non-POSIX
    resource = None

CANON_UUID = uuid.UUID("12345678-aabb-ccdd-eeff-aabbccddeeff").bytes
CLUSTER = 65536
BLOCK = 4096
ZERO_BLOCK = bytes(BLOCK)
MIB = 1024 * 1024


def canonical_for_vm(vm, dev_ids=None, configs=None):
    """The canonical form (FORMAT.md, "Canonical form (version 3)") by the fixture's independent
    writer, optionally with other dev_ids or configs."""
    if dev_ids is not None or configs is not None:
        vm = vf.VM(vm.ctime, vm.configs if configs is None else configs, vm.devices, vm.disks,
                   dev_ids=vm.dev_ids if dev_ids is None else list(dev_ids))
    return bytes(vf.canonical_archive(vm))


def walk(data):
    """Raw structural walk: (header_size, [(offset, block_count, uuid, slots[59])])."""
    hs = struct.unpack_from(">I", data, 56)[0]
    pos = hs
    exts = []
    while pos < len(data):
        if pos + 512 > len(data):
            raise AssertionError("trailing partial extent at offset %d" % pos)
        magic, res, bc, u = struct.unpack_from(">4sHH16s", data, pos)
        slots = list(struct.unpack_from(">59Q", data, pos + 40))
        exts.append((pos, bc, u, slots, magic, res))
        pos += 512 + bc * BLOCK
    if pos != len(data):
        raise AssertionError("archive does not end at an extent boundary")
    return hs, exts


def fill_nonzero(vm, seed, index):
    """Give device `index` deterministic non-zero content over its whole size."""
    rnd = random.Random(seed)
    disk = vm.disks[index]
    n = len(disk)
    data = rnd.getrandbits(8 * n).to_bytes(n, "little").replace(b"\0", b"\x5a")
    disk[:] = data


def disks_of(vm):
    return {name: bytes(d) for (name, _), d in zip(vm.devices, vm.disks)}


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class TmpMixin(support.TempDir):
    def p(self, name):
        return self.tmp_path(name)

    def assertSameBytes(self, got, want, what="output"):
        if got != want:
            self.fail("%s differs from expected: len %d vs %d, first difference at offset %d"
                      % (what, len(got), len(want), support.first_diff(got, want)))

    def optimize(self, data, *opts, name="in.vma", out="out.vma"):
        src = self.put(name, data)
        dst = self.p(out)
        if os.path.exists(dst):
            os.unlink(dst)
        r = support.run_tool("optimize", "-q", *opts, src, dst)
        self.assertEqual(r.returncode, 0, "optimize failed: %r" % r.stderr[-2000:])
        self.assertNotIn(b"Traceback", r.stderr)
        return self.read(dst)


# The main VM: tiny devices (the original tool dropped small devices), an
# efidisk, and a device with > 59 clusters and a straddling last block.
MAIN_DEVICES = [
    ("drive-efidisk0", 540672),
    ("drive-scsi0", 512),
    ("drive-scsi1", 4096),
    ("drive-scsi2", 65536),
    ("drive-scsi3", 65536 + 512),
    ("drive-scsi4", 4 * MIB + 7 * 4096 + 1024),
]

VARIANTS = [
    ("proxmox", dict(order="proxmox")),
    ("sequential", dict(order="sequential")),
    ("reverse", dict(order="reverse")),
    ("random", dict(order="random")),
    ("per_extent_1", dict(order="proxmox", per_extent=1)),
    ("per_extent_59", dict(order="sequential", per_extent=59)),
    ("per_extent_random", dict(order="random", per_extent="random")),
    ("empty_extents", dict(order="proxmox", empty_extents=True)),
    ("stored_zero_blocks", dict(order="random", stored_zero_blocks=True)),
    ("tail_garbage", dict(order="proxmox", tail_garbage=True)),
    ("canonical_uuid_seq", dict(order="sequential", uuid=CANON_UUID)),
    ("everything", dict(order="random", per_extent="random", uuid=b"\xff" * 16,
                        empty_extents=True, stored_zero_blocks=True, tail_garbage=True)),
]


def make_main_vm():
    vm = vf.make_vm(4242, devices=MAIN_DEVICES, fill=0.4)
    for i in (1, 2, 4):  # make sure the tiny devices carry data
        fill_nonzero(vm, 77 + i, i)
    return vm


class _Shared:
    """Lazily built, class-wide fixtures and optimize outputs."""
    vm = None
    archives = {}
    outputs = {}
    expected = None
    tmp = None

    @classmethod
    def get_vm(cls):
        if cls.vm is None:
            cls.vm = make_main_vm()
            cls.expected = canonical_for_vm(cls.vm)
        return cls.vm

    @classmethod
    def archive(cls, key):
        if key not in cls.archives:
            vm = cls.get_vm()
            kw = dict(VARIANTS)[key]
            seed = [k for k, _ in VARIANTS].index(key) + 11
            cls.archives[key] = bytes(vf.write_archive(vm, None, seed=seed, **kw))
        return cls.archives[key]

    @classmethod
    def output(cls, key):
        if key not in cls.outputs:
            if cls.tmp is None:
                cls.tmp = tempfile.mkdtemp(prefix="vmatest-optshared-")
            src = os.path.join(cls.tmp, key + ".vma")
            dst = os.path.join(cls.tmp, key + ".out.vma")
            with open(src, "wb") as f:
                f.write(cls.archive(key))
            r = support.run_tool("optimize", "-q", src, dst)
            if r.returncode != 0 or not os.path.exists(dst):
                cls.outputs[key] = r
            else:
                with open(dst, "rb") as f:
                    cls.outputs[key] = f.read()
        res = cls.outputs[key]
        if not isinstance(res, bytes):
            raise AssertionError("optimize of variant %s failed (exit %d): %r"
                                 % (key, res.returncode, res.stderr[-2000:]))
        return res


def tearDownModule():
    if _Shared.tmp:
        shutil.rmtree(_Shared.tmp, True)


class FixtureSanity(unittest.TestCase):
    """The oracle writer and the fixture agree (guards the other tests)."""

    def test_oracle_restores_to_vm(self):
        vm = _Shared.get_vm()
        configs, disks = vf.restore(_Shared.expected)
        self.assertEqual([(n, bytes(d)) for n, d in configs], [(n, bytes(d)) for n, d in vm.configs])
        self.assertEqual({k: bytes(v) for k, v in disks.items()}, disks_of(vm))

    def test_fixture_archive_restores_to_vm(self):
        vm = _Shared.get_vm()
        configs, disks = vf.restore(_Shared.archive("proxmox"))
        self.assertEqual({k: bytes(v) for k, v in disks.items()}, disks_of(vm))


class CanonicalDeterminismTest(TmpMixin, unittest.TestCase):
    def test_every_variant_matches_canonical_form(self):
        for key, _ in VARIANTS:
            with self.subTest(variant=key):
                self.assertSameBytes(_Shared.output(key), _Shared.expected, "optimize(%s)" % key)

    def test_all_variants_byte_identical(self):
        ref = _Shared.output("proxmox")
        for key, _ in VARIANTS[1:]:
            with self.subTest(variant=key):
                self.assertSameBytes(_Shared.output(key), ref, "optimize(%s) vs optimize(proxmox)" % key)

    def test_every_cluster_survives(self):
        vm = _Shared.get_vm()
        want_cfg = [(n, bytes(d)) for n, d in vm.configs]
        want = disks_of(vm)
        for key, _ in VARIANTS:
            with self.subTest(variant=key):
                configs, disks = vf.restore(_Shared.output(key))
                self.assertEqual([(n, bytes(d)) for n, d in configs], want_cfg)
                self.assertEqual(sorted(disks), sorted(want))
                for name in want:
                    self.assertEqual(bytes(disks[name]), want[name], "device %s differs" % name)

    def test_idempotent(self):
        for key in ("proxmox", "everything"):
            with self.subTest(variant=key):
                once = _Shared.output(key)
                twice = self.optimize(once)
                self.assertSameBytes(twice, once, "optimize(optimize(x))")

    def test_uuid_is_fixed(self):
        out = _Shared.output("everything")
        lay = vf.parse_layout(out)
        self.assertEqual(bytes(out[8:24]), CANON_UUID)
        u = lay.uuid
        if isinstance(u, str):
            self.assertEqual(u, str(uuid.UUID(bytes=CANON_UUID)))
        else:
            self.assertEqual(bytes(u), CANON_UUID)
        _, exts = walk(out)
        for off, _, ext_uuid, _, _, _ in exts:
            self.assertEqual(ext_uuid, CANON_UUID, "extent at offset %d" % off)

    def test_extent_structure(self):
        vm = _Shared.get_vm()
        out = _Shared.output("everything")
        lay = vf.parse_layout(out)
        hs, exts = walk(out)
        self.assertEqual(lay.header_size, hs)
        self.assertEqual([e.offset for e in lay.extents], [e[0] for e in exts])
        seq = []
        per_dev = {}
        for off, bc, _, slots, magic, res in exts:
            self.assertEqual(magic, b"VMAE")
            self.assertEqual(res, 0)
            used = [s for s in slots if s >> 32 & 0xFF]
            self.assertTrue(used, "empty extent at offset %d in an archive with devices" % off)
            # used slots first, unused slots all zero
            self.assertEqual(slots[:len(used)], used, "hole in slots at offset %d" % off)
            self.assertTrue(all(s == 0 for s in slots[len(used):]), "unused slot not zero at %d" % off)
            devs = {s >> 32 & 0xFF for s in used}
            self.assertEqual(len(devs), 1, "extent at offset %d mixes devices %s" % (off, devs))
            self.assertEqual(bc, sum(bin(s >> 48).count("1") for s in used))
            dev = devs.pop()
            per_dev.setdefault(dev, []).append(len(used))
            seq.extend((dev, s & 0xFFFFFFFF) for s in used)
        # devices in descending dev_id order, each cluster once, in order
        want_seq = [(i, c) for i, (_, size) in sorted(zip(vm.dev_ids, vm.devices), reverse=True)
                    for c in range(-(-size // CLUSTER))]
        self.assertEqual(seq, want_seq)
        self.assertEqual(list(per_dev), sorted(vm.dev_ids, reverse=True))
        # extents cut exactly as the canonical layout says (zero runs on the 59-grid, data on the 8-grid)
        got = [(e[3][0] >> 32 & 0xFF, e[3][0] & 0xFFFFFFFF, len([s for s in e[3] if s])) for e in exts]
        self.assertEqual(got, [tuple(x) for x in vf.canonical_extents(vm)])

    def test_no_stored_zero_block_and_tail_zeroed(self):
        vm = _Shared.get_vm()
        sizes = dict(zip(vm.dev_ids, (s for _, s in vm.devices)))
        out = _Shared.output("everything")
        _, exts = walk(out)
        straddling_seen = 0
        for off, bc, _, slots, _, _ in exts:
            pos = off + 512
            for s in slots:
                dev = s >> 32 & 0xFF
                if not dev:
                    continue
                mask, cl = s >> 48, s & 0xFFFFFFFF
                for b in range(16):
                    if not mask >> b & 1:
                        continue
                    blk = out[pos:pos + BLOCK]
                    pos += BLOCK
                    self.assertNotEqual(blk, ZERO_BLOCK, "stored zero block at offset %d" % (pos - BLOCK))
                    start = cl * CLUSTER + b * BLOCK
                    self.assertLess(start, sizes[dev], "block beyond device end")
                    if start + BLOCK > sizes[dev]:
                        straddling_seen += 1
                        inside = sizes[dev] - start
                        self.assertEqual(blk[inside:], bytes(BLOCK - inside),
                                         "bytes past end of device %d not zero" % dev)
            self.assertEqual(pos, off + 512 + bc * BLOCK)
        self.assertGreater(straddling_seen, 0, "test VM should have a straddling block")

    def test_header_layout(self):
        vm = _Shared.get_vm()
        out = _Shared.output("everything")
        hdr = vf.build_header(vm.ctime, vf.canonical_configs(vm),
                              [(i, n, s) for i, (n, s) in zip(vm.dev_ids, vm.devices)], CANON_UUID)
        self.assertSameBytes(out[:len(hdr)], hdr, "header")
        hs = struct.unpack_from(">I", out, 56)[0]
        self.assertEqual(hs, len(hdr))
        self.assertEqual(hs % 512, 0)
        self.assertEqual(struct.unpack_from(">q", out, 24)[0], vm.ctime)

    def test_file_length_exact(self):
        out = _Shared.output("tail_garbage")
        hs, exts = walk(out)
        self.assertEqual(len(out), hs + sum(512 + bc * BLOCK for _, bc, _, _, _, _ in exts))

    def test_own_verify_accepts_output(self):
        path = self.put("o.vma", _Shared.output("proxmox"))
        r = support.run_tool("verify", path)
        self.assertEqual(r.returncode, 0, r.stderr)


class DevIdGapsTest(TmpMixin, unittest.TestCase):
    IDS = [2, 5, 7, 8, 11, 200]

    def test_gaps_any_order_identical_and_ids_kept(self):
        vm = _Shared.get_vm()
        want = canonical_for_vm(vm, dev_ids=self.IDS)
        outs = []
        for seed, kw in enumerate([dict(order="proxmox"),
                                   dict(order="random", per_extent="random", empty_extents=True),
                                   dict(order="reverse", uuid=CANON_UUID, per_extent=1)]):
            with self.subTest(kw=kw):
                arc = vf.write_archive(vm, None, seed=seed + 500, dev_ids=self.IDS, **kw)
                out = self.optimize(bytes(arc))
                outs.append(out)
                self.assertSameBytes(out, want, "optimize(dev_id gaps %r)" % kw)
                _, disks = vf.restore(out)
                self.assertEqual({k: bytes(v) for k, v in disks.items()}, disks_of(vm))
                _, exts = walk(out)
                ids = []
                for e in exts:
                    for s in e[3]:
                        d = s >> 32 & 0xFF
                        if d and d not in ids:
                            ids.append(d)
                self.assertEqual(ids, sorted(self.IDS, reverse=True))
        self.assertEqual(len(set(outs)), 1)


class TinyDevicesTest(TmpMixin, unittest.TestCase):
    CASES = [
        ("single-512", [("drive-scsi0", 512)]),
        ("single-4096", [("drive-scsi0", 4096)]),
        ("efidisk-and-tiny", [("drive-efidisk0", 540672), ("drive-scsi0", 512), ("drive-scsi1", 4096),
                              ("drive-scsi2", 65536), ("drive-scsi3", 65536 + 512)]),
        ("tiny-between-big", [("drive-sata0", MIB), ("drive-scsi0", 512), ("drive-scsi1", MIB + 512),
                              ("drive-tpmstate0-backup", 4096)]),
    ]

    def test_tiny_devices_survive(self):
        for n, (label, devices) in enumerate(self.CASES):
            vm = vf.make_vm(900 + n, devices=devices)
            for i, (_, size) in enumerate(devices):
                if size <= 65536 + 512:
                    fill_nonzero(vm, 1000 + 10 * n + i, i)
            want = canonical_for_vm(vm)
            for order in ("proxmox", "random", "sequential"):
                with self.subTest(case=label, order=order):
                    arc = vf.write_archive(vm, None, seed=n * 7 + len(order), order=order,
                                           per_extent=58 if order != "random" else "random")
                    out = self.optimize(bytes(arc))
                    configs, disks = vf.restore(out)
                    got = {k: bytes(v) for k, v in disks.items()}
                    self.assertEqual(sorted(got), sorted(name for name, _ in devices),
                                     "devices lost by optimize")
                    for name, data in disks_of(vm).items():
                        self.assertEqual(got[name], data, "content of %s differs" % name)
                    self.assertEqual([(a, bytes(b)) for a, b in configs],
                                     [(a, bytes(b)) for a, b in vm.configs])
                    self.assertSameBytes(out, want)


class DisklessTest(TmpMixin, unittest.TestCase):
    def test_diskless_header_plus_one_empty_extent(self):
        vm = vf.make_vm(31, devices=[])
        self.assertEqual(list(vm.devices), [])
        arc = bytes(vf.write_archive(vm, None, seed=3))
        hs = struct.unpack_from(">I", arc, 56)[0]
        u = arc[8:24]
        variants = {
            "header-only": arc[:hs],
            "one-empty": arc[:hs] + bytes(vf._extent_header(u, [], 0)),
            "two-empty": arc[:hs] + bytes(vf._extent_header(u, [], 0)) * 2,
            "fixture": arc,
        }
        want = canonical_for_vm(vm)
        outs = {}
        for key, data in variants.items():
            with self.subTest(variant=key):
                out = self.optimize(data)
                outs[key] = out
                self.assertSameBytes(out, want, "optimize(diskless %s)" % key)
                hs2, exts = walk(out)
                self.assertEqual(len(out), hs2 + 512)
                self.assertEqual(len(exts), 1)
                off, bc, eu, slots, magic, res = exts[0]
                self.assertEqual((bc, eu, magic, res), (0, CANON_UUID, b"VMAE", 0))
                self.assertTrue(all(s == 0 for s in slots))
                configs, disks = vf.restore(out)
                self.assertEqual(dict(disks), {})
                self.assertEqual([(a, bytes(b)) for a, b in configs],
                                 [(a, bytes(b)) for a, b in vm.configs])
        self.assertEqual(len(set(outs.values())), 1)


class StdioTest(TmpMixin, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.src = self.put("src.vma", _Shared.archive("proxmox"))
        self.want = _Shared.expected
        # standard output cannot carry the digests blob: the canonical form without it
        self.want_stdout = bytes(vf.canonical_archive_v3(_Shared.get_vm()))

    def test_stdin_to_stdout(self):
        with open(self.src, "rb") as f:
            r = support.run_tool("optimize", "-q", "-", "-", stdin=f)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertSameBytes(r.stdout, self.want_stdout)

    def test_file_to_stdout(self):
        r = support.run_tool("optimize", self.src, "-")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertSameBytes(r.stdout, self.want_stdout)
        self.assertEqual(self.read(self.src), _Shared.archive("proxmox"))

    def test_stdin_to_file(self):
        dst = self.p("dst.vma")
        with open(self.src, "rb") as f:
            r = support.run_tool("optimize", "-q", "-", dst, stdin=f)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertSameBytes(self.read(dst), self.want)

    def test_stdin_pipe_input(self):
        r = support.run_tool("optimize", "-q", "-", "-", input=_Shared.archive("random"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertSameBytes(r.stdout, self.want_stdout)

    def test_quiet_file_output_prints_nothing(self):
        r = support.run_tool("optimize", "-q", self.src, self.p("q.vma"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, b"")
        self.assertEqual(r.stderr, b"")

    def test_gzip_input(self):
        gz = self.put("src.vma.gz", gzip.compress(_Shared.archive("reverse"), 1))
        dst = self.p("out.vma")
        r = support.run_tool("optimize", "-q", gz, dst)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertSameBytes(self.read(dst), self.want)

    def test_gzip_output(self):
        dst = self.p("out.vma.gz")
        r = support.run_tool("optimize", "-q", self.src, dst)
        self.assertEqual(r.returncode, 0, r.stderr)
        raw = self.read(dst)
        self.assertEqual(raw[:2], b"\x1f\x8b")
        self.assertSameBytes(gzip.decompress(raw), self.want)

    def test_zstd_output(self):
        zstd = shutil.which("zstd")
        if not zstd:
            self.skipTest("zstd not installed")
        dst = self.p("out.vma.zst")
        r = support.run_tool("optimize", "-q", self.src, dst)
        self.assertEqual(r.returncode, 0, r.stderr)
        raw = self.read(dst)
        self.assertEqual(raw[:4], b"\x28\xb5\x2f\xfd")
        dec = subprocess.run([zstd, "-dc", dst], stdout=subprocess.PIPE, check=True).stdout
        self.assertSameBytes(dec, self.want)


class InPlaceTest(TmpMixin, unittest.TestCase):
    def test_in_place_rewrites_atomically_keeping_mode(self):
        path = self.put("vm.vma", _Shared.archive("proxmox"))
        os.chmod(path, 0o640)
        r = support.run_tool("optimize", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn(b"Traceback", r.stderr)
        self.assertSameBytes(self.read(path), _Shared.expected)
        self.assertEqual(os.stat(path).st_mode & 0o7777, 0o640)
        self.assertEqual(sorted(os.listdir(self.tmp)), ["vm.vma"], "temp file left behind")

    def test_in_place_unusual_mode_kept(self):
        path = self.put("vm.vma", _Shared.archive("random"))
        os.chmod(path, 0o604)
        r = support.run_tool("optimize", "-q", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(os.stat(path).st_mode & 0o7777, 0o604)
        self.assertSameBytes(self.read(path), _Shared.expected)

    def test_already_canonical_untouched(self):
        path = self.put("vm.vma", _Shared.expected)
        os.chmod(path, 0o600)
        os.utime(path, ns=(1_000_000_000_123_456_789, 1_000_000_000_123_456_789))
        before = os.stat(path)
        r = support.run_tool("optimize", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"already", (r.stdout + r.stderr).lower())
        self.assertNotIn(b"Traceback", r.stderr)
        after = os.stat(path)
        self.assertEqual(after.st_mtime_ns, before.st_mtime_ns, "mtime changed")
        self.assertEqual(after.st_ino, before.st_ino, "file was replaced")
        self.assertEqual(after.st_mode, before.st_mode)
        self.assertSameBytes(self.read(path), _Shared.expected)
        self.assertEqual(sorted(os.listdir(self.tmp)), ["vm.vma"])

    def test_in_place_with_tmpdir(self):
        work = os.path.join(self.tmp, "work")
        os.mkdir(work)
        path = self.put("vm.vma", _Shared.archive("reverse"))
        r = support.run_tool("optimize", "-q", "--tmpdir", work, path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertSameBytes(self.read(path), _Shared.expected)
        self.assertEqual(os.listdir(work), [])
        self.assertEqual(sorted(os.listdir(self.tmp)), ["vm.vma", "work"])


    def test_in_place_gzip_stays_gzip(self):
        path = self.put("vm.vma.gz", gzip.compress(_Shared.archive("proxmox"), 1))
        r = support.run_tool("optimize", "-q", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        raw = self.read(path)
        self.assertEqual(raw[:2], b"\x1f\x8b", "in-place result of a .gz archive is not gzip")
        self.assertSameBytes(gzip.decompress(raw), _Shared.expected)
        self.assertEqual(sorted(os.listdir(self.tmp)), ["vm.vma.gz"])

    def test_in_place_gzip_already_canonical_untouched(self):
        raw = gzip.compress(_Shared.expected, 1)
        path = self.put("vm.vma.gz", raw)
        os.utime(path, ns=(1_100_000_000_000_000_000, 1_100_000_000_000_000_000))
        before = os.stat(path)
        r = support.run_tool("optimize", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"already", (r.stdout + r.stderr).lower())
        self.assertEqual(self.read(path), raw)
        self.assertEqual(os.stat(path).st_mtime_ns, before.st_mtime_ns)

    def test_extent_after_the_last_device_is_not_canonical(self):
        """The canonical bytes plus one more (empty) extent that Proxmox's reader accepts: not the
        canonical form, so optimize in place rewrites it to exactly the canonical bytes."""
        extra = vf.encode_extent(vf.CANONICAL_UUID, [])
        path = self.put("vm.vma", _Shared.expected + extra)
        r = support.run_tool("verify", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = support.run_tool("info", "--json", path)
        self.assertFalse(json.loads(r.stdout)["canonical"], r.stdout)
        r = support.run_tool("optimize", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertSameBytes(self.read(path), _Shared.expected)

    def test_json_file_to_file(self):
        src = self.put("vm.vma", _Shared.archive("proxmox"))
        dst = os.path.join(self.tmp, "out.vma")
        r = support.run_tool("optimize", "--json", src, dst)
        self.assertEqual(r.returncode, 0, r.stderr)
        result = json.loads(r.stdout)
        self.assertEqual((result["file"], result["output"], result["result"]), (src, dst, "optimized"))
        self.assertEqual((result["bytes_before"], result["bytes_after"]),
                         (os.path.getsize(src), len(_Shared.expected)))
        self.assertSameBytes(self.read(dst), _Shared.expected)

    def test_in_place_gzip_already_canonical_writes_nothing(self):
        """A compressed canonical file is checked before anything is written: no output file is ever
        created (the fault point where one would be created is never reached)."""
        path = self.put("vm.vma.gz", gzip.compress(_Shared.expected, 1))
        r = support.run_tool("optimize", path, env={"VMA_TOOL_FAULT": "output-created:INT"})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"already canonical", r.stdout)

    def test_in_place_gzip_old_layout_rewritten(self):
        """Canonical uuid and header but the version 1 extent layout: found on the first extents, then
        rewritten; the result is the canonical form."""
        vm = vf.make_vm(5, devices=[("drive-scsi0", 3 * 1024 * 1024)], fill=0.5)
        path = self.put("vm.vma.gz", gzip.compress(bytes(vf.canonical_archive_v1(vm)), 1))
        r = support.run_tool("optimize", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"optimized", r.stdout)
        self.assertSameBytes(gzip.decompress(self.read(path)), bytes(vf.canonical_archive(vm)))


class SameFileTest(TmpMixin, unittest.TestCase):
    def setUp(self):
        super().setUp()
        self.data = _Shared.archive("sequential")
        self.src = self.put("src.vma", self.data)
        os.utime(self.src, ns=(1_200_000_000_000_000_000, 1_200_000_000_000_000_000))
        self.mtime = os.stat(self.src).st_mtime_ns

    def check_refused(self, *args, cwd=None, extra=None):
        r = support.run_tool("optimize", *args, cwd=cwd)
        support.assert_clean_error(self, r, code=2)
        self.assertEqual(self.read(self.src), self.data, "SRC modified")
        self.assertEqual(os.stat(self.src).st_mtime_ns, self.mtime, "SRC mtime changed")
        if extra:
            self.assertEqual(self.read(extra), self.data)

    def test_same_path(self):
        self.check_refused(self.src, self.src)

    def test_dot_slash_path(self):
        self.check_refused("src.vma", "./src.vma", cwd=self.tmp)

    def test_relative_vs_absolute(self):
        self.check_refused(self.src, "src.vma", cwd=self.tmp)

    def test_dotdot_path(self):
        os.mkdir(self.p("sub"))
        self.check_refused(self.src, os.path.join(self.tmp, "sub", "..", "src.vma"))

    def test_hard_link(self):
        link = self.p("hard.vma")
        os.link(self.src, link)
        self.check_refused(self.src, link, extra=link)

    def test_symlink(self):
        link = self.p("sym.vma")
        os.symlink(self.src, link)
        self.check_refused(self.src, link)
        self.assertTrue(os.path.islink(link))

    def test_symlink_as_source(self):
        link = self.p("sym.vma")
        os.symlink("src.vma", link)
        self.check_refused(link, self.src)


def _limit_fsize(limit):
    def fn():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return fn


def _tool_cmd(*args):
    return support.tool_argv() + list(args)


class FaultInjectionTest(TmpMixin, unittest.TestCase):
    def setUp(self):
        super().setUp()
        if resource is None:
            self.skipTest("no resource module")

    def test_rlimit_fsize_in_place(self):
        data = _Shared.archive("proxmox")
        self.assertGreater(len(data), 600 * 1024)
        path = self.put("vm.vma", data)
        r = subprocess.run(_tool_cmd("optimize", path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           preexec_fn=_limit_fsize(256 * 1024), timeout=120)
        self.assertNotEqual(r.returncode, 0)
        support.assert_clean_error(self, r)
        self.assertEqual(self.read(path), data, "original modified")
        self.assertEqual(sorted(os.listdir(self.tmp)), ["vm.vma"], "temp file left behind")
        self.assertEqual(r.returncode, 3, "I/O error should exit 3 (README.md \"Exit status\")")

    def test_rlimit_fsize_with_tmpdir(self):
        data = _Shared.archive("random")
        work = os.path.join(self.tmp, "work")
        os.mkdir(work)
        path = self.put("vm.vma", data)
        r = subprocess.run(_tool_cmd("optimize", "--tmpdir", work, path), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, preexec_fn=_limit_fsize(256 * 1024), timeout=120)
        self.assertNotEqual(r.returncode, 0)
        support.assert_clean_error(self, r)
        self.assertEqual(self.read(path), data)
        self.assertEqual(os.listdir(work), [])
        self.assertEqual(sorted(os.listdir(self.tmp)), ["vm.vma", "work"])

    def test_rlimit_fsize_to_dst(self):
        data = _Shared.archive("proxmox")
        path = self.put("vm.vma", data)
        dst = self.p("out.vma")
        r = subprocess.run(_tool_cmd("optimize", path, dst), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           preexec_fn=_limit_fsize(256 * 1024), timeout=120)
        self.assertNotEqual(r.returncode, 0)
        support.assert_clean_error(self, r)
        self.assertEqual(self.read(path), data)


# SIGINT/SIGTERM/SIGKILL during optimize (in place, compressed, with a scratch file) are in
# test_faults.py, one harness over deterministic VMA_TOOL_FAULT points for every command.


class InvalidInputTest(TmpMixin, unittest.TestCase):
    VM = None

    @classmethod
    def vm(cls):
        if cls.VM is None:
            cls.VM = vf.make_vm(55, devices=[("drive-scsi0", 20 * CLUSTER), ("drive-scsi1", 6 * CLUSTER + 512)])
        return cls.VM

    def refuse(self, data, *keywords):
        src = self.put("bad.vma", data)
        dst = self.p("out.vma")
        r = support.run_tool("optimize", src, dst)
        support.assert_clean_error(self, r, *keywords, code=1)
        self.assertFalse(os.path.exists(dst), "DST written for an invalid archive")
        self.assertEqual(sorted(os.listdir(self.tmp)), ["bad.vma"])
        self.assertEqual(self.read(src), data)

    def test_missing_cluster(self):
        self.refuse(bytes(vf.write_archive(self.vm(), None, seed=1, omit=[(0, 7)])), "missing cluster")

    def test_missing_last_cluster_of_small_device(self):
        self.refuse(bytes(vf.write_archive(self.vm(), None, seed=2, omit=[(1, 6)])), "missing cluster")

    def test_duplicate_cluster(self):
        self.refuse(bytes(vf.write_archive(self.vm(), None, seed=3, duplicate=[(1, 2)])), "duplicate")

    def test_extent_checksum(self):
        data = bytearray(vf.write_archive(self.vm(), None, seed=4, order="sequential", per_extent=5))
        off = vf.parse_layout(bytes(data)).extents[1].offset
        data[off + 100] ^= 0x01
        self.refuse(bytes(data), "extent checksum")

    def test_truncated(self):
        data = bytes(vf.write_archive(self.vm(), None, seed=5))
        self.refuse(data[:-100], "truncated")

    def test_invalid_in_place_untouched(self):
        data = bytes(vf.write_archive(self.vm(), None, seed=6, omit=[(0, 0)]))
        path = self.put("bad.vma", data)
        mtime = os.stat(path).st_mtime_ns
        r = support.run_tool("optimize", path)
        support.assert_clean_error(self, r, "missing cluster", code=1)
        self.assertEqual(self.read(path), data)
        self.assertEqual(os.stat(path).st_mtime_ns, mtime)
        self.assertEqual(os.listdir(self.tmp), ["bad.vma"])


CONF = (b"boot: order=scsi0\n"
        b"cores: 2\n"
        b"memory: 2048\n"
        b"name: oldname\n"
        b"net0: virtio=AA:BB:CC:DD:EE:FF,bridge=vmbr0\n"
        b"ostype: l26\n"
        b"scsi0: local-lvm:vm-100-disk-0,size=1M\n"
        b"scsi1: local-lvm:vm-100-disk-1,size=512K\n"
        b"#qmdump#map:scsi0:drive-scsi0:local-lvm:raw:\n"
        b"#qmdump#map:scsi1:drive-scsi1:local-lvm:raw:\n")
FW = b"[OPTIONS]\nenable: 1\n"


class UpdateConfigTest(TmpMixin, unittest.TestCase):
    VM = None

    @classmethod
    def vm(cls):
        if cls.VM is None:
            cls.VM = vf.make_vm(77, devices=[("drive-scsi0", MIB), ("drive-scsi1", 512 * 1024)],
                                configs=[("qemu-server.conf", CONF), ("qemu-server.fw", FW)])
        return cls.VM

    def setUp(self):
        super().setUp()
        vm = self.vm()
        self.assertEqual([(n, bytes(d)) for n, d in vm.configs],
                         [("qemu-server.conf", CONF), ("qemu-server.fw", FW)])
        self.src = self.put("src.vma", bytes(vf.write_archive(vm, None, seed=9)))

    def configs_of(self, data):
        configs, disks = vf.restore(data)
        self.assertEqual({k: bytes(v) for k, v in disks.items()}, disks_of(self.vm()))
        return [(n, bytes(d)) for n, d in configs]

    def test_update_name(self):
        out = self.optimize(self.read(self.src), "-u", "name=foo")
        new_conf = CONF.replace(b"name: oldname\n", b"name: foo\n")
        self.assertEqual(self.configs_of(out), [("qemu-server.conf", new_conf), ("qemu-server.fw", FW)])
        self.assertSameBytes(out, canonical_for_vm(self.vm(), configs=[("qemu-server.conf", new_conf),
                                                                        ("qemu-server.fw", FW)]))

    def test_update_two_keys(self):
        out = self.optimize(self.read(self.src), "-u", "name=foo", "-u", "cores=8")
        new_conf = CONF.replace(b"name: oldname\n", b"name: foo\n").replace(b"cores: 2\n", b"cores: 8\n")
        self.assertEqual(self.configs_of(out)[0], ("qemu-server.conf", new_conf))

    def test_unknown_key_refused(self):
        dst = self.p("out.vma")
        r = support.run_tool("optimize", "-u", "nosuchkey=1", self.src, dst)
        support.assert_clean_error(self, r, code=2)
        self.assertFalse(os.path.exists(dst))

    def test_unknown_key_with_add(self):
        out = self.optimize(self.read(self.src), "--add", "-u", "nosuchkey=1")
        conf = dict(self.configs_of(out))["qemu-server.conf"]
        lines = conf.split(b"\n")
        self.assertIn(b"nosuchkey: 1", lines)
        self.assertEqual(sorted(l for l in lines if l != b"nosuchkey: 1"), sorted(CONF.split(b"\n")))
        self.assertEqual(dict(self.configs_of(out))["qemu-server.fw"], FW)

    def test_malformed_update_refused(self):
        dst = self.p("out.vma")
        r = support.run_tool("optimize", "-u", "name", self.src, dst)
        support.assert_clean_error(self, r, code=2)
        self.assertFalse(os.path.exists(dst))

    def test_update_in_place(self):
        r = support.run_tool("optimize", "-q", "-u", "name=bar", self.src)
        self.assertEqual(r.returncode, 0, r.stderr)
        conf = dict(self.configs_of(self.read(self.src)))["qemu-server.conf"]
        self.assertEqual(conf, CONF.replace(b"name: oldname\n", b"name: bar\n"))


class ZeroBlockTest(TmpMixin, unittest.TestCase):
    """optimize looks for all-zero 4 KiB blocks with one search per extent; runs of
    zeros that straddle a block boundary are data and must be kept."""

    def test_search_matches_brute_force(self):
        tool = support.load_tool_module()
        rnd = random.Random(5)
        for case in range(300):
            blocks = rnd.randint(1, 40)
            length = blocks * BLOCK
            buf = bytearray(rnd.getrandbits(8 * (length + 2 * BLOCK)).to_bytes(length + 2 * BLOCK, "little")
                            .replace(b"\0", b"\x01"))
            for _ in range(rnd.randint(0, 4)):      # zero runs anywhere, of any length
                start = rnd.randrange(length + BLOCK)
                run = rnd.choice((BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, rnd.randrange(3 * BLOCK)))
                end = min(start + run, len(buf))
                buf[start:end] = bytes(end - start)
            want = [buf[at:at + BLOCK] == ZERO_BLOCK for at in range(0, length, BLOCK)]
            self.assertEqual(tool.zero_blocks(buf, length), want, "case %d" % case)

    def test_straddling_zero_runs_kept_aligned_zero_blocks_dropped(self):
        size = 3 * 59 * CLUSTER + 5 * BLOCK + 512    # three full extents, a short one, a straddling block
        rnd = random.Random(9)
        disk = bytearray(rnd.getrandbits(8 * size).to_bytes(size, "little").replace(b"\0", b"\x07"))
        for cluster in range(0, size // CLUSTER, 3):
            base = cluster * CLUSTER
            disk[base + BLOCK - 100:base + 2 * BLOCK + 100] = bytes(BLOCK + 200)    # not aligned
        for cluster in range(1, size // CLUSTER, 17):
            base = cluster * CLUSTER + 5 * BLOCK
            disk[base:base + BLOCK] = ZERO_BLOCK                                    # aligned
        nearly_zero = bytearray(40 * CLUSTER)       # no zero block, but zero runs just under 4 KiB
        nearly_zero[1000::4000] = b"\x01" * len(nearly_zero[1000::4000])
        disk[59 * CLUSTER:99 * CLUSTER] = nearly_zero
        devices = [("drive-scsi0", size)]
        vm = vf.VM(1700000000, vf.default_configs(1, devices), devices, [disk])
        want = canonical_for_vm(vm)
        for quirks in (dict(), dict(stored_zero_blocks=True)):
            src = vf.write_archive(vm, seed=3, order="random", **quirks)
            self.assertSameBytes(self.optimize(src), want, "optimize output %r" % quirks)
            unpacked = self.p("unpacked-%d" % len(quirks))
            r = support.run_tool("unpack", "-q", self.p("in.vma"), unpacked)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertSameBytes(self.read(os.path.join(unpacked, "disk-drive-scsi0.raw")), bytes(disk),
                                 "unpacked image %r" % quirks)
        packed = self.p("packed.vma")
        r = support.run_tool("pack", "-q", "--ctime", str(vm.ctime), unpacked, packed)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertSameBytes(self.read(packed), want, "pack output")


if __name__ == "__main__":
    unittest.main()
