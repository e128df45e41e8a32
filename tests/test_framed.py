"""The compressed form of a .vma.zst (FORMAT.md "The compressed form"): one independent zstd frame
for the header and for every cluster's stored data (the first of an extent with the extent's
header), a cut mark (a skippable frame of 64 zero bytes) before every extent that starts at a
multiple of 16 clusters.  vma-tool's files are compared byte for byte with
the fixture's independent framer (vmafixture.framed_zstd) compressing each frame through libzstd as
FORMAT.md says; the same bytes for any thread count, input compression or order; `zstd -dc` gives
the plain canonical archive; the `zstd --rsyncable` fallback; info's `compression` reason and
optimize in place; the hook's thread count."""

import ctypes
import ctypes.util
import gzip
import os
import shutil
import struct
import subprocess
import unittest

import support
import vmafixture as vf
from support import run_tool, assert_clean_error

CLUSTER = 65536
ZSTD = shutil.which("zstd")
LIBZSTD = ctypes.util.find_library("zstd")


def _lib():
    lib = ctypes.CDLL(LIBZSTD)
    lib.ZSTD_createCCtx.restype = ctypes.c_void_p
    lib.ZSTD_CCtx_setParameter.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.ZSTD_compressBound.restype = ctypes.c_size_t
    lib.ZSTD_compressBound.argtypes = [ctypes.c_size_t]
    lib.ZSTD_compress2.restype = ctypes.c_size_t
    lib.ZSTD_compress2.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                   ctypes.c_size_t]
    lib.ZSTD_findFrameCompressedSize.restype = ctypes.c_size_t
    lib.ZSTD_findFrameCompressedSize.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
    return lib


_CONTEXT = []


def compress_frame(data):
    """One frame as FORMAT.md defines it: level 3 (ZSTD_c_compressionLevel = 100), checksum on
    (ZSTD_c_checksumFlag = 201), one-shot."""
    if not _CONTEXT:
        lib = _lib()
        cctx = lib.ZSTD_createCCtx()
        lib.ZSTD_CCtx_setParameter(cctx, 100, 3)
        lib.ZSTD_CCtx_setParameter(cctx, 201, 1)
        _CONTEXT.extend((lib, cctx))
    lib, cctx = _CONTEXT
    bound = lib.ZSTD_compressBound(len(data))
    out = ctypes.create_string_buffer(bound)
    n = lib.ZSTD_compress2(cctx, out, bound, data, len(data))
    assert not lib.ZSTD_isError(n)
    return out.raw[:n]


def frames(data):
    """[(kind 'mark' | 'zstd' | 'skippable', length)] of a .zst file, walking frame by frame."""
    lib = _lib()
    out = []
    pos = 0
    while pos < len(data):
        if data[pos:pos + 72] == vf.CUT_MARK:
            out.append(("mark", 72))
        elif struct.unpack_from("<I", data, pos)[0] & 0xFFFFFFF0 == 0x184D2A50:
            out.append(("skippable", 8 + struct.unpack_from("<I", data, pos + 4)[0]))
        else:
            n = lib.ZSTD_findFrameCompressedSize(data[pos:], len(data) - pos)
            assert not lib.ZSTD_isError(n), "no zstd frame at %d" % pos
            out.append(("zstd", n))
        pos += out[-1][1]
    return out


def hand_vm():
    """drive-scsi0 (dev_id 1), 40 clusters: data 0-19, zero 20-35, data 36-39: extents (0, 8),
    (8, 8), (16, 4), (20, 16), (36, 4), cut marks before 0 and 16 only (32 lies inside the zero
    run, 36 is no multiple of 16).  drive-scsi1 (dev_id 2): 70 zero clusters, extents (0, 59),
    (59, 11), a mark before 0.  drive-efidisk0 (dev_id 3): 8.25 clusters of data, extents (0, 8),
    (8, 1), a mark before 0."""
    disk0 = bytearray(os.urandom(40 * CLUSTER))
    disk0[20 * CLUSTER:36 * CLUSTER] = bytes(16 * CLUSTER)
    conf = b"name: framed\n" + b"".join(b"#qmdump#map:%s:drive-%s:local-lvm:raw:\n" % (key, key)
                                       for key in (b"scsi0", b"scsi1", b"efidisk0"))
    return vf.VM(1764374400, [("qemu-server.conf", conf)],
                 [("drive-scsi0", 40 * CLUSTER), ("drive-scsi1", 70 * CLUSTER), ("drive-efidisk0", 540672)],
                 [disk0, bytearray(70 * CLUSTER), bytearray(os.urandom(540672))], [1, 2, 3])


@unittest.skipUnless(LIBZSTD, "libzstd not installed")
class FramedTest(support.ScratchCase):

    @classmethod
    def setUpClass(cls):
        cls.vm = support.cached(("test_framed", "vm"), hand_vm)
        cls.plain = bytes(vf.canonical_archive(cls.vm))
        cls.framed = vf.framed_zstd(cls.plain, compress_frame)

    def source(self, **kw):
        return self.put("src.vma", vf.write_archive(self.vm, None, **kw))

    def test_optimize_writes_the_fixture_framing(self):
        dst = self.path("out.vma.zst")
        self.assertOk(run_tool("optimize", self.source(seed=3), dst))
        out = self.read(dst)
        self.assertTrue(out == self.framed, "not the compressed form: " + str(support.first_diff(out, self.framed)))
        # header, then devices 3 (efidisk0: 9 clusters, 2 extents), 2 (70 zero clusters), 1;
        # an extent: one frame per cluster with data (the first with the extent header), or
        # the header alone
        kinds = [kind for kind, _ in frames(out)]
        self.assertEqual(kinds, ["zstd"]
                         + ["mark"] + ["zstd"] * 8 + ["zstd"]               # efidisk0: 0-7, 8
                         + ["mark", "zstd", "zstd"]                         # scsi1: zero 0-58, 59-69
                         + ["mark"] + ["zstd"] * 8 + ["zstd"] * 8           # scsi0: 0-7, 8-15
                         + ["mark"] + ["zstd"] * 4 + ["zstd"] + ["zstd"] * 4)   # 16-19, zero 20-35, 36-39

    @unittest.skipUnless(ZSTD, "zstd program not installed")
    def test_zstd_program_decompresses_the_plain_archive(self):
        dst = self.path("out.vma.zst")
        self.assertOk(run_tool("optimize", self.source(seed=1), dst))
        r = subprocess.run([ZSTD, "-dc", dst], stdout=subprocess.PIPE, check=True)
        self.assertTrue(r.stdout == self.plain, "zstd -dc differs from the plain canonical archive")

    def test_same_bytes_whatever_threads_input_and_order(self):
        src = self.source(seed=5, order="random", per_extent="random")
        outputs = {}
        for threads in ("1", "2", "4"):
            dst = self.path("t%s.vma.zst" % threads)
            self.assertOk(run_tool("optimize", "--threads", threads, src, dst))
            outputs["threads " + threads] = self.read(dst)
        gz = self.put("src.vma.gz", gzip.compress(self.read(src)))
        self.assertOk(run_tool("optimize", gz, self.path("gz.vma.zst")))
        outputs["from .vma.gz"] = self.read(self.path("gz.vma.zst"))
        self.assertOk(run_tool("optimize", "--threads", "2", "-", self.path("pipe.vma.zst"),
                               input=self.read(src)))
        outputs["from a pipe"] = self.read(self.path("pipe.vma.zst"))
        support.write_unpacked_dir(self.vm, self.path("d"))
        self.assertOk(run_tool("pack", "--ctime", str(self.vm.ctime), self.path("d"), self.path("p.vma.zst")))
        outputs["pack"] = self.read(self.path("p.vma.zst"))
        for name, data in outputs.items():
            self.assertTrue(data == self.framed, name)

    @unittest.skipUnless(ZSTD, "zstd program not installed")
    def test_program_fallback(self):
        src = self.source(seed=2)
        dst = self.path("prog.vma.zst")
        r = run_tool("optimize", src, dst, env={"VMA_TOOL_ZSTD": "program"})
        self.assertOk(r)
        self.assertEqual(r.stderr.count(b"notice: libzstd not found"), 1, r.stderr)
        out = self.read(dst)
        self.assertEqual(subprocess.run([ZSTD, "-dc", dst], stdout=subprocess.PIPE).stdout, self.plain)
        self.assertNotIn(vf.CUT_MARK, out)
        r = run_tool("optimize", "-q", src, self.path("q.vma.zst"), env={"VMA_TOOL_ZSTD": "program"})
        self.assertOk(r)
        self.assertEqual(r.stderr, b"")
        # the library's file decompresses to the same archive
        self.assertOk(run_tool("optimize", src, self.path("lib.vma.zst"), env={"VMA_TOOL_ZSTD": "library"}))
        self.assertEqual(subprocess.run([ZSTD, "-dc", self.path("lib.vma.zst")], stdout=subprocess.PIPE).stdout,
                         self.plain)

    @unittest.skipUnless(ZSTD, "zstd program not installed")
    def test_one_stream_is_not_canonical_and_in_place_frames_it(self):
        one_stream = subprocess.run([ZSTD, "-q", "--rsyncable", "-3", "-c"], input=self.plain,
                                    stdout=subprocess.PIPE, check=True).stdout
        path = self.put("x.vma.zst", one_stream)
        r = run_tool("info", "--json", path)
        self.assertOk(r)
        self.assertIn(b'"canonical": false', r.stdout)
        self.assertIn(b'"not_canonical": [\n    "compression"\n  ]', r.stdout)
        r = run_tool("optimize", "--json", path)
        self.assertOk(r)
        self.assertIn(b'"result": "optimized"', r.stdout)
        self.assertIn(b'"compressor": "libzstd ', r.stdout)
        self.assertTrue(self.read(path) == self.framed, "in place did not frame it")
        r = run_tool("optimize", path)
        self.assertOk(r)
        self.assertIn(b"already canonical", r.stdout)
        r = run_tool("info", "--json", path)
        self.assertIn(b'"canonical": true', r.stdout)
        # a framed file with one frame changed (other level) is not canonical either
        units = list(vf.framed_units(self.plain))
        other = b"".join((vf.CUT_MARK if mark else b"") +
                         (subprocess.run([ZSTD, "-q", "-1", "-c"], input=unit, stdout=subprocess.PIPE).stdout
                          if n == 5 else compress_frame(unit)) for n, (mark, unit) in enumerate(units))
        self.assertIn(b'"compression"', run_tool("info", "--json", self.put("y.vma.zst", other)).stdout)

    def test_version_4_frames_per_extent_are_not_canonical(self):
        """Version 4 wrote one frame per extent: info calls such a file not canonical
        (compression), and optimize in place frames it per cluster; nothing else changes."""
        old = vf.framed_zstd(self.plain, compress_frame, per_extent=True)
        self.assertNotEqual(old, self.framed)
        path = self.put("v4.vma.zst", old)
        r = run_tool("info", "--json", path)
        self.assertOk(r)
        self.assertIn(b'"not_canonical": [\n    "compression"\n  ]', r.stdout)
        self.assertOk(run_tool("optimize", path))
        self.assertTrue(self.read(path) == self.framed, "in place did not frame it per cluster")

    def test_raw_header_frame_is_what_libzstd_writes_for_incompressible_data(self):
        """The header frame (raw blocks, so that it can be written again with the digests) is the
        frame libzstd's one-shot compression gives data it cannot compress: the fixture's
        raw_frame, built from RFC 8878, agrees with it for every content size field width."""
        for size in (100, 12800, 65791, 65792, 131072, 131073, 300000):
            noise = os.urandom(size)
            self.assertTrue(vf.raw_frame(noise) == compress_frame(noise), size)

    def test_signal_during_compression_leaves_nothing(self):
        src = self.source(seed=4)
        before = sorted(os.listdir(self.tmp))
        r = run_tool("optimize", "--threads", "2", src, self.path("sig.vma.zst"),
                     env={"VMA_TOOL_FAULT": "data-written@3:INT"})
        assert_clean_error(self, r, "interrupted", code=130)
        self.assertEqual(sorted(os.listdir(self.tmp)), before)

    def test_sparse_disk(self):
        # 4 GiB of zeros: 1111 zero-run extents, each a tiny frame (more than a writev takes at once)
        d = self.path("sparse")
        os.makedirs(d)
        with open(os.path.join(d, "disk-drive-scsi0.raw"), "wb") as f:
            f.truncate(4 << 30)
        self.put("sparse/qemu-server.conf", b"name: sparse\n")
        self.assertOk(run_tool("pack", "--ctime", "1", d, self.path("s.vma")))
        self.assertOk(run_tool("pack", "--ctime", "1", d, self.path("s.vma.zst")))
        self.assertEqual(len(self.read(self.path("s.vma"))), 12800 + -(-(4 << 14) // 59) * 512)
        self.assertTrue(self.read(self.path("s.vma.zst")) == vf.framed_zstd(self.read(self.path("s.vma")),
                                                                           compress_frame))

    def test_threads_argument(self):
        for bad in ("0", "x", "-1", "257"):
            r = run_tool("optimize", "--threads", bad, self.source(), self.path("o.vma.zst"))
            assert_clean_error(self, r, "--threads", code=2)


class HookThreadsTest(support.ScratchCase):
    """The hook compresses with vzdump's own `zstd:` thread count (pve-manager PVE/VZDump.pm:
    0 = half the cores, rounded up; unset = 1) unless /etc/vma-tool.conf says `threads =`."""

    def threads(self, vzdump_conf, setting=None):
        tool = support.load_tool_module()
        path = self.put("vzdump.conf", vzdump_conf.encode())
        old = os.environ.get("VMA_TOOL_VZDUMP_CONFIG")
        os.environ["VMA_TOOL_VZDUMP_CONFIG"] = path
        try:
            return tool.hook_threads(setting)
        finally:
            if old is None:
                del os.environ["VMA_TOOL_VZDUMP_CONFIG"]
            else:
                os.environ["VMA_TOOL_VZDUMP_CONFIG"] = old

    def test_vzdump_setting(self):
        cores = os.cpu_count()
        self.assertEqual(self.threads(""), 1)
        self.assertEqual(self.threads("# zstd: 4\ntmpdir: /tmp\n"), 1)
        self.assertEqual(self.threads("zstd: 3\n"), 3)
        self.assertEqual(self.threads("zstd: 0 # half\n"), (cores + 1) // 2)
        self.assertEqual(self.threads("zstd: 3\n", setting="2"), 2)
        tool = support.load_tool_module()
        with self.assertRaises(tool.UsageError):
            self.threads("", setting="many")

    def test_setting_accepted_in_config(self):
        conf = self.put("vma-tool.conf", b"threads = 2\n")
        os.environ["VMA_TOOL_CONFIG"] = conf
        try:
            self.assertEqual(support.load_tool_module().hook_settings()["threads"], "2")
        finally:
            del os.environ["VMA_TOOL_CONFIG"]


if __name__ == "__main__":
    unittest.main()
