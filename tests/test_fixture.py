"""Self-tests of the fixture writer / oracle (tests/vmafixture.py) and of tests/support.py."""

import hashlib
import io
import itertools
import os
import struct
import subprocess
import sys
import time
import unittest

import support
import vmafixture as F

ORDERS = ("proxmox", "sequential", "reverse", "random")
SEEDS = (0, 1, 7)

_VMS = {}


def vm_for(seed):
    if seed not in _VMS:
        _VMS[seed] = F.make_vm(seed)
    return _VMS[seed]


def popcount(x):
    return bin(x).count("1")


def md5(b):
    return hashlib.md5(b, usedforsecurity=False).digest()


class RoundTrip(support.TempDir, unittest.TestCase):
    def check(self, vm, data, **kw):
        F.assert_same_content(self, data, vm)
        lay = F.parse_layout(data)
        self.assertEqual(lay.end, len(data))
        self.assertEqual(lay.size, len(data))
        # every cluster exactly once
        seen = [(d, c) for _, _, _, d, c, _ in lay.entries()]
        ids = kw.get("dev_ids") or vm.dev_ids
        want = sorted((ids[i], c) for i, dev in enumerate(vm.devices)
                      for c in range(F._nclusters(dev.size)))
        self.assertEqual(sorted(seen), want)
        return lay

    def test_orders_and_quirks(self):
        flags = ("empty_extents", "stored_zero_blocks", "tail_garbage")
        for seed in SEEDS:
            vm = vm_for(seed)
            for order in ORDERS:
                for per_extent in (58, 1, 59, "random", 13):
                    for combo in itertools.product((False, True), repeat=3):
                        if per_extent not in (58, "random") and any(combo) and not all(combo):
                            continue
                        kw = dict(zip(flags, combo))
                        with self.subTest(seed=seed, order=order, per_extent=per_extent, **kw):
                            data = F.write_archive(vm, None, seed=seed, order=order,
                                                   per_extent=per_extent, **kw)
                            lay = self.check(vm, data)
                            if per_extent != "random":
                                for e in lay.extents:
                                    self.assertLessEqual(len(e.slots), per_extent)

    def test_dev_id_gaps(self):
        vm = vm_for(1)
        for order in ORDERS:
            data = F.write_archive(vm, None, seed=4, order=order, dev_ids=[3, 9, 254])
            lay = self.check(vm, data, dev_ids=[3, 9, 254])
            self.assertEqual(sorted(lay.devices), [3, 9, 254])
            self.assertEqual(lay.devices[9], tuple(vm.devices[1]))

    def test_explicit_uuid(self):
        u = bytes(range(16))
        data = F.write_archive(vm_for(0), None, uuid=u)
        lay = F.parse_layout(data)
        self.assertEqual(lay.uuid, u)
        self.assertTrue(all(e.uuid == u for e in lay.extents))
        data2 = F.write_archive(vm_for(0), None, uuid=F.VMA_UUID_STR(u))
        self.assertEqual(data, data2)

    def test_file_backed_and_dest_kinds(self):
        tmp = self
        vm_mem = F.make_vm(5, fill=0.6)
        vm_file = F.make_vm(5, fill=0.6, directory=tmp.tmp)
        self.assertTrue(all(isinstance(d, str) for d in vm_file.disks))
        self.assertIsNone(F.contents_diff(vm_mem, vm_file))
        for order in ORDERS:
            ref = F.write_archive(vm_mem, None, seed=2, order=order, tail_garbage=True)
            path = tmp.tmp_path("a.vma")
            n = F.write_archive(vm_file, path, seed=2, order=order, tail_garbage=True)
            self.assertEqual(n, os.path.getsize(path))
            with open(path, "rb") as f:
                self.assertEqual(f.read(), ref)
            bio = io.BytesIO()
            n2 = F.write_archive(vm_mem, bio, seed=2, order=order, tail_garbage=True)
            self.assertEqual(n2, len(ref))
            self.assertEqual(bio.getvalue(), ref)
            F.assert_same_content(self, path, vm_file)

    def test_diskless(self):
        vm = F.make_vm(3, devices=[])
        data = F.write_archive(vm, None)
        lay = F.parse_layout(data)
        self.assertEqual(len(data), lay.header_size + 512)
        self.assertEqual(len(lay.extents), 1)
        self.assertEqual(lay.extents[0].block_count, 0)
        configs, disks = F.restore(data)
        self.assertEqual(configs, vm.configs)
        self.assertEqual(disks, {})
        # no configs, no devices: still a valid (>= 512-byte) blob area
        vm0 = F.VM(0, [], [], [])
        data0 = F.write_archive(vm0, None)
        self.assertEqual(F.parse_layout(data0).header_size, 12288 + 512)
        self.assertEqual(F.restore(data0), ([], {}))

    def test_vmstate_stays_sequential(self):
        vm = F.make_vm(2, devices=[("drive-scsi0", 1 << 20), ("vmstate", 40 * 65536 + 4096)])
        for order in ORDERS:
            data = F.write_archive(vm, None, seed=9, order=order)
            F.assert_same_content(self, data, vm)
            lay = F.parse_layout(data)
            vs = [c for _, _, _, d, c, _ in lay.entries() if d == 2]
            self.assertEqual(vs, sorted(vs))

    def test_odd_sizes(self):
        devs = [("drive-a", 512), ("drive-b", 4096), ("drive-c", 65536), ("drive-d", 65536 + 512),
                ("drive-e", 5 * 65536 - 512), ("drive-f", 4095 * 1), ("drive-g", 1)]
        for fill in (0.0, 0.5, 1.0):
            vm = F.make_vm(11, devices=devs, fill=fill)
            for order in ORDERS:
                for tg in (False, True):
                    data = F.write_archive(vm, None, seed=1, order=order, tail_garbage=tg,
                                           per_extent="random", empty_extents=True)
                    with self.subTest(fill=fill, order=order, tail_garbage=tg):
                        self.check(vm, data)


class WriterProperties(unittest.TestCase):
    def test_proxmox_like_defaults(self):
        vm = vm_for(0)
        data = F.write_archive(vm, None, seed=0)
        lay = F.parse_layout(data)
        sizes = {i + 1: d.size for i, d in enumerate(vm.devices)}
        disks = {i + 1: vm.disks[i] for i in range(len(vm.devices))}
        for e in lay.extents[:-1]:
            self.assertEqual(len(e.slots), 58)
        self.assertLessEqual(len(lay.extents[-1].slots), 58)
        for e in lay.extents:
            raw = bytearray(e.raw)
            self.assertEqual(e.magic, b"VMAE")
            self.assertEqual(e.reserved1, 0)
            self.assertEqual(e.block_count, sum(popcount(m) for m, _, _ in e.slots))
            self.assertTrue(all(d != 0 for _, d, _ in e.slots))
            raw[24:40] = bytes(16)
            self.assertEqual(md5(bytes(raw)), e.md5)
        zero_clusters = 0
        for ei, si, mask, dev_id, cl, pos in lay.entries():
            size = sizes[dev_id]
            disk = disks[dev_id]
            base = cl * 65536
            k = 0
            for b in range(16):
                boff = base + b * 4096
                blk = bytes(disk[boff:boff + 4096])
                if boff >= size:
                    self.assertFalse(mask >> b & 1, "bit set past device end")
                    continue
                blk = blk + bytes(4096 - len(blk))
                if mask >> b & 1:
                    stored = data[pos + k * 4096:pos + (k + 1) * 4096]
                    self.assertEqual(stored, blk)
                    self.assertNotEqual(stored, bytes(4096), "all-zero block stored")
                    k += 1
                else:
                    self.assertEqual(blk, bytes(4096))
            if mask == 0:
                zero_clusters += 1
        self.assertGreater(zero_clusters, 0)

    def test_per_extent_fixed_and_random(self):
        vm = vm_for(1)
        total = sum(F._nclusters(d.size) for d in vm.devices)
        for k in (1, 2, 17, 58, 59):
            lay = F.parse_layout(F.write_archive(vm, None, seed=1, per_extent=k))
            counts = [len(e.slots) for e in lay.extents]
            self.assertEqual(sum(counts), total)
            self.assertTrue(all(c == k for c in counts[:-1]), (k, counts))
            self.assertTrue(1 <= counts[-1] <= k)
        lay = F.parse_layout(F.write_archive(vm, None, seed=1, per_extent="random"))
        counts = [len(e.slots) for e in lay.extents]
        self.assertEqual(sum(counts), total)
        self.assertTrue(all(1 <= c <= 59 for c in counts))
        self.assertGreater(len(set(counts)), 1)
        with self.assertRaises(ValueError):
            F.write_archive(vm, None, per_extent=60)
        with self.assertRaises(ValueError):
            F.write_archive(vm, None, per_extent=0)

    def test_59_slots_full_extent(self):
        vm = F.make_vm(4, devices=[("drive-scsi0", 59 * 65536)], fill=1.0)
        vm.disks[0][:] = os.urandom(59 * 65536)
        data = F.write_archive(vm, None, per_extent=59, order="sequential")
        lay = F.parse_layout(data)
        self.assertEqual(len(lay.extents), 1)
        self.assertEqual(lay.extents[0].block_count, 944)
        F.assert_same_content(self, data, vm)

    def test_header_md5_and_fields(self):
        vm = vm_for(7)
        data = F.write_archive(vm, None, seed=7)
        lay = F.parse_layout(data)
        hs = lay.header_size
        self.assertEqual(hs % 512, 0)
        h = bytearray(data[:hs])
        self.assertEqual(h[:4], b"VMA\0")
        self.assertEqual(struct.unpack_from(">I", h, 4)[0], 1)
        self.assertEqual(struct.unpack_from(">q", h, 24)[0], vm.ctime)
        self.assertEqual(struct.unpack_from(">I", h, 48)[0], 12288)
        stored = bytes(h[32:48])
        h[32:48] = bytes(16)
        self.assertEqual(md5(bytes(h)), stored)
        self.assertEqual(bytes(h[60:2044]), bytes(1984))
        self.assertEqual(lay.configs, vm.configs)
        self.assertEqual(lay.devices, {i + 1: tuple(d) for i, d in enumerate(vm.devices)})
        # fix_header_md5 restores a damaged checksum
        d2 = bytearray(data)
        d2[40] ^= 0xFF
        self.assertRaisesRegex(ValueError, "header checksum", F.restore, bytes(d2))
        F.fix_header_md5(d2)
        self.assertEqual(bytes(d2), data)

    def test_blob_layout_worked_example(self):
        # blobs of 9+3000+7+700+17+115+12+15 bytes -> blob_buffer_size 3892, header_size 16896
        configs = [("abcd.cfg", b"x" * 3000), ("a.conf", b"y" * 700),
                   ("qemu-server.conf", b"z" * 115)]
        devices = [(1, "drive-scsi0", 1 << 20), (2, "drive-efidisk0", 540672)]
        hdr = F.build_header(1700000000, configs, devices, bytes(16))
        bbo, bbs, hs = struct.unpack_from(">III", hdr, 48)
        self.assertEqual((bbo, bbs, hs), (12288, 3892, 16896))
        self.assertEqual(len(hdr), 16896)
        blob = hdr[12288:]
        self.assertEqual(blob[0], 0)
        # walk the chain: LE lengths, contiguous from 1
        pos, chain = 1, []
        while pos + 2 <= bbs:
            ln = blob[pos] | blob[pos + 1] << 8
            chain.append((pos, blob[pos + 2:pos + 2 + ln]))
            pos += ln + 2
        self.assertEqual(pos, bbs)
        self.assertEqual([len(b) for _, b in chain], [9, 3000, 7, 700, 17, 115, 12, 15])
        self.assertEqual(chain[0][1], b"abcd.cfg\0")
        self.assertEqual(chain[4][1], b"qemu-server.conf\0")
        self.assertEqual(chain[6][1], b"drive-scsi0\0")
        self.assertEqual(chain[7][1], b"drive-efidisk0\0")
        self.assertEqual(blob[bbs:], bytes(len(blob) - bbs))
        names = struct.unpack_from(">3I", hdr, 2044)
        datas = struct.unpack_from(">3I", hdr, 3068)
        self.assertEqual(names, (chain[0][0], chain[2][0], chain[4][0]))
        self.assertEqual(datas, (chain[1][0], chain[3][0], chain[5][0]))
        self.assertEqual(struct.unpack_from(">IIQQQ", hdr, 4096 + 32),
                         (chain[6][0], 0, 1 << 20, 0, 0))
        self.assertEqual(struct.unpack_from(">IIQQQ", hdr, 4096 + 64),
                         (chain[7][0], 0, 540672, 0, 0))
        # the same through write_archive
        vm = F.make_vm(0, devices=[("drive-scsi0", 1 << 20), ("drive-efidisk0", 540672)],
                       configs=configs)
        data = F.write_archive(vm, None)
        self.assertEqual(struct.unpack_from(">III", data, 48), (12288, 3892, 16896))
        self.assertEqual(F.restore(data)[0], configs)

    def test_sample_like_header(self):
        # the real sample: a 417-byte config and one device -> blob_buffer_size 453, header 12800
        vm = F.make_vm(0, devices=[("drive-scsi0", 1 << 20)],
                       configs=[("qemu-server.conf", b"c" * 417)])
        data = F.write_archive(vm, None)
        self.assertEqual(struct.unpack_from(">III", data, 48), (12288, 453, 12800))
        self.assertEqual(data[12288 + 439 + 2:12288 + 439 + 14], b"drive-scsi0\0")

    def test_determinism(self):
        a = F.make_vm(42)
        b = F.make_vm(42)
        self.assertIsNone(F.contents_diff(a, b))
        self.assertEqual(a.ctime, b.ctime)
        for order in ORDERS:
            kw = dict(order=order, per_extent="random", empty_extents=True,
                      stored_zero_blocks=True, tail_garbage=True)
            self.assertEqual(F.write_archive(a, None, seed=5, **kw),
                             F.write_archive(b, None, seed=5, **kw))
        m1 = F.mutate_vm(a, 3)
        m2 = F.mutate_vm(b, 3)
        self.assertIsNone(F.contents_diff(m1, m2))

    def test_different_seeds(self):
        vm = vm_for(0)
        lays = [F.parse_layout(F.write_archive(vm, None, seed=s)) for s in range(4)]
        self.assertEqual(len({l.uuid for l in lays}), 4)
        orders = {tuple((d, c) for _, _, _, d, c, _ in l.entries()) for l in lays}
        self.assertEqual(len(orders), 4)
        for order in ("random",):
            o1 = F.archive_order(vm, 1, order)
            o2 = F.archive_order(vm, 2, order)
            self.assertNotEqual(o1, o2)
        self.assertNotEqual(F.make_vm(1).disks[1], F.make_vm(2).disks[1])

    def test_proxmox_order_shape(self):
        vm = F.make_vm(0, devices=[("drive-efidisk0", 540672), ("drive-scsi0", 8 << 20),
                                   ("drive-scsi1", 6 << 20)])
        interleaved = cbw = 0
        for seed in range(12):
            seq = F.archive_order(vm, seed, "proxmox")
            self.assertEqual(sorted(seq), sorted(F.archive_order(vm, seed, "sequential")))
            devs = [d for d, _ in seq]
            # devices one after another, highest dev_id first (ignoring the few CBW clusters)
            runs = [d for i, d in enumerate(devs) if i == 0 or devs[i - 1] != d]
            if len(runs) > 3:
                cbw += 1
            self.assertLessEqual(len(runs), 3 + 2 * 3)
            dev1 = [c for d, c in seq if d == 1]
            if dev1 != sorted(dev1):
                interleaved += 1
            # the bulk of device 2 comes before the bulk of device 1, then device 0
            med = {d: sorted(i for i, x in enumerate(devs) if x == d)[len(
                [x for x in devs if x == d]) // 2] for d in (0, 1, 2)}
            self.assertLess(med[2], med[1])
            self.assertLess(med[1], med[0])
        self.assertGreater(interleaved, 6)
        self.assertGreater(cbw, 3)

    def test_sequential_reverse(self):
        vm = F.make_vm(0, devices=[("a", 3 * 65536), ("b", 65536)])
        self.assertEqual(F.archive_order(vm, 0, "sequential"), [(0, 0), (0, 1), (0, 2), (1, 0)])
        self.assertEqual(F.archive_order(vm, 0, "reverse"), [(1, 0), (0, 2), (0, 1), (0, 0)])
        self.assertEqual(F.archive_order(vm, 0, "sequential", dev_ids=[5, 2]),
                         [(1, 0), (0, 0), (0, 1), (0, 2)])
        with self.assertRaises(ValueError):
            F.archive_order(vm, 0, "bogus")

    def test_tail_garbage(self):
        vm = vm_for(0)
        size = vm.devices[1].size               # drive-scsi0, not a 4K multiple
        self.assertNotEqual(size % 4096, 0)
        last_cl = (size - 1) // 65536
        last_bit = ((size - 1) % 65536) // 4096
        tail = []
        for tg in (False, True):
            data = F.write_archive(vm, None, seed=1, tail_garbage=tg)
            lay = F.parse_layout(data)
            ei, si, mask, pos = lay.locate(2, last_cl)
            self.assertTrue(mask >> last_bit & 1)
            self.assertEqual(mask >> (last_bit + 1), 0)
            k = popcount(mask & ((1 << last_bit) - 1))
            blk = data[pos + k * 4096:pos + (k + 1) * 4096]
            inside = size % 4096
            self.assertEqual(blk[:inside], bytes(vm.disks[1][size - inside:]))
            tail.append(blk[inside:])
            F.assert_same_content(self, data, vm)
        self.assertEqual(tail[0], bytes(len(tail[0])))
        self.assertNotEqual(tail[1], bytes(len(tail[1])))

    def test_stored_zero_blocks(self):
        vm = vm_for(1)
        data = F.write_archive(vm, None, seed=1, stored_zero_blocks=True)
        lay = F.parse_layout(data)
        zero_stored = 0
        for e in lay.extents:
            for b in range(e.block_count):
                o = e.data_offset + b * 4096
                if data[o:o + 4096] == bytes(4096):
                    zero_stored += 1
        self.assertGreater(zero_stored, 0)
        F.assert_same_content(self, data, vm)

    def test_empty_extents(self):
        vm = vm_for(1)
        data = F.write_archive(vm, None, seed=1, empty_extents=True)
        lay = F.parse_layout(data)
        empties = [e for e in lay.extents if not e.slots]
        self.assertGreater(len(empties), 0)
        self.assertTrue(all(e.block_count == 0 for e in empties))

    def test_canonical_v1(self):
        # the previous canonical layout (FORMAT.md "Versions 1 and 2 (not canonical any more)")
        vm = vm_for(7)
        data = F.canonical_archive_v1(vm)
        lay = F.parse_layout(data)
        self.assertEqual(lay.uuid, F.CANONICAL_UUID)
        self.assertEqual(F.VMA_UUID_STR(lay.uuid), "12345678-aabb-ccdd-eeff-aabbccddeeff")
        seq = [(d, c) for _, _, _, d, c, _ in lay.entries()]
        self.assertEqual(seq, sorted(seq))
        for e in lay.extents:
            self.assertEqual(len({d for _, d, _ in e.slots}), 1)
            self.assertLessEqual(len(e.slots), 59)
        self.assertEqual(len(lay.extents), sum(-(-F._nclusters(d.size) // 59) for d in vm.devices))
        F.assert_same_content(self, data, vm)
        self.assertNotEqual(data, F.canonical_archive(vm))
        empty = F.canonical_archive_v1(F.make_vm(1, devices=[]))
        self.assertEqual(len(empty), F.parse_layout(empty).header_size + 512)

    def test_speed(self):
        vm = vm_for(0)
        t = time.perf_counter()
        for order in ORDERS:
            F.write_archive(vm, None, seed=3, order=order)
        self.assertLess((time.perf_counter() - t) / 4, 0.1)


def _data_cluster(kind, n=F.CLUSTER):
    """n bytes (a cluster or the in-device part of the last one) that are not all zero."""
    if kind % 4 == 0:                               # full random cluster
        b = bytearray(os.urandom(n))
        b[0] |= 1
        return b
    b = bytearray(n)
    if kind % 4 == 1:                               # one block in the middle
        o = min(7 * 4096, (n - 1) // 4096 * 4096)
        b[o:o + 100] = b"\x5a" * len(b[o:o + 100])
    elif kind % 4 == 2:                             # a single byte at the very end
        b[n - 1] = 0x01
    else:                                           # first and last block
        b[0] = 0x11
        b[n - 1] = 0x22
    return b


def _hand_disk(size, data_clusters):
    """A disk of size bytes whose clusters in data_clusters are non-zero, the others all zero."""
    disk = bytearray(size)
    for k, c in enumerate(sorted(data_clusters)):
        off = c * F.CLUSTER
        n = min(F.CLUSTER, size - off)
        disk[off:off + n] = _data_cluster(k, n)
    return disk


def _runs(*ranges):
    """Cluster numbers of the half-open ranges (a, b)."""
    return {c for a, b in ranges for c in range(a, b)}


class CanonicalV3(unittest.TestCase):
    """The version 3 oracle (FORMAT.md "Canonical form (version 3)"): extent boundaries on
    hand-made disks compared with lists written out by hand."""

    CONFIGS = [("qemu-server.conf", b"name: hand\n#qmdump#map:scsi0:drive-scsi0:local:raw:\n")]

    def vm(self, devices, disks, dev_ids=None, configs=None, ctime=1700000000):
        return F.VM(ctime, self.CONFIGS if configs is None else configs, devices, disks, dev_ids)

    def extents_of(self, data, vm):
        """Check the archive's invariants and return [(dev_id, first, count)] of its extents."""
        lay = F.parse_layout(data)
        self.assertEqual(lay.end, len(data), "bytes after the last extent")
        self.assertEqual(lay.uuid, F.CANONICAL_UUID)
        self.assertEqual(data[:lay.header_size],
                         F.build_header(vm.ctime, F.canonical_configs(vm),
                                        [(vm.dev_ids[i], d.name, d.size)
                                         for i, d in enumerate(vm.devices)], F.CANONICAL_UUID))
        sizes = dict(zip(vm.dev_ids, [d.size for d in vm.devices]))
        out = []
        for e in lay.extents:
            self.assertEqual(e.magic, b"VMAE")
            self.assertEqual(e.reserved1, 0)
            self.assertEqual(e.uuid, F.CANONICAL_UUID)
            raw = bytearray(e.raw)
            raw[24:40] = bytes(16)
            self.assertEqual(md5(bytes(raw)), e.md5)
            self.assertEqual(e.block_count, sum(popcount(m) for m, _, _ in e.slots))
            if not e.slots:
                out.append(None)
                continue
            dev, first = e.slots[0][1], e.slots[0][2]
            self.assertEqual([(d, c) for _, d, c in e.slots],
                             [(dev, first + k) for k in range(len(e.slots))],
                             "an extent must hold consecutive clusters of one device")
            zero = {m == 0 for m, _, _ in e.slots}
            self.assertEqual(len(zero), 1, "zero and data clusters mixed in one extent")
            last = first + len(e.slots) - 1
            if zero == {True}:
                self.assertEqual(first // 59, last // 59, "zero extent crosses a multiple of 59")
            if zero == {False}:
                self.assertEqual(first // 8, last // 8, "data extent crosses a multiple of 8")
            for m, _, c in e.slots:    # no bit for a block starting at or past the device end
                nblk = -(-(sizes[dev] - c * F.CLUSTER) // 4096)
                if nblk < 16:
                    self.assertEqual(m >> nblk, 0)
            out.append((dev, first, len(e.slots)))
        # every stored block is non-zero and equals the disk (zero-padded past the end)
        disks = dict(zip(vm.dev_ids, vm.disks))
        for _, _, mask, dev, c, pos in lay.entries():
            k = 0
            for b in range(16):
                off = c * F.CLUSTER + b * 4096
                want = bytes(disks[dev][off:off + 4096])
                if off < sizes[dev]:
                    want += bytes(4096 - len(want))
                if mask >> b & 1:
                    got = data[pos + k * 4096:pos + (k + 1) * 4096]
                    self.assertEqual(got, want)
                    self.assertNotEqual(got, bytes(4096), "zero block stored")
                    k += 1
                elif off < sizes[dev]:
                    self.assertEqual(want, bytes(4096), "non-zero block not stored")
        self.assertEqual(F.canonical_extents(vm), [x for x in out if x is not None])
        F.assert_same_content(self, data, vm)
        return out

    def test_130_clusters_boundaries(self):
        data_clusters = _runs((0, 3), (13, 30), (62, 71), (72, 112), (126, 130))
        disk = _hand_disk(130 * F.CLUSTER, data_clusters)
        vm = self.vm([("drive-scsi0", 130 * F.CLUSTER)], [disk])
        data = F.canonical_archive(vm)
        self.assertEqual(self.extents_of(data, vm), [
            (1, 0, 3),                                      # data 0-2
            (1, 3, 10),                                     # zero 3-12 (crosses 8)
            (1, 13, 3), (1, 16, 8), (1, 24, 6),             # data 13-29 on the 8-grid
            (1, 30, 29), (1, 59, 3),                        # zero 30-61, cut at 59
            (1, 62, 2), (1, 64, 7),                         # data 62-70, cut at 64
            (1, 71, 1),                                     # a single zero cluster
            (1, 72, 8), (1, 80, 8), (1, 88, 8), (1, 96, 8), (1, 104, 8),   # data 72-111
            (1, 112, 6), (1, 118, 8),                       # zero 112-125, cut at 118
            (1, 126, 2), (1, 128, 2),                       # data 126-129, cut at 128
        ])

    def test_long_zero_runs(self):
        size = 200 * F.CLUSTER
        vm = self.vm([("drive-scsi0", size), ("drive-scsi1", size)],
                     [_hand_disk(size, {0}), _hand_disk(size, set())])
        data = F.canonical_archive(vm)
        self.assertEqual(self.extents_of(data, vm), [
            (2, 0, 59), (2, 59, 59), (2, 118, 59), (2, 177, 23),     # an empty disk
            (1, 0, 1), (1, 1, 58), (1, 59, 59), (1, 118, 59), (1, 177, 23),
        ])
        lay = F.parse_layout(data)
        self.assertEqual([e.block_count for e in lay.extents[:4]], [0, 0, 0, 0])

    def test_version_2_cut_zero_runs_at_56(self):
        # the previous layout: the same data extents, zero runs cut at multiples of 56
        size = 130 * F.CLUSTER
        vm = self.vm([("drive-scsi0", size)], [_hand_disk(size, _runs((0, 3), (62, 71)))])
        lay = F.parse_layout(F.canonical_archive_v2(vm))
        self.assertEqual([(e.slots[0][2], len(e.slots)) for e in lay.extents],
                         [(0, 3), (3, 53), (56, 6), (62, 2), (64, 7), (71, 41), (112, 18)])
        self.assertEqual([(c, n) for _, c, n in F.canonical_extents(vm)],
                         [(0, 3), (3, 56), (59, 3), (62, 2), (64, 7), (71, 47), (118, 12)])
        F.assert_same_content(self, F.canonical_archive_v2(vm), vm)

    def test_alternating_clusters(self):
        # every cluster flips between data and zero: one extent per cluster
        vm = self.vm([("drive-scsi0", 10 * F.CLUSTER)],
                     [_hand_disk(10 * F.CLUSTER, {0, 2, 4, 6, 8})])
        self.assertEqual(self.extents_of(F.canonical_archive(vm), vm),
                         [(1, c, 1) for c in range(10)])

    def test_size_not_a_cluster_multiple(self):
        size = 10 * F.CLUSTER + 3 * 4096 + 512             # 11 clusters, the last one partial
        disk = _hand_disk(size, _runs((0, 8), (9, 10)))
        disk[size - 1] = 0x77                               # only the straddling block of cluster 10
        vm = self.vm([("drive-scsi0", size)], [disk])
        data = F.canonical_archive(vm)
        self.assertEqual(self.extents_of(data, vm), [(1, 0, 8), (1, 8, 1), (1, 9, 2)])
        lay = F.parse_layout(data)
        ei, si, mask, pos = lay.locate(1, 10)
        self.assertEqual(mask, 1 << 3)
        blk = data[pos:pos + 4096]
        self.assertEqual(blk[:512], bytes(disk[size - 512:]))
        self.assertEqual(blk[512:], bytes(3584), "bytes past the device end must be zero")
        # the same device with an all-zero partial last cluster: it joins the zero run
        disk2 = _hand_disk(size, _runs((0, 8)))
        vm2 = self.vm([("drive-scsi0", size)], [disk2])
        self.assertEqual(self.extents_of(F.canonical_archive(vm2), vm2), [(1, 0, 8), (1, 8, 3)])
        # a size that ends inside a block, data only in that last block
        size3 = 2 * F.CLUSTER + 4096 + 100
        disk3 = bytearray(size3)
        disk3[-100:] = b"\x01" * 100
        vm3 = self.vm([("drive-scsi0", size3)], [disk3])
        data3 = F.canonical_archive(vm3)
        self.assertEqual(self.extents_of(data3, vm3), [(1, 0, 2), (1, 2, 1)])
        self.assertEqual(F.parse_layout(data3).locate(1, 2)[2], 1 << 1)

    def test_tiny_devices(self):
        for size, fill, want, mask in ((4096, True, [(1, 0, 1)], 1),
                                       (512, True, [(1, 0, 1)], 1),
                                       (65536, True, [(1, 0, 1)], None),
                                       (512, False, [(1, 0, 1)], 0),
                                       (65536, False, [(1, 0, 1)], 0)):
            with self.subTest(size=size, fill=fill):
                disk = _hand_disk(size, {0} if fill else set())
                vm = self.vm([("drive-efidisk0", size)], [disk])
                data = F.canonical_archive(vm)
                self.assertEqual(self.extents_of(data, vm), want)
                lay = F.parse_layout(data)
                self.assertEqual(len(lay.extents), 1)
                if mask is not None:
                    self.assertEqual(lay.extents[0].slots[0][0], mask)
                self.assertEqual(len(data), lay.header_size + 512 + 4096 * popcount(
                    lay.extents[0].slots[0][0]))

    def test_devices_in_descending_order(self):
        devices = [("drive-efidisk0", 540672), ("drive-scsi0", 20 * F.CLUSTER),
                   ("drive-scsi1", 3 * F.CLUSTER)]
        disks = [_hand_disk(540672, _runs((0, 2), (8, 9))),
                 _hand_disk(20 * F.CLUSTER, _runs((5, 20))),
                 _hand_disk(3 * F.CLUSTER, {1})]
        for ids, want in (
                ([1, 2, 3], [(3, 0, 1), (3, 1, 1), (3, 2, 1),
                             (2, 0, 5), (2, 5, 3), (2, 8, 8), (2, 16, 4),
                             (1, 0, 2), (1, 2, 6), (1, 8, 1)]),
                ([2, 7, 5], [(7, 0, 5), (7, 5, 3), (7, 8, 8), (7, 16, 4),
                             (5, 0, 1), (5, 1, 1), (5, 2, 1),
                             (2, 0, 2), (2, 2, 6), (2, 8, 1)])):
            with self.subTest(dev_ids=ids):
                vm = self.vm(devices, disks, dev_ids=ids)
                data = F.canonical_archive(vm)
                self.assertEqual(self.extents_of(data, vm), want)
                # the device list's order does not matter, only the dev_ids
                perm = [2, 0, 1]
                vm2 = self.vm([devices[i] for i in perm], [disks[i] for i in perm],
                              dev_ids=[ids[i] for i in perm])
                self.assertEqual(F.canonical_archive(vm2), data)

    def test_diskless(self):
        for configs in (self.CONFIGS, []):
            with self.subTest(configs=len(configs)):
                vm = self.vm([], [], configs=configs)
                data = F.canonical_archive(vm)
                lay = F.parse_layout(data)
                self.assertEqual(len(data), lay.header_size + 512)
                self.assertEqual(data[:lay.header_size],
                                 F.build_header(vm.ctime, F.canonical_configs(vm), [], F.CANONICAL_UUID))
                ext = bytearray(data[lay.header_size:])
                self.assertEqual(ext[:8], b"VMAE\0\0\0\0")           # magic, reserved1, block_count 0
                self.assertEqual(bytes(ext[8:24]), F.CANONICAL_UUID)
                self.assertEqual(bytes(ext[40:]), bytes(472), "all slots zero")
                stored = bytes(ext[24:40])
                ext[24:40] = bytes(16)
                self.assertEqual(md5(bytes(ext)), stored)
                self.assertEqual(self.extents_of(data, vm), [None])
                self.assertEqual(F.canonical_extents(vm), [])
                self.assertEqual(F.restore(data), (list(configs), {}))

    def test_pure_function_of_content(self):
        vm = F.make_vm(3)
        data = F.canonical_archive(vm)
        self.extents_of(data, vm)
        # any source layout restores to the same content -> same canonical bytes
        for order in ORDERS:
            src = F.write_archive(vm, None, seed=4, order=order, per_extent="random",
                                  empty_extents=True, stored_zero_blocks=True, tail_garbage=True)
            configs, disks = F.restore(src)
            again = F.VM(vm.ctime, configs, vm.devices, [disks[d.name] for d in vm.devices])
            self.assertEqual(F.canonical_archive(again), data, order)
        self.assertEqual(F.canonical_archive(vm.copy()), data)
        # a different ctime changes the header only
        other = vm.copy()
        other.ctime += 1
        od = F.canonical_archive(other)
        hs = F.parse_layout(data).header_size
        self.assertEqual(od[hs:], data[hs:])
        self.assertNotEqual(od[:hs], data[:hs])

    def test_random_vms_invariants(self):
        for seed in SEEDS:
            for fill in (0.0, 0.2, 0.5, 0.9, 1.0):
                with self.subTest(seed=seed, fill=fill):
                    vm = F.make_vm(seed, fill=fill,
                                   devices=[("drive-efidisk0", 540672),
                                            ("drive-scsi0", 130 * F.CLUSTER + 36352)])
                    self.extents_of(F.canonical_archive(vm), vm)
        m = F.mutate_vm(vm_for(1), 5, fraction=0.05)
        self.extents_of(F.canonical_archive(m), m)

    def test_dest_kinds_and_file_backed_disks(self):
        import tempfile
        with tempfile.TemporaryDirectory(prefix="vmatest-fx-") as tmp:
            vm_file = F.make_vm(6, directory=tmp)
            vm_mem = F.make_vm(6)
            ref = F.canonical_archive(vm_mem)
            path = os.path.join(tmp, "c.vma")
            self.assertEqual(F.canonical_archive(vm_file, path), len(ref))
            with open(path, "rb") as f:
                self.assertEqual(f.read(), ref)
            bio = io.BytesIO()
            self.assertEqual(F.canonical_archive(vm_file, bio), len(ref))
            self.assertEqual(bio.getvalue(), ref)
            self.assertEqual(F.canonical_extents(vm_file), F.canonical_extents(vm_mem))


class Broken(unittest.TestCase):
    def test_omit(self):
        vm = vm_for(0)
        # a data cluster and an all-zero cluster (mask 0)
        for order in ORDERS:
            for cl in (0, 1, F._nclusters(vm.devices[2].size) - 1):
                data = F.write_archive(vm, None, seed=2, order=order, omit=[(2, cl)])
                with self.assertRaisesRegex(ValueError, "missing cluster %d of device drive-scsi1"
                                            % cl):
                    F.restore(data)
                configs, disks = F.restore(data, allow_missing=True)
                self.assertEqual(configs, vm.configs)
                # only the devices named in `complete` must be complete (extracting some devices)
                F.restore(data, complete={"drive-scsi0", "drive-efidisk0"})
                with self.assertRaisesRegex(ValueError, "missing cluster"):
                    F.restore(data, complete={"drive-scsi1"})
        with self.assertRaises(ValueError):
            F.write_archive(vm, None, omit=[(0, 999)])

    def test_duplicate(self):
        vm = vm_for(0)
        for order in ORDERS:
            for item in ((0, 0), (1, 1), (2, 3)):
                data = F.write_archive(vm, None, seed=2, order=order, duplicate=[item])
                with self.assertRaisesRegex(ValueError, "duplicate cluster %d" % item[1]):
                    F.restore(data)
                lay = F.parse_layout(data)
                n = sum(1 for _, _, _, d, c, _ in lay.entries()
                        if (d, c) == (item[0] + 1, item[1]))
                self.assertEqual(n, 2)

    def corrupt(self, fn, regex, fix_md5=True, index=0, data=None):
        data = bytearray(data if data is not None else F.write_archive(vm_for(1), None, seed=3))
        F.rewrite_extent_header(data, index, fn, fix_md5=fix_md5)
        with self.assertRaisesRegex(ValueError, regex):
            F.restore(bytes(data))
        return data

    def test_extent_corruptions(self):
        def setf(key, value):
            def fn(d):
                d[key] = value
            return fn

        self.corrupt(setf("magic", b"VMAX"), "extent magic")
        self.corrupt(setf("reserved1", 1), "reserved")
        self.corrupt(setf("uuid", bytes(16)), "uuid")
        self.corrupt(lambda d: None, "extent checksum", fix_md5=False,
                     data=self._bad_md5())
        self.corrupt(lambda d: d.update(block_count=d["block_count"] - 1), "block count")

        def unknown(d):
            m, _, c = d["slots"][0]
            d["slots"][0] = (m, 77, c)
        self.corrupt(unknown, "unknown device")

        def beyond(d):
            m, dev, c = d["slots"][0]
            d["slots"][0] = (m, dev, 100000)
        self.corrupt(beyond, "beyond")

        def raw(d):
            b = bytearray(F._encode_extent_header(d))
            b[0:4] = b"XXXX"
            return bytes(b)
        self.corrupt(raw, "extent magic")

    def _bad_md5(self):
        data = bytearray(F.write_archive(vm_for(1), None, seed=3))
        off = F.parse_layout(data).extents[0].offset
        data[off + 24] ^= 1
        return data

    def test_rewrite_roundtrip(self):
        data = bytearray(F.write_archive(vm_for(1), None, seed=3))
        orig = bytes(data)
        off = F.rewrite_extent_header(data, 1, lambda d: d)
        self.assertEqual(off, F.parse_layout(orig).extents[1].offset)
        self.assertEqual(bytes(data), orig)
        F.fix_extent_md5(data, off)
        self.assertEqual(bytes(data), orig)

    def test_header_corruptions(self):
        data = F.write_archive(vm_for(1), None, seed=3)
        cases = [
            (0, b"XMA\0", False, "not a VMA"),
            (4, struct.pack(">I", 2), True, "version"),
            (56, struct.pack(">I", 12288), True, "header size"),
            (56, struct.pack(">I", 1 << 30), False, "truncated"),
            (52, struct.pack(">I", 1 << 20), True, "blob"),
            (48, struct.pack(">I", 100), True, "blob"),
            (100, b"\1", False, "header checksum"),
        ]
        for off, repl, fix, regex in cases:
            with self.subTest(regex=regex, off=off):
                d = bytearray(data)
                d[off:off + len(repl)] = repl
                if fix:
                    F.fix_header_md5(d)
                with self.assertRaisesRegex(ValueError, regex):
                    F.restore(bytes(d))
        # config pointer to a non-chain position
        d = bytearray(data)
        struct.pack_into(">I", d, 3068, 5)
        F.fix_header_md5(d)
        self.assertRaisesRegex(ValueError, "config", F.restore, bytes(d))

    def test_truncation_and_trailing(self):
        data = F.write_archive(vm_for(1), None, seed=3)
        lay = F.parse_layout(data)
        for n in (100, 12288, lay.header_size - 1, lay.header_size + 100,
                  lay.extents[1].offset + 600, len(data) - 1):
            with self.assertRaisesRegex(ValueError, "truncated"):
                F.restore(data[:n])
        with self.assertRaisesRegex(ValueError, "truncated"):
            F.restore(data + bytes(100))
        with self.assertRaisesRegex(ValueError, "checksum"):
            F.restore(data + bytes(512))
        # header only: devices declared, no extents
        with self.assertRaisesRegex(ValueError, "missing cluster 0"):
            F.restore(data[:lay.header_size])

    def test_block_past_end(self):
        vm = vm_for(0)
        data = bytearray(F.write_archive(vm, None, seed=3, order="sequential"))
        lay = F.parse_layout(data)
        last = F._nclusters(vm.devices[0].size) - 1          # efidisk: 8.25 clusters
        ei, si, mask, pos = lay.locate(1, last)

        def fn(d):
            m, dev, c = d["slots"][si]
            d["slots"][si] = (m | 0x8000, dev, c)
            d["block_count"] += 1
        F.rewrite_extent_header(data, ei, fn)
        with self.assertRaisesRegex(ValueError, "beyond"):
            F.restore(bytes(data))

    def test_vmstate_out_of_order(self):
        vm = F.make_vm(2, devices=[("vmstate", 4 * 65536)])
        data = bytearray(F.write_archive(vm, None, order="sequential"))

        def fn(d):
            s = d["slots"]
            s[0], s[1] = s[1], s[0]
        F.rewrite_extent_header(data, 0, fn)
        with self.assertRaisesRegex(ValueError, "vmstate"):
            F.restore(bytes(data))


class CorruptionCodec(unittest.TestCase):
    """The pieces tests/fuzz.py and tests/test_hostile.py build corrupt archives with."""

    def test_decode_encode_roundtrip(self):
        vm = vm_for(0)
        for kw in ({}, {"stored_zero_blocks": True, "tail_garbage": True, "empty_extents": True}):
            data = F.write_archive(vm, None, seed=5, per_extent="random", **kw)
            exts = F.walk_extents(data)
            self.assertEqual([e.offset for e in exts], [e.offset for e in F.parse_layout(data).extents])
            self.assertEqual(exts[-1].end, len(data))
            rebuilt = data[:exts[0].offset] + b"".join(
                F.encode_extent(e.uuid, F.decode_extent(data, e)) for e in exts)
            self.assertEqual(rebuilt, data)
            for e in exts:
                self.assertEqual(len(e.used()), len(F.decode_extent(data, e)))

    def test_encode_hostile_values(self):
        uuid = bytes(range(16))
        blk = bytes([7]) * F.BLOCK
        # reserved byte, empty slot in between, block_count and magic as given, md5 left zero
        ext = F.encode_extent(uuid, [[0x0001, 0xAB, 1, 5, [blk]], [0, 0, 0, 0, [blk]], [0x0003, 0, 2, 0xFFFFFFFF, [blk, blk]]],
                              block_count=2, magic=b"VMAX", reserved1=3, fix_md5=False)
        self.assertEqual(len(ext), 512 + 3 * F.BLOCK)       # the dev_id 0 entry's block is not written
        magic, res1, bc, u, m = struct.unpack_from(">4sHH16s16s", ext)
        self.assertEqual((magic, res1, bc, u, m), (b"VMAX", 3, 2, uuid, bytes(16)))
        self.assertEqual(struct.unpack_from(">3Q", ext, 40),
                         ((1 << 48) | (0xAB << 40) | (1 << 32) | 5, 0, (3 << 48) | (2 << 32) | 0xFFFFFFFF))
        data = bytearray(bytes(100) + ext)
        self.assertTrue(F.fix_extent_md5(data, 100))
        self.assertFalse(F.fix_extent_md5(data, len(data) - 100))
        ext2 = F.walk_extents(data, start=100, magic=None)[0]
        self.assertEqual(ext2.md5, md5(bytes(data[100:124]) + bytes(16) + bytes(data[140:612])))
        self.assertIsNone(F.decode_extent(data, ext2))       # the masks need 3 blocks, block_count 2
        with self.assertRaisesRegex(ValueError, "59"):
            F.encode_extent(uuid, [[0, 0, 0, 0, []]] * 60)

    def test_walk_stops(self):
        data = bytearray(F.write_archive(vm_for(1), None, seed=3, per_extent=5))
        lay = F.parse_layout(data)
        self.assertGreater(len(lay.extents), 3)
        e2 = lay.extents[2]
        data[e2.offset:e2.offset + 4] = b"VMAX"
        self.assertEqual(len(F.walk_extents(data)), 2)                       # stops at a bad magic
        self.assertEqual(len(F.walk_extents(data, magic=None)), len(lay.extents))
        self.assertEqual(len(F.parse_layout(data).extents), len(lay.extents))  # parse_layout: any magic
        self.assertEqual(len(F.walk_extents(data[:e2.end - 1], magic=None)), 2)  # truncated extent
        self.assertEqual(F.walk_extents(data[:59]), [])
        self.assertIsNone(F.header_size(data[:59]))
        self.assertEqual(F.header_size(data), lay.header_size)

    def test_fix_header_md5_clamp(self):
        data = F.write_archive(vm_for(1), None, seed=3)
        hs = F.header_size(data)
        d = bytearray(data[:hs - 10])
        d[40] ^= 1
        before = bytes(d)
        self.assertFalse(F.fix_header_md5(d, clamp=False))                 # header_size past the end
        self.assertEqual(bytes(d), before)
        self.assertTrue(F.fix_header_md5(d))                               # clamped: hash what there is
        self.assertNotEqual(bytes(d), before)
        F.put_u32(d, 56, 40)
        self.assertFalse(F.fix_header_md5(d, clamp=False))                 # would not cover the md5 field
        self.assertFalse(F.fix_header_md5(bytearray(50)))
        F.put_u32(d, 0, -1)
        self.assertEqual(F.u32(d, 0), 0xFFFFFFFF)

    def test_build_header_bytes_names(self):
        configs = [(b"../x\0y", b"data"), ("qemu-server.conf", b"conf")]
        devices = [(9, b"drive-\xff", 65536), (2, "drive-scsi0", 1 << 40), (3, b"", 512)]
        hdr = F.build_header(1700000000, configs, devices, bytes(16))
        same = F.build_header(1700000000, [(b"../x\0y", b"data"), (b"qemu-server.conf", b"conf")],
                              [(2, b"drive-scsi0", 1 << 40), (3, b"", 512), (9, b"drive-\xff", 65536)], bytes(16))
        self.assertEqual(hdr, same)
        h = F.parse_header(hdr, strict=True)
        self.assertEqual(h.devices, {2: ("drive-scsi0", 1 << 40), 3: ("", 512), 9: ("drive-\udcff", 65536)})
        self.assertEqual(h.dev_info[3][1], 512)
        self.assertEqual(h.configs, [("../x", b"data"), ("qemu-server.conf", b"conf")])
        self.assertEqual([s for s, _, _ in h.config_slots], [0, 1])
        self.assertEqual(h.blobs[h.config_slots[0][1]], b"../x\0y\0")
        self.assertRaisesRegex(ValueError, "truncated", F.parse_header, hdr[:12287])
        bad = bytearray(hdr)
        F.put_u32(bad, 4096 + 32 * 9, 0xFFFF)                             # name pointer nowhere
        h = F.parse_header(bad)
        self.assertNotIn(9, h.devices)
        self.assertEqual(h.dev_info[9], (0xFFFF, 65536))


class SparseWriter(unittest.TestCase):
    """write_sparse_archive (the 1 TiB writer of tests/bench.py) against write_archive and restore."""

    DEVICES = [(1, "drive-efidisk0", 540672), (2, "drive-scsi0", 300 * 65536 + 5 * 4096 + 512),
               (4, "drive-scsi1", 65536)]

    def content(self, seed=3):
        import random
        rng = random.Random(seed)
        clusters = {1: {0: rng.randbytes(65536), 8: rng.randbytes(4096)},
                    2: {c: rng.randbytes(65536) for c in [0, 1, 2, 77, 150, 299, 300] + rng.sample(range(301), 20)},
                    4: {}}
        z = bytearray(clusters[2][77])                                       # zero and part-zero clusters
        z[4096:3 * 4096] = bytes(8192)
        clusters[2][77] = bytes(z)
        clusters[2][150] = bytes(65536)
        disks = []
        for dev_id, _name, size in self.DEVICES:
            d = bytearray(F._nclusters(size) * 65536)
            for c, b in clusters[dev_id].items():
                d[c * 65536:c * 65536 + len(b)] = b
            disks.append(d[:size])
        vm = F.VM(1700000000, F.default_configs(3, [(n, s) for _, n, s in self.DEVICES]),
                  [(n, s) for _, n, s in self.DEVICES], disks, dev_ids=[i for i, _, _ in self.DEVICES])
        return clusters, vm

    def test_same_as_write_archive(self):
        clusters, vm = self.content()
        uuid = bytes(range(16))
        for per_extent in (58, 59, 1, 7):
            order = [(dev_id, [list(range(F._nclusters(size)))]) for dev_id, _n, size in self.DEVICES]
            got = F.write_sparse_archive(None, vm.ctime, vm.configs, self.DEVICES, uuid, clusters,
                                         order=order, per_extent=per_extent)
            want = F.write_archive(vm, None, order="sequential", per_extent=per_extent, uuid=uuid)
            self.assertEqual(got, want, "per_extent %d" % per_extent)

    def test_default_order_restores(self):
        clusters, vm = self.content(5)
        data = F.write_sparse_archive(None, vm.ctime, vm.configs, self.DEVICES, bytes(16), clusters)
        F.assert_same_content(self, data, vm)
        lay = F.parse_layout(data)
        self.assertEqual([e[3] for e in lay.entries()][:1], [4])            # descending dev_id
        self.assertTrue(all(len(e.slots) == 58 for e in lay.extents[:-1]))
        buf = io.BytesIO()
        self.assertEqual(F.write_sparse_archive(buf, vm.ctime, vm.configs, self.DEVICES, bytes(16), clusters),
                         len(data))
        self.assertEqual(buf.getvalue(), data)
        self.assertRaises(ValueError, F.write_sparse_archive, None, 0, [], self.DEVICES, bytes(16), {5: {}})
        self.assertRaises(ValueError, F.write_sparse_archive, None, 0, [], self.DEVICES, bytes(16),
                          {4: {1: b"x"}})

    def test_diskless(self):
        data = F.write_sparse_archive(None, 5, [("qemu-server.conf", b"x")], [], bytes(16), {})
        self.assertEqual(data, F.write_archive(F.VM(5, [("qemu-server.conf", b"x")], [], []), None,
                                               uuid=bytes(16)))

    def test_proxmox_cluster_groups(self):
        for n, early in ((0, ()), (9, ()), (256, ()), (1000, (900, 3, 600)), (4096 + 77, (4100,))):
            groups = list(F.proxmox_cluster_groups(n, early=early))
            flat = [c for g in groups for c in g]
            self.assertEqual(sorted(flat), list(range(n)), n)
            if early:
                self.assertEqual(groups[0], sorted(early))
        g = list(F.proxmox_cluster_groups(512))
        self.assertEqual(g[0][:3], [0, 16, 32])                             # 16 workers in lockstep
        self.assertEqual(g[0][16:18], [1, 17])
        self.assertEqual(list(F.proxmox_cluster_groups(20, workers=2, chunk=4))[-1], [16, 17, 18, 19])
        self.assertEqual(list(F.proxmox_cluster_groups(11, workers=2, chunk=4))[-1], [8, 9, 10])
        self.assertEqual(list(F.proxmox_cluster_groups(7, workers=2, chunk=4)), [[0, 4, 1, 5, 2, 6, 3]])

    def test_speed(self):
        """2^21 clusters (128 GiB) in well under a few seconds: the 1 TiB bench case stays quick."""
        t = time.process_time()
        size = F.write_sparse_archive(io.BytesIO(), 0, [], [(1, "drive-scsi0", 1 << 37)], bytes(16),
                                      {1: {5: bytes([1]) * 65536}})
        self.assertEqual(size, F.FIXED_HEADER + 512 + -(-(1 << 21) // 58) * 512 + 65536)
        self.assertLess(time.process_time() - t, 8.0)


class VMModel(support.TempDir, unittest.TestCase):
    def test_default_vm(self):
        vm = F.make_vm(0)
        names = [d.name for d in vm.devices]
        self.assertEqual(names, ["drive-efidisk0", "drive-scsi0", "drive-scsi1"])
        self.assertEqual(vm.devices[0].size, 540672)
        self.assertEqual(vm.dev_ids, [1, 2, 3])
        for dev, disk in zip(vm.devices, vm.disks):
            self.assertEqual(len(disk), dev.size)
            self.assertEqual(dev.size % 512, 0)
        self.assertNotEqual(vm.devices[1].size % 4096, 0)
        self.assertEqual([n for n, _ in vm.configs], ["qemu-server.conf", "qemu-server.fw"])
        conf = vm.configs[0][1].decode()
        for n in names:
            self.assertIn("#qmdump#map:%s:%s:local-lvm:raw:" % (n[6:], n), conf)
        self.assertIsInstance(vm.ctime, int)
        # content mix
        kinds = set()
        for disk in vm.disks:
            for o in range(0, len(disk), 65536):
                cl = bytes(disk[o:o + 65536])
                blocks = [cl[i:i + 4096] for i in range(0, len(cl), 4096)]
                nz = sum(1 for b in blocks if any(b))
                kinds.add("zero" if nz == 0 else "full" if nz == len(blocks) else "partial")
        self.assertEqual(kinds, {"zero", "full", "partial"})

    def test_fill(self):
        z = F.make_vm(0, fill=0.0)
        self.assertTrue(all(not any(d) for d in z.disks))
        full = F.make_vm(0, fill=1.0)
        zero_clusters = sum(1 for d in full.disks for o in range(0, len(d), 65536)
                            if not any(d[o:o + 65536]))
        self.assertEqual(zero_clusters, 0)

    def test_mutate(self):
        vm = F.make_vm(3)
        m = F.mutate_vm(vm, 1, fraction=0.02)
        self.assertEqual(m.configs, vm.configs)
        self.assertEqual(m.ctime, vm.ctime)
        self.assertEqual(m.devices, vm.devices)
        changed = 0
        total = 0
        for a, b in zip(vm.disks, m.disks):
            for o in range(0, len(a), 4096):
                total += 1
                if a[o:o + 4096] != b[o:o + 4096]:
                    changed += 1
        self.assertGreater(changed, 0.01 * total)
        self.assertLess(changed, 0.03 * total)
        self.assertIsNot(m.disks[0], vm.disks[0])
        self.assertIsNone(F.contents_diff(vm, F.make_vm(3)))   # original untouched
        m2 = F.mutate_vm(vm, 1, ctime=5, configs=[("qemu-server.conf", b"x")])
        self.assertEqual(m2.ctime, 5)
        self.assertEqual(m2.configs, [("qemu-server.conf", b"x")])
        F.assert_same_content(self, F.write_archive(m, None, seed=1), m)

    def test_mutate_file_backed(self):
        t = self
        os.mkdir(t.tmp_path("a"))
        os.mkdir(t.tmp_path("b"))
        vm = F.make_vm(3, directory=t.tmp_path("a"))
        m = F.mutate_vm(vm, 1, directory=t.tmp_path("b"))
        self.assertIsNone(F.contents_diff(m, F.mutate_vm(F.make_vm(3), 1)))
        self.assertIsNone(F.contents_diff(vm, F.make_vm(3)))
        with self.assertRaises(ValueError):
            F.mutate_vm(vm, 1)

    def test_contents_diff(self):
        vm = F.make_vm(0)
        c, d = vm.contents()
        self.assertIsNone(F.contents_diff(vm, (c, d)))
        d2 = dict(d)
        b = bytearray(d2["drive-scsi0"])
        b[70000] ^= 1
        d2["drive-scsi0"] = bytes(b)
        msg = F.contents_diff(vm, (c, d2))
        self.assertIn("drive-scsi0", msg)
        self.assertIn("70000", msg)
        self.assertIn("configs", F.contents_diff(vm, (c[:1], d)))


class Support(support.TempDir, unittest.TestCase):
    def fake(self, code, out=b"", err=b""):
        return subprocess.CompletedProcess([sys.executable, support.TOOL, "info", "x"], code,
                                           out, err)

    def test_assert_clean_error(self):
        ok = self.fake(1, err=b"vma-tool: error: offset 5: bad extent magic\n")
        support.assert_clean_error(self, ok, "extent magic", code=1)
        bad = [
            self.fake(0, err=b"vma-tool: error: x\n"),
            self.fake(2, err=b"vma-tool: error: x\n"),
            self.fake(1, err=b"vma-tool: error: a\nvma-tool: error: b\n"),
            self.fake(1, err=b"Traceback (most recent call last):\nvma-tool: error: x\n"),
            self.fake(1, err=b"error: x\n"),
        ]
        for r in bad:
            with self.assertRaises(AssertionError):
                support.assert_clean_error(self, r, code=1)
        with self.assertRaises(AssertionError):
            support.assert_clean_error(self, ok, "checksum")
        multi = subprocess.CompletedProcess([sys.executable, support.TOOL, "verify", "x"], 1, b"",
                                            b"vma-tool: error: a\nvma-tool: error: b\n")
        support.assert_clean_error(self, multi, "a")

    def test_tempdir_and_run_tool(self):
        self.assertTrue(os.path.isdir(self.tmp))
        script = self.tmp_path("fake-tool")
        with open(script, "w") as f:
            f.write("import os, sys\nsys.stdout.write(repr(sys.argv[1:]) + os.getcwd())\n"
                    "sys.stderr.write(os.environ.get('FOO', '-') + sys.stdin.read())\n")
        saved = support.TOOL
        support.TOOL = script
        try:
            r = support.run_tool("a", 3, input=b"in", env={"FOO": "bar"}, cwd=self.tmp)
        finally:
            support.TOOL = saved
        self.assertEqual(r.returncode, 0)
        out = r.stdout.decode()
        self.assertTrue(out.startswith("['a', '3']"), out)
        self.assertEqual(os.path.realpath(out[len("['a', '3']"):]), os.path.realpath(self.tmp))
        self.assertEqual(r.stderr, b"barin")


if __name__ == "__main__":
    unittest.main()
