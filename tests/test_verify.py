"""Tests for `vma-tool verify`: one corrupted fixture per check Proxmox's verify does, plus the
completeness check (every cluster of every device exactly once), plus the cases Proxmox accepts
(which must exit 0)."""
import gzip
import json
import os
import random
import re
import struct
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import support  # noqa: E402
import vmafixture as vf  # noqa: E402

CLUSTER = 65536
BLOCK = 4096

# dev_id 1: 9 clusters, last one has 4 valid blocks (block 4 starts exactly at the end)
# dev_id 2: 21 clusters, last one 8704 bytes (block 2 straddles the end)
# dev_id 3: 7 clusters, last one 8192 bytes (block 2 starts exactly at the end)
DEVICES = [
    ("drive-efidisk0", 540672),
    ("drive-scsi0", 20 * CLUSTER + 8192 + 512),
    ("drive-scsi1", 6 * CLUSTER + 8192),
]


def popcount(x):
    return bin(x).count("1")


def fill_nonzero(vm, seed, index):
    rnd = random.Random(seed)
    n = len(vm.disks[index])
    vm.disks[index][:] = rnd.getrandbits(8 * n).to_bytes(n, "little").replace(b"\0", b"\x33")


def stream_slots(data):
    """[(extent_index, slot_index, mask, dev_id, cluster)] in archive order (dev_id 0 skipped)."""
    out = []
    for ei, ext in enumerate(vf.parse_layout(bytes(data)).extents):
        for si, (mask, dev, cl) in enumerate(ext.slots):
            if dev:
                out.append((ei, si, mask, dev, cl))
    return out


def set_slot(data, ei, si, mask=None, dev=None, cluster=None):
    def fn(d):
        m, dv, c = d["slots"][si]
        d["slots"][si] = (m if mask is None else mask, dv if dev is None else dev,
                          c if cluster is None else cluster)
    vf.rewrite_extent_header(data, ei, fn)


def add_block(data, ei, si, bit, block):
    """Set mask bit `bit` of slot si in extent ei and insert the 4K block at the right place,
    keeping block_count and framing consistent."""
    ext = vf.parse_layout(bytes(data)).extents[ei]
    mask = ext.slots[si][0]
    assert not mask >> bit & 1
    before = sum(popcount(m) for m, d, _ in ext.slots[:si] if d) + popcount(mask & ((1 << bit) - 1))
    pos = ext.data_offset + before * BLOCK

    def fn(d):
        m, dv, c = d["slots"][si]
        d["slots"][si] = (m | 1 << bit, dv, c)
        d["block_count"] += 1
    vf.rewrite_extent_header(data, ei, fn)
    data[pos:pos] = block


def header_u32(data, off, value, fix=True):
    struct.pack_into(">I", data, off, value)
    if fix:
        vf.fix_header_md5(data)


def empty_extent(uuid_bytes):
    h = bytearray(512)
    h[0:4] = b"VMAE"
    h[8:24] = uuid_bytes
    vf.fix_extent_md5(h, 0)
    return bytes(h)


class VerifyCase(support.TempDir, unittest.TestCase):
    _vm = None
    _base = None

    @classmethod
    def vm(cls):
        if VerifyCase._vm is None:
            VerifyCase._vm = vf.make_vm(101, devices=DEVICES)
        return VerifyCase._vm

    @classmethod
    def base(cls):
        """Sequential order, 7 clusters per extent -> 6 extents."""
        if VerifyCase._base is None:
            VerifyCase._base = bytes(vf.write_archive(cls.vm(), None, seed=1, order="sequential",
                                                      per_extent=7))
        return VerifyCase._base

    def archive(self, **kw):
        kw.setdefault("seed", 1)
        kw.setdefault("order", "sequential")
        kw.setdefault("per_extent", 7)
        return bytearray(vf.write_archive(self.vm(), None, **kw))

    def verify(self, data, *opts, name="a.vma"):
        path = self.tmp_path(name)
        with open(path, "wb") as f:
            f.write(bytes(data))
        self.path = path
        return support.run_tool("verify", *opts, path)

    def assertValid(self, data, *opts):
        r = self.verify(data, *opts)
        self.assertEqual(r.returncode, 0, "verify rejected a valid archive: %r" % r.stderr[-3000:])
        self.assertNotIn(b"Traceback", r.stderr)
        if "-q" not in opts:
            self.assertIn(("%s: ok" % self.path).encode(), r.stdout)
        return r

    def assertInvalid(self, data, *keywords, single=True):
        r = self.verify(data)
        support.assert_clean_error(self, r, *keywords, code=1, multiple=not single)
        return r

    def error_lines(self, r):
        return [ln for ln in r.stderr.decode("utf-8", "replace").splitlines()
                if ln.startswith("vma-tool: error: ")]

    def assertLineNames(self, r, keyword, *parts, number=None):
        """Some error line contains keyword, every part, and `number` as a whole number."""
        for ln in self.error_lines(r):
            low = ln.lower()
            if keyword in low and all(p.lower() in low for p in parts):
                if number is None or re.search(r"(?<![0-9])%d(?![0-9])" % number, ln):
                    return
        self.fail("no error line with %r %r %r in:\n%s" % (keyword, parts, number, r.stderr.decode()))

    def assertOffsetIn(self, r, lo, hi):
        offs = [int(x) for x in re.findall(r"offset (\d+)", r.stderr.decode("utf-8", "replace"))]
        self.assertTrue(any(lo <= o < hi for o in offs),
                        "no 'offset N' with %d <= N < %d in %r" % (lo, hi, r.stderr))


class BasicTest(VerifyCase):
    def test_valid(self):
        r = self.assertValid(self.base())
        self.assertEqual(r.stderr, b"")

    def test_quiet(self):
        r = self.assertValid(self.base(), "-q")
        self.assertEqual(r.stdout, b"")

    def test_verbose_summary(self):
        plain = self.assertValid(self.base())
        verbose = self.assertValid(self.base(), "-v")
        self.assertGreater(len(verbose.stdout.splitlines()), len(plain.stdout.splitlines()))

    def test_stdin(self):
        path = self.tmp_path("in.vma")
        with open(path, "wb") as f:
            f.write(self.base())
        with open(path, "rb") as f:
            r = support.run_tool("verify", "-", stdin=f)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"ok", r.stdout)

    def test_stdin_pipe_invalid(self):
        data = bytes(self.archive(omit=[(1, 4)]))
        r = support.run_tool("verify", "-", input=data)
        support.assert_clean_error(self, r, "missing cluster", code=1)

    def test_gzip_input(self):
        r = self.verify(gzip.compress(self.base(), 1), name="a.vma.gz")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_gzip_stdin(self):
        r = support.run_tool("verify", "-", input=gzip.compress(self.base(), 1))
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])

    def test_gzip_input_invalid(self):
        r = self.verify(gzip.compress(bytes(self.archive(duplicate=[(2, 1)])), 1), name="a.vma.gz")
        support.assert_clean_error(self, r, "duplicate", code=1)

    def test_missing_file(self):
        r = support.run_tool("verify", self.tmp_path("nope.vma"))
        support.assert_clean_error(self, r, code=3)

    def test_several_problems_one_line_each(self):
        data = self.archive(omit=[(0, 2)], duplicate=[(2, 1)])
        r = self.assertInvalid(data, "missing cluster", "duplicate", single=False)
        self.assertGreaterEqual(len(self.error_lines(r)), 2)


class HeaderErrorTest(VerifyCase):
    def test_bad_magic(self):
        d = bytearray(self.base())
        d[0:4] = b"VMX\0"
        self.assertInvalid(d, "not a vma archive")

    def test_not_a_vma_at_all(self):
        self.assertInvalid(b"hello world, this is a text file\n" * 600, "not a vma archive")

    def test_empty_file(self):
        self.assertInvalid(b"")

    def test_version_2(self):
        d = bytearray(self.base())
        header_u32(d, 4, 2)
        self.assertInvalid(d, "version")

    def test_header_md5_reserved_byte(self):
        d = bytearray(self.base())
        d[100] ^= 0x40
        self.assertInvalid(d, "header checksum")

    def test_header_md5_blob_byte(self):
        d = bytearray(self.base())
        d[12288 + 30] ^= 0x01
        self.assertInvalid(d, "header checksum")

    def test_header_md5_field(self):
        d = bytearray(self.base())
        d[40] ^= 0xFF
        self.assertInvalid(d, "header checksum")

    def test_header_size_12288(self):
        d = bytearray(self.base())
        header_u32(d, 56, 12288, fix=False)
        self.assertInvalid(d, "header size")

    def test_header_size_zero(self):
        d = bytearray(self.base())
        header_u32(d, 56, 0, fix=False)
        self.assertInvalid(d, "header size")

    def test_header_size_past_eof(self):
        d = bytearray(self.base())
        header_u32(d, 56, len(d) + 4096, fix=False)
        self.assertInvalid(d)

    def test_blob_offset_zero(self):
        d = bytearray(self.base())
        header_u32(d, 48, 0)
        self.assertInvalid(d, "blob")

    def test_blob_offset_12287(self):
        d = bytearray(self.base())
        header_u32(d, 48, 12287)
        self.assertInvalid(d, "blob")

    def test_blob_size_past_header(self):
        d = bytearray(self.base())
        hs = struct.unpack_from(">I", d, 56)[0]
        header_u32(d, 52, hs - 12288 + 1)
        self.assertInvalid(d, "blob")

    def test_blob_offset_past_header(self):
        d = bytearray(self.base())
        hs = struct.unpack_from(">I", d, 56)[0]
        header_u32(d, 48, hs)
        self.assertInvalid(d, "blob")

    def test_config_name_pointer_not_a_blob(self):
        d = bytearray(self.base())
        header_u32(d, 2044, 2)
        self.assertInvalid(d, "config")

    def test_config_data_pointer_out_of_range(self):
        d = bytearray(self.base())
        header_u32(d, 3068 + 4, 60000)
        self.assertInvalid(d, "config")

    def test_config_name_pointer_to_unterminated_blob(self):
        d = bytearray(self.base())
        data_ptr = struct.unpack_from(">I", d, 3068)[0]   # qemu-server.conf data ends in "\n"
        header_u32(d, 2044, data_ptr)
        self.assertInvalid(d, "config")


class ExtentErrorTest(VerifyCase):
    def ext(self, data, i):
        return vf.parse_layout(bytes(data)).extents[i]

    def test_extent_md5(self):
        d = bytearray(self.base())
        e = self.ext(d, 2)
        d[e.offset + 45] ^= 0x10
        r = self.assertInvalid(d, "extent checksum")
        self.assertOffsetIn(r, e.offset, e.offset + 512)

    def test_extent_uuid(self):
        d = bytearray(self.base())
        off = vf.rewrite_extent_header(d, 2, lambda h: h.update(uuid=b"\x01" * 16))
        r = self.assertInvalid(d, "uuid")
        self.assertOffsetIn(r, off, off + 512)

    def test_extent_magic(self):
        d = bytearray(self.base())
        off = vf.rewrite_extent_header(d, 3, lambda h: h.update(magic=b"VMAF"))
        r = self.assertInvalid(d, "extent magic")
        self.assertOffsetIn(r, off, off + 512)

    def test_reserved1(self):
        d = bytearray(self.base())
        off = vf.rewrite_extent_header(d, 1, lambda h: h.update(reserved1=1))
        r = self.assertInvalid(d, "reserved")
        self.assertOffsetIn(r, off, off + 512)

    def test_block_count_too_high(self):
        d = bytearray(self.base())
        e = self.ext(d, 2)
        vf.rewrite_extent_header(d, 2, lambda h: h.update(block_count=h["block_count"] + 1))
        d[e.end:e.end] = bytes(range(256)) * 16        # keep the framing consistent
        r = self.assertInvalid(d, "block count")
        self.assertOffsetIn(r, e.offset, e.end + BLOCK)

    def test_block_count_too_low(self):
        d = bytearray(self.base())
        e = self.ext(d, 2)
        self.assertGreater(e.block_count, 0)
        vf.rewrite_extent_header(d, 2, lambda h: h.update(block_count=h["block_count"] - 1))
        del d[e.end - BLOCK:e.end]
        r = self.assertInvalid(d, "block count")
        self.assertOffsetIn(r, e.offset, e.end)

    def test_block_count_over_944(self):
        vm = vf.make_vm(7, devices=[("drive-scsi0", 59 * CLUSTER)])
        fill_nonzero(vm, 8, 0)
        d = bytearray(vf.write_archive(vm, None, seed=2, order="sequential", per_extent=59))
        self.assertEqual(self.ext(d, 0).block_count, 944)
        self.assertValid(d)
        vf.rewrite_extent_header(d, 0, lambda h: h.update(block_count=945))
        d += b"\x77" * BLOCK
        self.assertInvalid(d, "block count")

    def dup_slot(self, dev_index, cluster):
        """Archive with (dev_index, cluster) emitted twice; returns (data, ei, si) of the 2nd copy."""
        d = self.archive(duplicate=[(dev_index, cluster)], seed=3)
        dev_id = dev_index + 1
        hits = [(ei, si, m) for ei, si, m, dv, c in stream_slots(d) if dv == dev_id and c == cluster]
        self.assertEqual(len(hits), 2)
        ei, si, mask = hits[1]
        self.assertNotEqual(mask, 0, "test wants a cluster with data")
        return d, ei, si

    def test_unknown_dev_id(self):
        d, ei, si = self.dup_slot(1, 0)
        set_slot(d, ei, si, dev=9)
        r = self.assertInvalid(d, "unknown device")
        self.assertLineNames(r, "unknown device", "offset", number=9)

    def test_unknown_dev_id_255(self):
        d, ei, si = self.dup_slot(2, 0)
        set_slot(d, ei, si, dev=255)
        self.assertInvalid(d, "unknown device")

    def test_cluster_just_past_end_with_data(self):
        d, ei, si = self.dup_slot(1, 0)
        set_slot(d, ei, si, cluster=21)          # scsi0 has clusters 0..20
        r = self.assertInvalid(d, "beyond")
        self.assertLineNames(r, "beyond", "drive-scsi0", "offset", number=21)

    def test_cluster_far_past_end_with_data(self):
        d, ei, si = self.dup_slot(1, 0)
        set_slot(d, ei, si, cluster=100000)
        self.assertInvalid(d, "beyond")

    def test_mask0_cluster_past_proxmox_bitmap(self):
        d = bytearray(self.base())
        last = len(vf.parse_layout(bytes(d)).extents) - 1
        ext = vf.parse_layout(bytes(d)).extents[last]
        self.assertLess(len(ext.slots), 59)
        set_slot(d, last, len(ext.slots), mask=0, dev=3, cluster=64)   # bitmap covers 0..63
        self.assertInvalid(d, "beyond")

    def last_cluster_slot(self, data, dev_id, cluster):
        hits = [(ei, si, m) for ei, si, m, dv, c in stream_slots(data) if dv == dev_id and c == cluster]
        self.assertEqual(len(hits), 1)
        return hits[0]

    def test_block_starting_at_device_end(self):
        d = bytearray(self.base())
        ei, si, mask = self.last_cluster_slot(d, 1, 8)     # efidisk: blocks 0..3 valid
        self.assertEqual(mask >> 4, 0)
        add_block(d, ei, si, 4, b"\x11" * BLOCK)
        r = self.assertInvalid(d, "beyond")
        self.assertLineNames(r, "beyond", "drive-efidisk0", "offset", number=8)

    def test_block_15_past_device_end(self):
        d = bytearray(self.base())
        ei, si, mask = self.last_cluster_slot(d, 3, 6)     # scsi1: blocks 0..1 valid
        add_block(d, ei, si, 15, b"\x22" * BLOCK)
        self.assertInvalid(d, "beyond")

    def test_block_after_straddling_block(self):
        d = bytearray(self.base())
        ei, si, mask = self.last_cluster_slot(d, 2, 20)    # scsi0: block 2 straddles, 3 is past
        add_block(d, ei, si, 3, b"\x33" * BLOCK)
        self.assertInvalid(d, "beyond")

    def test_duplicate_cluster(self):
        r = self.assertInvalid(self.archive(duplicate=[(1, 3)]), "duplicate")
        self.assertLineNames(r, "duplicate", "drive-scsi0", "offset", number=3)

    def test_duplicate_cluster_proxmox_order(self):
        r = self.assertInvalid(self.archive(order="proxmox", per_extent=58, duplicate=[(0, 8)]),
                               "duplicate")
        self.assertLineNames(r, "duplicate", "drive-efidisk0", number=8)

    def test_missing_cluster(self):
        r = self.assertInvalid(self.archive(omit=[(1, 5)]), "missing cluster")
        self.assertLineNames(r, "missing cluster", "drive-scsi0", number=5)

    def test_missing_clusters_first_named(self):
        r = self.assertInvalid(self.archive(omit=[(1, 7), (1, 5), (1, 6)]), "missing cluster",
                               single=False)
        self.assertLineNames(r, "missing cluster", "drive-scsi0", number=5)

    def test_missing_last_cluster(self):
        r = self.assertInvalid(self.archive(omit=[(2, 6)]), "missing cluster")
        self.assertLineNames(r, "missing cluster", "drive-scsi1", number=6)

    def test_missing_zero_cluster(self):
        # fixture: cluster 1 of a device with >= 4 clusters is all zero (mask-0 entry)
        self.assertEqual(bytes(self.vm().disks[1][CLUSTER:2 * CLUSTER]), bytes(CLUSTER))
        r = self.assertInvalid(self.archive(omit=[(1, 1)]), "missing cluster")
        self.assertLineNames(r, "missing cluster", "drive-scsi0", number=1)

    def test_missing_whole_device(self):
        r = self.assertInvalid(self.archive(omit=[(2, c) for c in range(7)]), "missing cluster",
                               single=False)
        self.assertLineNames(r, "missing cluster", "drive-scsi1", number=0)

    def test_header_only_with_devices(self):
        d = self.base()
        hs = vf.parse_layout(d).header_size
        self.assertInvalid(d[:hs], "missing cluster", single=False)

    def test_vmstate_out_of_order(self):
        vm = vf.make_vm(33, devices=[("drive-scsi0", 4 * CLUSTER), ("vmstate", 5 * CLUSTER)])
        d = bytearray(vf.write_archive(vm, None, seed=4, order="sequential", per_extent=59))
        self.assertValid(d)
        slots = [(si, c) for ei, si, m, dv, c in stream_slots(d) if dv == 2]
        self.assertEqual([c for _, c in slots], [0, 1, 2, 3, 4])

        def swap(h):
            a, b = slots[1][0], slots[2][0]
            ma, da, ca = h["slots"][a]
            mb, db, cb = h["slots"][b]
            h["slots"][a] = (ma, da, cb)
            h["slots"][b] = (mb, db, ca)
        vf.rewrite_extent_header(d, 0, swap)
        r = self.assertInvalid(d, "vmstate", single=False)
        self.assertLineNames(r, "vmstate", "offset")


class TruncationTest(VerifyCase):
    def test_truncated_in_fixed_header(self):
        self.assertInvalid(self.base()[:5000], "truncated")

    def test_truncated_in_blob_area(self):
        hs = vf.parse_layout(self.base()).header_size
        self.assertInvalid(self.base()[:hs - 1], "truncated")

    def test_truncated_in_extent_header(self):
        e = vf.parse_layout(self.base()).extents[3]
        r = self.assertInvalid(self.base()[:e.offset + 100], "truncated")
        self.assertOffsetIn(r, e.offset, e.offset + 101)

    def test_truncated_in_extent_data(self):
        e = vf.parse_layout(self.base()).extents[3]
        self.assertGreater(e.block_count, 2)
        self.assertInvalid(self.base()[:e.data_offset + BLOCK + 7], "truncated")

    def test_truncated_at_block_boundary(self):
        e = vf.parse_layout(self.base()).extents[4]
        self.assertGreater(e.block_count, 2)
        self.assertInvalid(self.base()[:e.data_offset + 2 * BLOCK], "truncated")

    def test_truncated_last_byte(self):
        self.assertInvalid(self.base()[:-1], "truncated")

    def test_trailing_100_bytes(self):
        r = self.assertInvalid(self.base() + b"\xab" * 100, "truncated")
        n = len(self.base())
        self.assertOffsetIn(r, n, n + 1)

    def test_trailing_512_zero_bytes(self):
        n = len(self.base())
        r = self.assertInvalid(self.base() + bytes(512))
        self.assertOffsetIn(r, n, n + 1)

    def test_trailing_4096_bytes(self):
        n = len(self.base())
        r = self.assertInvalid(self.base() + b"\x5a" * 4096)
        self.assertOffsetIn(r, n, n + 1)


class AcceptedTest(VerifyCase):
    """Archives Proxmox accepts (FORMAT.md "verify versus extract"); verify must exit 0."""

    def test_fixture_variants(self):
        variants = [
            dict(order="proxmox", per_extent=58),
            dict(order="reverse"),
            dict(order="random", per_extent="random"),
            dict(order="proxmox", per_extent=1),
            dict(order="sequential", per_extent=59),
            dict(order="proxmox", per_extent=58, empty_extents=True),
            dict(order="random", empty_extents=True, per_extent=3),
            dict(order="proxmox", stored_zero_blocks=True),
            dict(order="proxmox", tail_garbage=True),
            dict(order="random", dev_ids=[3, 9, 200]),
            dict(order="proxmox", dev_ids=[254, 1, 17]),
        ]
        for i, kw in enumerate(variants):
            with self.subTest(**{k: str(v) for k, v in kw.items()}):
                self.assertValid(self.archive(seed=40 + i, **kw))

    def test_59_slot_extents(self):
        vm = vf.make_vm(12, devices=[("drive-scsi0", 130 * CLUSTER)], fill=0.2)
        big = vf.write_archive(vm, None, seed=6, order="proxmox", per_extent=59)
        self.assertEqual([len(e.slots) for e in vf.parse_layout(big).extents], [59, 59, 12])
        self.assertValid(big)

    def test_empty_extent_mid_stream(self):
        d = bytearray(self.base())
        e = vf.parse_layout(bytes(d)).extents[2]
        d[e.offset:e.offset] = empty_extent(bytes(d[8:24])) * 2
        self.assertValid(d)

    def test_empty_extent_at_end(self):
        d = self.base() + empty_extent(self.base()[8:24])
        self.assertValid(d)

    def test_dev_id_zero_holes(self):
        d = bytearray(self.base())

        def holes(h):
            used = [s for s in h["slots"] if s[1]]
            new = []
            for s in used:
                new += [s, (0, 0, 0)]
            h["slots"] = new + [(0, 0, 0)] * (59 - len(new))
        vf.rewrite_extent_header(d, 2, holes)
        self.assertEqual(vf.parse_layout(bytes(d)).extents[2].slots[1], (0, 0, 0))
        self.assertValid(d)

    def test_dev_id_zero_slot_with_mask_is_ignored(self):
        d = bytearray(self.base())

        def holes(h):
            used = [s for s in h["slots"] if s[1]]
            h["slots"] = [used[0], (0xFFFF, 0, 5)] + used[1:] + [(0, 0, 0)] * (58 - len(used))
        vf.rewrite_extent_header(d, 3, holes)
        self.assertValid(d)

    def test_blob_buffer_size_padded(self):
        d = bytearray(self.base())
        hs = struct.unpack_from(">I", d, 56)[0]
        header_u32(d, 52, hs - 12288)
        self.assertValid(d)

    def test_header_size_not_multiple_of_512(self):
        d = bytearray(self.base())
        hs = struct.unpack_from(">I", d, 56)[0]
        d[hs:hs] = bytes(100)
        header_u32(d, 56, hs + 100)
        self.assertValid(d)

    def test_mask0_cluster_past_end_within_bitmap(self):
        d = bytearray(self.base())
        lay = vf.parse_layout(bytes(d))
        last = len(lay.extents) - 1
        n = len(lay.extents[last].slots)
        self.assertLessEqual(n + 2, 59)
        set_slot(d, last, n, mask=0, dev=3, cluster=10)      # scsi1: 7 clusters, bitmap 64
        set_slot(d, last, n + 1, mask=0, dev=1, cluster=63)  # efidisk: 9 clusters, bitmap 64
        self.assertValid(d)

    def test_straddling_block_with_garbage(self):
        d = bytearray(self.base())
        ei, si, mask, _, _ = [s for s in stream_slots(d) if s[3] == 2 and s[4] == 20][0]
        garbage = b"\xee" * (BLOCK - 512)                   # scsi0 ends 512 bytes into block 2
        if mask >> 2 & 1:
            ext = vf.parse_layout(bytes(d)).extents[ei]
            before = sum(popcount(m) for m, dv, _ in ext.slots[:si] if dv) + popcount(mask & 3)
            pos = ext.data_offset + before * BLOCK
            d[pos + 512:pos + BLOCK] = garbage
        else:
            add_block(d, ei, si, 2, b"\x01" * 512 + garbage)
        self.assertValid(d)

    def test_config_data_pointer_zero(self):
        d = bytearray(self.base())
        header_u32(d, 3068 + 4, 0)      # second config (qemu-server.fw) ignored
        self.assertValid(d)

    def test_diskless_with_empty_extent(self):
        vm = vf.make_vm(8, devices=[])
        d = bytes(vf.write_archive(vm, None, seed=1))
        lay = vf.parse_layout(d)
        self.assertEqual(len(d), lay.header_size + 512)
        self.assertValid(d)

    def test_diskless_header_only(self):
        vm = vf.make_vm(8, devices=[])
        d = bytes(vf.write_archive(vm, None, seed=1))
        self.assertValid(d[:vf.parse_layout(d).header_size])

    def test_vmstate_in_order(self):
        vm = vf.make_vm(34, devices=[("vmstate", 3 * CLUSTER), ("drive-scsi0", 2 * CLUSTER)])
        self.assertValid(vf.write_archive(vm, None, seed=2, order="proxmox", per_extent=2))


def with_digests(vm, blob=None):
    """A copy of vm whose configs end with a vma-tool.digests blob (the right one by default)."""
    copy = vm.copy()
    copy.configs = copy.configs + [("vma-tool.digests", vf.digests_blob(vm) if blob is None else blob)]
    return copy


def flip_data_byte(data, dev_id, skip=0):
    """Flip one byte inside a full stored cluster of dev_id (the skip-th such entry);
    returns the cluster's number."""
    entries = [(cluster, pos) for _, _, mask, dev, cluster, pos in vf.parse_layout(bytes(data)).entries()
               if dev == dev_id and mask == 0xFFFF]
    cluster, pos = entries[skip]
    data[pos + 1000] ^= 0x40
    return cluster


class DigestTest(VerifyCase):
    """verify reads the data and checks it against the archive's vma-tool.digests blob."""

    def digest_archive(self, blob=None, **kw):
        kw.setdefault("seed", 2)
        return bytearray(vf.write_archive(with_digests(self.vm(), blob), None, **kw))

    def verify_json(self, data, *opts):
        r = self.verify(data, "--json", *opts)
        return r, json.loads(r.stdout.decode().splitlines()[-1])

    def test_archives_with_digests_are_checked(self):
        for order in ("proxmox", "random", "sequential"):
            with self.subTest(order=order):
                r, result = self.verify_json(self.digest_archive(order=order))
                self.assertEqual((r.returncode, result["result"], result["digests"]), (0, "ok", "checked"))
        r = self.verify(self.digest_archive(), "-v")
        self.assertIn(b"data: checked", r.stdout)

    def test_without_digests_the_data_is_unchecked(self):
        r = self.assertValid(self.base(), "-v")
        self.assertIn(b"data: unchecked", r.stdout)
        r, result = self.verify_json(self.base())
        self.assertEqual(result["digests"], "absent")

    def test_a_flipped_data_byte_names_the_device_and_byte_range(self):
        data = self.digest_archive(order="proxmox")
        flip_data_byte(data, 2)
        r = self.assertInvalid(data, "device 2 (drive-scsi0)", "digest")
        size = DEVICES[1][1]
        self.assertLineNames(r, "does not match", "bytes 0-%d" % (size - 1))
        r, result = self.verify_json(data)
        self.assertEqual((result["result"], result["exit_status"], result["digests"]), ("invalid", 1, "mismatch"))
        r = support.run_tool("verify", "-", input=bytes(data))
        support.assert_clean_error(self, r, "device 2 (drive-scsi0)", code=1, multiple=True)

    def test_a_flipped_digest_line_is_a_mismatch(self):
        blob = vf.digests_blob(self.vm())
        line = blob.split(b"\n")[3]                    # dev_id 3
        at = blob.index(line) + line.index(b"sha256=") + 7
        blob = blob[:at] + (b"1" if blob[at:at + 1] != b"1" else b"2") + blob[at + 1:]
        r = self.assertInvalid(self.digest_archive(blob), "device 3 (drive-scsi1)", "does not match")
        self.assertNotIn(b"drive-scsi0", r.stderr)

    def test_a_missing_line_is_a_problem(self):
        blob = b"".join(line + b"\n" for line in vf.digests_blob(self.vm()).split(b"\n")[:-1]
                        if b"name=drive-efidisk0" not in line)
        self.assertInvalid(self.digest_archive(blob), "device 1 (drive-efidisk0)", "no line")

    def test_a_malformed_blob_is_a_problem(self):
        for blob in (b"garbage\n", vf.digests_blob(self.vm())[:-1], b"\xff\n",
                     vf.digests_blob(self.vm()).replace(b"size=", b"size=x")):
            with self.subTest(blob=blob[:40]):
                self.assertInvalid(self.digest_archive(blob), "vma-tool.digests")
                r, result = self.verify_json(self.digest_archive(blob))
                self.assertEqual((result["exit_status"], result["digests"]), (1, "malformed"))

    def test_a_truncated_archive_leaves_the_data_unchecked(self):
        data = self.digest_archive()
        r, result = self.verify_json(data[:len(data) - 5000])
        self.assertEqual((result["exit_status"], result["digests"]), (1, "unchecked"))
        self.assertNotIn(b"does not match", r.stderr)

    def test_zero_and_garbage_blocks_do_not_count(self):
        data = self.digest_archive(stored_zero_blocks=True, tail_garbage=True, order="random")
        self.assertValid(data)


if __name__ == "__main__":
    unittest.main()
