"""Content digests (FORMAT.md, "Content digests"): the engine's DeviceDigest and
ContentDigests against the fixture's own implementation of the definition, and the
vma-tool.digests blob's syntax."""

import os
import tempfile
import unittest

import support
import vmafixture as vf

T = support.load_tool_module()
CLUSTER, BLOCK = vf.CLUSTER, 4096


def archive_digests(data):
    """ContentDigests of an archive's bytes, fed by Archive.read as every command reads."""
    with tempfile.TemporaryDirectory(prefix="vmatest-") as tmp:
        path = os.path.join(tmp, "a.vma")
        with open(path, "wb") as f:
            f.write(data)
        source = T.Source(path)
        try:
            archive = T.Archive(source, "reading", quiet=True)
            digests = T.ContentDigests(archive.header.devices)
            archive.read(T.ArchiveScan(archive.header), digests)
        finally:
            source.close()
    return archive.header, digests


class DefinitionTest(unittest.TestCase):
    def assert_matches_reference(self, vm, data):
        header, digests = archive_digests(data)
        for i, dev in enumerate(vm.devices):
            device, region, regions = vf.content_digest(vm.disk_bytes(i), dev.size)
            digest = digests.digests[vm.dev_ids[i]]
            self.assertEqual(digest.hexdigest(), device, dev.name)
            self.assertEqual(digest.region_size, region)
            self.assertEqual(digest.region_digests(), regions)
        self.assertEqual(digests.text().encode(), vf.digests_blob(vm))

    def test_any_order_and_layout_gives_the_reference_digest(self):
        vm = support.fixture_vm(3)
        for order in ("proxmox", "random", "sequential"):
            with self.subTest(order=order):
                self.assert_matches_reference(vm, vf.write_archive(vm, None, seed=5, order=order))
        self.assert_matches_reference(vm, vf.canonical_archive(vm))

    def test_zero_clusters_count_the_same_stored_or_not(self):
        vm = vf.make_vm(11, devices=[("drive-scsi0", 40 * CLUSTER)], fill=0.3)
        self.assert_matches_reference(vm, vf.write_archive(vm, None, seed=2))
        self.assert_matches_reference(vm, vf.write_archive(vm, None, seed=2, stored_zero_blocks=True,
                                                           tail_garbage=True))

    def test_a_changed_byte_changes_the_device_and_its_region_digest(self):
        size = 3 << 30                  # three regions of 1 GiB
        digest = T.DeviceDigest(size)
        other = T.DeviceDigest(size)
        cluster = bytes(range(256)) * 256
        for number in (0, 20000, 40000):
            digest.add(number, cluster)
            other.add(number, cluster if number != 20000 else b"\x01" + cluster[1:])
        self.assertNotEqual(digest.hexdigest(), other.hexdigest())
        mine, theirs = digest.region_digests(), other.region_digests()
        self.assertEqual([a == b for a, b in zip(mine, theirs)], [True, False, True])

    def test_bytes_past_the_device_end_do_not_count(self):
        size = CLUSTER + 512
        clean, dirty = T.DeviceDigest(size), T.DeviceDigest(size)
        tail = b"\x07" * 512 + bytes(CLUSTER - 512)
        clean.add(1, tail)
        dirty.add(1, b"\x07" * 512 + b"\xff" * (CLUSTER - 512))
        self.assertEqual(clean.hexdigest(), dirty.hexdigest())
        self.assertEqual(clean.hexdigest(), vf.content_digest(bytes(CLUSTER) + b"\x07" * 512, size)[0])

    def test_an_all_zero_cluster_counts_as_absent(self):
        digest = T.DeviceDigest(4 * CLUSTER)
        digest.add(2, bytes(CLUSTER))
        self.assertEqual(digest.hexdigest(), T.DeviceDigest(4 * CLUSTER).hexdigest())

    def test_region_size_grows_past_256_regions(self):
        self.assertEqual(T.region_bytes(1), 1 << 30)
        self.assertEqual(T.region_bytes(256 << 30), 1 << 30)
        self.assertEqual(T.region_bytes((256 << 30) + 512), 2 << 30)
        self.assertEqual(T.region_bytes(1 << 40), 4 << 30)
        self.assertEqual(len(T.DeviceDigest(1 << 40).region_digests()), 256)


class BlobTest(unittest.TestCase):
    def setUp(self):
        self.vm = support.fixture_vm(3)
        self.header, self.digests = archive_digests(support.fixture_archive(3))
        self.text = self.digests.text()

    def test_round_trip_and_placeholder_length(self):
        stored = T.parse_digests(self.text.encode(), self.header)
        self.assertEqual(self.digests.problems(stored), [])
        self.assertEqual(len(self.digests.text(placeholder=True)), len(self.text))
        self.assertNotEqual(self.digests.text(placeholder=True), self.text)

    def test_a_wrong_digest_names_the_device(self):
        lines = self.text.splitlines(True)
        field = lines[2].split(" ")[2]
        lines[2] = lines[2].replace(field, "sha256=" + "0" * 64)
        stored = T.parse_digests("".join(lines).encode(), self.header)
        problems = self.digests.problems(stored)
        self.assertEqual(len(problems), 1)
        self.assertIn("device %d" % self.vm.dev_ids[1], problems[0])
        self.assertIn("does not match", problems[0])

    def test_a_wrong_regional_digest_names_the_bytes(self):
        lines = self.text.splitlines(True)
        head, regions = lines[1].split(" regions=")
        size, rest = regions.split(":", 1)
        lines[1] = head + " regions=%s:%s%s" % (size, "f" * 16, rest[16:])
        lines[1] = lines[1].replace(lines[1].split(" ")[2], "sha256=" + "1" * 64)
        problems = self.digests.problems(T.parse_digests("".join(lines).encode(), self.header))
        self.assertIn("in bytes 0-%d" % (self.vm.devices[0].size - 1), problems[0])

    def test_a_missing_line_is_a_problem(self):
        lines = self.text.splitlines(True)
        del lines[2]
        problems = self.digests.problems(T.parse_digests("".join(lines).encode(), self.header))
        self.assertEqual(len(problems), 1)
        self.assertIn("no line", problems[0])

    def test_malformed_blobs_are_refused(self):
        lines = self.text.splitlines(True)
        bad = {
            "first line": "".join(["vma-tool content digests 2\n"] + lines[1:]),
            "no newline": self.text[:-1],
            "not ascii": self.text.replace("name=", "name=\u00e9", 1),
            "unknown field": self.text.replace(" size=", " colour=red size=", 1),
            "short digest": self.text.replace(" name=", "0 name=", 1),
            "other name": self.text.replace("name=" + self.vm.devices[0].name, "name=drive-sata9", 1),
            "other size": self.text.replace("size=%d" % self.vm.devices[0].size, "size=512", 1),
            "twice": self.text + lines[1],
            "region count": self.text.replace(":", ":" + "0" * 16 + ",", 1),
        }
        for why, text in bad.items():
            with self.subTest(why):
                with self.assertRaises(T.VmaError):
                    T.parse_digests(text.encode("utf-8"), self.header)

    def test_too_many_regions_for_one_blob_leaves_them_all_out(self):
        devices = [T.Device(dev_id, "drive-virtio%d" % dev_id, 1 << 40) for dev_id in range(1, 17)]
        text = T.ContentDigests(devices).text()
        self.assertLessEqual(len(text), T.MAX_BLOB_LENGTH)
        self.assertNotIn("regions=", text)
        few = T.ContentDigests(devices[:4]).text()
        self.assertEqual(few.count("regions="), 4)


if __name__ == "__main__":
    unittest.main()
