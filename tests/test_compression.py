"""Compressed archives: every reading command detects gzip, bzip2, zstd and lzop by magic bytes and
decompresses in a stream; optimize/pack write .zst/.gz/.lzo destinations compressed.

gzip/bzip2 data is made with the stdlib, zstd/lzop data with the `zstd`/`lzop` programs (tests skip
when the program is missing). Expected VMA content always comes from the fixture writer.
"""
import bz2
import ctypes.util
import gzip
import json
import os
import shutil
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import vmafixture as fx  # noqa: E402
from support import (run_tool, assert_clean_error, cached, fixture_vm, fixture_archive, first_diff,  # noqa: E402
                     write_unpacked_dir)
import support  # noqa: E402

CLUSTER = 65536
ZSTD = shutil.which("zstd")
LIBZSTD = ctypes.util.find_library("zstd")
LZOP = shutil.which("lzop")

MAGIC = {
    "gz": b"\x1f\x8b",
    "bz2": b"BZh",
    "zst": b"\x28\xb5\x2f\xfd",
    "lzo": b"\x89LZO\x00\r\n\x1a\n",
}


def python_has_zstd():
    try:
        import compression.zstd  # noqa: F401  (Python 3.14+)
        return True
    except ImportError:
        return False


def compress(kind, data):
    if kind == "gz":
        return gzip.compress(data, 6)
    if kind == "bz2":
        return bz2.compress(data, 9)
    prog = {"zst": [ZSTD or "zstd", "-q", "-c"], "lzo": [LZOP or "lzop", "-c"]}[kind]
    r = subprocess.run(prog, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    return r.stdout


def decompress(kind, data):
    if kind == "gz":
        return gzip.decompress(data)
    if kind == "bz2":
        return bz2.decompress(data)
    prog = {"zst": [ZSTD or "zstd", "-q", "-d", "-c"], "lzo": [LZOP or "lzop", "-d", "-c"]}[kind]
    r = subprocess.run(prog, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    return r.stdout


def lzop_without_clock(data):
    """lzop writes the current time into its header when it compresses a pipe (no option avoids it),
    so two runs a second apart differ there: blank the time and the header checksum over it.
    Header: magic 9, version 2, library version 2, version needed 2, method 1, level 1, flags 4,
    [filter 4 if flags & 0x800], mode 4, mtime low 4, mtime high 4, name length 1, name, checksum 4."""
    flags = int.from_bytes(data[17:21], "big")
    mtime = 21 + (4 if flags & 0x800 else 0) + 4
    checksum = mtime + 8 + 1 + data[mtime + 8]
    return data[:mtime] + bytes(8) + data[mtime + 8:checksum] + bytes(4) + data[checksum + 4:]


def default_vm():
    return fixture_vm(7101)


def default_archive():
    return fixture_archive(7101)


def canonical():
    return cached(("test_compression", "canon"), lambda: bytes(fx.canonical_archive(default_vm())))


def compressed_archive(kind):
    return cached(("test_compression", "c-" + kind), lambda: compress(kind, default_archive()))


class CompressionCase(support.ScratchCase):
    TMP_PREFIX = "vmatest-compr-"

    def assertSameBytes(self, got, exp, what):
        if got != exp:
            self.fail("%s: %d vs %d bytes, first difference at %d" % (what, len(got), len(exp),
                                                                      first_diff(got, exp)))

    def empty_path_dir(self):
        d = self.path("emptybin")
        os.makedirs(d, exist_ok=True)
        return d


# --------------------------------------------------------------------------------------------------
class _ReadMixin:
    """Reading commands on a compressed archive of kind KIND (suffix .vma.KIND)."""
    KIND = None

    def src(self):
        return self.put("vzdump-qemu-100-2024_01_01-00_00_00.vma." + self.KIND, compressed_archive(self.KIND))

    def test_verify_file(self):
        r = run_tool("verify", self.src())
        self.assertOk(r)
        self.assertIn(b"ok", r.stdout)

    def test_verify_pipe(self):
        self.assertOk(run_tool("verify", "-q", "-", input=compressed_archive(self.KIND)))

    def test_magic_not_suffix(self):
        # detection is by magic bytes: a misleading (or no) suffix does not matter
        p = self.put("archive.vma", compressed_archive(self.KIND))
        self.assertOk(run_tool("verify", "-q", p))

    def test_info_json(self):
        r = run_tool("info", "--json", self.src())
        self.assertOk(r)
        info = json.loads(r.stdout.decode())
        vm = default_vm()
        self.assertEqual([d["name"] for d in info["devices"]], [d.name for d in vm.devices])
        self.assertEqual(info["ctime"], vm.ctime)

    def test_config(self):
        r = run_tool("config", "-", input=compressed_archive(self.KIND))
        self.assertOk(r)
        self.assertEqual(r.stdout, dict(default_vm().configs)["qemu-server.conf"])

    def test_unpack_pipe(self):
        d = self.path("out")
        self.assertOk(run_tool("unpack", "-", d, input=compressed_archive(self.KIND)))
        vm = default_vm()
        exp = dict(vm.configs)
        for (name, _s), disk in zip(vm.devices, vm.disks):
            exp["disk-%s.raw" % name] = bytes(disk)
        self.assertEqual(sorted(os.listdir(d)), sorted(exp))
        for n, data in exp.items():
            self.assertSameBytes(self.read(os.path.join(d, n)), data, n)

    def test_cat_file(self):
        vm = default_vm()
        r = run_tool("cat", self.src(), "drive-scsi0")
        self.assertOk(r)
        self.assertSameBytes(r.stdout, bytes(vm.disks[1]), "cat drive-scsi0")

    def test_optimize_to_plain(self):
        out = self.path("o.vma")
        self.assertOk(run_tool("optimize", self.src(), out))
        self.assertSameBytes(self.read(out), canonical(), "optimize output")

    def test_truncated_stream(self):
        data = compressed_archive(self.KIND)
        r = run_tool("verify", "-", input=data[:len(data) // 2])
        assert_clean_error(self, r)

    def test_truncated_stream_unpack_leaves_nothing(self):
        data = compressed_archive(self.KIND)
        d = self.path("out")
        r = run_tool("unpack", self.put("t.vma." + self.KIND, data[:len(data) * 3 // 4]), d)
        assert_clean_error(self, r)
        if os.path.isdir(d):
            self.assertEqual(os.listdir(d), [])


class GzipReadTests(_ReadMixin, CompressionCase):
    KIND = "gz"

    def test_no_program_needed(self):
        # gzip is decompressed with the stdlib: works without any program on PATH
        r = run_tool("verify", "-q", self.src(), env={"PATH": self.empty_path_dir()})
        self.assertOk(r)

    def test_multi_member(self):
        data = default_archive()
        cut = len(data) // 3
        two = gzip.compress(data[:cut]) + gzip.compress(data[cut:])
        self.assertOk(run_tool("verify", "-q", "-", input=two))


class Bzip2ReadTests(_ReadMixin, CompressionCase):
    KIND = "bz2"

    def test_no_program_needed(self):
        r = run_tool("verify", "-q", self.src(), env={"PATH": self.empty_path_dir()})
        self.assertOk(r)


@unittest.skipUnless(ZSTD, "zstd program not installed")
class ZstdReadTests(_ReadMixin, CompressionCase):
    KIND = "zst"

    def test_trailing_garbage_after_frame(self):
        # the VMA data is complete, but the decompressor fails: the failure must not be ignored
        r = run_tool("verify", "-", input=compressed_archive("zst") + b"this is not zstd data" * 10)
        assert_clean_error(self, r)

    def test_corrupt_frame(self):
        data = bytearray(compressed_archive("zst"))
        mid = len(data) // 2
        data[mid:mid + 16] = bytes(b ^ 0x5A for b in data[mid:mid + 16])
        r = run_tool("verify", "-", input=bytes(data))
        assert_clean_error(self, r)


@unittest.skipUnless(LZOP, "lzop program not installed")
class LzopReadTests(_ReadMixin, CompressionCase):
    KIND = "lzo"


# --------------------------------------------------------------------------------------------------
class MissingProgramTests(CompressionCase):
    """With PATH pointing to an empty directory, zstd/lzop cannot be run: clean error naming the
    program, exit 3."""

    def fake_lzo(self):
        if LZOP:
            return compressed_archive("lzo")
        return MAGIC["lzo"] + b"\x10\x30\x20\xa0" + bytes(range(256)) * 8

    def zst(self):
        if ZSTD:
            return compressed_archive("zst")
        return MAGIC["zst"] + bytes(range(256)) * 8

    def check_missing(self, prog, *args, **kw):
        # VMA_TOOL_ZSTD=program: as where libzstd is missing (with it, zstd needs no program)
        r = run_tool(*args, env={"PATH": self.empty_path_dir(), "VMA_TOOL_ZSTD": "program"}, **kw)
        assert_clean_error(self, r, prog, code=3)
        return r

    def test_zstd_missing_verify(self):
        if python_has_zstd():
            self.skipTest("this Python has compression.zstd")
        self.check_missing("zstd", "verify", self.put("x.vma.zst", self.zst()))

    def test_zstd_missing_unpack_pipe(self):
        if python_has_zstd():
            self.skipTest("this Python has compression.zstd")
        d = self.path("out")
        self.check_missing("zstd", "unpack", "-", d, input=self.zst())
        if os.path.isdir(d):
            self.assertEqual(os.listdir(d), [])

    def test_zstd_missing_info(self):
        if python_has_zstd():
            self.skipTest("this Python has compression.zstd")
        self.check_missing("zstd", "info", self.put("x.vma.zst", self.zst()))

    @unittest.skipUnless(LIBZSTD and ZSTD, "libzstd or the zstd program not installed")
    def test_zstd_read_by_the_library(self):
        r = run_tool("verify", self.put("x.vma.zst", self.zst()), env={"PATH": self.empty_path_dir()})
        self.assertOk(r)

    def test_lzop_missing(self):
        self.check_missing("lzop", "verify", self.put("x.vma.lzo", self.fake_lzo()))

    def test_lzop_missing_cat_pipe(self):
        r = self.check_missing("lzop", "cat", "-", "drive-scsi0", input=self.fake_lzo())
        self.assertEqual(r.stdout, b"")

    def test_zstd_missing_for_writing(self):
        # without libzstd (VMA_TOOL_ZSTD=program) the zstd program writes .vma.zst
        src = self.put("x.vma", default_archive())
        dst = self.path("y.vma.zst")
        r = run_tool("optimize", src, dst, env={"PATH": self.empty_path_dir(), "VMA_TOOL_ZSTD": "program"})
        assert_clean_error(self, r, "zstd", code=3)
        self.assertFalse(os.path.exists(dst), "partial output left behind")
        if not LIBZSTD:
            return
        # with libzstd the program is not needed for writing
        r = run_tool("optimize", src, dst, env={"PATH": self.empty_path_dir(), "VMA_TOOL_ZSTD": "library"})
        self.assertOk(r)
        self.assertTrue(self.read(dst).startswith(MAGIC["zst"]))

    def test_lzop_missing_for_writing(self):
        d = self.path("d")
        vm = default_vm()
        write_unpacked_dir(vm, d)
        dst = self.path("y.vma.lzo")
        self.check_missing("lzop", "pack", d, dst)
        self.assertFalse(os.path.exists(dst), "partial output left behind")


# --------------------------------------------------------------------------------------------------
FAKE_LZOP = r'''#!%(python)s
# Stand-in for lzop (not installed everywhere): "compresses" by prefixing the lzop magic.
import os, sys
MAGIC = %(magic)r
args = sys.argv[1:]
log = os.environ.get("VMATEST_FAKE_LOG")
if log:
    with open(log, "a") as f:
        f.write("lzop " + " ".join(args) + "\n")
decompress = False
files = []
for a in args:
    if a in ("--decompress", "--uncompress"):
        decompress = True
    elif a.startswith("--"):
        pass
    elif a.startswith("-") and len(a) > 1:
        decompress = decompress or "d" in a[1:]
    else:
        files.append(a)
src = open(files[0], "rb") if files else sys.stdin.buffer
out = sys.stdout.buffer
if decompress:
    if src.read(len(MAGIC)) != MAGIC:
        sys.stderr.write("lzop: not an lzop file\n")
        sys.exit(1)
else:
    out.write(MAGIC)
while True:
    piece = src.read(1 << 20)
    if not piece:
        break
    out.write(piece)
out.flush()
'''

LOGGING_WRAPPER = r'''#!%(python)s
import os, sys
with open(os.environ["VMATEST_FAKE_LOG"], "a") as f:
    f.write(%(name)r + " " + " ".join(sys.argv[1:]) + "\n")
os.execv(%(real)r, [%(real)r] + sys.argv[1:])
'''


class FakeProgramCase(CompressionCase):

    def setUp(self):
        super().setUp()
        self.bindir = self.path("fakebin")
        os.makedirs(self.bindir)
        self.log = self.path("calls.log")
        self.env = {"PATH": self.bindir + os.pathsep + os.environ.get("PATH", ""),
                    "VMATEST_FAKE_LOG": self.log}

    def install(self, name, text):
        p = os.path.join(self.bindir, name)
        with open(p, "w") as f:
            f.write(text)
        os.chmod(p, 0o755)

    def calls(self, name):
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [ln.split()[1:] for ln in f if ln.split() and ln.split()[0] == name]


class FakeLzopTests(FakeProgramCase):
    """lzo plumbing (detection, streaming through the program, writing .lzo) with a stand-in lzop
    that only adds/strips the lzop magic, so it runs where lzop is not installed."""

    def setUp(self):
        super().setUp()
        self.install("lzop", FAKE_LZOP % {"python": sys.executable, "magic": MAGIC["lzo"]})

    def fake_lzo(self, data):
        return MAGIC["lzo"] + data

    def test_verify(self):
        src = self.put("x.vma.lzo", self.fake_lzo(default_archive()))
        r = run_tool("verify", src, env=self.env)
        self.assertOk(r)
        self.assertTrue(self.calls("lzop"), "lzop was not used")

    def test_unpack_pipe(self):
        d = self.path("out")
        self.assertOk(run_tool("unpack", "-", d, input=self.fake_lzo(default_archive()), env=self.env))
        vm = default_vm()
        for (name, _s), disk in zip(vm.devices, vm.disks):
            self.assertSameBytes(self.read(os.path.join(d, "disk-%s.raw" % name)), bytes(disk), name)

    def test_cat(self):
        vm = default_vm()
        src = self.put("x.vma.lzo", self.fake_lzo(default_archive()))
        r = run_tool("cat", src, "drive-efidisk0", env=self.env)
        self.assertOk(r)
        self.assertSameBytes(r.stdout, bytes(vm.disks[0]), "cat")

    def test_decompressor_failure_reported(self):
        # lzop magic, but the "decompressor" fails: must be an error, not an empty/valid archive
        src = self.put("x.vma.lzo", MAGIC["lzo"][:4] + b"\x00" * 5 + default_archive())
        r = run_tool("verify", src, env=self.env)
        assert_clean_error(self, r)

    def test_optimize_to_lzo(self):
        src = self.put("x.vma", default_archive())
        dst = self.path("y.vma.lzo")
        self.assertOk(run_tool("optimize", src, dst, env=self.env))
        data = self.read(dst)
        self.assertTrue(data.startswith(MAGIC["lzo"]), "not written through lzop: %r" % data[:9])
        self.assertSameBytes(data[len(MAGIC["lzo"]):], canonical(), "lzo output")

    def test_optimize_in_place_keeps_lzo(self):
        src = self.put("x.vma.lzo", self.fake_lzo(default_archive()))
        self.assertOk(run_tool("optimize", src, env=self.env))
        data = self.read(src)
        self.assertTrue(data.startswith(MAGIC["lzo"]), "compression dropped: %r" % data[:9])
        self.assertSameBytes(data[len(MAGIC["lzo"]):], canonical(), "lzo output")


FAILING_COMPRESSOR = """#!/bin/sh
# reads a little, then fails like a compressor whose disk is full
head -c 100000 >/dev/null
echo "zstd: error: No space left on device" >&2
exit 1
"""


class FailingCompressorTests(FakeProgramCase):
    """The compressor program (used where libzstd is missing: VMA_TOOL_ZSTD=program) dies while we
    write to it: one clear error naming it and its message (not a silent 'broken pipe' exit), and
    no output file left behind."""

    def setUp(self):
        super().setUp()
        self.install("zstd", FAILING_COMPRESSOR)
        self.env["VMA_TOOL_ZSTD"] = "program"

    def check(self, args):
        r = run_tool(*args, env=self.env)
        assert_clean_error(self, r, "zstd", "no space left", code=3)
        self.assertEqual([name for name in os.listdir(self.tmp) if "y.vma" in name], [],
                         "output or temporary file left behind")

    def test_optimize_to_zst(self):
        self.check(["optimize", self.put("x.vma", default_archive()), self.path("y.vma.zst")])

    def test_pack_to_zst(self):
        d = self.path("unpacked")
        self.assertOk(run_tool("unpack", "-q", self.put("x.vma", default_archive()), d))
        self.check(["pack", d, self.path("y.vma.zst")])


@unittest.skipUnless(ZSTD, "zstd program not installed")
class RsyncableTests(FakeProgramCase):
    """Where libzstd is missing (VMA_TOOL_ZSTD=program), written .zst files are made with
    `zstd --rsyncable` (and gzip, if run as a program, with --rsyncable, which this gzip
    supports); with libzstd the program is not run for writing (tests/test_framed.py)."""

    def setUp(self):
        super().setUp()
        self.install("zstd", LOGGING_WRAPPER % {"python": sys.executable, "name": "zstd", "real": ZSTD})
        gz = shutil.which("gzip")
        if gz:
            self.install("gzip", LOGGING_WRAPPER % {"python": sys.executable, "name": "gzip", "real": gz})

    def compress_calls(self, name):
        return [c for c in self.calls(name)
                if not any(a in ("-d", "--decompress", "-dc", "-cd") for a in c)]

    def test_optimize_zst_rsyncable(self):
        src = self.put("x.vma", default_archive())
        dst = self.path("y.vma.zst")
        self.assertOk(run_tool("optimize", src, dst, env=dict(self.env, VMA_TOOL_ZSTD="program")))
        self.assertEqual(decompress("zst", self.read(dst)), canonical())
        calls = self.compress_calls("zstd")
        self.assertTrue(calls, "zstd program not used for writing")
        self.assertTrue(all("--rsyncable" in c for c in calls), calls)

    def test_pack_zst_rsyncable(self):
        d = self.path("d")
        vm = default_vm()
        write_unpacked_dir(vm, d)
        dst = self.path("y.vma.zst")
        self.assertOk(run_tool("pack", "--ctime", str(vm.ctime), d, dst, env=dict(self.env, VMA_TOOL_ZSTD="program")))
        self.assertEqual(decompress("zst", self.read(dst)), canonical())
        calls = self.compress_calls("zstd")
        self.assertTrue(calls and all("--rsyncable" in c for c in calls), calls)

    @unittest.skipUnless(LIBZSTD, "libzstd not installed")
    def test_library_writes_without_the_program(self):
        src = self.put("x.vma", default_archive())
        dst = self.path("y.vma.zst")
        self.assertOk(run_tool("optimize", src, dst, env=self.env))
        self.assertEqual(decompress("zst", self.read(dst)), canonical())
        self.assertEqual(self.compress_calls("zstd"), [], "zstd program used for writing")

    def test_gzip_rsyncable_if_program_used(self):
        src = self.put("x.vma", default_archive())
        dst = self.path("y.vma.gz")
        self.assertOk(run_tool("optimize", src, dst, env=self.env))
        self.assertEqual(gzip.decompress(self.read(dst)), canonical())
        calls = self.compress_calls("gzip")
        self.assertTrue(all("--rsyncable" in c for c in calls), calls)


# --------------------------------------------------------------------------------------------------
class CompressedWriteTests(CompressionCase):

    def write_dir(self):
        d = self.path("d")
        vm = default_vm()
        write_unpacked_dir(vm, d)
        return d

    def check_output(self, path, kind):
        data = self.read(path)
        self.assertTrue(data.startswith(MAGIC[kind]), "%s is not %s-compressed: %r" % (path, kind, data[:8]))
        self.assertSameBytes(decompress(kind, data), canonical(), "decompressed output")

    def optimize_to(self, kind):
        src = self.put("x.vma", default_archive())
        dst = self.path("y.vma." + kind)
        self.assertOk(run_tool("optimize", src, dst))
        self.check_output(dst, kind)
        self.assertEqual(self.read(src), default_archive(), "source changed")

    @unittest.skipUnless(ZSTD, "zstd program not installed")
    def test_optimize_to_zst(self):
        self.optimize_to("zst")

    def test_optimize_to_gz(self):
        self.optimize_to("gz")

    @unittest.skipUnless(LZOP, "lzop program not installed")
    def test_optimize_to_lzo(self):
        self.optimize_to("lzo")

    def test_optimize_to_plain_stays_plain(self):
        src = self.put("x.vma", default_archive())
        dst = self.path("y.vma")
        self.assertOk(run_tool("optimize", src, dst))
        self.assertSameBytes(self.read(dst), canonical(), "optimize output")

    @unittest.skipUnless(ZSTD, "zstd program not installed")
    def test_optimize_in_place_keeps_zstd(self):
        src = self.put("x.vma.zst", compressed_archive("zst"))
        self.assertOk(run_tool("optimize", src))
        self.check_output(src, "zst")
        self.assertEqual(sorted(os.listdir(self.tmp)), ["x.vma.zst"], "temp files left behind")

    def test_optimize_in_place_keeps_gzip(self):
        src = self.put("x.vma.gz", compressed_archive("gz"))
        self.assertOk(run_tool("optimize", src))
        self.check_output(src, "gz")

    @unittest.skipUnless(ZSTD, "zstd program not installed")
    def test_optimize_zst_to_stdout_is_plain(self):
        src = self.put("x.vma.zst", compressed_archive("zst"))
        r = run_tool("optimize", src, "-")
        self.assertOk(r)
        self.assertSameBytes(r.stdout, bytes(fx.canonical_archive_v3(default_vm())), "optimize to stdout (no digests)")

    @unittest.skipUnless(ZSTD, "zstd program not installed")
    def test_pack_to_zst(self):
        d = self.write_dir()
        dst = self.path("y.vma.zst")
        self.assertOk(run_tool("pack", "--ctime", str(default_vm().ctime), d, dst))
        self.check_output(dst, "zst")

    def test_pack_to_gz(self):
        d = self.write_dir()
        dst = self.path("y.vma.gz")
        self.assertOk(run_tool("pack", "--ctime", str(default_vm().ctime), d, dst))
        self.check_output(dst, "gz")

    @unittest.skipUnless(LZOP, "lzop program not installed")
    def test_pack_to_lzo(self):
        d = self.write_dir()
        dst = self.path("y.vma.lzo")
        self.assertOk(run_tool("pack", "--ctime", str(default_vm().ctime), d, dst))
        self.check_output(dst, "lzo")

    def same_bytes_whatever_the_environment(self, kind, env, clock_free=lambda data: data):
        """The compressors read settings from the environment (ZSTD_CLEVEL, GZIP, BZIP2, LZOP); the same
        archive must give the same compressed bytes on every host, or dedup across hosts is lost."""
        src = self.put("x.vma", default_archive())
        plain, tuned = self.path("a.vma." + kind), self.path("b.vma." + kind)
        self.assertOk(run_tool("optimize", src, plain))
        self.assertOk(run_tool("optimize", src, tuned, env=env))
        self.assertSameBytes(clock_free(self.read(tuned)), clock_free(self.read(plain)),
                             "output with %s" % env)

    @unittest.skipUnless(ZSTD, "zstd program not installed")
    def test_zst_output_ignores_zstd_clevel(self):
        self.same_bytes_whatever_the_environment("zst", {"ZSTD_CLEVEL": "1"})

    @unittest.skipUnless(shutil.which("gzip"), "gzip program not installed")
    def test_gz_output_ignores_gzip_variable(self):
        self.same_bytes_whatever_the_environment("gz", {"GZIP": "-1"})

    @unittest.skipUnless(shutil.which("bzip2"), "bzip2 program not installed")
    def test_bz2_output_ignores_bzip2_variable(self):
        self.same_bytes_whatever_the_environment("bz2", {"BZIP2": "-1", "BZIP": "-1"})

    @unittest.skipUnless(LZOP, "lzop program not installed")
    def test_lzo_output_ignores_lzop_variable(self):
        self.same_bytes_whatever_the_environment("lzo", {"LZOP": "-9"}, lzop_without_clock)

    @unittest.skipUnless(ZSTD, "zstd program not installed")
    def test_roundtrip_zst_unpack_pack(self):
        d = self.path("d")
        self.assertOk(run_tool("unpack", self.put("x.vma.zst", compressed_archive("zst")), d))
        dst = self.path("y.vma.zst")
        self.assertOk(run_tool("pack", "--ctime", str(default_vm().ctime), d, dst))
        self.check_output(dst, "zst")


if __name__ == "__main__":
    unittest.main()
