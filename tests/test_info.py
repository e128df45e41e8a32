"""Tests for `vma-tool info` / `list` (human text and --json, canonical detection)."""
import calendar
import gzip
import json
import os
import struct
import sys
import time
import unittest
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import support  # noqa: E402
import vmafixture as vf  # noqa: E402
from test_optimize import canonical_for_vm  # noqa: E402  (independent canonical writer)

CLUSTER = 65536
BLOCK = 4096
CANON_UUID = uuid.UUID("12345678-aabb-ccdd-eeff-aabbccddeeff").bytes
REASONS = {"uuid", "header", "no digests", "digests", "order", "extent layout", "stored zero blocks",
           "data past device end"}
KEYS = {"file", "uuid", "ctime", "ctime_iso", "header_size", "archive_size", "extents", "configs",
        "devices", "canonical", "not_canonical"}

# 64K-aligned, 4K-aligned and 512-aligned (straddling) devices, one with > 59 clusters
DEVICES = [
    ("drive-efidisk0", 540672),
    ("drive-scsi0", 4 * 1048576 + 2 * CLUSTER),
    ("drive-scsi1", 1048576 + 40960),
    ("drive-virtio0", 300 * 1024 + 512),
]


def nonzero_blocks(disk, size):
    n = 0
    for off in range(0, size, BLOCK):
        if any(disk[off:off + BLOCK]):
            n += 1
    return n


def change_uuid(data, new):
    d = bytearray(data)
    d[8:24] = new
    vf.fix_header_md5(d)
    for e in vf.parse_layout(bytes(d)).extents:
        d[e.offset + 8:e.offset + 24] = new
        vf.fix_extent_md5(d, e.offset)
    return bytes(d)


def store_a_zero_block(data):
    """The canonical archive `data` with one zero block stored after all (mask bit set, 4 KiB of
    zeros inserted): same clusters, same layout, only "stored zero blocks" differs."""
    lay = vf.parse_layout(data)
    for ei, si, mask, dev_id, cluster, pos in lay.entries():
        size = lay.devices[dev_id][1]
        for block in range(16):
            if mask and not mask & (1 << block) and cluster * CLUSTER + (block + 1) * BLOCK <= size:
                before = bin(mask & ((1 << block) - 1)).count("1")
                d = bytearray(data)
                ext = lay.extents[ei]
                d[pos + before * BLOCK:pos + before * BLOCK] = bytes(BLOCK)
                struct.pack_into(">H", d, ext.offset + 6, ext.block_count + 1)
                slot = ext.offset + 40 + 8 * si
                struct.pack_into(">Q", d, slot, struct.unpack_from(">Q", d, slot)[0] | 1 << (48 + block))
                vf.fix_extent_md5(d, ext.offset)
                return bytes(d)
    raise AssertionError("no cluster with a dropped zero block")


def garbage_past_end(data):
    """The canonical archive `data` with non-zero bytes past a device's end in its stored
    straddling block (same length, same layout)."""
    lay = vf.parse_layout(data)
    for dev_id, (name, size) in lay.devices.items():
        if size % BLOCK:
            last = (size - 1) // CLUSTER
            found = lay.locate(dev_id, last)
            block = (size % CLUSTER) // BLOCK
            if found and found[2] & (1 << block):
                start = found[3] + bin(found[2] & ((1 << block) - 1)).count("1") * BLOCK
                d = bytearray(data)
                d[start + size % BLOCK:start + BLOCK] = b"\xab" * (BLOCK - size % BLOCK)
                return bytes(d)
    raise AssertionError("no stored straddling block")


class InfoCase(support.TempDir, unittest.TestCase):
    _vm = None

    @classmethod
    def vm(cls):
        if InfoCase._vm is None:
            InfoCase._vm = vf.make_vm(303, devices=DEVICES)
        return InfoCase._vm

    def put(self, data, name="a.vma"):
        path = self.tmp_path(name)
        with open(path, "wb") as f:
            f.write(bytes(data))
        return path

    def run_json(self, *args, **kw):
        r = support.run_tool(*args, **kw)
        self.assertEqual(r.returncode, 0, r.stderr[-3000:])
        self.assertNotIn(b"Traceback", r.stderr)
        try:
            obj = json.loads(r.stdout.decode("utf-8"))
        except ValueError as e:
            self.fail("stdout is not one JSON object (%s): %r" % (e, r.stdout[:500]))
        self.assertIsInstance(obj, dict)
        return obj

    def info(self, data, *opts, cmd="info", name="a.vma"):
        path = self.put(data, name)
        return self.run_json(cmd, "--json", *opts, path)

    def reasons(self, data):
        j = self.info(data)
        self.assertIsInstance(j["not_canonical"], list)
        self.assertTrue(set(j["not_canonical"]) <= REASONS, j["not_canonical"])
        self.assertEqual(j["canonical"], not j["not_canonical"])
        return j["not_canonical"]


class JsonFieldsTest(InfoCase):
    def test_fields(self):
        vm = self.vm()
        data = bytes(vf.write_archive(vm, None, seed=5, order="proxmox", empty_extents=True))
        lay = vf.parse_layout(data)
        path = self.put(data)
        j = self.run_json("info", "--json", path)
        self.assertTrue(KEYS <= set(j), "missing keys %s" % (KEYS - set(j)))
        self.assertEqual(j["file"], path)
        self.assertEqual(j["uuid"], str(uuid.UUID(bytes=bytes(lay.uuid))))
        self.assertEqual(j["ctime"], vm.ctime)
        self.assertIsInstance(j["ctime"], int)
        self.assertEqual(j["header_size"], lay.header_size)
        self.assertEqual(j["archive_size"], len(data))
        self.assertEqual(j["extents"], len(lay.extents))
        self.assertEqual(j["configs"], [{"name": n, "size": len(d)} for n, d in vm.configs])
        self.assertEqual([(d["id"], d["name"], d["size"], d["clusters"]) for d in j["devices"]],
                         [(i, n, s, -(-s // CLUSTER)) for i, (n, s) in zip(vm.dev_ids, vm.devices)])
        for d in j["devices"]:
            self.assertTrue({"id", "name", "size", "clusters", "stored_bytes", "zero_bytes"} <= set(d))
        self.assertIs(j["canonical"], False)
        self.assertIsInstance(j["not_canonical"], list)

    def test_ctime_iso(self):
        for ctime in (0, 1635680622, 1700000000, 2000000000):
            with self.subTest(ctime=ctime):
                vm = vf.make_vm(9, devices=[("drive-scsi0", CLUSTER)], ctime=ctime)
                j = self.info(vf.write_archive(vm, None, seed=1))
                self.assertRegex(j["ctime_iso"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
                self.assertEqual(j["ctime_iso"], time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ctime)))
                self.assertEqual(calendar.timegm(time.strptime(j["ctime_iso"], "%Y-%m-%dT%H:%M:%SZ")),
                                 ctime)
                self.assertEqual(j["ctime"], ctime)

    def test_stored_and_zero_bytes_match_content(self):
        vm = self.vm()
        data = vf.write_archive(vm, None, seed=6, order="random", per_extent="random")
        j = self.info(data)
        for dev, (name, size), disk in zip(j["devices"], vm.devices, vm.disks):
            with self.subTest(device=name):
                stored = nonzero_blocks(disk, size) * BLOCK
                if size % BLOCK == 0:
                    self.assertEqual(dev["stored_bytes"], stored)
                    self.assertEqual(dev["zero_bytes"], size - stored)
                else:   # straddling last block: count it as 4096 or clamp it to the device end
                    self.assertIn(dev["stored_bytes"], (stored, stored - (BLOCK - size % BLOCK)))
                    self.assertIn(dev["stored_bytes"] + dev["zero_bytes"],
                                  (size, -(-size // BLOCK) * BLOCK))

    def test_stored_bytes_same_for_every_order(self):
        vm = self.vm()
        ref = None
        for seed, order in enumerate(("proxmox", "sequential", "reverse", "random")):
            j = self.info(vf.write_archive(vm, None, seed=seed, order=order))
            got = [(d["stored_bytes"], d["zero_bytes"]) for d in j["devices"]]
            if ref is None:
                ref = got
            self.assertEqual(got, ref, order)

    def test_dev_id_gaps(self):
        vm = vf.make_vm(17, devices=[("drive-scsi0", 2 * CLUSTER), ("drive-scsi1", 3 * CLUSTER)])
        j = self.info(vf.write_archive(vm, None, seed=1, dev_ids=[3, 9]))
        self.assertEqual([(d["id"], d["name"]) for d in j["devices"]], [(3, "drive-scsi0"), (9, "drive-scsi1")])

    def test_diskless(self):
        vm = vf.make_vm(18, devices=[])
        data = vf.write_archive(vm, None, seed=1)
        j = self.info(data)
        self.assertEqual(j["devices"], [])
        self.assertEqual(j["configs"], [{"name": n, "size": len(d)} for n, d in vm.configs])
        self.assertEqual(j["extents"], 1)
        self.assertIs(self.info(canonical_for_vm(vm))["canonical"], True)

    def test_quiet_json(self):
        j = self.info(vf.write_archive(self.vm(), None, seed=2), "-q")
        self.assertTrue(KEYS <= set(j))


class CanonicalFlagTest(InfoCase):
    def test_canonical_after_optimize(self):
        src = self.put(vf.write_archive(self.vm(), None, seed=7, order="proxmox", tail_garbage=True,
                                        stored_zero_blocks=True), "src.vma")
        dst = self.tmp_path("dst.vma")
        r = support.run_tool("optimize", "-q", src, dst)
        self.assertEqual(r.returncode, 0, r.stderr)
        j = self.run_json("info", "--json", dst)
        self.assertIs(j["canonical"], True)
        self.assertEqual(j["not_canonical"], [])
        self.assertEqual(j["uuid"], "12345678-aabb-ccdd-eeff-aabbccddeeff")

    def test_independent_canonical_writer_is_canonical(self):
        self.assertEqual(self.reasons(canonical_for_vm(self.vm())), [])

    def test_only_uuid_differs(self):
        data = change_uuid(canonical_for_vm(self.vm()), b"\x9a" * 16)
        self.assertEqual(self.reasons(data), ["uuid"])

    def test_sequential_random_uuid(self):
        # ascending dev_id order is Proxmox's `vma create` order, not the canonical (descending) one
        data = vf.write_archive(self.vm(), None, seed=8, order="sequential")
        reasons = self.reasons(data)
        self.assertIn("uuid", reasons)
        self.assertIn("order", reasons)

    def test_proxmox_order(self):
        reasons = self.reasons(vf.write_archive(self.vm(), None, seed=9, order="proxmox"))
        self.assertIn("order", reasons)
        self.assertIn("uuid", reasons)

    def test_proxmox_order_canonical_uuid(self):
        reasons = self.reasons(vf.write_archive(self.vm(), None, seed=9, order="reverse", uuid=CANON_UUID))
        self.assertIn("order", reasons)
        self.assertNotIn("uuid", reasons)

    def test_header_only(self):
        d = bytearray(canonical_for_vm(self.vm()))
        hs = struct.unpack_from(">I", d, 56)[0]
        struct.pack_into(">I", d, 52, hs - 12288)      # blob_buffer_size = padded size (valid)
        vf.fix_header_md5(d)
        self.assertEqual(self.reasons(d), ["header"])

    def test_extent_layout_only(self):
        # one device: clusters in canonical order, the old 59-cluster (version 1) layout
        vm = vf.make_vm(304, devices=[DEVICES[1]])
        self.assertEqual(self.reasons(vf.canonical_archive_v1(vm)), ["no digests", "extent layout"])
        configs = vf.canonical_configs(vm)         # with the digests blob, as version 4 has it
        vm = vf.VM(vm.ctime, configs, vm.devices, vm.disks, vm.dev_ids)
        data = vf.write_archive(vm, None, seed=1, order="sequential", per_extent=8,
                                uuid=CANON_UUID, device_break=True)
        self.assertEqual(self.reasons(data), ["extent layout"])

    def test_no_digests_only(self):
        """Version 3 of the canonical form: all but the digests blob (what optimize writes to stdout)."""
        self.assertEqual(self.reasons(vf.canonical_archive_v3(self.vm())), ["no digests"])

    def test_digests_blob_not_last_or_not_as_written(self):
        vm = self.vm()
        configs = vf.canonical_configs(vm)
        moved = vf.VM(vm.ctime, [configs[-1]] + configs[:-1], vm.devices, vm.disks, vm.dev_ids)
        self.assertEqual(self.reasons(vf.canonical_archive_v3(moved)), ["header"])
        short = configs[:-1] + [(configs[-1][0], configs[-1][1].split(b"\n", 1)[0] + b"\n")]   # lines missing
        self.assertEqual(self.reasons(vf.canonical_archive_v3(vf.VM(vm.ctime, short, vm.devices, vm.disks,
                                                                     vm.dev_ids))), ["digests"])

    def test_version_1_is_not_canonical(self):
        reasons = self.reasons(vf.canonical_archive_v1(self.vm()))
        self.assertIn("extent layout", reasons)
        self.assertNotIn("uuid", reasons)

    def test_stored_zero_blocks_only(self):
        data = store_a_zero_block(canonical_for_vm(self.vm()))
        self.assertEqual(self.reasons(data), ["stored zero blocks"])

    def test_data_past_device_end_only(self):
        data = garbage_past_end(canonical_for_vm(self.vm()))
        self.assertNotEqual(data, canonical_for_vm(self.vm()), "fixture should have garbage")
        self.assertEqual(self.reasons(data), ["data past device end"])

    def test_empty_extent_is_layout(self):
        data = bytearray(canonical_for_vm(self.vm()))
        hs = struct.unpack_from(">I", data, 56)[0]
        data[hs:hs] = vf._extent_header(CANON_UUID, [], 0)
        reasons = self.reasons(bytes(data))
        self.assertEqual(reasons, ["extent layout"])


class TextAndAliasTest(InfoCase):
    def test_human_text(self):
        vm = self.vm()
        data = vf.write_archive(vm, None, seed=4)
        path = self.put(data)
        r = support.run_tool("info", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        text = r.stdout.decode()
        self.assertIn(str(uuid.UUID(bytes=bytes(data[8:24]))), text)
        for name, _ in vm.devices:
            self.assertIn(name, text)
        for name, _ in vm.configs:
            self.assertIn(name, text)
        with self.assertRaises(ValueError):
            json.loads(text)

    def test_list_alias_json(self):
        path = self.put(vf.write_archive(self.vm(), None, seed=4))
        a = support.run_tool("info", "--json", path)
        b = support.run_tool("list", "--json", path)
        self.assertEqual(a.returncode, 0, a.stderr)
        self.assertEqual(b.returncode, 0, b.stderr)
        self.assertEqual(json.loads(a.stdout), json.loads(b.stdout))

    def test_list_alias_text(self):
        path = self.put(vf.write_archive(self.vm(), None, seed=4))
        a = support.run_tool("info", path)
        b = support.run_tool("list", path)
        self.assertEqual(b.returncode, 0, b.stderr)
        self.assertEqual(a.stdout, b.stdout)

    def test_pipe_input(self):
        data = bytes(vf.write_archive(self.vm(), None, seed=4, order="random"))
        path = self.put(data)
        want = self.run_json("info", "--json", path)
        got = self.run_json("info", "--json", "-", input=data)
        want.pop("file")
        got.pop("file")
        self.assertEqual(got, want)

    def test_stdin_file(self):
        data = bytes(vf.write_archive(self.vm(), None, seed=4))
        path = self.put(data)
        want = self.run_json("list", "--json", path)
        with open(path, "rb") as f:
            got = self.run_json("list", "--json", "-", stdin=f)
        want.pop("file")
        got.pop("file")
        self.assertEqual(got, want)

    def test_gzip_input(self):
        data = bytes(canonical_for_vm(self.vm()))
        want = self.info(data)
        got = self.info(gzip.compress(data, 1), name="a.vma.gz")
        for k in ("file", "archive_size", "compression"):   # compression: extra, non-spec key
            want.pop(k, None)
            got.pop(k, None)
        self.assertEqual(got, want)
        self.assertIs(got["canonical"], True)


    def test_gzip_stdin(self):
        data = bytes(canonical_for_vm(self.vm()))
        want = self.info(data)
        got = self.run_json("info", "--json", "-", input=gzip.compress(data, 1))
        for k in ("file", "archive_size", "compression"):
            want.pop(k, None)
            got.pop(k, None)
        self.assertEqual(got, want)


class InfoErrorTest(InfoCase):
    def test_header_checksum(self):
        d = bytearray(vf.write_archive(self.vm(), None, seed=1))
        d[200] ^= 1
        path = self.put(d)
        for args in (("info", path), ("info", "--json", path)):
            r = support.run_tool(*args)
            support.assert_clean_error(self, r, "header checksum", code=1)

    def test_not_vma(self):
        path = self.put(b"\x00" * 20000)
        r = support.run_tool("info", "--json", path)
        support.assert_clean_error(self, r, "not a vma archive", code=1)

    def test_missing_file(self):
        r = support.run_tool("info", self.tmp_path("missing.vma"))
        support.assert_clean_error(self, r, code=3)


if __name__ == "__main__":
    unittest.main()
