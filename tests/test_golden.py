"""The format by example: tests/golden/canonical-v4.vma, a small canonical archive committed to the
repository, explained byte by byte (FORMAT.md), its vma-tool.digests blob included.
tests/golden/canonical-v3.vma and canonical-v2.vma are the same VM in the previous canonical forms
(version 3: the same without the digests blob; version 2: zero runs cut at multiples of 56 too):
valid archives that are not canonical any more.

The file was written once by the fixture's independent codec (`vmafixture.canonical_archive`) from
GOLDEN_VM below and is never regenerated silently: a change to it is a change of the format rules
and shows in review.  To regenerate it on purpose: python3 tests/test_golden.py --regenerate

Every region of the file is claimed by one check below; the last test asserts that every byte no
check claimed is zero, so nothing in the file goes unexplained.
"""

import hashlib
import os
import struct
import sys
import unittest

import support
import vmafixture as vf

GOLDEN = os.path.join(support.TESTS_DIR, "golden", "canonical-v4.vma")
GOLDEN_V3 = os.path.join(support.TESTS_DIR, "golden", "canonical-v3.vma")
GOLDEN_V2 = os.path.join(support.TESTS_DIR, "golden", "canonical-v2.vma")
BLOCK, CLUSTER = 4096, 65536

CONF = (b"name: golden\n#qmdump#map:scsi0:drive-scsi0:local-lvm:raw:\n"
        b"#qmdump#map:efidisk0:drive-efidisk0:local-lvm:raw:\n")
SIZE0 = 9 * CLUSTER + BLOCK + 512            # 10 clusters; the last one holds 4608 bytes
SIZE1 = 60 * CLUSTER                         # 60 all-zero clusters


def golden_vm():
    """drive-scsi0: cluster 0 has one non-zero block (block 2), cluster 1 is full of 0x11,
    clusters 2..8 are zero, cluster 9 has a full block 0 and 512 bytes of block 1 (the
    device end falls inside it); drive-efidisk0 is all zero (60 clusters: one more than an
    extent holds)."""
    disk0 = bytearray(SIZE0)
    disk0[2 * BLOCK:3 * BLOCK] = b"\xaa" * BLOCK
    disk0[CLUSTER:2 * CLUSTER] = b"\x11" * CLUSTER
    disk0[9 * CLUSTER:9 * CLUSTER + BLOCK + 512] = b"\x99" * (BLOCK + 512)
    return vf.VM(1764374400, [("qemu-server.conf", CONF)],
                 [("drive-scsi0", SIZE0), ("drive-efidisk0", SIZE1)], [disk0, bytearray(SIZE1)])


def digest_of(size, leaves):
    """FORMAT.md "Definition": the device digest of a device of size bytes (one region: under
    1 GiB) whose non-zero clusters are {cluster number: content}, and its regional digest."""
    total = sum(int.from_bytes(hashlib.sha256(struct.pack(">Q", c) + data).digest(), "big")
                for c, data in leaves.items()) % (1 << 256)
    device = hashlib.sha256(b"vma-tool content" + struct.pack(">Q", size) + total.to_bytes(32, "big"))
    region = hashlib.sha256(b"vma-tool region" + struct.pack(">QQQ", size, 1 << 30, 0) + total.to_bytes(32, "big"))
    return device.hexdigest(), region.hexdigest()[:16]


def digests_blob():
    """The vma-tool.digests blob of golden_vm(), from the definition: drive-scsi0's non-zero
    clusters are 0, 1 and 9 (9 only up to the device end: 4608 bytes), drive-efidisk0 has none."""
    scsi0, scsi0_region = digest_of(SIZE0, {0: bytes(2 * BLOCK) + b"\xaa" * BLOCK + bytes(13 * BLOCK),
                                            1: b"\x11" * CLUSTER, 9: b"\x99" * (BLOCK + 512)})
    efidisk0, efidisk0_region = digest_of(SIZE1, {})
    return ("vma-tool content digests 1\n"
            "dev_id=1 size=%d sha256=%s regions=1073741824:%s name=drive-scsi0\n"
            "dev_id=2 size=%d sha256=%s regions=1073741824:%s name=drive-efidisk0\n"
            % (SIZE0, scsi0, scsi0_region, SIZE1, efidisk0, efidisk0_region)).encode()


def read_golden(path=GOLDEN):
    with open(path, "rb") as f:
        return f.read()


class GoldenArchiveTest(unittest.TestCase):
    """Each test claims the byte ranges it explains in `claimed`."""

    data = None
    claimed = None

    @classmethod
    def setUpClass(cls):
        cls.data = read_golden()
        cls.claimed = bytearray(len(cls.data))

    def claim(self, start, length):
        self.claimed[start:start + length] = b"\x01" * length

    def field(self, fmt, offset):
        self.claim(offset, struct.calcsize(fmt))
        return struct.unpack_from(fmt, self.data, offset)

    # -- the main header (FORMAT.md "Main header") --------------------------------------------

    def test_1_fixed_part(self):
        d = self.data
        self.assertEqual(len(d), 12800 + 5 * 512 + 19 * BLOCK)        # header, 5 extents, 19 blocks
        self.assertEqual(self.field("4s", 0), (b"VMA\0",))                  # magic
        self.assertEqual(self.field(">I", 4), (1,))                         # version
        self.assertEqual(self.field("16s", 8), (bytes.fromhex("12345678aabbccddeeffaabbccddeeff"),))
        self.assertEqual(self.field(">q", 24), (1764374400,))               # ctime 2025-11-29
        md5 = self.field("16s", 32)[0]                                      # header MD5, field zeroed
        header = bytearray(d[:12800])
        header[32:48] = bytes(16)
        self.assertEqual(md5, hashlib.md5(header).digest())
        self.assertEqual(self.field(">I", 48), (12288,))                    # blob buffer offset
        # blob buffer size: 1 (the unused byte at offset 0) + 6 blobs with 2-byte lengths
        blobs = 1 + (2 + 17) + (2 + len(CONF)) + (2 + 17) + (2 + len(digests_blob())) + (2 + 12) + (2 + 15)
        self.assertEqual(blobs, 506)                                        # still fits in 512
        self.assertEqual(self.field(">I", 52), (blobs,))
        self.assertEqual(self.field(">I", 56), (12800,))                    # header size: 12288 + 512
        # 60..2043 reserved (zero; checked by the last test)

    def test_2_config_and_device_tables(self):
        self.assertEqual(self.field(">I", 2044), (1,))            # config 0 name -> blob at 1
        self.assertEqual(self.field(">I", 3068), (1 + 2 + 17,))   # config 0 data -> next blob
        digests_name = 1 + 2 + 17 + 2 + len(CONF)                 # config 1, last: vma-tool.digests
        self.assertEqual(self.field(">I", 2044 + 4), (digests_name,))
        self.assertEqual(self.field(">I", 3068 + 4), (digests_name + 2 + 17,))
        name0 = digests_name + 2 + 17 + 2 + len(digests_blob())
        name1 = name0 + 2 + 12
        # device table at 4096, 32 bytes per dev_id, slot 0 unused
        self.assertEqual(self.field(">IIQQQ", 4096 + 32 * 1), (name0, 0, SIZE0, 0, 0))
        self.assertEqual(self.field(">IIQQQ", 4096 + 32 * 2), (name1, 0, SIZE1, 0, 0))

    def test_3_blob_area(self):
        area = 12288
        self.claim(area, 1)                                         # offset 0 is never a blob
        self.assertEqual(self.data[area], 0)
        offset = 1
        for blob in (b"qemu-server.conf\0", CONF, b"vma-tool.digests\0", digests_blob(), b"drive-scsi0\0",
                     b"drive-efidisk0\0"):
            self.assertEqual(self.field("<H", area + offset), (len(blob),))    # little-endian length
            self.assertEqual(self.data[area + offset + 2:area + offset + 2 + len(blob)], blob)
            self.claim(area + offset + 2, len(blob))
            offset += 2 + len(blob)
        # the rest of the 512-byte allocation up to 12800 is zero (last test)

    # -- the extents (FORMAT.md "Extents", "Canonical form (version 5)") ----------------------

    def extent(self, offset, block_count, slots):
        """Check one extent header: magic, reserved, block count, uuid, MD5, the used slots
        (mask, dev_id, cluster) from slot 0, the other slots zero."""
        self.assertEqual(self.field("4s", offset), (b"VMAE",))
        self.assertEqual(self.field(">H", offset + 4), (0,))
        self.assertEqual(self.field(">H", offset + 6), (block_count,))
        self.assertEqual(self.field("16s", offset + 8), (self.data[8:24],))
        md5 = self.field("16s", offset + 24)[0]
        header = bytearray(self.data[offset:offset + 512])
        header[24:40] = bytes(16)
        self.assertEqual(md5, hashlib.md5(header).digest())
        for i, (mask, dev_id, cluster) in enumerate(slots):
            self.assertEqual(self.field(">Q", offset + 40 + 8 * i), (mask << 48 | dev_id << 32 | cluster,))
        return offset + 512

    def test_4_extents(self):
        d = self.data
        # device 2 (drive-efidisk0) first: devices in descending dev_id order.  Its 60 zero
        # clusters are zero-run extents of mask-0 entries with no data, cut at cluster 59
        at = self.extent(12800, 0, [(0, 2, c) for c in range(59)])
        at = self.extent(at, 0, [(0, 2, 59)])
        # device 1, clusters 0 and 1: a data extent (it stops before the zero cluster 2).
        # Cluster 0 stores only its non-zero block 2 (mask 0x0004), cluster 1 all 16 blocks.
        at = self.extent(at, 1 + 16, [(0x0004, 1, 0), (0xFFFF, 1, 1)])
        self.assertEqual(d[at:at + BLOCK], b"\xaa" * BLOCK)
        self.claim(at, BLOCK)
        at += BLOCK
        self.assertEqual(d[at:at + 16 * BLOCK], b"\x11" * CLUSTER)
        self.claim(at, CLUSTER)
        at += CLUSTER
        # clusters 2..8: one zero-run extent; it crosses the multiple of 8 (zero runs may, only
        # multiples of 59 cut them)
        at = self.extent(at, 0, [(0, 1, c) for c in range(2, 9)])
        # cluster 9: a data extent (9 is not a multiple of 8, but 8 is zero).  Blocks 0 and 1;
        # block 1 holds the last 512 bytes of the device, the rest of it is zero.
        at = self.extent(at, 2, [(0x0003, 1, 9)])
        self.assertEqual(d[at:at + BLOCK + 512], b"\x99" * (BLOCK + 512))
        self.claim(at, BLOCK + 512)
        self.assertEqual(at + 2 * BLOCK, len(d))                    # nothing after the last extent

    def test_5_every_other_byte_is_zero(self):
        for name in ("test_1_fixed_part", "test_2_config_and_device_tables", "test_3_blob_area",
                     "test_4_extents"):
            getattr(self, name)()
        unexplained = [i for i, (c, b) in enumerate(zip(self.claimed, self.data)) if not c and b]
        self.assertEqual(unexplained[:10], [], "bytes no test explains")


class GoldenProducersTest(support.ScratchCase):
    """The fixture codec, optimize (file and pipe, any order) and pack all produce the golden bytes."""

    def test_fixture_codec_reproduces_it(self):
        self.assertTrue(bytes(vf.canonical_archive(golden_vm())) == read_golden(),
                        "the fixture's canonical writer no longer writes the golden archive")
        self.assertEqual(vf.digests_blob(golden_vm()), digests_blob())

    def test_optimize_and_pack_produce_it(self):
        vm = golden_vm()
        golden = read_golden()
        for order in ("proxmox", "random"):
            src = self.put("src-%s.vma" % order, vf.write_archive(vm, None, seed=4, order=order))
            self.assertOk(support.run_tool("optimize", src, self.path("out-%s.vma" % order)))
            self.assertTrue(self.read(self.path("out-%s.vma" % order)) == golden, order)
            r = support.run_tool("optimize", "-", "-", input=self.read(src))
            self.assertOk(r)
            # standard output cannot carry the digests: version 3's bytes, the golden ones but the blob
            self.assertTrue(r.stdout == read_golden(GOLDEN_V3), order + " through a pipe")
            self.assertOk(support.run_tool("optimize", "-", self.path("piped-%s.vma" % order), input=r.stdout))
            self.assertTrue(self.read(self.path("piped-%s.vma" % order)) == golden, order + " from a pipe")
        support.write_unpacked_dir(vm, self.path("d"))
        self.assertOk(support.run_tool("pack", "--ctime", str(vm.ctime), self.path("d"), self.path("p.vma")))
        self.assertTrue(self.read(self.path("p.vma")) == golden, "pack")
        r = support.run_tool("info", "--json", GOLDEN)
        self.assertOk(r)
        self.assertIn(b'"canonical": true', r.stdout)

    def test_version_2_file_is_rewritten(self):
        """The same VM in canonical form version 2 (zero runs cut at multiples of 56, no digests):
        a valid archive, not canonical any more; optimize in place rewrites it into the golden
        bytes."""
        self.check_old_version(GOLDEN_V2, vf.canonical_archive_v2, '"no digests",\n    "extent layout"')

    def test_version_3_file_is_rewritten(self):
        """The same VM in canonical form version 3 (as version 4 without the digests blob): not
        canonical any more (no digests); optimize in place adds them."""
        self.check_old_version(GOLDEN_V3, vf.canonical_archive_v3, '"no digests"')

    def check_old_version(self, path, writer, reasons):
        old = read_golden(path)
        self.assertTrue(bytes(writer(golden_vm())) == old,
                        "the fixture's old writer no longer writes %s" % os.path.basename(path))
        self.assertNotEqual(old, read_golden())
        r = support.run_tool("info", "--json", path)
        self.assertOk(r)
        self.assertIn(b'"canonical": false', r.stdout)
        self.assertIn(('"not_canonical": [\n    %s\n  ]' % reasons).encode(), r.stdout)
        copy = self.put("old.vma", old)
        r = support.run_tool("optimize", copy)
        self.assertOk(r)
        self.assertIn(b"optimized", r.stdout)
        self.assertTrue(self.read(copy) == read_golden(), "optimize in place of %s" % os.path.basename(path))


if __name__ == "__main__":
    if sys.argv[1:] == ["--regenerate"]:
        os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
        vf.canonical_archive(golden_vm(), GOLDEN)
        vf.canonical_archive_v3(golden_vm(), GOLDEN_V3)
        vf.canonical_archive_v2(golden_vm(), GOLDEN_V2)
        print("wrote", GOLDEN, GOLDEN_V3, GOLDEN_V2)
    else:
        unittest.main()
