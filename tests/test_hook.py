"""vma-tool as vzdump's hook script, and the backup-tool pipelines of the README (issue 11); the
hook's planning (issue 18: room checked first, scratch next to the archive, messages naming the
settings, on_error; the small file systems are tmpfs mounts, so those tests need root).

FakeVzdump calls vma-tool the way pve-manager's PVE/VZDump.pm run_hook_script does: argv
[SCRIPT, PHASE] plus [MODE, VMID] for guest phases, an environment holding only STOREID,
DUMPDIR, VMTYPE, HOSTNAME, TARGET and LOGFILE (`local %ENV`: not even PATH), stdin closed, and
stdout/stderr going to the task log.  restic tests run only where restic is installed."""

import gzip
import json
import os
import random
import re
import shutil
import subprocess
import time
import unittest

import support
import vmafixture as vf

CLUSTER = 65536
PHASES = ("job-init", "job-start", "job-end", "job-abort", "backup-start", "backup-end",
          "backup-abort", "log-end", "pre-stop", "pre-restart", "post-restart")
GUEST_PHASES = PHASES[4:]


def fake_vzdump(phase, target=None, vmtype="qemu", dumpdir=None, config=None, extra_env=None):
    """Run the hook like vzdump: a fresh environment, no stdin, cwd /."""
    cmd = [support.TOOL, phase]
    env = {"STOREID": "local", "HOSTNAME": "pve1"}
    if dumpdir:
        env["DUMPDIR"] = dumpdir
    if phase in GUEST_PHASES:
        cmd += ["snapshot", "100"]
        env["VMTYPE"] = vmtype
        if phase == "backup-end" and target is not None:
            env["TARGET"] = target
        if phase == "log-end":
            env["LOGFILE"] = os.path.join(dumpdir or "/tmp", "vzdump-qemu-100.log")
    env["VMA_TOOL_CONFIG"] = config or os.devnull      # not in vzdump's env: keeps /etc out of tests
    env.update(extra_env or {})
    # vzdump's env has no PATH: the kernel runs the script by its #! line (env then looks in the
    # default path), so run it directly, not through sys.executable.
    return subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, cwd="/", timeout=120, close_fds=True)


def process_state(pid):
    """R, S, T (stopped), ... from /proc/PID/stat."""
    with open("/proc/%d/stat" % pid) as handle:
        return handle.read().rsplit(")", 1)[1].split()[0]


class HookTest(support.ScratchCase):
    """Every phase and guest type; only backup-end of a qemu VMA does anything."""

    VM = None

    @classmethod
    def vm(cls):
        if cls.VM is None:
            cls.VM = vf.make_vm(5501, devices=[("drive-scsi0", 90 * CLUSTER), ("drive-efidisk0", 3 * 4096)])
        return cls.VM

    def dump(self, name, compress=None):
        data = vf.write_archive(self.vm(), None, seed=2)
        if compress == "gz":
            data = gzip.compress(data, 1)
        elif compress == "zst":
            if shutil.which("zstd") is None:
                self.skipTest("zstd not installed")
            data = subprocess.run(["zstd", "-q", "-c"], input=data, stdout=subprocess.PIPE, check=True).stdout
        return self.put(name, data), data

    def canonical(self):
        return vf.canonical_archive(self.vm())

    def test_other_phases_silent(self):
        path, data = self.dump("vzdump-qemu-100-2026_11_29-01_00_00.vma")
        for phase in PHASES:
            for vmtype in ("qemu", "lxc"):
                if phase == "backup-end" and vmtype == "qemu":
                    continue
                with self.subTest(phase=phase, vmtype=vmtype):
                    r = fake_vzdump(phase, path, vmtype, dumpdir=self.tmp)
                    self.assertEqual((r.returncode, r.stdout, r.stderr), (0, b"", b""))
        self.assertEqual(self.read(path), data)

    def test_backup_end_plain_with_space_in_name(self):
        os.mkdir(self.path("dump dir"))
        path, _ = self.dump(os.path.join("dump dir", "vzdump-qemu-100-2026_11_29-01_00_00.vma"))
        r = fake_vzdump("backup-end", path, dumpdir=self.path("dump dir"))
        self.assertOk(r)
        lines = r.stdout.decode().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("vzdump-qemu-100-2026_11_29-01_00_00.vma: optimized", lines[0])
        self.assertIn(" s", lines[0])
        self.assertEqual(self.read(path), self.canonical())
        r = fake_vzdump("backup-end", path)
        self.assertOk(r)
        self.assertIn(b"already canonical", r.stdout)
        self.assertEqual(sorted(os.listdir(self.path("dump dir"))), ["vzdump-qemu-100-2026_11_29-01_00_00.vma"])

    def test_backup_end_zst_keeps_compression(self):
        path, _ = self.dump("vzdump-qemu-100-2026_11_29-01_00_00.vma.zst", "zst")
        r = fake_vzdump("backup-end", path)
        self.assertOk(r)
        plain = subprocess.run(["zstd", "-dc", path], stdout=subprocess.PIPE, check=True).stdout
        self.assertEqual(plain, self.canonical())

    def test_settings_skip_and_plain(self):
        path, data = self.dump("vzdump-qemu-100-2026_11_29-01_00_00.vma.gz", "gz")
        self.put("notes", b"")
        conf = self.put("vma-tool.conf", b"# test\ncompressed = skip\n")
        r = fake_vzdump("backup-end", path, config=conf)
        self.assertEqual((r.returncode, r.stdout, r.stderr), (0, b"", b""))
        self.assertEqual(self.read(path), data)
        self.put("vzdump-qemu-100-2026_11_29-01_00_00.vma.gz.notes", b"my notes\n")
        conf = self.put("vma-tool.conf", b"compressed = plain   # for restic\nmemory = 1M\n")
        r = fake_vzdump("backup-end", path, config=conf)
        self.assertOk(r)
        plain = self.path("vzdump-qemu-100-2026_11_29-01_00_00.vma")
        self.assertFalse(os.path.exists(path))
        self.assertEqual(self.read(plain), self.canonical())
        self.assertEqual(self.read(plain + ".notes"), b"my notes\n")

    def test_plain_never_replaces_an_existing_vma(self):
        path, data = self.dump("vzdump-qemu-100-2026_11_29-01_00_00.vma.gz", "gz")
        other = self.put("vzdump-qemu-100-2026_11_29-01_00_00.vma", b"another backup")
        conf = self.put("vma-tool.conf", b"compressed = plain\n")
        r = fake_vzdump("backup-end", path, config=conf)
        support.assert_clean_error(self, r, "exists", code=3)
        self.assertEqual((self.read(path), self.read(other)), (data, b"another backup"))

    def test_plain_never_replaces_an_existing_sidecar(self):
        path, data = self.dump("vzdump-qemu-100-2026_11_29-01_00_00.vma.gz", "gz")
        self.put(os.path.basename(path) + ".notes", b"this backup's notes")
        other = self.put("vzdump-qemu-100-2026_11_29-01_00_00.vma.notes", b"another backup's notes")
        conf = self.put("vma-tool.conf", b"\xef\xbb\xbfcompressed = plain\n")      # with a BOM
        r = fake_vzdump("backup-end", path, config=conf)
        support.assert_clean_error(self, r, "vma.notes exists", code=3)
        self.assertEqual((self.read(path), self.read(other)), (data, b"another backup's notes"))
        name = os.path.basename(path)
        self.assertEqual(sorted(os.listdir(self.tmp)),
                         sorted([name, name + ".notes", os.path.basename(other), "vma-tool.conf"]))

    def test_bad_settings_and_bad_archive_fail_one_line(self):
        path, data = self.dump("vzdump-qemu-100-2026_11_29-01_00_00.vma")
        conf = self.put("vma-tool.conf", b"compressed = sometimes\n")
        r = fake_vzdump("backup-end", path, config=conf)
        support.assert_clean_error(self, r, "compressed", code=2)
        self.assertEqual(self.read(path), data)
        bad = self.put("vzdump-qemu-101-2026_11_29-01_00_00.vma", data[:len(data) // 2])
        r = fake_vzdump("backup-end", bad)
        support.assert_clean_error(self, r, "truncated", code=1)
        self.assertEqual(self.read(bad), data[:len(data) // 2])

    def test_not_a_vma_target_ignored(self):
        for name in ("vzdump-lxc-100-2026_11_29-01_00_00.tar.zst", "vm/100/2026-11-29T01:00:00Z"):
            with self.subTest(target=name):
                r = fake_vzdump("backup-end", os.path.join(self.tmp, name))
                self.assertEqual((r.returncode, r.stdout, r.stderr), (0, b"", b""))


class HookPlanningTest(support.ScratchCase):
    """The hook plans before it writes (issue 18): room for the copy checked first, scratch next to
    the archive, messages that name the settings file, and on_error = warn."""

    NAME = "vzdump-qemu-100-2026_11_29-01_00_00.vma"

    @classmethod
    def archive(cls, order="proxmox"):
        """A VM whose devices arrive in ascending order (order="sequential") keeps all of its
        second device waiting: with memory = 0 that is scratch, about 1 MiB."""
        def make():
            vm = vf.make_vm(5511, devices=[("drive-scsi0", 16 * CLUSTER), ("drive-scsi1", 16 * CLUSTER)], fill=0.9)
            return bytes(vf.write_archive(vm, None, seed=4, order=order))
        return support.cached(("hook-planning", order), make)

    def small_fs(self, name, size):
        """A tmpfs of size bytes at name (root only: the test skips otherwise)."""
        if os.geteuid() != 0 or shutil.which("mount") is None:
            self.skipTest("needs root to mount a small file system")
        path = self.path(name)
        os.mkdir(path)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d" % size, "tmpfs", path],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if r.returncode:
            self.skipTest("cannot mount a tmpfs: %s" % r.stderr.decode().strip())
        self.addCleanup(subprocess.run, ["umount", "-l", path])
        return path

    def conf(self, text):
        return self.put("vma-tool.conf", text.encode())

    def test_refuses_before_work_without_room_for_the_copy(self):
        dumpdir = self.small_fs("dump", 4 << 20)
        path = self.put(os.path.join("dump", self.NAME), self.archive())
        r = fake_vzdump("backup-end", path, dumpdir=dumpdir)
        support.assert_clean_error(self, r, self.NAME + ": needs ", " free in %s for the optimized copy, " % dumpdir,
                                   " available", code=3)
        self.assertEqual(os.listdir(dumpdir), [self.NAME])
        self.assertEqual(self.read(path), self.archive())
        r = fake_vzdump("backup-end", path, dumpdir=dumpdir, config=self.conf("on_error = warn\n"))
        self.assertEqual((r.returncode, r.stdout), (0, b""))
        self.assertRegex(r.stderr.decode(), r"\Avma-tool: warning: %s: needs [0-9.]+ MiB free in %s for the "
                         r"optimized copy, [0-9.]+ MiB available; the archive is left as vzdump wrote it\n\Z"
                         % (re.escape(self.NAME), re.escape(dumpdir)))

    def test_plain_refuses_without_room_for_the_compressed_size(self):
        dumpdir = self.small_fs("dump", 2 << 20)
        data = gzip.compress(self.archive(), 1)
        path = self.put(os.path.join("dump", self.NAME + ".gz"), data)
        self.put(os.path.join("dump", "filler"), b"\1" * ((2 << 20) - len(data) - (64 << 10)))
        r = fake_vzdump("backup-end", path, dumpdir=dumpdir, config=self.conf("compressed = plain\n"))
        support.assert_clean_error(self, r, "needs at least ", "for the uncompressed copy", "available", code=3)
        self.assertEqual(sorted(os.listdir(dumpdir)), ["filler", self.NAME + ".gz"])
        self.assertEqual(self.read(path), data)

    def anonymous_file_directories(self, extra_env, config):
        """The directories of the anonymous (unlinked) files a hook run on a compressed archive
        has open when it has just made its scratch file (stopped there): the scratch's, and the
        output's if that is unnamed too."""
        path = self.put(self.NAME + ".gz", gzip.compress(self.archive("sequential"), 1))
        env = {"STOREID": "local", "DUMPDIR": self.tmp, "VMTYPE": "qemu", "HOSTNAME": "pve1", "TARGET": path,
               "VMA_TOOL_CONFIG": config, "VMA_TOOL_FAULT": "scratch-created:STOP"}
        env.update(extra_env)
        process = subprocess.Popen([support.TOOL, "backup-end", "snapshot", "100"], env=env, cwd="/",
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            while process_state(process.pid) != "T":
                self.assertIsNone(process.poll(), "the run ended before it made a scratch file")
                time.sleep(0.01)
            fd_dir = "/proc/%d/fd" % process.pid
            links = [os.readlink(os.path.join(fd_dir, fd)) for fd in os.listdir(fd_dir)]
            return {os.path.dirname(link) for link in links if link.endswith(" (deleted)")}
        finally:
            process.kill()
            process.communicate()

    def test_scratch_next_to_the_archive(self):
        """Not in $TMPDIR (vzdump passes none: /tmp), unless tmpdir = says so."""
        os.mkdir(self.path("tmp"))
        os.mkdir(self.path("scratch"))
        memory_0 = self.conf("memory = 0\n")
        self.assertEqual(self.anonymous_file_directories({"TMPDIR": self.path("tmp")}, memory_0), {self.tmp})
        conf = self.conf("memory = 0\ntmpdir = %s\n" % self.path("scratch"))
        self.assertIn(self.path("scratch"), self.anonymous_file_directories({"TMPDIR": self.path("tmp")}, conf))

    def test_full_scratch_names_the_settings(self):
        scratch = self.small_fs("scratch", 256 << 10)
        path = self.put(self.NAME + ".gz", gzip.compress(self.archive("sequential"), 1))
        conf = self.conf("memory = 0\ntmpdir = %s\n" % scratch)
        r = fake_vzdump("backup-end", path, config=conf)
        support.assert_clean_error(self, r, "scratch file in %s" % scratch,
                                   "(set tmpdir = dir (a place with more room) or a larger memory = size in %s)"
                                   % conf.lower(), code=3)
        self.assertNotIn(b"--tmpdir", r.stderr)

    def test_on_error_warn_leaves_the_archive_and_exits_0(self):
        cut = self.archive()[:-CLUSTER]
        path = self.put(self.NAME, cut)
        r = fake_vzdump("backup-end", path, config=self.conf("on_error = warn\n"))
        self.assertEqual((r.returncode, r.stdout), (0, b""), r.stderr)
        lines = r.stderr.decode().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("vma-tool: warning: %s: " % self.NAME), lines[0])
        self.assertIn("truncated", lines[0])
        self.assertNotIn(path, lines[0])
        self.assertTrue(lines[0].endswith("; the archive is left as vzdump wrote it"), lines[0])
        self.assertEqual(self.read(path), cut)
        self.assertEqual(sorted(os.listdir(self.tmp)), sorted([self.NAME, "vma-tool.conf"]))

    def test_on_error_fail_and_bad_value(self):
        cut = self.archive()[:-CLUSTER]
        path = self.put(self.NAME, cut)
        r = fake_vzdump("backup-end", path, config=self.conf("on_error = fail\n"))
        support.assert_clean_error(self, r, "truncated", code=1)
        r = fake_vzdump("backup-end", path, config=self.conf("on_error = ignore\n"))
        support.assert_clean_error(self, r, "on_error", code=2)
        self.assertEqual(self.read(path), cut)


@unittest.skipIf(shutil.which("restic") is None, "restic not installed")
class ResticPipelineTest(support.ScratchCase):
    """Two days of a VM through `vma-tool optimize - - | restic backup --stdin`, back through
    `restic dump | vma-tool unpack -`: disks identical, day 2 costs far less than the original
    archive's day 2 (3 MiB of a 192 MiB disk rewritten)."""

    def restic(self, repo, *args, input=None, check=True):
        env = dict(os.environ, RESTIC_PASSWORD=support.RESTIC_TEST_PASSWORD, RESTIC_REPOSITORY=repo,
                   RESTIC_CACHE_DIR=repo + "-cache")
        return subprocess.run(["restic", "--quiet", "--no-lock"] + list(args), input=input, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=check, timeout=300)

    def repo_size(self, repo):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(repo) for f in fs)

    def test_two_days(self):
        day1 = vf.make_vm(5601, devices=[("drive-scsi0", 192 << 20)], fill=0.7)
        day2 = day1.copy()              # a guest rewrote 2 MiB and grew a file by 1 MiB
        rng = random.Random(5603)
        day2.disks[0][8 << 20:10 << 20] = rng.randbytes(2 << 20)
        day2.disks[0][60 << 20:61 << 20] = rng.randbytes(1 << 20)
        sizes = {}
        for kind in ("optimized", "original"):
            repo = self.path("repo-" + kind)
            support.restic_repository(repo)
            grown = []
            for seed, vm in ((1, day1), (2, day2)):
                archive = vf.write_archive(vm, None, seed=seed)
                if kind == "optimized":
                    r = support.run_tool("optimize", "-", "-", input=archive)
                    self.assertOk(r)
                    archive = r.stdout
                before = self.repo_size(repo)
                self.restic(repo, "backup", "--stdin", "--stdin-filename", "vm-100.vma", input=archive)
                grown.append(self.repo_size(repo) - before)
            sizes[kind] = grown[1]
            if kind == "optimized":
                dump = self.restic(repo, "dump", "latest", "vm-100.vma").stdout
                r = support.run_tool("unpack", "-", self.path("restored"), input=dump)
                self.assertOk(r)
                with open(self.path("restored", "disk-drive-scsi0.raw"), "rb") as f:
                    self.assertTrue(f.read() == bytes(day2.disks[0]), "restored disk differs")
        # each repository has its own random chunker polynomial, so the figures vary from run to
        # run (optimized mostly 9-12 MB, once 30 MB, for 3 MiB changed; raw disks about 4 MB); the
        # original archive changes almost whole (80 MB)
        self.assertLess(sizes["optimized"], 0.5 * sizes["original"], sizes)


class InstallTest(support.ScratchCase):
    """make install puts vma-tool where hooks live and says what to add to /etc/vzdump.conf."""

    @unittest.skipIf(shutil.which("make") is None, "make not installed")
    def test_install_and_uninstall(self):
        dest = self.path("root")
        r = subprocess.run(["make", "-s", "-C", support.REPO, "install", "DESTDIR=" + dest],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertOk(r)
        installed = os.path.join(dest, "usr", "local", "bin", "vma-tool")
        self.assertTrue(os.access(installed, os.X_OK))
        self.assertIn(b"script: /usr/local/bin/vma-tool", r.stdout)
        self.assertIn(b"/etc/vzdump.conf", r.stdout)
        r = subprocess.run(["make", "-s", "-C", support.REPO, "uninstall", "DESTDIR=" + dest],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.assertOk(r)
        self.assertFalse(os.path.exists(installed))


class JsonResultTest(support.ScratchCase):
    """optimize --json and verify --json: one object per file, errors included."""

    def test_objects_per_file(self):
        vm = vf.make_vm(5701, devices=[("drive-scsi0", 20 * CLUSTER)])
        a = self.put("a.vma", vf.write_archive(vm, None, seed=1))
        bad = self.put("bad.vma", b"not an archive")
        r = support.run_tool("verify", "--json", a, bad)
        self.assertEqual(r.returncode, 1)
        objects = [json.loads(line) for line in r.stdout.decode().splitlines()]
        self.assertEqual([(o["file"], o["result"], o["exit_status"]) for o in objects],
                         [(a, "ok", 0), (bad, "invalid", 1)])
        r = support.run_tool("optimize", "--json", "--in-place", a, a, bad)
        self.assertEqual(r.returncode, 1)
        objects = [json.loads(line) for line in r.stdout.decode().splitlines()]
        self.assertEqual([o["result"] for o in objects], ["optimized", "already canonical", "invalid"])
        self.assertEqual(objects[0]["bytes_after"], os.path.getsize(a))
        r = support.run_tool("optimize", "--json", a, "-")
        support.assert_clean_error(self, r, "--json", code=2)

    def test_invalid_archive_lists_its_problems(self):
        vm = vf.make_vm(5702, devices=[("drive-scsi0", 20 * CLUSTER)])
        cut = self.put("cut.vma", bytes(vf.write_archive(vm, None, seed=1))[:-70000])
        r = support.run_tool("verify", "--json", cut)
        self.assertEqual(r.returncode, 1)
        [result] = [json.loads(line) for line in r.stdout.decode().splitlines()]
        self.assertEqual((result["file"], result["result"], result["exit_status"]), (cut, "invalid", 1))
        [problem] = result["problems"]
        self.assertIn("truncated", problem)
        self.assertIn(problem, r.stderr.decode())


if __name__ == "__main__":
    unittest.main()
