"""How vma-tool reads archives back and checks their data (FORMAT.md "Content digests"):

- the read-back before optimize in place and the hook replace a backup reads the new file with
  O_DIRECT where the file system allows it (vma-tool's Source(direct=True), DirectFile: from the
  device, not the page cache, and leaving nothing in it), and as before where it does not; the
  digest workers hash each extent that lies whole in one of its chunks where it was read
  (DirectFile.take, MemoryRange jobs), and a chunk is read into again only once they are done;
- verify of a plain archive file lets the digest workers read each extent's data from the file
  themselves (FileRange jobs), and a worker that cannot read it fails the run with that reason;
- a .vma.zst file read once (optimize, in place, verify, unpack) has its pages dropped from the
  page cache behind the reader (DropBehind), a check that reads it again (keep_cache) does not;
- archive files are written with O_DIRECT (DirectWriter) where the file system allows, else
  through the page cache, dropped behind the writer (Writeback).

White-box where the difference cannot be seen from outside (the bytes are the same either way)."""

import argparse
import errno
import mmap
import os
import random
import shutil
import signal
import subprocess
import threading
import unittest

import support
import vmafixture as vf

T = support.load_tool_module()
ZSTD = shutil.which("zstd")
SEED = 4242
# Over 4 MiB of stored data (DirectFile reads 4 MiB chunks, the next one ahead), a device size
# that is not a multiple of 64 KiB.
DEVICES = [("drive-scsi0", 9 << 20), ("drive-scsi1", (3 << 20) + 12288)]


def vm():
    return support.cached(("read-back-vm", SEED), lambda: vf.make_vm(SEED, devices=DEVICES, fill=0.7))


class Scratch(support.ScratchCase):
    """A scratch directory, archives optimized into it, digest workers off."""
    TMP_PREFIX = "vmatest-read-back-"

    def setUp(self):
        super().setUp()
        self.saved = os.environ.get("VMA_TOOL_DIGEST_WORKERS")
        os.environ["VMA_TOOL_DIGEST_WORKERS"] = "0"     # no fork of the test process

    def tearDown(self):
        if self.saved is None:
            os.environ.pop("VMA_TOOL_DIGEST_WORKERS", None)
        else:
            os.environ["VMA_TOOL_DIGEST_WORKERS"] = self.saved
        super().tearDown()

    def optimized(self, name):
        src = self.put("src.vma", bytes(vf.write_archive(vm(), None, seed=SEED, order="proxmox")))
        path = self.tmp_path(name)
        self.assertOk(support.run_tool("optimize", "-q", src, path))
        return path

    def outputs(self):
        names = ["o.vma"] + (["o.vma.zst"] if ZSTD and T.libzstd() is not None else [])
        return [self.optimized(name) for name in names]

    def direct_or_skip(self, path):
        fd = T.open_direct(path)
        if fd is None:
            self.skipTest("no O_DIRECT on this file system")
        os.close(fd)


class ReadBack(Scratch):
    def test_the_read_back_reads_with_o_direct_and_gets_the_same_digests(self):
        want = vf.digests_blob(vm()).decode()
        for path in self.outputs():
            with self.subTest(path=os.path.basename(path)):
                self.direct_or_skip(path)
                with T.Source(path, direct=True) as source:
                    raw = source.stream if source.compression is None else source.stream.raw
                    self.assertIsInstance(raw, T.DirectFile)
                    self.assertFalse(source.seekable, "a direct source is read as a stream")
                header, direct = T.archive_digests(path, True, "test", direct=True)
                header, cached = T.archive_digests(path, True, "test")
                self.assertEqual(direct.text(), want)
                self.assertEqual(cached.text(), want)

    def test_without_o_direct_the_read_back_reads_as_before(self):
        want = vf.digests_blob(vm()).decode()
        saved = T.open_direct
        T.open_direct = lambda path: None
        try:
            for path in self.outputs():
                with self.subTest(path=os.path.basename(path)):
                    with T.Source(path, direct=True) as source:
                        self.assertIsNone(source.direct_file)
                        self.assertNotIsInstance(source.stream, T.DirectFile)
                    self.assertEqual(T.archive_digests(path, True, "test", direct=True)[1].text(), want)
        finally:
            T.open_direct = saved

    def test_direct_file_gives_every_byte_in_order(self):
        """Chunks of 8 KiB here (4 MiB in use): files that end inside a chunk, at its end, empty;
        reads of every size."""
        saved = T.DIRECT_CHUNK
        T.DIRECT_CHUNK = 8192
        rng = random.Random(SEED)
        try:
            for size in (0, 1, 4095, 8192, 3 * 8192, 3 * 8192 + 5000, 70001):
                with self.subTest(size=size):
                    data = bytes(rng.getrandbits(8) for _ in range(size))
                    path = self.put("f%d" % size, data)
                    self.direct_or_skip(path)
                    fd = T.open_direct(path)
                    stream = T.DirectFile(fd)
                    got = bytearray()
                    try:
                        while True:
                            view = memoryview(bytearray(rng.choice((1, 100, 4096, 8192, 9000, 30000))))
                            count = stream.readinto(view)
                            if not count:
                                break
                            got += view[:count]
                        self.assertEqual(stream.readinto(memoryview(bytearray(10))), 0)
                    finally:
                        stream.close()
                        os.close(fd)
                    self.assertEqual(bytes(got), data)
        finally:
            T.DIRECT_CHUNK = saved

    def test_a_read_error_reaches_the_reader_where_its_data_would_have(self):
        """The thread reading ahead fails (EIO at the third chunk): the bytes before it arrive,
        then readinto raises the error, none is skipped."""
        saved_chunk, saved_pread = T.DIRECT_CHUNK, T.pread_into
        T.DIRECT_CHUNK = 8192
        data = bytes(range(256)) * 160             # five chunks
        path = self.put("f", data)
        self.direct_or_skip(path)

        def failing(fd, view, offset):
            if offset >= 2 * 8192:
                raise OSError(errno.EIO, "Input/output error")
            return saved_pread(fd, view, offset)
        T.pread_into = failing
        fd = T.open_direct(path)
        stream = T.DirectFile(fd)
        got = bytearray()
        try:
            with self.assertRaises(OSError) as caught:
                while True:
                    view = memoryview(bytearray(3000))
                    count = stream.readinto(view)
                    if not count:
                        break
                    got += view[:count]
            self.assertEqual(caught.exception.errno, errno.EIO)
            self.assertEqual(bytes(got), data[:2 * 8192])
        finally:
            stream.close()
            os.close(fd)
            T.DIRECT_CHUNK, T.pread_into = saved_chunk, saved_pread

    def chunked_file(self, name, chunks, tail=0):
        """A file of whole 8192-byte chunks (each byte says its chunk and place) plus tail
        bytes, opened as a DirectFile of 8 KiB chunks (DIRECT_CHUNK restored by cleanup)."""
        saved = T.DIRECT_CHUNK
        T.DIRECT_CHUNK = 8192
        self.addCleanup(setattr, T, "DIRECT_CHUNK", saved)
        data = bytes((chunk * 37 + at * 11) % 251 for chunk in range(chunks + 1) for at in range(8192))
        data = data[:chunks * 8192 + tail]
        path = self.put(name, data)
        self.direct_or_skip(path)
        fd = T.open_direct(path)
        stream = T.DirectFile(fd)
        self.addCleanup(os.close, fd)
        self.addCleanup(stream.close)
        return data, stream

    def test_take_hands_out_data_where_it_lies_and_readinto_the_rest(self):
        """take(n) gives a MemoryRange of the next n bytes when they lie in one chunk, None
        (taking nothing) when they would run past its end; mixed with readinto, every byte
        comes once, in order."""
        data, stream = self.chunked_file("f", 5, tail=3000)
        rng = random.Random(SEED)
        got = bytearray()
        ranges = copies = 0
        while True:
            count = rng.choice((1, 512, 3000, 4096, 8192))
            taken = stream.take(count)
            if taken is not None:
                self.assertIsInstance(taken, T.MemoryRange)
                self.assertEqual(len(taken), count)
                self.assertEqual(taken.offset % 8192 + count <= 8192, True)
                got += taken.view()
                ranges += 1
                continue
            view = memoryview(bytearray(count))
            got_now = stream.readinto(view)
            if not got_now:
                break
            got += view[:got_now]
            copies += 1
            self.assertEqual(stream.position, len(got))
        self.assertEqual(bytes(got), data)
        self.assertGreater(ranges, 0)
        self.assertGreater(copies, 0)
        self.assertIsNone(stream.take(1))

    def test_a_held_chunk_is_not_read_into_before_its_waiter_returns(self):
        """With hold set, a chunk that ranges were taken from is given back to the thread
        reading ahead only once the waiter made when it was left returns: until then its
        bytes stay what the ranges said.  (Each waiter sleeps first, so that a chunk given
        back too early would have been read into.)"""
        data, stream = self.chunked_file("f", 9)
        taken = []
        made = []                       # per waiter made, the ranges it covers
        waited = []                     # ... and per waiter called

        def hold():                     # the ranges of the chunk being left
            ranges = taken[sum(made):]
            made.append(len(ranges))

            def wait():
                threading.Event().wait(0.05)
                for start, held in ranges:
                    self.assertEqual(bytes(held.view()), data[start:start + len(held)],
                                     "a held chunk was read into before its waiter returned")
                waited.append(len(ranges))
            return wait
        stream.hold = hold
        at = 0
        while True:
            held = stream.take(4096)
            if held is None:
                break
            taken.append((at, held))
            at += 4096
        self.assertEqual(at, len(data))
        self.assertEqual(made, [2] * 9, "a waiter for each chunk left, covering its ranges")
        self.assertEqual(waited, [2] * 8, "each called when the next chunk was left (not the last's)")

    def test_in_place_read_back_end_to_end(self):
        """The whole in-place run with its read-back, workers on (the default), plain and .zst."""
        for name in ["a.vma"] + (["a.vma.zst"] if ZSTD else []):
            with self.subTest(name=name):
                src = bytes(vf.write_archive(vm(), None, seed=SEED, order="proxmox"))
                path = self.put("src.vma", src)
                if name.endswith(".zst"):
                    subprocess.run(["zstd", "-q", "--rm", "-f", path, "-o", self.tmp_path(name)], check=True)
                else:
                    os.rename(path, self.tmp_path(name))
                r = support.run_tool("optimize", "-q", "--json", "--in-place", self.tmp_path(name),
                                     env={"VMA_TOOL_DIGEST_WORKERS": "2"})
                self.assertOk(r)
                self.assertIn(b'"read_back": true', r.stdout)
                self.assertOk(support.run_tool("verify", self.tmp_path(name)))
                os.unlink(self.tmp_path(name))


class DropBehind(Scratch):
    """The pages of a .vma.zst read once are dropped behind the reader, in order, none twice."""

    def read_recording_advice(self, path, **options):
        """All that Source(path) gives, and the posix_fadvise calls made meanwhile."""
        calls = []
        saved_advise, saved_bytes = os.posix_fadvise, T.DROP_BEHIND_BYTES

        def recording(fd, offset, length, advice):
            calls.append((offset, length, advice))
            return saved_advise(fd, offset, length, advice)
        os.posix_fadvise, T.DROP_BEHIND_BYTES = recording, 64 << 10
        try:
            with T.Source(path, **options) as source:
                data = bytearray()
                view = memoryview(bytearray(100000))       # not a multiple of a page
                while True:
                    count = source.stream.readinto(view)
                    if not count:
                        break
                    data += view[:count]
        finally:
            os.posix_fadvise, T.DROP_BEHIND_BYTES = saved_advise, saved_bytes
        return bytes(data), calls

    def zst_or_skip(self):
        if not ZSTD or T.libzstd() is None or not hasattr(os, "posix_fadvise"):
            self.skipTest("needs zstd, libzstd and posix_fadvise")
        return self.optimized("o.vma.zst")

    def test_a_zst_read_once_drops_what_was_read(self):
        path = self.zst_or_skip()
        size = os.path.getsize(path)
        data, calls = self.read_recording_advice(path)
        kept, none = self.read_recording_advice(path, keep_cache=True)
        self.assertEqual(data, kept)
        self.assertEqual(none, [])
        self.assertGreater(len(calls), 3)
        expected = 0
        for offset, length, advice in calls:
            self.assertEqual(advice, os.POSIX_FADV_DONTNEED)
            self.assertEqual(offset, expected)          # from where the last one ended, its last page again
            self.assertGreaterEqual(length, 64 << 10)
            expected = offset + length - (offset + length) % mmap.PAGESIZE
        self.assertGreater(offset + length, size - (64 << 10) - (1 << 17))

    def test_the_checks_before_a_rewrite_keep_the_pages_and_a_pipe_has_none(self):
        """In place, a canonical .vma.zst is read twice (CanonicalCheck, then the frames
        compared), and a first pass for the digests precedes the stream to a .vma.gz: those
        passes keep its pages.  Read from a pipe, nothing is dropped."""
        path = self.zst_or_skip()
        made = []

        class Recording(T.Source):
            def __init__(self, path, direct=False, keep_cache=False):
                made.append(keep_cache)
                super().__init__(path, direct, keep_cache)
        saved, saved_mask = T.Source, signal.pthread_sigmask(signal.SIG_BLOCK, [])
        T.Source = Recording
        try:
            self.assertTrue(T.compressed_is_canonical(path, argparse.Namespace(quiet=True)))
            self.assertEqual(made, [True, True])
            # a .vma.gz cannot have its header written again: a first pass computes the digests
            del made[:]
            args = T.parse_arguments(["optimize", "-q", path, self.tmp_path("o.vma.gz")])
            self.assertEqual(args.func(args), 0)
            self.assertEqual(made, [False, True])
        finally:
            T.Source = saved
            signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)  # an output's commit holds them
        with T.Source(path) as source:
            self.assertIsInstance(source.stream.raw, T.DropBehind)

        with open(path, "rb") as f:
            compressed = f.read()
        reading, writing = os.pipe()
        feeder = threading.Thread(target=lambda: (os.write(writing, compressed), os.close(writing)))
        saved_stdin = os.dup(0)
        os.dup2(reading, 0)
        os.close(reading)
        feeder.start()
        try:
            data, calls = self.read_recording_advice("-")
        finally:
            os.dup2(saved_stdin, 0)
            os.close(saved_stdin)
            feeder.join()
        self.assertEqual(calls, [])
        self.assertEqual(data, self.read_recording_advice(path)[0])


class Writeback(Scratch):
    def test_every_archive_file_written_leaves_the_page_cache_as_it_goes(self):
        """Where there is no O_DIRECT (no DirectWriter), the plain archive and the framed
        .vma.zst alike: the kernel is asked to write the output out and drop its pages every
        WRITEBACK_BYTES, before the output is complete (the framed form once went through the
        page cache whole, and on a host whose memory is backed as it is first touched that cost
        as much system time as the rest of the run)."""
        src = self.put("src.vma", bytes(vf.write_archive(vm(), None, seed=SEED, order="proxmox")))
        names = ["o.vma"] + (["o.vma.zst"] if ZSTD and T.libzstd() is not None else [])
        if not hasattr(os, "posix_fadvise"):
            self.skipTest("no posix_fadvise")
        saved_advise, saved_bytes = os.posix_fadvise, T.WRITEBACK_BYTES
        saved_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        for name in names:
            with self.subTest(output=name):
                path = self.tmp_path(name)
                calls = []

                def recording(fd, offset, length, advice):
                    calls.append((os.fstat(fd).st_size, offset, length, advice))
                    return saved_advise(fd, offset, length, advice)
                os.posix_fadvise, T.WRITEBACK_BYTES = recording, 64 << 10
                saved_start, T.DirectWriter.start = T.DirectWriter.start, lambda fd: None
                try:
                    args = T.parse_arguments(["optimize", "-q", "--threads", "1", src, path])
                    self.assertEqual(args.func(args), 0)
                finally:
                    os.posix_fadvise, T.WRITEBACK_BYTES = saved_advise, saved_bytes
                    T.DirectWriter.start = saved_start
                    signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)  # held by the commit
                size = os.path.getsize(path)
                during = [c for c in calls if c[1:] == (0, 0, os.POSIX_FADV_DONTNEED) and c[0] < size]
                self.assertTrue(during, calls)     # one at a time: how many depends on the disk


class DirectWriter(support.ScratchCase):
    """The writer of archive files (DirectWriter: O_DIRECT, aligned chunks written by a thread)
    gives the same bytes as a plain write of them, whatever the lengths of the pieces, and fails
    or falls back cleanly."""
    TMP_PREFIX = "vmatest-direct-writer-"

    def open_or_skip(self, name="out"):
        fd = os.open(self.tmp_path(name), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.addCleanup(os.close, fd)
        writer = T.DirectWriter.start(fd)
        if writer is None:
            self.skipTest("no O_DIRECT on this file system")
        return fd, writer

    def test_any_lengths_give_the_same_bytes(self):
        rng = random.Random(SEED)
        chunk = T.DIRECT_CHUNK
        for total in (0, 1, 4095, 4096, 4097, chunk - 1, chunk, chunk + 1, 3 * chunk + 12345, 7 * chunk):
            with self.subTest(total=total):
                data = rng.randbytes(total)
                fd, writer = self.open_or_skip("out-%d" % total)
                at = 0
                while at < total:
                    n = rng.choice((1, 511, 4096, 65536, 1 << 20, chunk + 3))
                    writer.write(data[at:at + n])
                    at += n
                writer.flush()
                writer.close()
                self.assertEqual(os.fstat(fd).st_size, total)
                self.assertTrue(os.pread(fd, total + 1, 0) == data)
                self.assertFalse(os.get_blocking(fd) is False)
                self.assertEqual(T.fcntl.fcntl(fd, T.fcntl.F_GETFL) & os.O_DIRECT, 0)

    def test_after_flush_the_header_can_be_written_again_and_more_appended(self):
        fd, writer = self.open_or_skip()
        writer.write(b"h" * 1000 + b"d" * 5000)
        writer.flush()
        os.pwrite(fd, b"H" * 1000, 0)           # what Sink.rewrite_header does
        writer.write(b"tail")
        writer.close()
        self.assertEqual(os.pread(fd, 7000, 0), b"H" * 1000 + b"d" * 5000 + b"tail")

    def test_a_write_error_reaches_the_writer(self):
        fd, writer = self.open_or_skip()
        saved = os.pwrite

        def failing(fd_, data, offset):
            if offset >= T.DIRECT_CHUNK:
                raise OSError(errno.ENOSPC, "No space left on device")
            return saved(fd_, data, offset)
        os.pwrite = failing
        try:
            with self.assertRaises(OSError) as caught:
                for _ in range(8):
                    writer.write(bytes(T.DIRECT_CHUNK))
                writer.flush()
        finally:
            os.pwrite = saved
            writer.close()
        self.assertEqual(caught.exception.errno, errno.ENOSPC)
        self.assertFalse(writer.writer.is_alive())

    def test_a_failed_flush_fails_again_the_same_way(self):
        fd, writer = self.open_or_skip()
        saved = os.pwrite

        def failing(fd_, data, offset):
            raise OSError(errno.EIO, "Input/output error")
        writer.write(b"x" * 5000)
        os.pwrite = failing
        try:
            for _ in range(2):
                with self.assertRaises(OSError) as caught:
                    writer.flush()
                self.assertEqual(caught.exception.errno, errno.EIO)
        finally:
            os.pwrite = saved
            writer.close()

    def test_refused_direct_writes_go_on_through_the_page_cache(self):
        """A file system that takes the O_DIRECT flag but refuses a write (EINVAL): that write
        and the rest are made without it, the bytes the same."""
        fd, writer = self.open_or_skip()
        saved, refused = os.pwrite, []

        def refusing(fd_, data, offset):
            if T.fcntl.fcntl(fd_, T.fcntl.F_GETFL) & os.O_DIRECT:
                refused.append(offset)
                raise OSError(errno.EINVAL, "Invalid argument")
            return saved(fd_, data, offset)
        os.pwrite = refusing
        data = random.Random(SEED).randbytes(2 * T.DIRECT_CHUNK + 777)
        try:
            writer.write(data)
            writer.flush()
        finally:
            os.pwrite = saved
        self.assertEqual(refused, [0])
        self.assertTrue(os.pread(fd, len(data) + 1, 0) == data)

    def test_no_o_direct_no_direct_writer(self):
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        self.assertIsNone(T.DirectWriter.start(w))
        fd = os.open(self.tmp_path("f"), os.O_RDWR | os.O_CREAT, 0o600)
        self.addCleanup(os.close, fd)
        saved = T.fcntl.fcntl

        def no_direct(fd_, command, *flags):
            if command == T.fcntl.F_SETFL and flags and flags[0] & os.O_DIRECT:
                raise OSError(errno.EINVAL, "Invalid argument")
            return saved(fd_, command, *flags)
        T.fcntl.fcntl = no_direct
        try:
            self.assertIsNone(T.DirectWriter.start(fd))
        finally:
            T.fcntl.fcntl = saved

    def test_archive_outputs_are_written_past_the_page_cache(self):
        """optimize to a plain file and to a .vma.zst writes through a DirectWriter where the
        file system allows (and the bytes are those of the tests everywhere else)."""
        self.open_or_skip()
        src = self.put("src.vma", bytes(vf.write_archive(vm(), None, seed=SEED, order="proxmox")))
        names = ["o.vma"] + (["o.vma.zst"] if ZSTD and T.libzstd() is not None else [])
        made = []
        saved, saved_mask = T.DirectWriter.start, signal.pthread_sigmask(signal.SIG_BLOCK, [])

        def recording(fd):
            writer = saved(fd)
            made.append(writer)
            return writer
        T.DirectWriter.start = recording
        saved_workers = os.environ.get("VMA_TOOL_DIGEST_WORKERS")
        os.environ["VMA_TOOL_DIGEST_WORKERS"] = "0"
        try:
            for name in names:
                args = T.parse_arguments(["optimize", "-q", src, self.tmp_path(name)])
                self.assertEqual(args.func(args), 0)
        finally:
            T.DirectWriter.start = saved
            signal.pthread_sigmask(signal.SIG_SETMASK, saved_mask)     # held by the commit
            if saved_workers is None:
                os.environ.pop("VMA_TOOL_DIGEST_WORKERS", None)
            else:
                os.environ["VMA_TOOL_DIGEST_WORKERS"] = saved_workers
        self.assertEqual(len(made), len(names))
        self.assertTrue(all(isinstance(w, T.DirectWriter) for w in made), made)
        want = bytes(vf.canonical_archive(vm()))
        self.assertTrue(self.read(self.tmp_path("o.vma"))[:100] == want[:100])


class WorkersHashInPlace(Scratch):
    """The read-back with digest workers: data that lies whole in one of the DirectFile's
    chunks is hashed by the workers where it was read (MemoryRange jobs), the rest copied to
    their slots; chunks of 1 MiB here (4 MiB in use), so that both kinds occur."""

    def setUp(self):
        super().setUp()
        os.environ["VMA_TOOL_DIGEST_WORKERS"] = "2"
        for name, value in (("DIRECT_CHUNK", 1 << 20), ("DIGEST_INLINE_BYTES", 0)):
            self.addCleanup(setattr, T, name, getattr(T, name))
            setattr(T, name, value)
        self.kinds = []
        submit = T.DigestWorkers.submit
        self.addCleanup(setattr, T.DigestWorkers, "submit", submit)

        def counting(workers, entries, data):
            self.kinds.append(type(data).__name__)
            return submit(workers, entries, data)
        T.DigestWorkers.submit = counting

    def test_both_kinds_of_job_give_the_digests(self):
        path = self.optimized("o.vma")
        self.direct_or_skip(path)
        self.assertEqual(T.archive_digests(path, True, "test", direct=True)[1].text(),
                         vf.digests_blob(vm()).decode())
        self.assertIn("MemoryRange", self.kinds)
        self.assertIn("memoryview", self.kinds)

    def test_fence_waits_for_every_job_sent_before_it(self):
        """fence()'s waiter returns only once the workers answered every job sent before the
        fence was made (what lets a DirectFile read into a chunk again)."""
        digests = T.ContentDigests([T.Device(1, "drive-scsi0", 64 * T.CLUSTER_SIZE)])
        workers = T.DigestWorkers.start(digests)
        self.assertIsNotNone(workers)
        data = bytes(range(256)) * (T.CLUSTER_SIZE // 256)
        jobs = 12                       # more than the workers' slots: submit itself waits for some
        for cluster in range(jobs):
            workers.submit([0xFFFF << 48 | 1 << 32 | cluster], data)
        wait = workers.fence()
        workers.submit([0xFFFF << 48 | 1 << 32 | jobs], data)     # after the fence: not waited for
        wait()
        answered = sum(workers.sent) - sum(map(len, workers.taken))
        self.assertGreaterEqual(answered, jobs)
        workers.finish()

    def test_a_damaged_byte_in_data_hashed_in_place_is_seen(self):
        path = self.optimized("o.vma")
        self.direct_or_skip(path)
        with T.Source(path) as source:
            archive = T.Archive(source, "test", True)
            header = archive.header
            at = next(offset for offset, extent, data in archive.reader.extents() if extent.block_count)
        want = vf.digests_blob(vm()).decode()
        with open(path, "r+b") as f:
            f.seek(at + T.EXTENT_HEADER_SIZE + 1000)          # in the first extent's data
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0x10]))
        got = T.archive_digests(path, True, "test", direct=True)[1]
        self.assertEqual(self.kinds[0], "MemoryRange", "the damaged extent is hashed in place")
        problems = got.problems(T.parse_digests(want.encode(), header))
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("data does not match its digest", problems[0])


class WorkersReadTheFile(support.ScratchCase):
    TMP_PREFIX = "vmatest-file-range-"

    def test_a_worker_that_cannot_read_its_range_fails_with_the_reason(self):
        path = self.put("short", bytes(range(256)) * 16)
        archive = self.put("a.vma", bytes(vf.write_archive(vm(), None, seed=SEED)))
        with T.Source(archive) as source:
            devices = T.Archive(source, "test", True).header.devices
        digests = T.ContentDigests(devices)
        saved = os.environ.get("VMA_TOOL_DIGEST_WORKERS")
        os.environ["VMA_TOOL_DIGEST_WORKERS"] = "1"
        fd = os.open(path, os.O_RDONLY)
        try:
            workers = T.DigestWorkers.start(digests, fd)
            self.assertIsNotNone(workers)
            entry = T.FULL_MASK << 48 | 1 << 32 | 0
            workers.submit([entry], T.FileRange(fd, 1 << 20, T.CLUSTER_SIZE))     # past the file's end
            with self.assertRaises(T.EnvironmentProblem) as caught:
                workers.finish()
            self.assertIn("cannot read the archive", str(caught.exception))
        finally:
            os.close(fd)
            if saved is None:
                os.environ.pop("VMA_TOOL_DIGEST_WORKERS", None)
            else:
                os.environ["VMA_TOOL_DIGEST_WORKERS"] = saved

    def test_verify_of_a_file_cut_inside_its_data_is_refused(self):
        """verify no longer reads a plain file's data itself: the reader's length check must
        still catch a file that ends inside an extent's data."""
        src = self.put("src.vma", bytes(vf.write_archive(vm(), None, seed=SEED)))
        self.assertOk(support.run_tool("optimize", "-q", src, self.tmp_path("o.vma")))
        data = self.read(self.tmp_path("o.vma"))
        cut = self.put("cut.vma", data[:len(data) - 70000])
        r = support.run_tool("verify", cut)
        support.assert_clean_error(self, r, "truncated", code=1)


if __name__ == "__main__":
    unittest.main()
