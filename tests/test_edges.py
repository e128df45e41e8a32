"""Edges that adversarial reviews and a mutation check found (2026-11-29), each a promise of the README:

* a path through a symbolic link and '..' names the file the kernel finds, never a neighbour;
* an output that is not a regular file (/dev/null, a FIFO, a link to one, a directory) is never
  replaced by a rename, with or without --force;
* archives and images on block devices are read; pack never leaves a disk out silently and never
  overwrites its own inputs;
* every stopping signal (SIGHUP of a dropped ssh session too) removes the temporary files, a signal
  ignored at start (nohup) stays ignored, helper threads never take one;
* arguments and settings out of range give one error line, never a traceback; a full stdout fails
  the run once; JSON gives one object per file;
* white-box: install() without --force never replaces, commit() syncs the file, renames, syncs the
  directory.
"""

import ctypes.util
import gzip
import json
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import unittest
from unittest import mock

import support
import vmafixture as vf
from test_hook import fake_vzdump

CLUSTER = 65536


def small_vm():
    return support.cached(("test_edges", "vm"), lambda: vf.make_vm(
        6101, devices=[("drive-scsi0", 40 * CLUSTER), ("drive-scsi1", 5 * CLUSTER + 4096)]))


def small_archive():
    return support.cached(("test_edges", "archive"), lambda: bytes(vf.write_archive(small_vm(), None, seed=3)))


def canonical():
    return support.cached(("test_edges", "canonical"), lambda: bytes(vf.canonical_archive(small_vm())))


def temporaries(root):
    return [path for path in support.snapshot(root, contents=False) if ".vma-tool-" in path]


class EdgeCase(support.ScratchCase):
    TMP_PREFIX = "vmatest-edges-"

    def link_through(self):
        """tmp/w/s -> ../else/sub: 's/..' is tmp/else for the kernel, tmp/w as text."""
        for directory in ("w", "else/sub"):
            os.makedirs(self.path(directory))
        os.symlink("../else/sub", self.path("w", "s"))
        return self.path("w")


class PathThroughLinkTest(EdgeCase):

    def test_in_place_rewrites_the_file_the_kernel_finds(self):
        work = self.link_through()
        named = self.put("else/x.vma", small_archive())
        neighbour = self.put("w/x.vma", b"precious")
        self.assertOk(support.run_tool("optimize", "s/../x.vma", cwd=work))
        self.assertEqual(self.read(named), canonical())
        self.assertEqual(self.read(neighbour), b"precious")
        os.unlink(neighbour)
        self.put("else/x.vma", small_archive())
        self.assertOk(support.run_tool("optimize", "s/../x.vma", cwd=work))
        self.assertEqual(self.read(named), canonical())
        self.assertEqual(sorted(os.listdir(work)), ["s"], "nothing may appear beside the link")

    def test_new_output_goes_where_the_kernel_finds_it(self):
        work = self.link_through()
        src = self.put("a.vma", small_archive())
        self.put("w/out.vma", b"precious")
        self.assertOk(support.run_tool("optimize", src, "s/../out.vma", cwd=work))
        self.assertEqual(self.read(self.path("else", "out.vma")), canonical())
        self.assertEqual(self.read(self.path("w", "out.vma")), b"precious")
        self.assertOk(support.run_tool("optimize", "-f", src, "s/../out.vma", cwd=work))
        self.assertEqual(self.read(self.path("w", "out.vma")), b"precious")

    def test_unpack_removes_the_directory_it_created_for_dot_names(self):
        cut = self.put("cut.vma", small_archive()[:-100000])
        for dst in ("new/.", "new/sub/..", "new/sub/."):
            support.assert_clean_error(self, support.run_tool("unpack", cut, dst, cwd=self.tmp), code=1)
            self.assertEqual(sorted(os.listdir(self.tmp)), ["cut.vma"], dst)

    def test_dst_that_is_a_loop_of_links_is_replaced_only_with_force(self):
        src = self.put("a.vma", small_archive())
        os.symlink("loop.vma", self.path("loop.vma"))
        support.assert_clean_error(self, support.run_tool("optimize", src, self.path("loop.vma")), "exists",
                                   code=3)
        self.assertOk(support.run_tool("optimize", "-f", src, self.path("loop.vma")))
        self.assertEqual(self.read(self.path("loop.vma")), canonical())

    def test_unpack_creates_and_removes_directories_where_the_kernel_finds_them(self):
        work = self.link_through()
        src = self.put("a.vma", small_archive())
        cut = self.put("cut.vma", small_archive()[:-100000])
        support.assert_clean_error(self, support.run_tool("unpack", cut, "s/../new/dir", cwd=work), code=1)
        self.assertEqual(sorted(os.listdir(self.path("else"))), ["sub"], "a failed unpack leaves no directory")
        self.assertOk(support.run_tool("unpack", src, "s/../new/dir", cwd=work))
        self.assertIn("disk-drive-scsi0.raw", os.listdir(self.path("else", "new", "dir")))
        self.assertEqual(sorted(os.listdir(work)), ["s"])

    def test_directory_dst_named_dot_takes_the_directory_name(self):
        d = self.path("myvm")
        support.write_unpacked_dir(small_vm(), d)
        os.makedirs(self.path("out"))
        self.assertOk(support.run_tool("pack", "--ctime", str(small_vm().ctime), ".", "../out/", cwd=d))
        self.assertEqual(os.listdir(self.path("out")), ["myvm.vma"])


class SpecialOutputTest(EdgeCase):
    """Never a rename over what is not a regular file: --force replaces files, not devices."""

    def assertRefused(self, result, *keywords):
        support.assert_clean_error(self, result, *keywords, code=3)

    def test_links_to_devices_and_fifos_are_refused(self):
        src = self.put("a.vma", small_archive())
        fifo = self.path("fifo")
        os.mkfifo(fifo)
        os.symlink("/dev/null", self.path("null.vma"))
        os.symlink(fifo, self.path("to-fifo.vma"))
        for dst, kind in ((fifo, "fifo"), (self.path("null.vma"), "character device"),
                          (self.path("to-fifo.vma"), "fifo")):
            for force in ((), ("-f",)):
                self.assertRefused(support.run_tool("optimize", *force, src, dst), kind, "standard output")
        self.assertTrue(stat.S_ISFIFO(os.lstat(fifo).st_mode))
        self.assertEqual(os.readlink(self.path("null.vma")), "/dev/null")
        self.assertTrue(stat.S_ISCHR(os.stat("/dev/null").st_mode))
        self.assertEqual(temporaries(self.tmp), [])

    def test_unpack_refuses_special_entries_before_writing(self):
        src = self.put("a.vma", small_archive())
        d = self.path("d")
        os.makedirs(d)
        os.symlink("/dev/null", os.path.join(d, "disk-drive-scsi1.raw"))
        self.put("d/qemu-server.conf", b"old\n")
        self.assertRefused(support.run_tool("unpack", "-f", src, d), "disk-drive-scsi1.raw", "character device")
        self.assertEqual(self.read(os.path.join(d, "qemu-server.conf")), b"old\n")
        self.assertEqual(sorted(os.listdir(d)), ["disk-drive-scsi1.raw", "qemu-server.conf"])

    def test_unpack_refuses_a_directory_in_the_way(self):
        vm = vf.make_vm(6102, devices=[("drive-scsi0", 4 * CLUSTER)],
                        configs=[("qemu-server.conf", b"memory: 512\n"), ("qemu-server.fw", b"[OPTIONS]\n")])
        src = self.put("a.vma", bytes(vf.write_archive(vm, None, seed=1)))
        d = self.path("d")
        os.makedirs(os.path.join(d, "qemu-server.fw"))
        self.put("d/qemu-server.conf", b"old\n")
        self.assertRefused(support.run_tool("unpack", "-f", src, d), "qemu-server.fw", "is a directory")
        self.assertEqual(self.read(os.path.join(d, "qemu-server.conf")), b"old\n")
        self.assertEqual(temporaries(self.tmp), [])


    @unittest.skipUnless(os.geteuid() == 0, "needs root to run as another user")
    def test_another_users_file_in_a_sticky_directory_is_refused_up_front(self):
        os.chmod(self.tmp, 0o755)
        src = self.put("a.vma", small_archive())
        os.mkdir(self.path("shared"))
        os.chmod(self.path("shared"), 0o1777)
        theirs = self.put("shared/o.vma", b"root's")
        nobody = 65534

        def as_nobody():
            os.setgid(nobody)
            os.setuid(nobody)
        python = shutil.which("python3", path="/usr/bin:/bin")      # root's own Python may be out of reach

        def as_nobody_run(*args):
            return subprocess.run([python or "python3", "-S", support.TOOL] + list(args), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, preexec_fn=as_nobody,
                                  timeout=60)
        try:
            usable = as_nobody_run("info", src).returncode == 0
        except OSError:
            usable = False
        if not usable:
            self.skipTest("the tool, its archive or a Python 3.9+ is out of reach of uid %d here" % nobody)
        r = as_nobody_run("optimize", "-f", src, theirs)
        self.assertRefused(r, "o.vma", "another user", "sticky")
        self.assertEqual(self.read(theirs), b"root's")
        self.assertEqual(os.listdir(self.path("shared")), ["o.vma"])


class PackInputsTest(EdgeCase):

    def unpacked(self):
        d = self.path("d")
        support.write_unpacked_dir(small_vm(), d)
        return d

    def test_an_image_that_is_not_a_file_fails(self):
        d = self.unpacked()
        image = os.path.join(d, "disk-drive-scsi1.raw")
        os.unlink(image)
        os.mkfifo(image)
        support.assert_clean_error(self, support.run_tool("pack", d, self.path("p.vma")),
                                   "disk-drive-scsi1.raw", "not a regular file or a block device", code=3)
        self.assertFalse(os.path.exists(self.path("p.vma")))

    def test_a_mapped_device_without_image_fails(self):
        d = self.unpacked()
        os.unlink(os.path.join(d, "disk-drive-scsi1.raw"))
        support.assert_clean_error(self, support.run_tool("pack", d, self.path("p.vma")),
                                   "maps drive-scsi1", "no image", code=1)
        self.assertFalse(os.path.exists(self.path("p.vma")))

    def test_dst_that_is_an_input_is_refused(self):
        d = self.unpacked()
        for name in ("disk-drive-scsi0.raw", "qemu-server.conf"):
            path = os.path.join(d, name)
            before = self.read(path)
            support.assert_clean_error(self, support.run_tool("pack", "-f", d, path), "one of pack's inputs",
                                       code=2)
            self.assertEqual(self.read(path), before)

    @unittest.skipUnless(os.geteuid() == 0 and shutil.which("losetup"), "needs root and losetup")
    def test_a_block_device_image_is_packed(self):
        d = self.unpacked()
        expected = self.path("files.vma")
        self.assertOk(support.run_tool("pack", "--ctime", str(small_vm().ctime), d, expected))
        image = os.path.join(d, "disk-drive-scsi0.raw")
        attach = subprocess.run(["losetup", "-f", "--show", image], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        if attach.returncode != 0:
            self.skipTest("losetup cannot attach here: %s" % attach.stderr.decode().strip())
        loop = attach.stdout.decode().strip()
        self.addCleanup(subprocess.run, ["losetup", "-d", loop])
        os.rename(image, self.path("scsi0.img"))
        os.symlink(loop, image)
        got = self.path("device.vma")
        self.assertOk(support.run_tool("pack", "--ctime", str(small_vm().ctime), d, got))
        self.assertEqual(self.read(got), self.read(expected))


class BlockDeviceArchiveTest(EdgeCase):

    @unittest.skipUnless(os.geteuid() == 0 and shutil.which("losetup"), "needs root and losetup")
    def test_archive_on_a_block_device_is_read(self):
        src = self.put("a.vma", small_archive())
        attach = subprocess.run(["losetup", "-f", "--show", src], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if attach.returncode != 0:
            self.skipTest("losetup cannot attach here: %s" % attach.stderr.decode().strip())
        loop = attach.stdout.decode().strip()
        self.addCleanup(subprocess.run, ["losetup", "-d", loop])
        self.assertOk(support.run_tool("verify", loop))
        self.assertOk(support.run_tool("optimize", loop, self.path("o.vma")))
        self.assertEqual(self.read(self.path("o.vma")), canonical())
        support.assert_clean_error(self, support.run_tool("optimize", loop), "regular file", code=2)


class StoppingSignalTest(EdgeCase):

    def test_sighup_removes_the_temporary_file(self):
        src = self.put("a.vma", small_archive())
        for args in (("optimize", src, self.path("o.vma")), ("optimize", "-", self.path("o.vma")),
                     ("unpack", src, self.path("u"))):
            r = support.run_tool(*args, env={"VMA_TOOL_FAULT": "data-written:HUP"},
                                 input=small_archive() if "-" in args else None)
            support.assert_clean_error(self, r, "terminated by SIGHUP", code=128 + signal.SIGHUP)
            self.assertEqual(sorted(os.listdir(self.tmp)), ["a.vma"], args)

    def test_a_signal_ignored_at_start_stays_ignored(self):
        """nohup (or trap '' HUP) must still protect a long run over ssh."""
        src = self.put("a.vma", small_archive())
        r = subprocess.run(support.tool_argv() + ["optimize", src, self.path("o.vma")], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=60,
                           env=dict(os.environ, VMA_TOOL_FAULT="data-written:HUP"),
                           preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
        self.assertOk(r)
        self.assertEqual(self.read(self.path("o.vma")), canonical())

    def test_signals_held_for_one_file_do_not_shield_the_next(self):
        """optimize --in-place a b: once a is renamed, Ctrl-C waits until a is reported; during b it
        stops the run as usual, b untouched."""
        first, second = self.put("a.vma", small_archive()), self.put("b.vma", small_archive())
        r = support.run_tool("optimize", "--in-place", first, second,
                             env={"VMA_TOOL_FAULT": "output-created@2:INT"})
        support.assert_clean_error(self, r, "interrupted", code=130)
        self.assertEqual(self.read(first), canonical())
        self.assertIn(b"a.vma: optimized", r.stdout)
        self.assertEqual(self.read(second), small_archive())
        self.assertEqual(sorted(os.listdir(self.tmp)), ["a.vma", "b.vma"])

    def test_file_size_limit_is_an_error_not_a_kill(self):
        src = self.put("a.vma", small_archive())

        def limit():
            resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 18, resource.RLIM_INFINITY))
        # .vma.zst: written by libzstd in the process like a plain file, or (VMA_TOOL_ZSTD=program)
        # by the zstd program, which the limit kills
        for dst, zstd, words in ((self.path("o.vma"), "", ("cannot write", "file too large")),
                                 (self.path("o.vma.zst"), "library", ("cannot write", "file too large")),
                                 (self.path("o.vma.zst"), "program", ("zstd failed", "killed by sigxfsz"))):
            if zstd == "program" and not shutil.which("zstd") or \
                    zstd == "library" and not ctypes.util.find_library("zstd"):
                continue
            r = subprocess.run(support.tool_argv() + ["optimize", src, dst], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, preexec_fn=limit, timeout=60,
                               env=dict(os.environ, VMA_TOOL_ZSTD=zstd))
            support.assert_clean_error(self, r, *words, code=3)
            self.assertEqual(sorted(os.listdir(self.tmp)), ["a.vma"])


class ArgumentLimitTest(EdgeCase):

    def test_values_out_of_range_are_usage_errors(self):
        src = self.put("a.vma", small_archive())
        d = self.path("d")
        support.write_unpacked_dir(small_vm(), d)
        cases = [
            (("optimize", "-u", b"name=\xff", src, self.path("o.vma")), "utf-8"),
            (("pack", "--ctime", "99999999999999999999", d, self.path("p.vma")), "out of range"),
            (("pack", "--ctime", "-99999999999999999999", d, self.path("p.vma")), "out of range"),
            (("optimize", "--memory", "inf", "-", "-"), "not a size"),
            (("optimize", "-u", "name=a\rb", src, self.path("o.vma")), "one-line value"),
            (("optimize", "--add", "-u", "description=" + "x" * 65500, src, self.path("o.vma")),
             "over the format's limit"),
            (("optimize", "--tmpdir", self.path("missing"), "-", "-"), "no such directory"),
        ]
        for args, words in cases:
            support.assert_clean_error(self, support.run_tool(*args, input=small_archive()), words, code=2)
        self.assertEqual(sorted(os.listdir(self.tmp)), ["a.vma", "d"])

    def test_options_between_files(self):
        src = self.put("a.vma", small_archive())
        self.put("o.vma", b"old")
        self.assertOk(support.run_tool("optimize", src, "-f", self.path("o.vma")))
        self.assertEqual(self.read(self.path("o.vma")), canonical())
        self.assertOk(support.run_tool("verify", src, "-q", self.path("o.vma")))
        self.put("-dash.vma", small_archive())
        self.assertOk(support.run_tool("verify", "a.vma", "-q", "--", "-dash.vma", cwd=self.tmp))
        support.assert_clean_error(self, support.run_tool("optimize", src, "--bogus", self.path("x.vma")),
                                   "unrecognized arguments", code=2)

    def test_longest_output_name(self):
        src = self.put("a.vma", small_archive())
        dst = self.path("v" * 251 + ".vma")
        self.assertOk(support.run_tool("optimize", src, dst))
        self.assertEqual(self.read(dst), canonical())

    def test_device_size_proxmox_cannot_restore(self):
        vm = vf.make_vm(6103, devices=[("drive-scsi0", 3 * CLUSTER + 100)])
        src = self.put("odd.vma", bytes(vf.write_archive(vm, None, seed=1)))
        for args in (("optimize", src, self.path("o.vma")), ("optimize", "-", "-")):
            r = support.run_tool(*args, input=self.read(src))
            support.assert_clean_error(self, r, "not a multiple of 512", code=1)
            self.assertEqual(r.stdout, b"")
        self.assertEqual(sorted(os.listdir(self.tmp)), ["odd.vma"])

    def test_hook_settings_memory_zero_and_bad_text(self):
        target = self.put("vzdump-qemu-100-2026_11_29-08_00_00.vma", small_archive())
        config = self.put("vma-tool.conf", b"memory = 0\n")
        r = fake_vzdump("backup-end", target, config=config)
        self.assertOk(r)
        self.assertEqual(self.read(target), canonical())
        config = self.put("vma-tool.conf", b"memory = 1M # \xff\n")
        support.assert_clean_error(self, fake_vzdump("backup-end", target, config=config), "not utf-8 text",
                                   code=2)


class ReportTest(EdgeCase):

    def test_verify_summary_tells_missing_from_zero(self):
        vm = vf.make_vm(6104, devices=[("drive-scsi0", 64 * CLUSTER)])
        data = bytes(vf.write_archive(vm, None, seed=1, order="sequential"))
        extents = vf.walk_extents(data)
        cut = self.put("cut.vma", data[:extents[-1].offset])       # the last extent's clusters are missing
        r = support.run_tool("verify", "-v", cut)
        self.assertEqual(r.returncode, 1)
        text = r.stdout.decode()
        missing = CLUSTER * len([slot for slot in extents[-1].slots if slot[1]])
        stored = int(re.search(r"total bytes read (\d+)", text).group(1))
        self.assertIn("zero bytes %d " % (64 * CLUSTER - stored - missing), text)
        self.assertIn("missing bytes %d " % missing, text)

    def test_corrupt_compressed_stream_is_named_not_a_wrong_magic(self):
        # bzip2 and gzip hand out bytes before the checksum that fails: here a gzip member whose
        # CRC is wrong, so its (wrong) first bytes come out before the error does
        member = bytearray(gzip.compress(b"VMX\0" + bytes(2 << 20), 6, mtime=0))
        member[-8] ^= 0xff
        path = self.put("c.vma.gz", bytes(member))
        for src in (path, "-"):
            r = support.run_tool("info", src, input=bytes(member))
            support.assert_clean_error(self, r, "gzip decompression failed", "crc", code=1)

    @unittest.skipUnless(os.path.exists("/dev/full"), "no /dev/full")
    def test_full_stdout_is_named(self):
        src = self.put("a.vma", small_archive())
        for args in (("cat", src, "drive-scsi0"), ("optimize", src, "-"), ("optimize", "-", "-")):
            with open("/dev/full", "wb") as full:
                r = subprocess.run(support.tool_argv() + list(args), stdout=full, stderr=subprocess.PIPE,
                                   input=small_archive(), timeout=60)
            support.assert_clean_error(self, r, "cannot write standard output", "no space left", code=3)

    @unittest.skipUnless(os.path.exists("/dev/full"), "no /dev/full")
    def test_full_stdout_fails_the_run_not_the_file(self):
        src = self.put("a.vma", small_archive())
        for args in (("info", src, src), ("info", "--json", src, src), ("verify", "-v", src, src),
                     ("verify", src, src), ("optimize", "--in-place", src, src)):
            with open("/dev/full", "wb") as full:
                r = subprocess.run(support.tool_argv() + list(args), stdout=full, stderr=subprocess.PIPE,
                                   stdin=subprocess.DEVNULL, timeout=60)
            support.assert_clean_error(self, r, "cannot write standard output", code=3, multiple=False)
            self.assertNotIn(src.encode(), r.stderr, args)

    def test_json_objects_one_per_file_each_with_its_status(self):
        data = small_archive()
        good = self.put("good.vma", data)
        cut = self.put("cut.vma", data[:vf.walk_extents(data)[-1].offset])
        r = support.run_tool("info", "--json", cut, good)
        self.assertEqual(r.returncode, 1)
        reports = json.loads(r.stdout)
        self.assertEqual([(o["file"], o["result"], o["exit_status"], "error" in o) for o in reports],
                         [(cut, "invalid", 1, True), (good, "ok", 0, False)])
        r = support.run_tool("optimize", "--json", "--in-place", good, good)
        self.assertOk(r)
        self.assertEqual([(o["result"], o["exit_status"]) for o in map(json.loads, r.stdout.splitlines())],
                         [("optimized", 0), ("already canonical", 0)])

    def test_unsupported_input_names_the_file(self):
        good = self.put("good.vma", small_archive())
        xz = self.put("c.vma.xz", b"\xfd7zXZ\x00" + bytes(100))
        r = support.run_tool("verify", good, xz)
        support.assert_clean_error(self, r, xz + ": xz-compressed input is not supported", code=3)

    def test_info_columns_stay_aligned_for_two_digit_ids(self):
        devices = [("drive-scsi%d" % i, CLUSTER) for i in range(11)]
        src = self.put("many.vma", bytes(vf.write_archive(vf.make_vm(6105, devices=devices), None, seed=1)))
        r = support.run_tool("info", src)
        self.assertOk(r)
        columns = {line.index("drive-") for line in r.stdout.decode().splitlines() if line.startswith("device")}
        self.assertEqual(len(columns), 1, r.stdout.decode())


class OutputTransactionTest(support.ScratchCase):
    """White-box: the order of a commit and the rules of install(), which no command-line run can
    reach (the window between the last check and the rename has no fault point)."""

    def setUp(self):
        self.vt = support.load_tool_module()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        self.addCleanup(signal.pthread_sigmask, signal.SIG_SETMASK, mask)     # commit() holds signals

    def test_install_without_force_never_replaces(self):
        directory = os.open(self.tmp, os.O_RDONLY | os.O_DIRECTORY)
        self.addCleanup(os.close, directory)
        for dir_fd in (None, directory):
            name = (lambda n: n) if dir_fd is not None else self.path
            self.put("t", b"new")
            self.put("final", b"old")
            with self.assertRaises(self.vt.EnvironmentProblem) as raised:
                self.vt.install(name("t"), name("final"), False, "final", dir_fd=dir_fd)
            self.assertIn("appeared while we were writing it", str(raised.exception))
            self.assertEqual(self.read(self.path("final")), b"old")
            self.vt.install(name("t"), name("final"), True, "final", dir_fd=dir_fd)
            self.assertEqual(self.read(self.path("final")), b"new")

    def test_commit_syncs_the_file_then_renames_then_syncs_the_directory(self):
        events = []
        real = {name: getattr(os, name) for name in ("fsync", "link", "replace", "rename")}

        def fsync(fd):
            info = os.fstat(fd)
            events.append(("fsync", stat.S_ISDIR(info.st_mode), info.st_ino))
            return real["fsync"](fd)

        def renaming(name):
            def call(*args, **kwargs):
                events.append((name,))
                return real[name](*args, **kwargs)
            return call
        patches = [mock.patch.object(os, "fsync", fsync)] + [mock.patch.object(os, name, renaming(name))
                                                               for name in ("link", "replace", "rename")]
        for patch in patches:
            patch.start()
            self.addCleanup(patch.stop)
        outputs = self.vt.OutputFiles(self.tmp, False)
        fd = outputs.create("x")
        del events[:]                   # creating may try a link once (can this directory take unnamed files?)
        os.write(fd, b"data")
        outputs.commit()
        for patch in patches:
            patch.stop()
        file_ino, dir_ino = os.stat(self.path("x")).st_ino, os.stat(self.tmp).st_ino
        self.assertEqual(events, [("fsync", False, file_ino), ("link",), ("fsync", True, dir_ino)])

    @unittest.skipUnless(os.path.exists("/proc/self/task"), "needs /proc/self/task")
    def test_helper_threads_never_take_a_stopping_signal(self):
        """Else Ctrl-C could strike after hold_signals() (which blocks only the main thread) and a
        finished job would report failure: a helper thread must block every stopping signal."""
        import threading
        started, release, ids = threading.Event(), threading.Event(), []

        def helper():
            ids.append(threading.get_native_id())
            started.set()
            release.wait(10)
        thread = self.vt.start_thread(helper)
        self.assertTrue(started.wait(10))
        with open("/proc/self/task/%d/status" % ids[0]) as status:
            blocked = int(re.search(r"SigBlk:\s*([0-9a-f]+)", status.read()).group(1), 16)
        release.set()
        thread.join(10)
        for signum in self.vt.STOPPING_SIGNALS:
            self.assertTrue(blocked & 1 << (signum - 1),
                            "%s reaches a helper thread" % signal.Signals(signum).name)


if __name__ == "__main__":
    unittest.main()
