"""Tests for `vma-tool config [-c NAME] SRC`: the config blob, byte for byte, on stdout."""
import gzip
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import support  # noqa: E402
import vmafixture as vf  # noqa: E402

CONF = (b"boot: order=scsi0\ncores: 2\nmemory: 2048\nname: cfgtest\n"
        b"scsi0: local-lvm:vm-100-disk-0,size=1M\n"
        b"#qmdump#map:scsi0:drive-scsi0:local-lvm:raw:\n")
FW = b"[OPTIONS]\n\nenable: 1\n\n[RULES]\n\nIN ACCEPT -p tcp -dport 22 -log nolog\n"
TRAILING_NULS = b"description: ends with NULs\n\0\0\0"
BINARY = bytes(range(256)) * 3 + b"\r\n\xff\xfe\0"
CRLF = b"name: dos\r\ncores: 1\r\n\r\n"
BIG = (b"# " + b"x" * 77 + b"\n") * 750            # 60000 bytes (< 65535 blob limit)

CONFIGS = [
    ("qemu-server.conf", CONF),
    ("qemu-server.fw", FW),
    ("trailing-nuls.conf", TRAILING_NULS),
    ("binary.bin", BINARY),
    ("dos.conf", CRLF),
    ("big.conf", BIG),
    ("empty.conf", b""),
]


class ConfigCase(support.TempDir, unittest.TestCase):
    _data = None

    @classmethod
    def archive(cls):
        if ConfigCase._data is None:
            vm = vf.make_vm(404, devices=[("drive-scsi0", 1048576)], configs=CONFIGS)
            ConfigCase._data = bytes(vf.write_archive(vm, None, seed=1))
        return ConfigCase._data

    def put(self, data, name="a.vma"):
        path = self.tmp_path(name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def config(self, *args, **kw):
        r = support.run_tool("config", *args, **kw)
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        self.assertNotIn(b"Traceback", r.stderr)
        return r.stdout


class ConfigTest(ConfigCase):
    def test_fixture_sanity(self):
        configs, _ = vf.restore(self.archive())
        self.assertEqual([(n, bytes(d)) for n, d in configs], CONFIGS)

    def test_default_is_qemu_server_conf(self):
        self.assertEqual(self.config(self.put(self.archive())), CONF)

    def test_every_blob_byte_identical(self):
        path = self.put(self.archive())
        for name, data in CONFIGS:
            with self.subTest(name=name):
                self.assertEqual(self.config("-c", name, path), data)

    def test_firewall(self):
        self.assertEqual(self.config("-c", "qemu-server.fw", self.put(self.archive())), FW)

    def test_trailing_nul_bytes_kept(self):
        out = self.config("-c", "trailing-nuls.conf", self.put(self.archive()))
        self.assertEqual(out, TRAILING_NULS)
        self.assertTrue(out.endswith(b"\0\0\0"))

    def test_binary_blob(self):
        self.assertEqual(self.config("-c", "binary.bin", self.put(self.archive())), BINARY)

    def test_quiet_same_bytes(self):
        self.assertEqual(self.config("-q", "-c", "binary.bin", self.put(self.archive())), BINARY)

    def test_missing_name(self):
        r = support.run_tool("config", "-c", "nosuch.conf", self.put(self.archive()))
        support.assert_clean_error(self, r, "nosuch.conf", code=1)
        self.assertEqual(r.stdout, b"")

    def test_missing_default(self):
        vm = vf.make_vm(405, devices=[("drive-scsi0", 65536)], configs=[("qemu-server.fw", FW)])
        r = support.run_tool("config", self.put(bytes(vf.write_archive(vm, None, seed=1))))
        support.assert_clean_error(self, r, "qemu-server.conf", code=1)
        self.assertEqual(r.stdout, b"")

    def test_pipe_input(self):
        self.assertEqual(self.config("-", input=self.archive()), CONF)
        self.assertEqual(self.config("-c", "binary.bin", "-", input=self.archive()), BINARY)

    def test_stdin_file(self):
        path = self.put(self.archive())
        with open(path, "rb") as f:
            self.assertEqual(self.config("-c", "trailing-nuls.conf", "-", stdin=f), TRAILING_NULS)

    def test_gzip_input(self):
        path = self.put(gzip.compress(self.archive(), 1), "a.vma.gz")
        self.assertEqual(self.config(path), CONF)
        self.assertEqual(self.config("-c", "big.conf", path), BIG)

    def test_gzip_stdin(self):
        self.assertEqual(self.config("-c", "big.conf", "-", input=gzip.compress(self.archive(), 1)), BIG)

    def test_diskless_archive(self):
        vm = vf.make_vm(406, devices=[], configs=[("qemu-server.conf", CONF)])
        self.assertEqual(self.config(self.put(bytes(vf.write_archive(vm, None, seed=1)))), CONF)

    def test_corrupt_header(self):
        d = bytearray(self.archive())
        d[12288 + 40] ^= 0x20
        r = support.run_tool("config", self.put(bytes(d)))
        support.assert_clean_error(self, r, "header checksum", code=1)

    def test_not_vma(self):
        r = support.run_tool("config", "-", input=b"PK\x03\x04" + bytes(20000))
        support.assert_clean_error(self, r, "not a vma archive", code=1)

    def test_missing_file(self):
        r = support.run_tool("config", self.tmp_path("nope.vma"))
        support.assert_clean_error(self, r, code=3)


if __name__ == "__main__":
    unittest.main()
