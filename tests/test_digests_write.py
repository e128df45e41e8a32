"""Content digests on the write side (issue 17, items 2 and 4; FORMAT.md "Content digests" and
"Canonical form (version 5)"): every archive vma-tool writes to a file carries a vma-tool.digests
blob computed from its input as read; an input's blob is checked, never copied, and a mismatch
(or a malformed blob) fails the run with the input left as it was; standard output carries none;
in place and the hook read the new file back before it replaces the original."""

import glob
import gzip
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import unittest

import support
import vmafixture as vf

SEED = 1701
ZSTD = shutil.which("zstd")
DIGESTS = "vma-tool.digests"


def vm():
    return support.fixture_vm(SEED)


def proxmox_archive():
    return support.fixture_archive(SEED)


def with_blob(blob, base=None):
    """The canonical archive of vm() (its structure canonical) with blob as its digests blob."""
    base = base or vm()
    configs = [(n, d) for n, d in base.configs if n != DIGESTS] + [(DIGESTS, blob)]
    return bytes(vf.canonical_archive_v3(vf.VM(base.ctime, configs, base.devices, base.disks, base.dev_ids)))


def wrong_digest_blob():
    """The right blob with one hex digit of the first device's digest changed."""
    blob = bytearray(vf.digests_blob(vm()))
    at = blob.index(b"sha256=") + len(b"sha256=")
    blob[at] = ord("0") if blob[at] != ord("0") else ord("1")
    return bytes(blob)


def foreign_uuid(archive, uuid):
    """archive with another uuid in its header and extents (MD5s fixed): not canonical any more."""
    data = bytearray(archive)
    data[8:24] = uuid
    vf.fix_header_md5(data)
    at = struct.unpack_from(">I", data, 56)[0]
    while at < len(data):
        data[at + 8:at + 40] = uuid + bytes(16)
        data[at + 24:at + 40] = hashlib.md5(bytes(data[at:at + 512])).digest()
        at += 512 + struct.unpack_from(">H", data, at + 6)[0] * 4096
    return bytes(data)


class Case(support.ScratchCase):
    TMP_PREFIX = "vmatest-digests-write-"

    def blob_of(self, path):
        r = support.run_tool("config", "-c", DIGESTS, path)
        self.assertOk(r)
        return r.stdout

    def assertDamaged(self, r, *words):
        support.assert_clean_error(self, r, DIGESTS, *words, code=1)


class FileOutputsCarryDigests(Case):
    def test_every_file_output_carries_the_blob_computed_from_the_definition(self):
        want = vf.digests_blob(vm())
        src = self.put("a.vma", proxmox_archive())
        outputs = ["b.vma", "c.vma.gz"] + (["d.vma.zst"] if ZSTD else [])
        for name in outputs:
            with self.subTest(output=name):
                self.assertOk(support.run_tool("optimize", "-q", src, self.path(name)))
                self.assertEqual(self.blob_of(self.path(name)), want)
        self.assertTrue(self.read(self.path("b.vma")) == bytes(vf.canonical_archive(vm())))
        self.assertTrue(gzip.decompress(self.read(self.path("c.vma.gz"))) == self.read(self.path("b.vma")))
        # from a pipe to a plain file: the slot is filled at the end
        r = support.run_tool("optimize", "-", self.path("e.vma"), input=proxmox_archive())
        self.assertOk(r)
        self.assertTrue(self.read(self.path("e.vma")) == self.read(self.path("b.vma")))
        # pack
        support.write_unpacked_dir(vm(), self.path("dir"))
        self.assertOk(support.run_tool("pack", "-q", "--ctime", str(vm().ctime), self.path("dir"),
                                       self.path("p.vma")))
        self.assertTrue(self.read(self.path("p.vma")) == self.read(self.path("b.vma")), "pack")

    @unittest.skipUnless(ZSTD, "zstd program not installed")
    def test_zst_header_frame_is_raw_and_accepted_by_zstd(self):
        src = self.put("a.vma", proxmox_archive())
        dst = self.path("a.vma.zst")
        self.assertOk(support.run_tool("optimize", "-q", src, dst))
        data = self.read(dst)
        header_size = struct.unpack_from(">I", bytes(vf.canonical_archive(vm())), 56)[0]
        header = bytes(vf.canonical_archive(vm()))[:header_size]
        self.assertTrue(data.startswith(vf.raw_frame(header)), "the header frame is not the raw frame")
        self.assertEqual(subprocess.run([ZSTD, "-q", "-t", dst]).returncode, 0)
        plain = subprocess.run([ZSTD, "-q", "-dc", dst], stdout=subprocess.PIPE).stdout
        self.assertTrue(plain == bytes(vf.canonical_archive(vm())))
        # (that libzstd writes the same frame for data it cannot compress: test_framed)

    def test_idempotent_and_pack_of_unpack(self):
        src = self.put("a.vma", proxmox_archive())
        self.assertOk(support.run_tool("optimize", "-q", src, self.path("b.vma")))
        self.assertOk(support.run_tool("optimize", "-q", self.path("b.vma"), self.path("c.vma")))
        self.assertTrue(self.read(self.path("b.vma")) == self.read(self.path("c.vma")), "not idempotent")
        r = support.run_tool("optimize", self.path("c.vma"))
        self.assertOk(r)
        self.assertIn(b"already canonical", r.stdout)
        self.assertOk(support.run_tool("unpack", "-q", self.path("b.vma"), self.path("u")))
        self.assertOk(support.run_tool("pack", "-q", "--ctime", str(vm().ctime), self.path("u"),
                                       self.path("p.vma")))
        self.assertTrue(self.read(self.path("p.vma")) == self.read(self.path("b.vma")), "pack(unpack(x))")


class StandardOutputCarriesNone(Case):
    def test_stdout_has_no_blob_and_says_so_once(self):
        src = self.put("a.vma", proxmox_archive())
        r = support.run_tool("optimize", src, "-")
        self.assertOk(r)
        self.assertTrue(r.stdout == bytes(vf.canonical_archive_v3(vm())))
        notices = [line for line in r.stderr.decode().splitlines() if "digests" in line]
        self.assertEqual(len(notices), 1, r.stderr)
        self.assertTrue(notices[0].startswith("vma-tool: notice: "), notices)
        r = support.run_tool("optimize", "-q", src, "-")
        self.assertOk(r)
        self.assertEqual(r.stderr, b"")

    def test_pipe_to_a_compressor_program_has_none_and_json_says_so(self):
        r = support.run_tool("optimize", "--json", "-", self.path("b.vma.gz"), input=proxmox_archive())
        self.assertOk(r)
        self.assertIs(json.loads(r.stdout)["digests"], False)
        self.assertIn(b"notice", r.stderr)
        r = support.run_tool("optimize", "--json", self.put("a.vma", proxmox_archive()), self.path("c.vma.gz"))
        self.assertOk(r)
        self.assertIs(json.loads(r.stdout)["digests"], True)

    def test_in_place_json_says_digests_and_read_back(self):
        """In place always leaves a file with digests (a canonical one has them, a rewrite writes
        them); read_back says whether the new file was read back before it took the name."""
        for options, read_back in (((), True), (("--no-read-back",), False)):
            path = self.put("a.vma", proxmox_archive())
            r = support.run_tool("optimize", "--json", *options, path)
            self.assertOk(r)
            result = json.loads(r.stdout)
            self.assertEqual((result["result"], result["digests"], result["read_back"]),
                             ("optimized", True, read_back), options)
        r = support.run_tool("optimize", "--json", path)
        result = json.loads(r.stdout)
        self.assertEqual((result["result"], result["digests"], result["read_back"]),
                         ("already canonical", True, False))


class DamagedInputs(Case):
    """A wrong digest, a malformed blob, a missing line, a flipped data byte: exit 1, one line
    naming the device (and the bytes), nothing written, the input unchanged."""

    def cases(self):
        blob = vf.digests_blob(vm())
        lines = blob.split(b"\n")
        data = bytearray(with_blob(blob))
        flipped = bytearray(data)
        flipped[-3000] ^= 0xFF                  # in the last data extent: the data, not its header
        return {
            "wrong digest": (with_blob(wrong_digest_blob()), ("device 1 (drive-",)),
            "malformed": (with_blob(blob.replace(b"sha256=", b"sha257=", 1)), ("line 2",)),
            "missing line": (with_blob(b"\n".join(lines[:1] + lines[2:])), ("no line",)),
            "flipped data byte": (bytes(flipped), ("device 1 (drive-", "in bytes 0-%d" % (vm().devices[0].size - 1))),
        }

    def test_optimize_src_dst_refuses(self):
        for why, (archive, words) in self.cases().items():
            with self.subTest(why):
                src = self.put("a.vma", archive)
                r = support.run_tool("optimize", src, self.path("b.vma"))
                self.assertDamaged(r, *words)
                self.assertFalse(os.path.exists(self.path("b.vma")))
                self.assertTrue(self.read(src) == archive)

    def test_in_place_refuses_and_leaves_the_original(self):
        for why, (archive, words) in self.cases().items():
            for canonical in (True, False):     # left as it is if intact, or rewritten
                with self.subTest(why, canonical=canonical):
                    data = archive if canonical else foreign_uuid(archive, bytes(range(16)))
                    src = self.put("in.vma", data)
                    r = support.run_tool("optimize", src)
                    self.assertDamaged(r, *words)
                    self.assertTrue(self.read(src) == data)
                    self.assertEqual(sorted(os.listdir(self.tmp)), ["in.vma"])

    def test_compressed_in_place_refuses(self):
        archive = with_blob(wrong_digest_blob())
        src = self.put("in.vma.gz", gzip.compress(foreign_uuid(archive, bytes(range(16))), 1))
        before = self.read(src)
        r = support.run_tool("optimize", src)
        self.assertDamaged(r, "device 1")
        self.assertTrue(self.read(src) == before)
        self.assertEqual(sorted(os.listdir(self.tmp)), ["in.vma.gz"])

    def test_pack_checks_images_against_a_digests_file(self):
        d = self.path("dir")
        support.write_unpacked_dir(vm(), d)
        with open(os.path.join(d, DIGESTS), "wb") as f:
            f.write(vf.digests_blob(vm()))
        out = self.path("p.vma")
        r = support.run_tool("pack", "--ctime", str(vm().ctime), d, out)
        self.assertOk(r)
        self.assertNotIn(DIGESTS.encode(), r.stderr)        # not among the files "ignored"
        self.assertTrue(self.read(out) == bytes(vf.canonical_archive(vm())), "stored as a config?")
        os.unlink(out)
        with open(os.path.join(d, DIGESTS), "wb") as f:
            f.write(wrong_digest_blob())
        r = support.run_tool("pack", "--ctime", str(vm().ctime), d, out)
        self.assertDamaged(r, "device 1")
        self.assertFalse(os.path.exists(out))


class ReadBack(Case):
    """In place reads the new file back before it replaces the original; damage in between (the
    fault point before-read-back stops the run, the test changes the temporary, the run goes on)
    leaves the original, removes the temporary and fails."""

    def damaged_run(self, name, archive, damage, *extra):
        src = self.put(name, archive)
        env = dict(os.environ, VMA_TOOL_FAULT="before-read-back:STOP", VMA_TOOL_NO_TMPFILE="1")
        p = subprocess.Popen(support.tool_argv() + ["optimize"] + list(extra) + [src], env=env,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, status = os.waitpid(p.pid, os.WUNTRACED)
            self.assertTrue(os.WIFSTOPPED(status), "the run did not stop before reading back")
            temps = glob.glob(os.path.join(self.tmp, ".*.tmp"))
            self.assertEqual(len(temps), 1, os.listdir(self.tmp))
            with open(temps[0], "r+b") as f:
                damage(f)
            os.kill(p.pid, signal.SIGCONT)
            err = p.stderr.read()
            rc = p.wait(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stderr.close()
        return src, rc, err.decode()

    @staticmethod
    def flip_data_byte(f):
        size = os.fstat(f.fileno()).st_size
        f.seek(size - 3000)
        byte = f.read(1)
        f.seek(size - 3000)
        f.write(bytes([byte[0] ^ 0xFF]))

    def check(self, name, archive, damage):
        src, rc, err = self.damaged_run(name, archive, damage)
        self.assertNotEqual(rc, 0, err)
        self.assertNotIn("Traceback", err)
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertIn("read back", err)
        self.assertIn(name + ": ", err)           # names the file
        self.assertTrue(self.read(src) == archive, "the original changed")
        self.assertEqual(os.listdir(self.tmp), [name], "the temporary stayed")

    def test_damage_before_read_back_plain(self):
        self.check("a.vma", proxmox_archive(), self.flip_data_byte)

    @unittest.skipUnless(ZSTD, "zstd program not installed")
    def test_damage_before_read_back_zst(self):
        archive = subprocess.run([ZSTD, "-q", "-c"], input=proxmox_archive(), stdout=subprocess.PIPE).stdout
        self.check("a.vma.zst", archive, self.flip_data_byte)

    def test_damage_before_read_back_gz(self):
        self.check("a.vma.gz", gzip.compress(proxmox_archive(), 1), self.flip_data_byte)

    def test_read_back_on_by_default_and_skipped_with_no_read_back(self):
        for extra, reached in (([], True), (["--no-read-back"], False)):
            with self.subTest(extra=extra):
                src = self.put("a.vma", proxmox_archive())
                r = support.run_tool("optimize", *extra, src, env={"VMA_TOOL_FAULT": "before-read-back:INT"})
                if reached:
                    support.assert_clean_error(self, r, "interrupted", code=130)
                    self.assertTrue(self.read(src) == proxmox_archive())
                else:
                    self.assertOk(r)
                    self.assertTrue(self.read(src) == bytes(vf.canonical_archive(vm())))

    def test_hook_reads_back_unless_read_back_no(self):
        for setting, reached in (("", True), ("read_back = no\n", False)):
            with self.subTest(setting=setting):
                target = self.put("dump/vzdump-qemu-100-2026_01_01-00_00_00.vma", proxmox_archive())
                config = self.put("vma-tool.conf", setting.encode())
                r = support.run_tool("backup-end", "snapshot", "100",
                                     env={"VMTYPE": "qemu", "TARGET": target, "VMA_TOOL_CONFIG": config,
                                          "VMA_TOOL_FAULT": "before-read-back:INT"}, cwd="/")
                self.assertEqual(r.returncode != 0, reached, r.stderr)
                self.assertTrue(self.read(target) == (proxmox_archive() if reached
                                                      else bytes(vf.canonical_archive(vm()))))


if __name__ == "__main__":
    unittest.main()
