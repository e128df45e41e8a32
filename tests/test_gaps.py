"""Paths the line coverage run (`make coverage`, tests/linecover.py) found untested: pack's input
errors and vmstate packing, images that end in a hole, optimize's in-place refusals, the stdlib
gzip/bzip2 writers used when the gzip/bzip2 program is missing, a main header larger than the
read buffer (one extent's data), the progress line on a terminal; also command-line errors that
argparse reports, the hook's settings errors and a scratch file that cannot be created or
written."""

import bz2
import gzip
import os
import pty
import resource
import re
import select
import signal
import subprocess
import time
import tty
import unittest

import support
import vmafixture as fx
from support import assert_clean_error, cached, run_tool

CLUSTER = 65536
MAX_EXTENT_DATA = 59 * CLUSTER          # vma-tool's read buffer; only the header can be larger
CTIME = "1700000000"


def small_vm(seed=7301, devices=(("drive-scsi0", 6 * CLUSTER + 4096),)):
    return cached(("gaps-vm", seed, devices), lambda: fx.make_vm(seed, devices=list(devices)))


def small_archive(seed=7301):
    return cached(("gaps-archive", seed), lambda: bytes(fx.write_archive(small_vm(seed), None, seed=3)))


def conf_with_maps(names):
    lines = ["boot: order=scsi0", "memory: 1024"]
    lines += ["#qmdump#map:%s:%s:local-lvm:raw:" % (n[6:] if n.startswith("drive-") else n, n) for n in names]
    return ("\n".join(lines) + "\n").encode()


class Gaps(support.ScratchCase):
    TMP_PREFIX = "vmatest-gaps-"

    def write_dir(self, name, vm, configs=None, vmstate_file=True):
        d = self.path(name)
        os.makedirs(d)
        for cname, data in (vm.configs if configs is None else configs):
            self.put(os.path.join(name, cname), data)
        for dev, disk in zip(vm.devices, vm.disks):
            fname = "vmstate.bin" if dev.name == "vmstate" and vmstate_file else "disk-%s.raw" % dev.name
            self.put(os.path.join(name, fname), bytes(disk))
        return d


# ----------------------------------------------------------------------------------------------
class PackInputs(Gaps):
    """pack: every refusal of its inputs is one clean error with the right exit status, and
    nothing is written."""

    def setUp(self):
        self.d = self.write_dir("vm", small_vm())
        self.out = self.path("out.vma")

    def refused(self, *args, code, keywords=()):
        before = sorted(os.listdir(self.tmp))
        r = run_tool("pack", "--ctime", CTIME, *args)
        assert_clean_error(self, r, *keywords, code=code)
        self.assertEqual(sorted(os.listdir(self.tmp)), before, "pack left files next to its output")
        return r

    def test_config_given_twice(self):
        conf = self.put("qemu-server.conf", b"memory: 512\n")
        self.refused("--config", conf, self.d, self.out, code=2, keywords=("qemu-server.conf", "twice"))

    def test_device_given_twice(self):
        image = self.put("img", bytes(CLUSTER))
        self.refused("--device", "drive-scsi0=" + image, self.d, self.out, code=2,
                     keywords=("drive-scsi0", "twice"))

    def test_device_option_syntax(self):
        image = self.put("img", bytes(CLUSTER))
        for spec in ("drive-scsi1", "=" + image, "drive-scsi1="):
            with self.subTest(spec=spec):
                self.refused("--device", spec, self.d, self.out, code=2, keywords=("NAME=PATH",))

    def test_device_name_not_usable(self):
        image = self.put("img", bytes(CLUSTER))
        for name in ("drive scsi1", "a/b", "tab\tname"):
            with self.subTest(name=name):
                self.refused("--device", "%s=%s" % (name, image), self.d, self.out, code=2,
                             keywords=("not usable",))

    def test_too_many_devices(self):
        image = self.put("img", bytes(512))
        args = []
        for i in range(254):                    # 254 plus drive-scsi0 of the directory
            args += ["--device", "d%d=%s" % (i, image)]
        self.refused(*(args + [self.d, self.out]), code=2, keywords=("255 devices", "254"))

    def test_config_unreadable(self):
        self.refused("--config", self.path("no-such.conf"), self.d, self.out, code=3,
                     keywords=("cannot read", "no-such.conf"))
        self.refused("--config", self.tmp, self.d, self.out, code=3, keywords=("cannot read",))

    def test_config_too_large(self):
        with open(os.path.join(self.d, "qemu-server.conf"), "wb") as f:
            f.write(b"#" * 65535 + b"\n")
        self.refused(self.d, self.out, code=1, keywords=("qemu-server.conf", "larger than 65535"))

    def test_image_missing_or_empty(self):
        self.refused("--device", "drive-scsi1=" + self.path("nothing.raw"), self.d, self.out, code=3,
                     keywords=("cannot open", "nothing.raw"))
        empty = self.put("img", b"")
        self.refused("--device", "drive-scsi1=" + empty, self.d, self.out, code=1, keywords=("is empty",))

    def test_directory_unreadable(self):
        self.refused(os.path.join(self.d, "qemu-server.conf"), self.out, code=3, keywords=("cannot read directory",))

    def test_ignored_entries_are_named(self):
        os.mkdir(os.path.join(self.d, "subdir"))
        for name in ("notes.txt", "disk-.raw", ".vma-tool-tmp-x"):
            self.put(os.path.join("vm", name), b"x")
        r = run_tool("pack", "--ctime", CTIME, self.d, self.out)
        self.assertOk(r)
        err = r.stderr.decode()
        for name in ("notes.txt", "disk-.raw", "subdir"):
            self.assertIn(name, err)
        self.assertIn("--config", err)
        self.assertEqual(self.read(self.out), fx.canonical_archive(
            fx.VM(int(CTIME), small_vm().configs, small_vm().devices, small_vm().disks)))
        r = run_tool("pack", "-q", "-f", "--ctime", CTIME, self.d, self.out)
        self.assertOk(r)
        self.assertEqual(r.stderr, b"")


# ----------------------------------------------------------------------------------------------
class PackVmstate(Gaps):
    """vmstate.bin in DIR (or --device vmstate=PATH) becomes the device "vmstate", which gets no
    #qmdump#map line (vzdump writes none for it); the archive is the canonical one."""

    DEVICES = (("drive-scsi0", 4 * CLUSTER), ("vmstate", 3 * CLUSTER + 4096))

    def expected(self, conf):
        vm = small_vm(7302, self.DEVICES)
        # pack to stdout: no digests blob
        return fx.canonical_archive_v3(fx.VM(int(CTIME), [("qemu-server.conf", conf)], vm.devices, vm.disks))

    def test_vmstate_bin(self):
        vm = small_vm(7302, self.DEVICES)
        conf = conf_with_maps(["drive-scsi0"])
        d = self.write_dir("vm", vm, configs=[("qemu-server.conf", conf)])
        self.assertTrue(os.path.isfile(os.path.join(d, "vmstate.bin")))
        r = run_tool("pack", "--ctime", CTIME, d, "-")
        self.assertOk(r)
        self.assertEqual(fx.parse_layout(r.stdout).devices[2], ("vmstate", self.DEVICES[1][1]),
                         "vmstate is not the second device")
        self.assertEqual(r.stdout, self.expected(conf))
        # and back: unpack writes vmstate.bin again, byte for byte
        r2 = run_tool("unpack", "-", self.path("back"), input=r.stdout)
        self.assertOk(r2)
        self.assertEqual(self.read(self.path("back", "vmstate.bin")), bytes(vm.disks[1]))

    def test_vmstate_device_option(self):
        vm = small_vm(7302, self.DEVICES)
        conf = conf_with_maps(["drive-scsi0"])
        d = self.write_dir("vm", fx.VM(vm.ctime, [("qemu-server.conf", conf)], vm.devices[:1], vm.disks[:1]))
        state = self.put("state", bytes(vm.disks[1]))
        r = run_tool("pack", "--ctime", CTIME, "--device", "vmstate=" + state, d, "-")
        self.assertOk(r)
        self.assertEqual(r.stdout, self.expected(conf))

    def test_vmstate_gets_no_map_line(self):
        vm = small_vm(7302, self.DEVICES)
        conf = b"memory: 1024\n"                 # no map lines at all: only the disk gets one
        d = self.write_dir("vm", vm, configs=[("qemu-server.conf", conf)])
        r = run_tool("pack", "--ctime", CTIME, d, "-")
        self.assertOk(r)
        got = dict(fx.parse_layout(r.stdout).configs)["qemu-server.conf"]
        self.assertEqual(got, conf + b"#qmdump#map:scsi0:drive-scsi0:local-lvm:raw:\n")

    def test_vmstate_bin_twice(self):
        vm = small_vm(7302, self.DEVICES)
        d = self.write_dir("vm", vm, configs=[("qemu-server.conf", conf_with_maps(["drive-scsi0"]))])
        r = run_tool("pack", "--device", "vmstate=" + os.path.join(d, "vmstate.bin"), d, "-")
        assert_clean_error(self, r, "vmstate", "twice", code=2)


# ----------------------------------------------------------------------------------------------
class PackHoles(Gaps):
    """An image whose end is a hole (SEEK_DATA finds nothing after the last data: ENXIO) and one
    that is all hole pack to the canonical archive."""

    def test_trailing_hole_and_all_hole(self):
        size = 64 * CLUSTER
        data = bytearray(size)
        data[5:9000] = os.urandom(8995)
        data[20 * CLUSTER + 7:20 * CLUSTER + 100] = b"\x01" * 93
        d = self.path("vm")
        os.makedirs(d)
        conf = conf_with_maps(["drive-scsi0", "drive-scsi1"])
        self.put("vm/qemu-server.conf", conf)
        with open(os.path.join(d, "disk-drive-scsi0.raw"), "wb") as f:
            f.write(data[:21 * CLUSTER])
            f.truncate(size)                    # 43 clusters of hole at the end
        with open(os.path.join(d, "disk-drive-scsi1.raw"), "wb") as f:
            f.truncate(8 * CLUSTER)             # nothing but a hole
        r = run_tool("pack", "--ctime", CTIME, d, "-")
        self.assertOk(r)
        vm = fx.VM(int(CTIME), [("qemu-server.conf", conf)],
                   [("drive-scsi0", size), ("drive-scsi1", 8 * CLUSTER)], [data, bytearray(8 * CLUSTER)])
        self.assertEqual(r.stdout, fx.canonical_archive_v3(vm))     # stdout: no digests blob


# ----------------------------------------------------------------------------------------------
class InPlaceRefusals(Gaps):

    def test_not_a_regular_file(self):
        r = run_tool("optimize", "--in-place", os.devnull)
        assert_clean_error(self, r, "regular file", code=2)

    def test_directory(self):
        r = run_tool("optimize", self.tmp)
        assert_clean_error(self, r, "is a directory", code=3)

    def test_dash_among_files(self):
        src = self.put("a.vma", small_archive())
        r = run_tool("optimize", "--in-place", src, "-", input=small_archive())
        assert_clean_error(self, r, "not '-'", code=2)
        self.assertEqual(self.read(src), small_archive())


# ----------------------------------------------------------------------------------------------
class StdlibCompressors(Gaps):
    """Without a gzip or bzip2 program on PATH, .gz and .bz2 outputs are written by Python's gzip
    and bz2 modules: same content, and the same bytes every time (gzip header mtime 0, no name)."""

    def no_programs(self):
        d = self.path("emptybin")
        os.makedirs(d, exist_ok=True)
        return {"PATH": d}

    def check(self, suffix, decompress):
        src = self.put("a.vma", small_archive())
        canonical = fx.canonical_archive(small_vm())
        outs = []
        for name in ("one", "two"):
            out = self.path(name + ".vma" + suffix)
            r = run_tool("optimize", src, out, env=self.no_programs())
            self.assertOk(r)
            outs.append(self.read(out))
            self.assertEqual(decompress(outs[-1]), canonical)
        self.assertEqual(outs[0], outs[1], "the stdlib %s output is not reproducible" % suffix)
        # in place: stays compressed the same way
        r = run_tool("optimize", "--in-place", self.path("one.vma" + suffix), env=self.no_programs())
        self.assertOk(r)
        self.assertEqual(decompress(self.read(self.path("one.vma" + suffix))), canonical)
        # a compressed input (read by the stdlib too) optimized in place
        packed = self.put("b.vma" + suffix, gzip.compress(small_archive(), 1) if suffix == ".gz"
                          else bz2.compress(small_archive(), 1))
        r = run_tool("optimize", packed, env=self.no_programs())
        self.assertOk(r)
        self.assertEqual(self.read(packed), outs[0])
        return outs[0]

    def test_gzip(self):
        data = self.check(".gz", gzip.decompress)
        self.assertEqual(data[:2], b"\x1f\x8b")
        self.assertEqual(data[4:8], bytes(4), "gzip header mtime is not 0")
        self.assertEqual(data[3] & 0x08, 0, "gzip header carries a file name")
        self.assertEqual(data[8], 0, "not level 6 like the gzip program (XFL 2 is level 9, 4 level 1)")

    def test_bzip2(self):
        data = self.check(".bz2", bz2.decompress)
        self.assertEqual(data[:3], b"BZh")

    def test_pack_gzip(self):
        vm = small_vm()
        d = self.write_dir("vm", vm)
        out = self.path("p.vma.gz")
        r = run_tool("pack", "--ctime", str(vm.ctime), d, out, env=self.no_programs())
        self.assertOk(r)
        self.assertEqual(gzip.decompress(self.read(out)), fx.canonical_archive(vm))


# ----------------------------------------------------------------------------------------------
def big_header_vm():
    """A VM whose main header (about 4 MiB of configs) exceeds one extent's data (3.69 MiB)."""
    def build():
        devices = [("drive-scsi0", 2 * CLUSTER)]
        configs = [("qemu-server.conf", conf_with_maps(["drive-scsi0"]))]
        configs += [("extra-%02d.conf" % i, bytes([65 + i % 26]) * 65535) for i in range(62)]
        return fx.make_vm(7303, devices=devices, configs=configs)
    return cached("gaps-big-header-vm", build)


def big_header_archive():
    return cached("gaps-big-header", lambda: bytes(fx.write_archive(big_header_vm(), None, seed=5)))


class BigHeader(Gaps):
    """The header is read in buffer-sized slices: a valid one is read whole, a truncated one is a
    clean error wherever it ends (in the first slice or a later one), from a file or a pipe."""

    def test_header_size(self):
        self.assertGreater(fx.header_size(big_header_archive()), MAX_EXTENT_DATA + CLUSTER)

    def test_read_and_optimize(self):
        data = big_header_archive()
        src = self.put("big.vma", data)
        self.assertOk(run_tool("verify", "-q", src))
        r = run_tool("optimize", "-", "-", input=data)
        self.assertOk(r)
        self.assertEqual(r.stdout, fx.canonical_archive_v3(big_header_vm()))     # stdout: no digests blob
        self.assertOk(run_tool("optimize", "-", self.path("out.vma"), input=data))
        self.assertEqual(self.read(self.path("out.vma")), fx.canonical_archive(big_header_vm()))
        r = run_tool("config", "-c", "extra-61.conf", src)
        self.assertOk(r)
        self.assertEqual(r.stdout, bytes([65 + 61 % 26]) * 65535)

    def test_truncated(self):
        data = big_header_archive()
        size = fx.header_size(data)
        for cut in (MAX_EXTENT_DATA // 2, MAX_EXTENT_DATA + 12288, size - 1):
            src = self.put("cut.vma", data[:cut])
            for how in ("file", "pipe"):
                with self.subTest(cut=cut, how=how):
                    r = (run_tool("verify", src) if how == "file" else
                         run_tool("verify", "-", input=data[:cut]))
                    assert_clean_error(self, r, "truncated", "header", code=1)


# ----------------------------------------------------------------------------------------------
PROGRESS = re.compile(rb"\r([a-z]+) +(\d+%) .*?, \d+ MiB/s\x1b\[K")
PROGRESS_NO_TOTAL = re.compile(rb"\r([a-z]+) [\d.]+ (B|KiB|MiB), \d+ MiB/s\x1b\[K")
CLEAR = b"\r\x1b[K"


class ProgressOnTerminal(Gaps):
    """With stderr on a terminal, a one-line progress (label, percentage, rate) is shown and wiped
    at the end and before an error message; -q and a non-terminal stderr show none."""

    def run_on_pty(self, *args, input=None):
        """Run vma-tool with stderr on a new pty; returns (exit status, what reached the terminal)."""
        master, slave = pty.openpty()
        tty.setraw(slave)                       # bytes as written: no \n -> \r\n
        got = []
        try:
            proc = subprocess.Popen(support.tool_argv() + list(args), cwd=self.tmp,
                                    stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=slave)
            os.close(slave)
            slave = None
            if input is not None:
                proc.stdin.write(input)
                proc.stdin.close()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.2)
                if ready:
                    try:
                        chunk = os.read(master, 65536)
                    except OSError:             # EIO: the child closed its end
                        chunk = b""
                    if not chunk:
                        break
                    got.append(chunk)
                elif proc.poll() is not None:
                    break
            if proc.poll() is None:
                proc.kill()
            return proc.wait(timeout=60), b"".join(got)
        finally:
            if slave is not None:
                os.close(slave)
            os.close(master)

    def test_optimize_file(self):
        src = self.put("a.vma", small_archive())
        rc, text = self.run_on_pty("optimize", src, self.path("b.vma"))
        self.assertEqual(rc, 0, text)
        labels = [m.group(1) for m in PROGRESS.finditer(text)]
        self.assertTrue(labels, "no progress line on the terminal: %r" % text[:500])
        self.assertTrue(text.endswith(CLEAR), "progress line not wiped at the end: %r" % text[-200:])
        self.assertNotIn(b"\n", text)
        self.assertEqual(self.read(self.path("b.vma")), fx.canonical_archive(small_vm()))

    def test_pipe_input_has_no_percentage(self):
        rc, text = self.run_on_pty("verify", "-", input=small_archive())
        self.assertEqual(rc, 0, text)
        self.assertTrue(PROGRESS_NO_TOTAL.search(text), "no progress line without total: %r" % text[:500])
        self.assertNotIn(b"%", text)
        self.assertTrue(text.endswith(CLEAR), text[-200:])

    def test_wiped_before_error(self):
        # several extents: the progress line shows after the first, the last one is cut short
        data = cached("gaps-archive-small-extents",
                      lambda: bytes(fx.write_archive(small_vm(), None, seed=3, per_extent=2)))
        src = self.put("cut.vma", data[:len(data) - 5000])
        rc, text = self.run_on_pty("verify", src)
        self.assertEqual(rc, 1, text)
        before, sep, after = text.partition(b"vma-tool: error: ")
        self.assertTrue(sep, text)
        self.assertTrue(PROGRESS.search(before), before[:500])
        self.assertTrue(before.endswith(CLEAR), "the error does not start on a wiped line: %r" % before[-200:])
        self.assertNotIn(b"\r", after)

    def test_quiet_and_not_a_terminal(self):
        src = self.put("a.vma", small_archive())
        rc, text = self.run_on_pty("optimize", "-q", src, self.path("b.vma"))
        self.assertEqual((rc, text), (0, b""))
        r = run_tool("optimize", src, self.path("c.vma"))
        self.assertOk(r)
        self.assertNotIn(b"\r", r.stderr)
        self.assertNotIn(b"%", r.stderr)


# ----------------------------------------------------------------------------------------------
class CommandLine(Gaps):
    """What argparse rejects is one "vma-tool: error: ... (see '... --help')" line, exit 2."""

    def test_argparse_errors(self):
        src = self.put("a.vma", small_archive())
        cases = [
            (("optimize", "--bogus", src), "unrecognized arguments: --bogus"),
            (("verify",), "the following arguments are required"),
            (("frobnicate", src), "invalid choice"),
            (("optimize", "--memory", "12Q", "-", "-"), "not a size: '12q'"),
            (("cat", "--memory", "-1", src, "drive-scsi0"), "not a size"),
            (("optimize", "--memory", "lots", "-", "-"), "not a size"),
        ]
        for args, words in cases:
            with self.subTest(args=args):
                r = run_tool(*args)
                assert_clean_error(self, r, words, "--help')", code=2)
                self.assertEqual(r.stdout, b"")

    def test_sizes_accepted(self):
        src = self.put("a.vma", small_archive())
        for size in ("0", "4096", "512K", "1.5M", "64MiB", "1g"):
            with self.subTest(size=size):
                r = run_tool("optimize", "-q", "--memory", size, "-", "-", input=small_archive())
                self.assertOk(r)
                self.assertEqual(r.stdout, fx.canonical_archive_v3(small_vm()))   # stdout: no digests blob
        self.assertEqual(self.read(src), small_archive())


# ----------------------------------------------------------------------------------------------
class HookSettings(Gaps):
    """The hook's settings file and VMA_TOOL_<NAME> variables: a bad line, an unknown name, an
    unreadable file or a bad value fails the phase with one clear line and leaves the archive."""

    def hook(self, config=None, extra_env=None, suffix=""):
        data = small_archive()
        if suffix == ".gz":
            data = gzip.compress(data, 1)
        target = self.put("vzdump-qemu-100-2026_11_29-01_00_00.vma" + suffix, data)
        env = {"VMTYPE": "qemu", "TARGET": target, "VMA_TOOL_MEMORY": None, "VMA_TOOL_TMPDIR": None,
               "VMA_TOOL_COMPRESSED": None,
               "VMA_TOOL_CONFIG": config if config is not None else self.path("no-such.conf")}
        env.update(extra_env or {})
        return run_tool("backup-end", "snapshot", "100", env=env), target, data

    def test_errors(self):
        bad_line = self.put("bad.conf", b"# comment\n\nmemory 64M\n")
        unknown = self.put("unknown.conf", b"colour = blue\n")
        cases = [
            (bad_line, {}, 2, ("bad.conf line 3", "memory")),
            (unknown, {}, 2, ("unknown.conf line 1",)),
            (self.tmp, {}, 3, ("cannot read",)),
            (None, {"VMA_TOOL_MEMORY": "12Q"}, 2, ("memory", "not a size")),
            (None, {"VMA_TOOL_COMPRESSED": "yes"}, 2, ("compressed = yes", "keep")),
        ]
        for config, env, code, words in cases:
            with self.subTest(config=config, env=env):
                r, target, data = self.hook(config, env)
                assert_clean_error(self, r, *words, code=code)
                self.assertEqual(self.read(target), data, "the archive changed although the hook failed")

    def test_defaults_without_file_and_overrides(self):
        good = self.put("good.conf", b"memory = 1M   # small\ntmpdir = %s\n" % self.tmp.encode())
        for config, env in ((None, {}), (good, {}), (None, {"VMA_TOOL_MEMORY": "0"})):
            with self.subTest(config=config, env=env):
                r, target, data = self.hook(config, env)
                self.assertOk(r)
                self.assertIn(b"optimized", r.stdout)
                self.assertEqual(self.read(target), fx.canonical_archive(small_vm()))
        r, target, data = self.hook(None, {"VMA_TOOL_COMPRESSED": "skip"}, suffix=".gz")
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, b"", b""))
        self.assertEqual(self.read(target), data)


# ----------------------------------------------------------------------------------------------
class Scratch(Gaps):
    """Clusters that arrive before their turn go to a scratch file once --memory is used up: a
    --tmpdir that does not exist is refused at the start, one that cannot be written is a clean
    error (exit 3) naming the place and the way out."""

    def test_missing_place_is_refused_before_any_work(self):
        r = run_tool("optimize", "--memory", "0", "--tmpdir", self.path("missing"), "-", "-",
                     input=small_archive())
        assert_clean_error(self, r, "--tmpdir", "no such directory", "missing", code=2)
        self.assertEqual(r.stdout, b"")

    def test_cannot_write(self):
        limit = 3 * CLUSTER

        def preexec():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        data = cached("gaps-archive-random", lambda: bytes(fx.write_archive(
            small_vm(7304, (("drive-scsi0", 40 * CLUSTER),)), None, seed=4, order="random")))
        r = subprocess.run(support.tool_argv() + ["optimize", "--memory", "0", "--tmpdir", self.tmp,
                            "-", "-"], input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           preexec_fn=preexec, timeout=120)
        assert_clean_error(self, r, "cannot write the scratch file", "--tmpdir", "--memory", code=3)


if __name__ == "__main__":
    unittest.main()
