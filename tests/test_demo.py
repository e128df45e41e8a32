"""make demo's restic-like chunker (tests/demo.py chunk_bounds): the cut points that decide what
it reports."""

import os
import random
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo  # noqa: E402
from support import ScratchCase  # noqa: E402

MiB = 1 << 20


def cuts(data):
    return [end for _, end in demo.chunk_bounds(data)]


class Chunker(ScratchCase):
    def test_random_data_between_min_and_max_about_one_mib_past_the_minimum(self):
        data = random.Random(1).randbytes(48 * MiB)
        sizes = [end - start for start, end in demo.chunk_bounds(data)]
        self.assertEqual(sum(sizes), len(data))
        self.assertTrue(all(demo.MIN_CHUNK <= size <= demo.MAX_CHUNK for size in sizes[:-1]), sizes)
        self.assertTrue(1.1 * MiB < len(data) / len(sizes) < 2.2 * MiB, len(data) / len(sizes))

    def test_cut_points_are_content_defined(self):
        data = random.Random(2).randbytes(24 * MiB)
        shifted = b"inserted" + data
        common = set(cuts(data)) & {cut - 8 for cut in cuts(shifted)}
        self.assertGreaterEqual(len(common), len(cuts(data)) - 2)

    def test_a_cut_at_the_first_64_zero_bytes_past_the_minimum(self):
        rng = random.Random(3)
        data = bytearray(rng.randbytes(3 * MiB))
        data[100000:100064] = bytes(64)                 # before the minimum: no cut
        data[600000:600063] = bytes(63)                 # too short
        data[700000:700100] = bytes(100)
        self.assertEqual(cuts(bytes(data))[0], 700064)
        data[demo.MIN_CHUNK - 10:demo.MIN_CHUNK + 60] = bytes(70)      # the window may start before it
        self.assertEqual(cuts(bytes(data))[0], demo.MIN_CHUNK + 54)

    def test_zeros_are_cut_at_the_minimum_and_random_data_at_most_at_the_maximum(self):
        self.assertEqual(cuts(bytes(2 * MiB)), [demo.MIN_CHUNK * k for k in (1, 2, 3, 4)])
        data = bytes(random.Random(4).randbytes(20 * MiB)).replace(demo.ANCHOR, b"xx")
        self.assertEqual(cuts(data)[:2], [demo.MAX_CHUNK, 2 * demo.MAX_CHUNK])

    def test_stored_bytes_count_only_new_chunks(self):
        rng = random.Random(5)
        day1 = rng.randbytes(16 * MiB)
        day2 = bytearray(day1)
        day2[5 * MiB:5 * MiB + 4096] = rng.randbytes(4096)
        paths = []
        for index, data in enumerate((day1, bytes(day2))):
            paths.append(self.path("day%d" % index))
            with open(paths[-1], "wb") as handle:
                handle.write(data)
        stored = demo.stored_for_day_2(*paths)
        self.assertTrue(demo.MIN_CHUNK <= stored <= 2 * demo.MAX_CHUNK, stored)
        self.assertEqual(demo.stored_for_day_2(paths[0], paths[0]), 0)


class Rounding(random.Random):
    """Random numbers, but random() always this value: decides how the region counts round."""

    def __init__(self, seed, value):
        super().__init__(seed)
        self.value = value

    def random(self):
        return self.value


class DayTwo(ScratchCase):
    """Day 2's change regions have the sizes make bench-dedup's model gives them on 2 GiB."""

    def changes(self, size, rng):
        day1, day2 = self.path("day1"), self.path("day2")
        used_end = size * 3 // 4
        with open(day1, "wb") as handle:        # data with every fourth block zero, then free space
            for offset in range(0, used_end, 4 * 4096):
                handle.write(rng.randbytes(3 * 4096) + bytes(4096))
            handle.truncate(size)
        writes = demo.mutate_disk(day1, day2, size, used_end, rng)
        kinds = {}
        for kind in writes.values():
            kinds[kind] = kinds.get(kind, 0) + 1
        return kinds

    def test_regions_keep_their_size_on_a_small_disk(self):
        bench_changed = (2 << 30) // 4096 // 100
        size = 32 * MiB
        kinds = self.changes(size, Rounding(6, 0.999))          # every region count rounded up
        self.assertEqual(kinds["appended"], int(bench_changed * 0.08))
        self.assertEqual(kinds["freed"], int(bench_changed * 0.04))
        self.assertEqual(kinds["filled"], int(bench_changed * 0.04))
        scattered = int(size // 4096 / 100 * 0.04)               # may land in the hot region
        self.assertLessEqual(kinds["scattered"], scattered)
        self.assertTrue(any(0 <= int(bench_changed * 0.80) // regions - kinds["hot"] <= scattered
                            for regions in range(3, 7)), kinds)

    def test_a_small_disk_has_fewer_regions(self):
        kinds = self.changes(32 * MiB, Rounding(7, 0.0))         # every region count rounded down
        self.assertEqual(list(kinds), ["scattered"])

if __name__ == "__main__":
    unittest.main()
