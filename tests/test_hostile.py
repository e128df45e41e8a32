"""Corrupt and hostile archives: every command must answer with one clean error line, write nothing outside its
destination, leave no temporary or partial file, and never change its input.

The cases are built by the tests from a valid fixture archive with the codec of tests/vmafixture.py (header
builder, extent walker, extent decoder and encoder, checksum fixers).  All (case, command) runs of a class are
executed in parallel in setUpClass (subprocesses, one sandbox each) and checked one by one with subTest.
"""
import bz2
import concurrent.futures
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import fuzz  # noqa: E402  (running and checking the tool, the oracle)
import vmafixture as vf  # noqa: E402  (the codec)
from vmafixture import (BLOCK, CLUSTER, EXTENT_HEADER as EXT_HDR, FIXED_HEADER as FIXED,  # noqa: E402
                        build_header, decode_extent, encode_extent, fix_extent_md5, fix_header_md5,
                        put_u32, u32, walk_extents)

JOBS = max(2, min(6, (os.cpu_count() or 2) + 1))
CMDS = ("info", "verify", "unpack", "optimize", "inplace", "cat")
NAME_WORDS = ("name", "path", "outside", "duplicate", "unsafe", "invalid", "collide", "conflict", "clash")

DEV0 = ("drive-scsi0", 5 * CLUSTER + 3 * BLOCK)   # 6 clusters, last one has 3 valid blocks
DEV1 = ("drive-scsi1", 3 * CLUSTER)               # 3 clusters

_BASE = {}


def base():
    """(vm, archive bytes, extents) of the small valid base archive: 9 clusters, 4 per extent, sequential."""
    if not _BASE:
        vm = vf.make_vm(11, devices=[DEV0, DEV1])
        data = bytes(vf.write_archive(vm, None, seed=3, order="sequential", per_extent=4))
        ex = walk_extents(data)
        assert len(ex) == 3, "fixture layout changed: %d extents" % len(ex)
        assert fuzz.oracle(data)[0] == "ok", "base fixture does not restore"
        _BASE.update(vm=vm, data=data, ex=ex)
    return _BASE["vm"], _BASE["data"], _BASE["ex"]


def rand_block(seed):
    r = random.Random(seed)
    return bytes(r.getrandbits(8) for _ in range(64)) * (BLOCK // 64)


class Case(object):
    def __init__(self, name, data, keywords=(), offset=None, cat="drive-scsi0", kind="error"):
        self.name = name
        self.data = bytes(data)
        self.keywords = keywords      # any of these (lowercase) must be in stderr
        self.offset = offset          # None: not required; (lo, hi): some `offset N` with lo <= N <= hi
        self.cat = cat
        self.kind = kind              # error | unsafe | weird


# ------------------------------------------------------------------------------------------------------------
# case construction
# ------------------------------------------------------------------------------------------------------------

def _hdr_edit(data, fn, fix=True):
    b = bytearray(data)
    fn(b)
    if fix:
        fix_header_md5(b)
    return bytes(b)


def _ext_edit(data, e, fn, fix=True):
    b = bytearray(data)
    fn(b, e.offset)
    if fix:
        fix_extent_md5(b, e.offset)
    return bytes(b)


def _reencode(data, e, fn, block_count=None):
    """Decode extent e, let fn edit the entry list, re-encode consistently (md5 ok)."""
    ents = decode_extent(data, e)
    fn(ents)
    new = encode_extent(e.uuid, ents, block_count=block_count)
    return bytes(data[:e.offset]) + new + bytes(data[e.end:]), e.offset, e.offset + len(new)


def _names_header(data, vm, cfg_names=None, dev_names=None, extra_devs=None):
    """Rebuild the header with other config/device names (bytes, written verbatim; same uuid, ctime, sizes,
    dev ids).  extra_devs: {dev_id: (name, size)} declared as well."""
    hs = u32(data, 56)
    cfgs = list(vm.configs)
    if cfg_names:
        for i, n in cfg_names.items():
            cfgs[i] = (n, cfgs[i][1])
    devs = {i + 1: (n, size) for i, (n, size) in enumerate(vm.devices)}
    if dev_names:
        for i, n in dev_names.items():
            devs[i] = (n, devs[i][1])
    if extra_devs:
        devs.update(extra_devs)
    hdr = build_header(vm.ctime, cfgs, [(i, n, size) for i, (n, size) in devs.items()], bytes(data[8:24]))
    return hdr + bytes(data[hs:])


def error_cases(abs_dir):
    vm, d, ex = base()
    hs = u32(d, 56)
    e0, e1, e2 = ex
    cases = []
    add = cases.append

    def ext_range(e, extra=0):
        return (e.offset, e.end + extra)

    # ---- main header (FORMAT.md "Header checks, in order") ----
    add(Case("bad magic", _hdr_edit(d, lambda b: b.__setitem__(slice(0, 4), b"VMB\0"), fix=False), ("not a vma archive",)))
    add(Case("extent magic as main magic", _hdr_edit(d, lambda b: b.__setitem__(slice(0, 4), b"VMAE")),
             ("not a vma archive",)))
    add(Case("version 2", _hdr_edit(d, lambda b: put_u32(b, 4, 2)), ("version",)))
    add(Case("header md5 field flipped", _hdr_edit(d, lambda b: b.__setitem__(40, b[40] ^ 1), fix=False),
             ("header checksum",)))
    add(Case("header blob byte changed, md5 stale", _hdr_edit(d, lambda b: b.__setitem__(FIXED + 5, b[FIXED + 5] ^ 0x20), fix=False),
             ("header checksum",)))
    for v in (100, FIXED):
        add(Case("header_size %d (tiny)" % v, _hdr_edit(d, lambda b, v=v: put_u32(b, 56, v), fix=False), ("header size",)))
    add(Case("header_size 0xFFFFFFFF (huge)", _hdr_edit(d, lambda b: put_u32(b, 56, 0xFFFFFFFF), fix=False),
             ("header size", "truncated")))
    add(Case("header_size past end of file", _hdr_edit(d, lambda b: put_u32(b, 56, len(d) + 512), fix=False),
             ("header size", "truncated")))
    # ---- blob buffer / pointers ----
    add(Case("blob_buffer_offset 12287 (inside fixed part)", _hdr_edit(d, lambda b: put_u32(b, 48, FIXED - 1)), ("blob",)))
    add(Case("blob_buffer_offset past header", _hdr_edit(d, lambda b: put_u32(b, 48, hs + 512)), ("blob",)))
    add(Case("blob_buffer_size past header end", _hdr_edit(d, lambda b: put_u32(b, 52, hs - FIXED + 1)), ("blob",)))
    add(Case("blob_buffer_size 0xFFFFFFFF", _hdr_edit(d, lambda b: put_u32(b, 52, 0xFFFFFFFF)), ("blob",)))
    cptr, dptr = u32(d, 2044), u32(d, 3068)
    add(Case("config name pointer out of range", _hdr_edit(d, lambda b: put_u32(b, 2044, 0xFFFFF0)), ("config", "blob")))
    add(Case("config name pointer inside a blob", _hdr_edit(d, lambda b: put_u32(b, 2044, cptr + 1)), ("config", "blob")))
    add(Case("config data pointer inside a blob", _hdr_edit(d, lambda b: put_u32(b, 3068, dptr + 3)), ("config", "blob")))
    dev_words = ("blob", "unknown device", "name")
    dn2 = u32(d, 4096 + 64)
    add(Case("device name pointer out of range", _hdr_edit(d, lambda b: put_u32(b, 4096 + 32, 0x7FFFFFF0)), dev_words))
    add(Case("device name pointer inside a blob", _hdr_edit(d, lambda b: put_u32(b, 4096 + 64, dn2 + 2)), dev_words, cat="drive-scsi1"))
    # the device name blob is the last one; its last byte is the NUL
    last_len = d[FIXED + dn2] | (d[FIXED + dn2 + 1] << 8)
    add(Case("device name without NUL", _hdr_edit(d, lambda b: b.__setitem__(FIXED + dn2 + 2 + last_len - 1, 0x41)),
             dev_words + ("nul", "terminat"), cat="drive-scsi1"))
    add(Case("last blob length past buffer", _hdr_edit(d, lambda b: b.__setitem__(slice(FIXED + dn2, FIXED + dn2 + 2), b"\xff\xff")),
             dev_words, cat="drive-scsi1"))
    add(Case("first blob length past buffer", _hdr_edit(d, lambda b: b.__setitem__(slice(FIXED + 1, FIXED + 3), b"\xf0\xff")),
             ("config", "blob")))
    add(Case("device 2 size 0 but extents use it", _hdr_edit(d, lambda b: b.__setitem__(slice(4096 + 64 + 8, 4096 + 64 + 16), bytes(8))),
             ("unknown device", "size"), cat="drive-scsi0"))

    # device sizes beyond the format limit (< 2^32 clusters, FORMAT.md "Size limits")
    for v, what in ((1 << 63, "2^63"), ((1 << 64) - 1, "2^64-1"), (1 << 48, "2^48 (2^32 clusters)")):
        add(Case("device 2 size %s" % what, _hdr_edit(d, lambda b, v=v: struct.pack_into(">Q", b, 4096 + 64 + 8, v)),
                 ("size", "missing cluster"), cat="drive-scsi1"))

    # ---- extents (FORMAT.md "Extent checks, in order") ----
    r1 = ext_range(e1)
    add(Case("extent magic VMAX", _ext_edit(d, e1, lambda b, o: b.__setitem__(slice(o, o + 4), b"VMAX")), ("extent magic",), r1))
    add(Case("extent md5 flipped", _ext_edit(d, e1, lambda b, o: b.__setitem__(o + 30, b[o + 30] ^ 4), fix=False),
             ("extent checksum",), r1))
    add(Case("extent uuid differs", _ext_edit(d, e1, lambda b, o: b.__setitem__(o + 8, b[o + 8] ^ 0x55)), ("uuid",), r1))
    add(Case("extent reserved1 = 1", _ext_edit(d, e1, lambda b, o: struct.pack_into(">H", b, o + 4, 1)),
             ("reserved", "extent magic"), r1))
    bc = e1.block_count
    add(Case("block_count + 1", _ext_edit(d, e1, lambda b, o: struct.pack_into(">H", b, o + 6, bc + 1)),
             ("block count", "truncated"), (e1.offset, e1.end + BLOCK)))
    if bc > 0:
        add(Case("block_count - 1", _ext_edit(d, e1, lambda b, o: struct.pack_into(">H", b, o + 6, bc - 1)),
                 ("block count",), r1))
    add(Case("block_count 945 (> 59*16)", _ext_edit(d, e1, lambda b, o: struct.pack_into(">H", b, o + 6, 945)),
             ("block count", "truncated"), (e1.offset, len(d))))
    add(Case("block_count 65535 on last extent", _ext_edit(d, e2, lambda b, o: struct.pack_into(">H", b, o + 6, 0xFFFF)),
             ("block count", "truncated"), (e2.offset, len(d)), cat="drive-scsi1"))

    def set_dev(v):
        def fn(ents):
            ents[0][2] = v
        return fn
    # extent 1 holds scsi0 clusters 4, 5 and scsi1 clusters 0, 1
    dat, lo, hi = _reencode(d, e1, set_dev(3))
    add(Case("undefined dev_id 3", dat, ("unknown device",), (lo, hi)))
    dat, lo, hi = _reencode(d, e1, set_dev(255))
    add(Case("dev_id 255", dat, ("unknown device",), (lo, hi)))
    d255 = _names_header(d, vm, extra_devs={255: (b"drive-scsi9", CLUSTER)})

    def use_255(ents):
        ents[0][2], ents[0][3] = 255, 0
    dat, lo, hi = _reencode(d255, walk_extents(d255)[1], use_255)
    add(Case("dev_id 255 declared in header slot 255", dat, ("unknown device", "255", "neither writes nor restores"),
             (lo, hi)))

    def set_cluster(c, dev_idx=0):
        def fn(ents):
            ents[dev_idx][3] = c
            ents[dev_idx][0] = 0x0001
            ents[dev_idx][4] = [rand_block(c)]
        return fn
    dat, lo, hi = _reencode(d, e1, set_cluster(6))
    add(Case("cluster just past the device end", dat, ("beyond",), (lo, hi)))
    dat, lo, hi = _reencode(d, e1, set_cluster(3, dev_idx=3))
    add(Case("scsi1 cluster 3 (device has 3)", dat, ("beyond",), (lo, hi), cat="drive-scsi1"))

    def block_past_end(bit):
        def fn(ents):
            ent = [x for x in ents if x[2] == 1 and x[3] == 5][0]  # scsi0 cluster 5: blocks 0..2 inside
            if not ent[0] & (1 << bit):
                idx = bin(ent[0] & ((1 << bit) - 1)).count("1")
                ent[4].insert(idx, rand_block(bit))
                ent[0] |= 1 << bit
        return fn
    dat, lo, hi = _reencode(d, e1, block_past_end(3))
    add(Case("block 3 of last cluster past the device end", dat, ("beyond",), (lo, hi)))

    def dup_in_extent(ents):
        ents.append([ents[1][0], 0, ents[1][2], ents[1][3], list(ents[1][4])])
    dat, lo, hi = _reencode(d, e1, dup_in_extent)
    add(Case("duplicate cluster in one extent", dat, ("duplicate",), (lo, hi)))
    ents0 = decode_extent(d, e0)

    def dup_across(ents):
        ents.append(list(ents0[2]))
    dat, lo, hi = _reencode(d, e2, dup_across)
    add(Case("duplicate cluster across extents", dat, ("duplicate",), (lo, hi)))
    add(Case("whole extent 0 repeated at the end", d + d[e0.offset:e0.end], ("duplicate",), (len(d), len(d) + e0.end - e0.offset)))

    def drop(i):
        def fn(ents):
            del ents[i]
        return fn
    add(Case("missing cluster (scsi0 cluster 5 dropped)", _reencode(d, e1, drop(1))[0], ("missing cluster",)))
    add(Case("missing last cluster (last extent emptied)", _reencode(d, e2, lambda ents: ents.clear())[0],
             ("missing cluster",), cat="drive-scsi1"))

    # ---- truncation at each structure boundary and in the middle of data ----
    cuts = {0: "empty file", 40: "inside md5", 4096: "at dev_info", FIXED: "end of fixed part",
            hs - 1: "header_size - 1", hs + 1: "header_size + 1", e0.offset + EXT_HDR: "end of extent 0 header",
            e1.offset + 100: "inside extent 1 header", e2.offset + 511: "extent 2 header - 1", len(d) - 1: "last byte"}
    if e0.block_count:
        cuts[e0.offset + EXT_HDR + BLOCK * (e0.block_count // 2) + 1000] = "middle of extent 0 data"
    if e1.block_count:
        cuts[e1.offset + EXT_HDR + BLOCK] = "block boundary in extent 1 data"
    for cut, what in sorted(cuts.items()):
        if cut >= len(d) or cut < 0:
            continue
        if cut < 4:
            kw = ("not a vma archive", "truncated")
        else:
            kw = ("truncated",)
        # the structure being cut starts at the last boundary <= cut
        starts = [0] + [e.offset for e in ex]
        lo = max(s for s in starts if s <= cut) if cut >= hs else 0
        add(Case("truncated at %d (%s)" % (cut, what), d[:cut], kw, (lo, cut) if cut >= 4 else None,
                 cat="drive-scsi1" if cut >= e1.offset else "drive-scsi0"))
    for cut, what in ((hs, "header only"), (e2.offset, "after extent 1")):
        add(Case("truncated at extent boundary %d (%s)" % (cut, what), d[:cut], ("missing cluster",),
                 cat="drive-scsi1"))

    # ---- trailing bytes ----
    n = len(d)
    for k in (1, 511):
        add(Case("%d trailing zero bytes" % k, d + bytes(k), ("truncated",), (n, n + k), cat="drive-scsi1"))
    add(Case("512 trailing zero bytes", d + bytes(512), ("extent checksum", "extent magic", "trailing"), (n, n + 512),
             cat="drive-scsi1"))
    add(Case("4096 trailing random bytes", d + rand_block(99), ("extent checksum", "extent magic", "trailing"), (n, n + 4096),
             cat="drive-scsi1"))

    # ---- compressed input (detected by magic everywhere): broken compression layer ----
    gz, bz = gzip.compress(d, 6, mtime=0), bz2.compress(d, 9)
    add(Case("gzip stream cut in the middle", gz[:len(gz) // 2], ("truncated",), cat="drive-scsi1"))
    add(Case("bzip2 stream cut in the middle", bz[:len(bz) // 2], ("truncated",), cat="drive-scsi1"))
    gzbad = bytearray(gz)
    gzbad[-6] ^= 0xFF                                    # CRC32 field of the gzip trailer
    add(Case("gzip CRC mismatch", gzbad, ("gzip", "compress", "crc", "checksum"), cat="drive-scsi1"))
    add(Case("gzip with trailing garbage", gz + b"garbage!", ("gzip", "compress", "trailing"), cat="drive-scsi1"))
    gzbad = bytearray(gz)
    gzbad[30] ^= 0xFF                                    # inside the deflate block header: invalid code lengths
    add(Case("gzip deflate data corrupted", gzbad, ("gzip", "compress", "corrupt", "invalid"), cat="drive-scsi1"))
    if shutil.which("zstd"):
        zst = subprocess.run(["zstd", "-q", "-c"], input=d, stdout=subprocess.PIPE, check=True).stdout
        add(Case("zstd stream cut in the middle", zst[:len(zst) // 2], ("truncated",), cat="drive-scsi1"))
        zbad = bytearray(zst)
        zbad[len(zst) // 2] ^= 0xFF
        # zstd itself says "Decoding error ... doesn't match checksum": the message must not hide that
        add(Case("zstd stream corrupted", zbad, ("zstd", "compress", "corrupt", "checksum", "decod"), cat="drive-scsi1"))
    return cases


def name_cases(abs_dir):
    vm, d, ex = base()
    cases = []
    absname = os.path.join(abs_dir, "x").encode()
    long = b"c" * 300
    # config slot 1 is qemu-server.fw; keep qemu-server.conf intact
    for what, nm in (("config '../x'", b"../x"), ("config absolute path", absname),
                     ("config 'a/b'", b"a/b"), ("config with embedded NUL", b"qemu-server.conf\0../x"),
                     ("config empty name", b""), ("config '..'", b".."),
                     ("config 300 bytes long", long), ("config named like a device file", b"disk-drive-scsi0.raw"),
                     ("config duplicate name", b"qemu-server.conf")):
        cases.append(Case(what, _names_header(d, vm, cfg_names={1: nm}), NAME_WORDS, kind="unsafe"))
    for what, nm in (("device '../x'", b"../x"), ("device '../../../x'", b"../../../x"), ("device absolute path", absname),
                     ("device 'a/b'", b"a/b"), ("device with embedded NUL", b"drive-scsi0\0x"), ("device empty name", b""),
                     ("device 300 bytes long", b"drive-" + long)):
        cat = nm.decode() if nm and b"\0" not in nm else "drive-scsi1"
        cases.append(Case(what, _names_header(d, vm, dev_names={1: nm}), NAME_WORDS, cat=cat, kind="unsafe"))
    cases.append(Case("duplicate device names", _names_header(d, vm, dev_names={2: b"drive-scsi0"}), NAME_WORDS, kind="unsafe"))
    cases.append(Case("device name not UTF-8", _names_header(d, vm, dev_names={2: b"drive-\xff\xfe"}), kind="weird"))
    cases.append(Case("device name with newline", _names_header(d, vm, dev_names={2: b"drive-a\nCFG: x"}), kind="weird"))
    cases.append(Case("config name not UTF-8", _names_header(d, vm, cfg_names={1: b"fw-\xe9\x80"}), kind="weird"))
    # header reserved fields: Proxmox does not check them (FORMAT.md "Header checks, in order") and the oracle accepts them, so they
    # are tolerated: success (with unchanged content) or a clean error naming "reserved"
    cases.append(Case("header reserved @60 nonzero (tolerated)", _hdr_edit(d, lambda b: b.__setitem__(60, 1)),
                      ("reserved",), kind="weird"))
    cases.append(Case("dev_info[1] reserved nonzero (tolerated)", _hdr_edit(d, lambda b: b.__setitem__(4096 + 32 + 20, 9)),
                      ("reserved",), kind="weird"))
    return cases


# ------------------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------------------

def _run_job(root, idx, case, cmd):
    job = os.path.join(root, "j%04d-%s" % (idx, cmd))
    dest, cwd, tmp = (os.path.join(job, x) for x in ("dest", "cwd", "tmp"))
    for p in (dest, cwd, tmp):
        os.makedirs(p)
    src = os.path.join(job, "src.vma")
    os.link(case.src, src)
    target = None
    if cmd == "info":
        args = ["info", src]
    elif cmd == "verify":
        args = ["verify", src]
    elif cmd == "unpack":
        target = os.path.join(dest, "out")
        args = ["unpack", src, target]
    elif cmd == "optimize":
        target = os.path.join(dest, "out.vma")
        args = ["optimize", src, target]
    elif cmd == "inplace":
        target = os.path.join(dest, "inplace.vma")
        shutil.copyfile(case.src, target)
        args = ["optimize", target]
    else:
        args = ["cat", src, case.cat]
    before = fuzz.snapshot(job)
    rc, out, err, dt, to = fuzz.run(args, cwd=cwd, tmpdir=tmp, timeout=60)
    after = fuzz.snapshot(job)
    res = {"cmd": cmd, "args": args, "rc": rc, "out": out if cmd != "cat" else out[:64], "err": err, "dt": dt,
           "timeout": to, "before": before, "after": after, "src_sha": fuzz.sha(src), "target": target,
           "target_sha": fuzz.sha(target) if target and os.path.isfile(target) else None, "out_restore": None,
           "unpacked": sorted(os.listdir(target)) if cmd == "unpack" and target and os.path.isdir(target) else None}
    if rc == 0 and cmd in ("optimize", "inplace"):
        res["out_restore"] = fuzz.oracle(target)
    shutil.rmtree(job, ignore_errors=True)
    return res


def run_matrix(root, cases):
    for i, c in enumerate(cases):
        c.src = os.path.join(root, "case%03d.vma" % i)
        with open(c.src, "wb") as f:
            f.write(c.data)
        c.sha = hashlib.sha256(c.data).hexdigest()
    jobs = [(i, c, cmd) for i, c in enumerate(cases) for cmd in CMDS]
    with concurrent.futures.ThreadPoolExecutor(max_workers=JOBS) as ex:
        futs = [ex.submit(_run_job, root, k, c, cmd) for k, (i, c, cmd) in enumerate(jobs)]
        return [(c, f.result()) for (i, c, cmd), f in zip(jobs, futs)]


OFFSET_RE = re.compile(r"offset (\d+)")


def _details(r):
    return "\n  $ vma-tool %s\n  rc=%r (%.2fs)\n  stderr: %s" % (
        " ".join(repr(a) if " " in a or not a else a for a in r["args"][:1] + [os.path.basename(a) for a in r["args"][1:]]),
        r["rc"], r["dt"], r["err"].decode("utf-8", "replace")[-800:])


def stray_files(r, allowed=()):
    new = set(r["after"]) - set(r["before"])
    return sorted(p for p in new if p not in allowed)


def check_common(tc, case, r):
    """No hang/traceback, input unchanged, nothing outside the destination."""
    tc.assertFalse(r["timeout"], "hang" + _details(r))
    err = r["err"].decode("utf-8", "replace")
    tc.assertNotIn("Traceback", err, _details(r))
    tc.assertNotIn("Exception ignored", err, _details(r))
    tc.assertEqual(r["src_sha"], case.sha, "input modified" + _details(r))


def check_failed_cleanly(tc, case, r, keywords, offset):
    """A bad archive: exit 1 (README.md "Exit status": invalid/corrupt/incomplete archive), clean message naming the problem."""
    cmd = r["cmd"]
    check_common(tc, case, r)
    err = r["err"].decode("utf-8", "replace")
    tc.assertNotEqual(r["rc"], 0, "accepted a bad archive" + _details(r))
    tc.assertEqual(r["rc"], 1, "exit status for a bad archive must be 1" + _details(r))
    lines = fuzz.error_lines(err)
    if cmd == "verify":
        tc.assertGreaterEqual(len(lines), 1, "no error line" + _details(r))
    else:
        tc.assertEqual(len(lines), 1, "want exactly one error line" + _details(r))
    if keywords:
        low = err.lower()
        tc.assertTrue(any(k in low for k in keywords), "message does not name the problem %r%s" % (keywords, _details(r)))
    if offset is not None:
        offs = [int(x) for x in OFFSET_RE.findall(err)]
        tc.assertTrue(offs, "no 'offset N' in the message" + _details(r))
        lo, hi = offset
        tc.assertTrue(any(lo <= o <= hi for o in offs), "offset %r not in [%d, %d]%s" % (offs, lo, hi, _details(r)))
    # nothing new anywhere; a failed unpack may leave at most its (empty) destination directory
    allowed = ("dest/out",) if cmd == "unpack" else ()
    tc.assertEqual(stray_files(r, allowed), [], "files left behind / written outside the destination" + _details(r))
    if cmd == "unpack":
        tc.assertFalse(r["unpacked"], "failed unpack left (partial) files under final names: %r%s" % (r["unpacked"], _details(r)))
    if cmd == "optimize":
        tc.assertIsNone(r["target_sha"], "failed optimize left its output file" + _details(r))
    if cmd == "inplace":
        tc.assertEqual(r["target_sha"], case.sha, "failed in-place optimize changed the original" + _details(r))
        changed = [p for p in r["after"] if p in r["before"] and r["after"][p] != r["before"][p]]
        tc.assertEqual(changed, [], "in-place optimize changed files" + _details(r))


def check_may_succeed(tc, case, r, abs_dir):
    cmd = r["cmd"]
    check_common(tc, case, r)
    if r["rc"] != 0:
        tc.assertIn(r["rc"], (1, 2, 3), "exit status" + _details(r))
        n = len(fuzz.error_lines(r["err"].decode("utf-8", "replace")))
        if cmd == "verify":
            tc.assertGreaterEqual(n, 1, "no error line" + _details(r))
        else:
            tc.assertEqual(n, 1, "want exactly one error line" + _details(r))
        allowed = ("dest/out",) if cmd == "unpack" else ()
        tc.assertEqual(stray_files(r, allowed), [], "files left behind / written outside the destination" + _details(r))
        if cmd == "inplace":
            tc.assertEqual(r["target_sha"], case.sha, "failed in-place optimize changed the original" + _details(r))
        if cmd == "optimize":
            tc.assertIsNone(r["target_sha"], "failed optimize left its output file" + _details(r))
    else:
        if cmd == "unpack":
            stray = [p for p in stray_files(r) if not (p == "dest/out" or p.startswith("dest/out/"))]
        else:
            stray = stray_files(r, ("dest/out.vma",) if cmd == "optimize" else ())
        tc.assertEqual(stray, [], "wrote outside its destination" + _details(r))
        if cmd in ("optimize", "inplace"):
            o = r["out_restore"]
            tc.assertNotEqual(o[0], "invalid", "optimize output does not restore: %s%s" % (o[1], _details(r)))
            inp = fuzz.oracle(case.data)
            if inp[0] == "ok" and o[0] == "ok":
                tc.assertTrue(fuzz.same_content(inp[1], o[1]), "optimize changed the content: %s%s" % (
                    fuzz.describe_diff(inp[1], o[1]), _details(r)))
    tc.assertEqual(os.listdir(abs_dir), [], "something was written to the absolute target" + _details(r))


class _MatrixBase(unittest.TestCase):
    cases_fn = None

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="vma-hostile-")
        cls.abs_dir = os.path.join(tempfile.mkdtemp(prefix="vma-hostile-abs-"))
        cls.cases = cls.cases_fn(cls.abs_dir)
        cls.results = run_matrix(cls.root, cls.cases)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)
        shutil.rmtree(cls.abs_dir, ignore_errors=True)


class CorruptArchives(_MatrixBase):
    """Every error case of FORMAT.md "What Proxmox's reader accepts and refuses" x every command."""
    cases_fn = staticmethod(error_cases)

    def test_catalogue_size(self):
        self.assertGreaterEqual(len(self.cases), 50)

    def test_every_command_fails_cleanly(self):
        for case, r in self.results:
            with self.subTest(case=case.name, cmd=r["cmd"]):
                check_failed_cleanly(self, case, r, case.keywords, case.offset)

    def test_verify_reports_problem_on_stderr_not_ok(self):
        for case, r in self.results:
            if r["cmd"] == "verify":
                with self.subTest(case=case.name):
                    self.assertNotIn(b": ok", r["out"], _details(r))


class HostileNames(_MatrixBase):
    """Names that are only dangerous when written to disk: unpack must refuse; nothing may escape."""
    cases_fn = staticmethod(name_cases)

    def test_unpack_refuses(self):
        for case, r in self.results:
            if r["cmd"] == "unpack" and case.kind == "unsafe":
                with self.subTest(case=case.name):
                    check_failed_cleanly(self, case, r, case.keywords, None)
                    self.assertEqual(os.listdir(self.abs_dir), [], "wrote to the absolute path" + _details(r))

    def test_other_commands_clean(self):
        for case, r in self.results:
            if r["cmd"] == "unpack" and case.kind == "unsafe":
                continue
            with self.subTest(case=case.name, cmd=r["cmd"]):
                check_may_succeed(self, case, r, self.abs_dir)

    def test_nothing_escaped(self):
        vm, d, ex = base()
        for case, r in self.results:
            with self.subTest(case=case.name, cmd=r["cmd"]):
                new = set(r["after"]) - set(r["before"])
                bad = [p for p in new if not (p.startswith("dest/out/") or p in ("dest/out", "dest/out.vma"))]
                self.assertEqual(bad, [], _details(r))


# ------------------------------------------------------------------------------------------------------------
# resource bombs
# ------------------------------------------------------------------------------------------------------------

WRAPPER = (
    "import json,resource,subprocess,sys,time\n"
    "t=time.monotonic()\n"
    "r=subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL)\n"
    "print(json.dumps({'rc':r.returncode,'rss_kb':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
    "'t':time.monotonic()-t}))\n")


def run_wrapped(args, cwd, tmpdir, stdin_path=None, timeout=60):
    """Run vma-tool under a python wrapper that reports the child's peak RSS (KiB) and wall time."""
    import signal
    env = dict(os.environ, TMPDIR=tmpdir)
    stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
    try:
        p = subprocess.Popen([sys.executable, "-S", "-c", WRAPPER] + fuzz.tool_argv() + list(args), cwd=cwd,
                             env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True, preexec_fn=None)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            return {"rc": None, "rss_kb": None, "t": timeout, "timeout": True}, err
    finally:
        if stdin_path:
            stdin.close()
    info = json.loads(out.decode().strip().splitlines()[-1])
    info["timeout"] = False
    return info, err


def _bomb_header_4g(tmp):
    vm, d, ex = base()
    b = bytearray(d)
    put_u32(b, 56, 0xFFFFFFFF)
    return [("header_size 4 GiB, short file", bytes(b), None, ("header size", "truncated"))] + (
        [("header_size 4 GiB, sparse 4 GiB file", bytes(b), 0xFFFFFFFF + 4096, ("header size", "truncated", "header checksum"))])


def _bomb_block_count(tmp):
    vm, d, ex = base()
    b = bytearray(d[:ex[0].offset + EXT_HDR])
    struct.pack_into(">H", b, ex[0].offset + 6, 0xFFFF)
    fix_extent_md5(b, ex[0].offset)
    # the file really holds 65535 blocks (sparse): a reader that trusts block_count would buffer 256 MiB
    return [("block_count 65535", bytes(b), len(b) + 0xFFFF * BLOCK, ("block count",))]


HUGE = (1 << 48) - CLUSTER     # largest legal device: 2^32 - 1 clusters (just under 256 TiB)


def _bomb_many_huge(tmp):
    uuid = bytes(range(16))
    devs = [(i, "drive-scsi%d" % i, HUGE) for i in range(1, 255)]
    hdr = build_header(1700000000, [("qemu-server.conf", b"name: bomb\n")], devs, uuid)
    ents = [[0xFFFF, 0, 1, c, [rand_block(c)] * 16] for c in range(3)]
    ents += [[0x0001, 0, 254, 0xFFFFFFFE, [rand_block(7)]], [0, 0, 100, 12345, []]]
    return [("254 devices of 256 TiB, 5 clusters", hdr + encode_extent(uuid, ents), None, ("missing cluster",))]


def _bomb_cluster_ffffffff(tmp):
    vm, d, ex = base()
    dat, lo, hi = _reencode(d, ex[1], lambda ents: ents[0].__setitem__(3, 0xFFFFFFFF))
    uuid = bytes(range(16))
    hdr = build_header(1700000000, [("qemu-server.conf", b"name: bomb\n")], [(1, "drive-scsi0", HUGE)], uuid)
    huge = hdr + encode_extent(uuid, [[0x0001, 0, 1, 0, [rand_block(1)]], [0x0001, 0, 1, 0xFFFFFFFF, [rand_block(2)]]])
    return [("cluster 0xFFFFFFFF on a small device", dat, None, ("beyond",)),
            ("cluster 0xFFFFFFFF on a 256 TiB device", huge, None, ("beyond",))]


class ResourceBombs(unittest.TestCase):
    """Must fail fast (< 5 s) and keep the child's peak RSS below 100 MiB."""
    LIMIT_KB = 100 * 1024
    LIMIT_S = 5.0

    @classmethod
    def setUpClass(cls):
        cls.root = tempfile.mkdtemp(prefix="vma-bombs-")
        # baseline: verify of the small valid archive
        vm, d, ex = base()
        p = os.path.join(cls.root, "valid.vma")
        with open(p, "wb") as f:
            f.write(d)
        os.makedirs(os.path.join(cls.root, "t0"))
        cls.baseline, _ = run_wrapped(["verify", p], cls.root, os.path.join(cls.root, "t0"))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)

    def _bomb(self, builder):
        bombs = builder(self.root)
        jobs = []
        for n, (name, data, extend_to, kw) in enumerate(bombs):
            path = os.path.join(self.root, "%s-%d.vma" % (builder.__name__, n))
            with open(path, "wb") as f:
                f.write(data)
                if extend_to:
                    try:
                        f.truncate(extend_to)
                    except OSError as exc:
                        self.skipTest("cannot create a sparse file: %s" % exc)
            for cmd in ("verify", "verify-stdin", "info", "optimize", "unpack"):
                jobs.append((name, kw, path, cmd))

        def one(job):
            name, kw, path, cmd = job
            sand = tempfile.mkdtemp(dir=self.root)
            for x in ("tmp", "dest"):
                os.makedirs(os.path.join(sand, x))
            args = {"verify": ["verify", path], "verify-stdin": ["verify", "-"], "info": ["info", path],
                    "optimize": ["optimize", path, os.path.join(sand, "dest", "out.vma")],
                    "unpack": ["unpack", path, os.path.join(sand, "dest", "out")]}[cmd]
            info, err = run_wrapped(args, sand, os.path.join(sand, "tmp"),
                                    stdin_path=path if cmd == "verify-stdin" else None)
            left = sorted(os.listdir(os.path.join(sand, "dest"))) + sorted(os.listdir(os.path.join(sand, "tmp")))
            if os.path.isdir(os.path.join(sand, "dest", "out")) and not os.listdir(os.path.join(sand, "dest", "out")):
                left.remove("out")
            shutil.rmtree(sand, ignore_errors=True)
            return job, info, err, left

        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as ex:
            results = list(ex.map(one, jobs))
        for (name, kw, path, cmd), info, err, left in results:
            with self.subTest(bomb=name, cmd=cmd):
                text = err.decode("utf-8", "replace")
                msg = "\n  rc=%r t=%.2fs rss=%s KiB (baseline %s KiB)\n  stderr: %s" % (
                    info["rc"], info["t"], info["rss_kb"], self.baseline.get("rss_kb"), text[-600:])
                self.assertFalse(info["timeout"], "hang" + msg)
                self.assertLess(info["t"], self.LIMIT_S, "too slow" + msg)
                self.assertLess(info["rss_kb"], self.LIMIT_KB, "too much memory" + msg)
                self.assertNotIn("Traceback", text, msg)
                self.assertLess(len(err), 64 * 1024, "unbounded error output" + msg)
                self.assertEqual(left, [], "left files behind" + msg)
                if cmd == "info" and info["rc"] == 0:
                    continue
                self.assertIn(info["rc"], (1, 2, 3), "must fail" + msg)
                n = len(fuzz.error_lines(text))
                self.assertTrue(n >= 1 if cmd.startswith("verify") else n == 1, "error lines: %d%s" % (n, msg))
                if cmd == "unpack" and info["rc"] == 3:
                    # creating a huge sparse image may legitimately fail first; then the line must say which file
                    self.assertTrue("disk-" in text or "drive-" in text,
                                    "environment error that does not name the file or device%s" % msg)
                else:
                    self.assertTrue(any(k in text.lower() for k in kw), "message does not name %r%s" % (kw, msg))

    def test_header_size_4gib(self):
        self._bomb(_bomb_header_4g)

    def test_block_count_65535(self):
        self._bomb(_bomb_block_count)

    def test_254_devices_of_256_tib(self):
        self._bomb(_bomb_many_huge)

    def test_cluster_ffffffff(self):
        self._bomb(_bomb_cluster_ffffffff)


# ------------------------------------------------------------------------------------------------------------
# fuzz smoke
# ------------------------------------------------------------------------------------------------------------

class FuzzSmoke(unittest.TestCase):
    """60 seeded mutation cases (tests/fuzz.py; volume: make fuzz): verify + optimize on all, unpack on every 5th, in place on
    every 11th.  Failures name seed/case so `python3 tests/fuzz.py --seed smoke --case N` reproduces them."""
    SEED = "smoke"
    CASES = 60

    def test_fuzz_smoke(self):
        corpus = fuzz.build_corpus()
        for name, data in corpus.items():
            self.assertEqual(fuzz.oracle(data)[0], "ok", "corpus archive %s does not restore" % name)
        root = tempfile.mkdtemp(prefix="vma-fuzzsmoke-")
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=JOBS) as ex:
                res = list(ex.map(lambda i: (i,) + fuzz.run_case(self.SEED, i, corpus, root, full=False, timeout=30),
                                  range(self.CASES)))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        failures = [(i, desc, f) for i, desc, data, f, notes in res if f]
        msg = "\n".join("seed=%s case=%d: %s\n    %s" % (self.SEED, i, desc, "\n    ".join(f)) for i, desc, f in failures[:15])
        self.assertEqual(len(failures), 0, "%d of %d fuzz cases failed:\n%s" % (len(failures), self.CASES, msg))


if __name__ == "__main__":
    unittest.main()
