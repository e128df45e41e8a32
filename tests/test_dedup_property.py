"""The dedup property of `vma-tool optimize`: two optimized archives of similar VMs differ only
in the extents that hold or border on changed clusters (plus the header when ctime/sizes differ);
every other extent is byte-identical, and at the same offset as long as no earlier extent changed
size.  (Where an extent [f, f+n) starts and ends depends only on clusters f-1..f+n: whether they
are zero, and their numbers: FORMAT.md, "Canonical form (version 3)".)

The source archives are written with different seeds, cluster orders, extent sizes and uuids, so
nothing of the original layout may leak into the optimized form."""

import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import support  # noqa: E402
import vmafixture  # noqa: E402
from vmafixture import BLOCK, CLUSTER  # noqa: E402

DEVICES = [
    ("drive-efidisk0", 540672),               # 8.25 clusters
    ("drive-scsi0", 16 * 1048576 + 36352),    # 257 clusters, the last one partial
    ("drive-scsi1", 6 * 1048576 + 40960),     # 97 clusters
]


def nclusters(size):
    return (size + CLUSTER - 1) // CLUSTER


def changed_clusters(a, b):
    """{(dev_id, cluster)} whose content differs between VMs a and b (same devices)."""
    out = set()
    for di, dev in enumerate(a.devices):
        da, db = a.disks[di], b.disks[di]
        for c in range(nclusters(dev.size)):
            if da[c * CLUSTER:(c + 1) * CLUSTER] != db[c * CLUSTER:(c + 1) * CLUSTER]:
                out.add((a.dev_ids[di], c))
    return out


def canonical_slots(vm):
    """The extent slot lists of the canonical layout, from the fixture's independent writer."""
    return [[(dev_id, c) for c in range(first, first + count)]
            for dev_id, first, count in vmafixture.canonical_extents(vm)]


def extent_key(ext):
    """(dev_id, first cluster, cluster count) of an extent."""
    return ext.slots[0][1], ext.slots[0][2], len(ext.slots)


def digests_span(header):
    """[start, end) of the vma-tool.digests blob's text in a header (FORMAT.md)."""
    start = bytes(header).index(b"vma-tool content digests 1\n")
    return start, start + int.from_bytes(header[start - 2:start], "little")


class DedupPropertyTest(support.TempDir, unittest.TestCase):

    def optimize(self, vm, name, **kw):
        src = self.tmp_path(name + ".vma")
        dst = self.tmp_path(name + "-opt.vma")
        vmafixture.write_archive(vm, src, **kw)
        r = support.run_tool("optimize", "-q", src, dst)
        self.assertEqual(r.returncode, 0, "optimize %s failed: %s" % (
            name, r.stderr.decode("utf-8", "replace")[-2000:]))
        with open(dst, "rb") as f:
            data = f.read()
        vmafixture.assert_same_content(self, data, vm)
        return data

    def check_layout(self, data, vm):
        lay = vmafixture.parse_layout(data)
        self.assertEqual(lay.end, len(data), "bytes after the last extent")
        got = [[(d, c) for _m, d, c in e.slots] for e in lay.extents]
        self.assertEqual(got, canonical_slots(vm), "extents do not follow the canonical layout")
        return lay

    def extent_bytes(self, data, ext):
        return data[ext.offset:ext.end]

    def assertSameExtent(self, da, ea, db, eb, same=True):
        equal = self.extent_bytes(da, ea) == self.extent_bytes(db, eb)
        self.assertEqual(equal, same, "extent at %d (a) / %d (b), slots %s..: %s" % (
            ea.offset, eb.offset, ea.slots[:1], "differ" if same else "identical"))

    def compare(self, da, db, va, vb, changed):
        """Assert that every extent none of whose clusters, nor the one before or after it,
        changed is byte-identical in both archives, and that every extent that differs holds or
        borders on a changed cluster.  Returns (layout a, layout b, keys of b's extents not found
        unchanged in a)."""
        la = self.check_layout(da, va)
        lb = self.check_layout(db, vb)
        a_by_key = {extent_key(e): e for e in la.extents}
        differ = set()
        for eb in lb.extents:
            key = extent_key(eb)
            ea = a_by_key.get(key)
            same = ea is not None and self.extent_bytes(da, ea) == self.extent_bytes(db, eb)
            dev_id, first, count = key
            if any((dev_id, c) in changed for c in range(first - 1, first + count + 1)):
                if not same:
                    differ.add(key)
            else:
                self.assertTrue(same, "extent %s away from every changed cluster differs" % (key,))
        self.assertTrue(changed, "test setup: no cluster changed")
        self.assertTrue(differ, "no extent differs although clusters changed")
        self.assertLess(len(differ), len(lb.extents), "test setup: every extent changed")
        return la, lb, differ

    def test_one_day_later(self):
        a = vmafixture.make_vm(11, devices=DEVICES)
        b = vmafixture.mutate_vm(a, 12, fraction=0.01, ctime=a.ctime + 86400 + 17)
        changed = changed_clusters(a, b)
        da = self.optimize(a, "a", seed=1, order="proxmox")
        db = self.optimize(b, "b", seed=2, order="random", per_extent="random",
                           empty_extents=True, stored_zero_blocks=True, tail_garbage=True,
                           uuid=bytes(range(16)))
        la, lb, differ = self.compare(da, db, a, b, changed)
        # header: same size, differs only in ctime (24..32), the MD5 (32..48) and the digests
        self.assertEqual(la.header_size, lb.header_size)
        ha, hb = da[:la.header_size], db[:lb.header_size]
        diff_pos = [i for i in range(len(ha)) if ha[i] != hb[i]]
        self.assertTrue(diff_pos, "headers identical although ctime differs")
        blob = digests_span(ha)
        self.assertEqual(blob, digests_span(hb))
        self.assertTrue(all(24 <= i < 48 or blob[0] <= i < blob[1] for i in diff_pos),
                        "header differs outside ctime/md5/digests at %s" % diff_pos[:10])
        # extents before the first differing one sit at the same offsets
        first = min(i for i, e in enumerate(lb.extents) if extent_key(e) in differ)
        for ea, eb in zip(la.extents[:first], lb.extents[:first]):
            self.assertEqual(ea.offset, eb.offset)

    def test_rewrite_in_place_keeps_offsets(self):
        # rewrite the stored blocks of a few clusters with other non-zero data, keep zero
        # blocks zero: block counts stay, so every extent keeps its offset, the header (same
        # ctime, configs, sizes) is byte-identical, and only the extents of those clusters differ
        a = vmafixture.make_vm(21, devices=DEVICES)
        b = a.copy()
        rng = random.Random(5)
        targets = []
        for di in (1, 2, 1):
            dev = a.devices[di]
            for _ in range(1000):
                c = rng.randrange(nclusters(dev.size))
                blk = a.disks[di][c * CLUSTER:c * CLUSTER + BLOCK]
                if any(blk) and (a.dev_ids[di], c) not in targets and \
                        c * CLUSTER + BLOCK <= dev.size:
                    targets.append((a.dev_ids[di], c))
                    break
        self.assertEqual(len(targets), 3, "test setup: no clusters with data found")
        for dev_id, c in targets:
            di = a.dev_ids.index(dev_id)
            disk = b.disks[di]
            for o in range(c * CLUSTER, min((c + 1) * CLUSTER, len(disk)), BLOCK):
                end = min(o + BLOCK, len(disk))
                if any(disk[o:end]):
                    new = bytearray(rng.randbytes(end - o))
                    new[0] = 1
                    disk[o:end] = new
        changed = changed_clusters(a, b)
        self.assertEqual(changed, set(targets))
        da = self.optimize(a, "a", seed=3, order="proxmox", per_extent=58)
        db = self.optimize(b, "b", seed=4, order="reverse", per_extent=7, uuid=b"\xab" * 16)
        la, lb, differ = self.compare(da, db, a, b, changed)
        # no cluster turned zero or non-zero: the same layout, and exactly the extents that hold
        # the rewritten clusters differ
        self.assertEqual([extent_key(e) for e in la.extents], [extent_key(e) for e in lb.extents])
        self.assertEqual(differ, {key for key in map(extent_key, la.extents)
                                  for d, c in targets if key[0] == d and key[1] <= c < key[1] + key[2]})
        self.assertEqual(len(da), len(db))
        ha, hb = da[:la.header_size], db[:lb.header_size]
        start, end = digests_span(ha)            # the digests of the changed clusters' devices differ
        self.assertTrue(ha[:32] + ha[48:start] + ha[end:] == hb[:32] + hb[48:start] + hb[end:],
                        "headers differ outside the MD5 and the digests")
        for ea, eb in zip(la.extents, lb.extents):
            self.assertEqual(ea.offset, eb.offset)

    def test_device_grown(self):
        # scsi0 grows by 4 MiB + 4 KiB of new data: the header changes (device size); devices are
        # written in descending dev_id order, so scsi1's extents stay identical at the same
        # offsets; scsi0's extents that end before the cluster before its last (partial)
        # one stay identical at the same offsets, the rest changes and new ones follow; efidisk0's extents stay identical (shifted)
        a = vmafixture.make_vm(31, devices=DEVICES)
        grow = 4 * 1048576 + 4096
        rng = random.Random(7)
        devs = list(a.devices)
        devs[1] = (devs[1].name, devs[1].size + grow)
        disks = [bytearray(d) for d in a.disks]
        disks[1] += rng.randbytes(grow)
        b = vmafixture.VM(a.ctime, a.configs, devs, disks)
        da = self.optimize(a, "a", seed=5, order="proxmox")
        db = self.optimize(b, "b", seed=6, order="random")
        la = self.check_layout(da, a)
        lb = self.check_layout(db, b)
        self.assertEqual(la.header_size, lb.header_size)
        self.assertTrue(da[:la.header_size] != db[:lb.header_size], "headers identical")
        by_dev_a, by_dev_b = {}, {}
        for lay, out in ((la, by_dev_a), (lb, by_dev_b)):
            for e in lay.extents:
                out.setdefault(e.slots[0][1], []).append(e)
        self.assertEqual([e.slots[0][1] for e in la.extents][0], 3, "scsi1 (dev_id 3) comes first")
        for ea, eb in zip(by_dev_a[3], by_dev_b[3]):
            self.assertEqual(ea.offset, eb.offset)
            self.assertSameExtent(da, ea, db, eb)
        last_cluster = nclusters(DEVICES[1][1]) - 1         # the partial cluster the growth fills
        s0a = [e for e in by_dev_a[2] if e.slots[0][2] + len(e.slots) < last_cluster]
        s0b = by_dev_b[2][:len(s0a)]
        self.assertGreater(len(by_dev_b[2]), len(by_dev_a[2]))
        for ea, eb in zip(s0a, s0b):
            self.assertEqual(ea.offset, eb.offset)
            self.assertSameExtent(da, ea, db, eb)
        tail_a, tail_b = by_dev_a[2][len(s0a):], by_dev_b[2][len(s0a):]
        self.assertFalse(all(self.extent_bytes(da, ea) == self.extent_bytes(db, eb)
                             for ea, eb in zip(tail_a, tail_b)), "the grown end did not change")
        self.assertEqual(len(by_dev_a[1]), len(by_dev_b[1]))
        for ea, eb in zip(by_dev_a[1], by_dev_b[1]):
            self.assertSameExtent(da, ea, db, eb)


if __name__ == "__main__":
    unittest.main()
