#!/usr/bin/env python3
"""Mutation fuzzer for vma-tool.

Starts from tiny valid fixture archives (tests/vmafixture.py), mutates them (bit flips and byte sets in the
main header and in extent headers/blockinfo, semantic slot edits, truncations, splices of two archives,
duplicated/dropped/reordered extents, trailing garbage, payload flips) and runs vma-tool on every case in a
subprocess with a timeout.

Invariants checked for every command run:
  * no hang (timeout), no Python traceback, no "Exception ignored" noise;
  * exit 0, or a clean error: exit status 1/2/3 and `vma-tool: error:` lines (exactly one, verify: >= 1);
  * nothing written outside the destination; no temporary file left behind (TMPDIR and working dirs);
  * the input file is never modified (except by a successful in-place optimize);
  * the strict oracle vmafixture.restore() decides validity:
      - verify/optimize/unpack/cat exiting 0 on an input the oracle rejects is a failure,
      - a successful optimize must produce an archive whose restore() equals restore(input),
      - a successful unpack must produce exactly the oracle's configs and disk images,
      - a failed in-place optimize must leave the input byte-identical;
    the tool rejecting an input the oracle accepts is only reported as a note (the tool may be stricter,
    e.g. on reserved fields) unless --strict-oracle is given.

Usage: python3 tests/fuzz.py --cases N --seed S [--jobs J] [--save-dir DIR] [--timeout T] [--case I]
Every failure is printed as `FAIL seed=S case=I: ...` and the input is saved to DIR/seed-S-case-I.vma
(with a .txt beside it).  `--case I` re-runs one case.
"""
import argparse
import concurrent.futures
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import support  # noqa: E402
import vmafixture as vf  # noqa: E402  (the tests' independent codec: never imports vma-tool)
from vmafixture import BLOCK, CLUSTER, CANONICAL_UUID, FIXED_HEADER as FIXED  # noqa: E402
from vmafixture import EXTENT_HEADER as EXT_HDR  # noqa: E402


def tool_path():
    return support.TOOL


tool_argv = support.tool_argv


# --------------------------------------------------------------------------------------------------------
# Header views for targeting corruptions (the codec itself is tests/vmafixture.py)
# --------------------------------------------------------------------------------------------------------

def fix_header_md5(data):
    """Recompute the main header md5 in place; False (nothing changed) if header_size does not fit data."""
    return vf.fix_header_md5(data, clamp=False)


def dev_sizes(data):
    """{dev_id: size} of every dev_info slot with a size (whatever its name pointer); {} if data is shorter
    than the fixed header part."""
    try:
        return {i: size for i, (_ptr, size) in vf.parse_header(data).dev_info.items()}
    except ValueError:
        return {}


# --------------------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------------------

FUZZ_DEVICES = [("drive-scsi0", 3 * CLUSTER + BLOCK), ("drive-scsi1", 2 * CLUSTER), ("drive-virtio0", 70144)]


def build_corpus():
    """A few tiny valid archives (a few hundred KiB in all). Deterministic."""
    vm = vf.make_vm(4242, devices=list(FUZZ_DEVICES))
    a = vf.write_archive(vm, None, seed=1, order="proxmox", per_extent=5)
    uuid_a = bytes(a[8:24])
    b = vf.write_archive(vm, None, seed=2, order="random", per_extent="random", empty_extents=True,
                         stored_zero_blocks=True, tail_garbage=True)
    c = vf.write_archive(vm, None, seed=3, order="sequential", per_extent=59, uuid=CANONICAL_UUID)
    vm2 = vf.mutate_vm(vm, 77, fraction=0.05)
    d = vf.write_archive(vm2, None, seed=4, order="sequential", per_extent=3, uuid=uuid_a)
    vm3 = vf.make_vm(99, devices=[])
    e = vf.write_archive(vm3, None, seed=5)
    return {"proxmox": bytes(a), "random": bytes(b), "canonical-ish": bytes(c), "same-uuid-mutated": bytes(d),
            "diskless": bytes(e)}


# --------------------------------------------------------------------------------------------------------
# Mutators: each takes (rng, data: bytearray, corpus) and returns a description (mutating data in place)
# --------------------------------------------------------------------------------------------------------

INTERESTING32 = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 511, 512, 4095, 4096, 12287, 12288, 12289, 65535, 65536,
                 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]


def _hdr_fields(b):
    """(offset, width, name) of interesting header fields for this archive."""
    f = [(4, 4, "version"), (48, 4, "blob_buffer_offset"), (52, 4, "blob_buffer_size"), (56, 4, "header_size"),
         (60, 4, "reserved@60"), (2040, 4, "reserved@2040"), (4092, 4, "reserved@4092")]
    h = vf.parse_header(b)
    for i, n, d in h.config_slots[:4]:
        f.append((2044 + 4 * i, 4, "config_name[%d]" % i))
        f.append((3068 + 4 * i, 4, "config_data[%d]" % i))
    f.append((2044 + 4 * 7, 4, "config_name[7](unused)"))
    for dev_id in list(h.dev_info)[:4]:
        o = 4096 + 32 * dev_id
        f += [(o, 4, "dev%d.name_ptr" % dev_id), (o + 4, 4, "dev%d.reserved" % dev_id),
              (o + 8, 8, "dev%d.size" % dev_id), (o + 16, 8, "dev%d.reserved2" % dev_id)]
    f += [(4096 + 32 * 9, 4, "dev9.name_ptr(unused)"), (4096 + 32 * 9 + 8, 8, "dev9.size(unused)"),
          (4096 + 32 * 255 + 8, 8, "dev255.size")]
    return f


def m_header_bitflip(rng, data, corpus):
    hs = min(vf.header_size(data) or FIXED, len(data))
    r = rng.random()
    if r < 0.4:
        off = rng.randrange(0, min(64, hs))
    elif r < 0.7:
        fo, w, _ = rng.choice(_hdr_fields(data))
        off = fo + rng.randrange(w)
    else:
        off = rng.randrange(FIXED, hs) if hs > FIXED else rng.randrange(0, hs)
    bit = rng.randrange(8)
    data[off] ^= 1 << bit
    fixed = off not in range(32, 48) and rng.random() < 0.75 and fix_header_md5(data)
    return "header bitflip @%d bit %d%s" % (off, bit, " (md5 fixed)" if fixed else "")


def m_header_byteset(rng, data, corpus):
    hs = min(vf.header_size(data) or FIXED, len(data))
    off = rng.randrange(FIXED, hs) if (hs > FIXED and rng.random() < 0.5) else rng.randrange(0, min(hs, FIXED))
    val = rng.choice([0, 0xFF, 0x2F, 0x2E, 0x80, rng.randrange(256)])
    data[off] = val
    fixed = rng.random() < 0.8 and fix_header_md5(data)
    return "header byte @%d = %#x%s" % (off, val, " (md5 fixed)" if fixed else "")


def m_header_field(rng, data, corpus):
    off, w, name = rng.choice(_hdr_fields(data))
    old = int.from_bytes(bytes(data[off:off + w]), "big")
    cands = INTERESTING32 + [old + 1, old - 1, old + 2, old + 512, old ^ 1]
    if w == 8:
        cands += [1 << 48, (1 << 48) - CLUSTER, 1 << 63, (1 << 64) - 1, old * 2, old // 2, 511, 513]
    val = rng.choice(cands) % (1 << (8 * w))
    data[off:off + w] = val.to_bytes(w, "big")
    fixed = rng.random() < 0.9 and fix_header_md5(data)
    return "header field %s %d -> %d%s" % (name, old, val, " (md5 fixed)" if fixed else "")


def _pick_extent(rng, data):
    ex = vf.walk_extents(data)
    return rng.choice(ex) if ex else None


def m_extent_bitflip(rng, data, corpus):
    e = _pick_extent(rng, data)
    if e is None:
        return m_header_bitflip(rng, data, corpus)
    r = rng.random()
    if r < 0.3:
        rel = rng.randrange(0, 8)
    elif r < 0.45:
        rel = rng.randrange(8, 24)
    else:
        nused = max(1, len(e.used()))
        rel = 40 + 8 * rng.randrange(min(59, nused + 1)) + rng.randrange(8)
    bit = rng.randrange(8)
    data[e.offset + rel] ^= 1 << bit
    fixed = rng.random() < 0.85 and vf.fix_extent_md5(data, e.offset)
    return "extent@%d bitflip rel %d bit %d%s" % (e.offset, rel, bit, " (md5 fixed)" if fixed else "")


def m_extent_field(rng, data, corpus):
    e = _pick_extent(rng, data)
    if e is None:
        return m_header_field(rng, data, corpus)
    choice = rng.randrange(4)
    if choice == 0:
        val = rng.choice([0, 1, e.block_count + 1, max(0, e.block_count - 1), 944, 945, 0xFFFF])
        struct.pack_into(">H", data, e.offset + 6, val)
        what = "block_count %d -> %d" % (e.block_count, val)
    elif choice == 1:
        val = rng.choice([1, 0x100, 0xFFFF])
        struct.pack_into(">H", data, e.offset + 4, val)
        what = "reserved1 -> %d" % val
    elif choice == 2:
        data[e.offset:e.offset + 4] = rng.choice([b"VMA\0", b"VMAF", b"\0\0\0\0"])
        what = "magic"
    else:
        data[e.offset + 8 + rng.randrange(16)] ^= 0x40
        what = "uuid"
    vf.fix_extent_md5(data, e.offset)
    return "extent@%d %s (md5 fixed)" % (e.offset, what)


def _rewrite_entries(data, e, entries, block_count=None):
    new = vf.encode_extent(e.uuid, entries, block_count=block_count)
    data[e.offset:e.end] = new


def m_slot_semantic(rng, data, corpus):
    """Consistently re-encoded extent with one slot edited: dev/cluster/mask changes, duplicates, removals."""
    ex = [e for e in vf.walk_extents(data) if e.used()]
    if not ex:
        return m_extent_bitflip(rng, data, corpus)
    e = rng.choice(ex)
    ents = vf.decode_extent(data, e)
    if not ents:
        return m_extent_bitflip(rng, data, corpus)
    k = rng.randrange(len(ents))
    devs = dev_sizes(data)
    op = rng.randrange(9)
    ent = ents[k]
    if op == 0:
        ent[2] = rng.choice([0, 3, 4, 9, 254, 255] + list(devs))
        what = "dev -> %d" % ent[2]
    elif op == 1:
        size = devs.get(ent[2], 0)
        ncl = (size + CLUSTER - 1) // CLUSTER
        ent[3] = rng.choice([ncl, ncl - 1, ncl + 1, 63, 64, 0xFFFF, 0xFFFFFFFF, 0, ent[3] + 1])
        ent[3] &= 0xFFFFFFFF
        what = "cluster -> %d" % ent[3]
    elif op == 2:
        bit = rng.randrange(16)
        if ent[0] & (1 << bit):
            idx = bin(ent[0] & ((1 << bit) - 1)).count("1")
            del ent[4][idx]
            what = "mask drop bit %d" % bit
        else:
            idx = bin(ent[0] & ((1 << bit) - 1)).count("1")
            ent[4].insert(idx, bytes(rng.getrandbits(8) for _ in range(16)) * 256)
            what = "mask add bit %d" % bit
        ent[0] ^= 1 << bit
    elif op == 3:
        if len(ents) < 59:
            ents.insert(rng.randrange(len(ents) + 1), [ent[0], ent[1], ent[2], ent[3], list(ent[4])])
            what = "duplicate slot"
        else:
            del ents[k]
            what = "remove slot"
    elif op == 4:
        del ents[k]
        what = "remove slot"
    elif op == 5:
        ent[1] = rng.choice([1, 0x80, 0xFF])
        what = "blockinfo reserved byte -> %d" % ent[1]
    elif op == 6:
        # all-zero stored block (legal, non-canonical)
        bit = rng.randrange(16)
        if not ent[0] & (1 << bit):
            idx = bin(ent[0] & ((1 << bit) - 1)).count("1")
            ent[4].insert(idx, bytes(BLOCK))
            ent[0] |= 1 << bit
        what = "stored zero block bit %d" % bit
    elif op == 7:
        if len(ents) < 59:
            ents.insert(rng.randrange(len(ents) + 1), [0, 0, 0, 0, []])
        what = "empty slot inserted"
    else:
        j = rng.randrange(len(ents))
        ents[k], ents[j] = ents[j], ents[k]
        what = "swap slots %d,%d" % (k, j)
    bc = None
    if rng.random() < 0.1:
        bc = sum(len(x[4]) for x in ents if x[2]) + rng.choice([-1, 1])
        bc = max(0, bc)
    _rewrite_entries(data, e, ents, block_count=bc)
    return "extent@%d slot %d: %s%s" % (e.offset, k, what, "" if bc is None else " (block_count %d)" % bc)


def m_data_flip(rng, data, corpus):
    ex = [e for e in vf.walk_extents(data) if e.block_count]
    if not ex:
        return m_truncate(rng, data, corpus)
    e = rng.choice(ex)
    off = rng.randrange(e.offset + EXT_HDR, e.end)
    data[off] ^= 1 << rng.randrange(8)
    return "payload bitflip @%d" % off


def m_truncate(rng, data, corpus):
    hs = vf.header_size(data) or FIXED
    ex = vf.walk_extents(data)
    bounds = [0, 4, FIXED, hs] + [e.offset for e in ex] + [e.offset + EXT_HDR for e in ex]
    if rng.random() < 0.5:
        cut = rng.choice(bounds) + rng.choice([0, 0, -1, 1, 100, -100, 4096])
    else:
        cut = rng.randrange(len(data) + 1)
    cut = max(0, min(len(data), cut))
    del data[cut:]
    return "truncate at %d" % cut


def m_append(rng, data, corpus):
    kind = rng.randrange(5)
    ex = vf.walk_extents(data)
    if kind == 0:
        n = rng.choice([1, 100, 511, 512, 4096])
        data += bytes(n)
        return "append %d zero bytes" % n
    if kind == 1:
        n = rng.choice([1, 7, 512, 513, 5000])
        data += bytes(rng.getrandbits(8) for _ in range(n))
        return "append %d random bytes" % n
    if kind == 2 and ex:
        data += vf.encode_extent(bytes(data[8:24]), [])
        return "append empty extent"
    if kind == 3 and ex:
        e = rng.choice(ex)
        data += data[e.offset:e.end]
        return "append copy of extent@%d" % e.offset
    data += data[:rng.choice([512, FIXED])]
    return "append copy of header start"


def m_splice(rng, data, corpus):
    other_name = rng.choice(sorted(corpus))
    other = corpus[other_name]
    if rng.random() < 0.6:
        ea = vf.walk_extents(data)
        eb = vf.walk_extents(other)
        ca = rng.choice([e.offset for e in ea] + [len(data)]) if ea else len(data)
        cb = rng.choice([e.offset for e in eb] + [len(other)]) if eb else len(other)
    else:
        ca = rng.randrange(len(data) + 1)
        cb = rng.randrange(len(other) + 1)
    data[ca:] = other[cb:]
    return "splice: prefix[:%d] + %s[%d:]" % (ca, other_name, cb)


def m_extent_ops(rng, data, corpus):
    ex = vf.walk_extents(data)
    if len(ex) < 1:
        return m_append(rng, data, corpus)
    hs = ex[0].offset
    chunks = [bytes(data[e.offset:e.end]) for e in ex]
    tail = bytes(data[ex[-1].end:])
    op = rng.randrange(5)
    if op == 0:
        i = rng.randrange(len(chunks))
        chunks.insert(rng.randrange(len(chunks) + 1), chunks[i])
        what = "duplicate extent %d" % i
    elif op == 1:
        i = rng.randrange(len(chunks))
        del chunks[i]
        what = "drop extent %d" % i
    elif op == 2:
        rng.shuffle(chunks)
        what = "shuffle extents (valid)"
    elif op == 3:
        i = rng.randrange(len(chunks) + 1)
        chunks.insert(i, vf.encode_extent(bytes(data[8:24]), []))
        what = "insert empty extent at %d (valid)" % i
    else:
        i = rng.randrange(len(chunks))
        j = rng.randrange(len(chunks))
        chunks[i], chunks[j] = chunks[j], chunks[i]
        what = "swap extents %d,%d (valid)" % (i, j)
    data[hs:] = b"".join(chunks) + tail
    return what


MUTATORS = [(m_header_bitflip, 3), (m_header_byteset, 2), (m_header_field, 4), (m_extent_bitflip, 3),
            (m_extent_field, 3), (m_slot_semantic, 6), (m_data_flip, 2), (m_truncate, 3), (m_append, 2),
            (m_splice, 3), (m_extent_ops, 3)]


def m_compress(rng, data, corpus):
    """Wrap the whole archive in gzip or bzip2 (every command detects compression by magic); sometimes cut
    or corrupt the compressed stream."""
    import bz2
    import gzip
    kind = rng.choice(["gzip", "bzip2"])
    comp = bytearray(gzip.compress(bytes(data), 6, mtime=0) if kind == "gzip" else bz2.compress(bytes(data), 9))
    r = rng.random()
    what = "%s-compressed" % kind
    if r < 0.25:
        cut = rng.randrange(2, len(comp))
        del comp[cut:]
        what += ", stream cut at %d" % cut
    elif r < 0.5:
        off = rng.randrange(10, len(comp))
        comp[off] ^= 1 << rng.randrange(8)
        what += ", stream byte %d flipped" % off
    data[:] = comp
    return what


def decompress_limited(data, limit):
    """Decompress gzip/bzip2 input (None if not compressed); raises ValueError for a broken stream or one
    larger than limit."""
    import bz2
    import zlib
    if data[:2] == b"\x1f\x8b":
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif data[:3] == b"BZh":
        d = bz2.BZ2Decompressor()
    else:
        return None
    try:
        if isinstance(d, bz2.BZ2Decompressor):
            out = d.decompress(data, max_length=limit + 1)
            complete = d.eof
        else:
            out = d.decompress(data, limit + 1)
            complete = d.eof
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError("bad compressed stream: %s" % exc)
    if len(out) > limit:
        raise OverflowError("decompressed data too large for the oracle")
    if not complete:
        raise ValueError("compressed stream is truncated")
    return out


def make_case(seed, case, corpus):
    """Deterministic (description, bytes) for one case id."""
    rng = random.Random("vma-fuzz:%s:%s" % (seed, case))
    base = rng.choice(sorted(corpus))
    data = bytearray(corpus[base])
    descs = ["base=%s" % base]
    n = rng.choice([1, 1, 1, 2, 2, 3])
    funcs = [f for f, w in MUTATORS for _ in range(w)]
    for _ in range(n):
        f = rng.choice(funcs)
        try:
            descs.append(f(rng, data, corpus))
        except (IndexError, ValueError, struct.error, AssertionError) as exc:
            descs.append("%s skipped (%s)" % (f.__name__, exc))
    if rng.random() < 0.08:
        descs.append(m_compress(rng, data, corpus))
    return "; ".join(descs), bytes(data)


# --------------------------------------------------------------------------------------------------------
# Oracle helpers
# --------------------------------------------------------------------------------------------------------

ORACLE_LIMIT = 64 << 20  # never let the in-process oracle allocate more than this for disks


def oracle(data_or_path, complete=None):
    """('ok', (configs, disks)) | ('invalid', reason) | ('unknown', reason).
    complete: the device names that must be complete (vmafixture.restore), default all."""
    if isinstance(data_or_path, (bytes, bytearray)):
        head = bytes(data_or_path[:600000])
    else:
        with open(data_or_path, "rb") as f:
            head = f.read(600000)
    if head[:2] == b"\x1f\x8b" or head[:3] == b"BZh":
        if not isinstance(data_or_path, (bytes, bytearray)):
            with open(data_or_path, "rb") as f:
                data_or_path = f.read()
        try:
            data_or_path = decompress_limited(bytes(data_or_path), 4 * ORACLE_LIMIT)
        except ValueError as exc:
            return ("invalid", str(exc))
        except OverflowError as exc:
            return ("unknown", str(exc))
        head = data_or_path[:600000]
    if sum(dev_sizes(head).values()) > ORACLE_LIMIT:
        return ("unknown", "device sizes too large for the in-process oracle")
    try:
        res = vf.restore(bytes(data_or_path) if isinstance(data_or_path, bytearray) else data_or_path,
                         complete=complete)
    except ValueError as exc:
        return ("invalid", str(exc))
    except MemoryError:
        return ("unknown", "oracle MemoryError")
    except Exception as exc:  # oracle bug: treat as invalid but flag it
        return ("invalid", "ORACLE-CRASH %s: %s" % (type(exc).__name__, exc))
    return ("ok", res)


DIGESTS_NAME = "vma-tool.digests"      # derived from the disks, not content of its own


def without_digests(configs):
    return [(n, d) for n, d in configs if n != DIGESTS_NAME]


def same_content(a, b):
    """Same configs (but the digests blob vma-tool adds) and disks."""
    ca, da = without_digests(a[0]), a[1]
    cb, db = without_digests(b[0]), b[1]
    return [(n, bytes(d)) for n, d in ca] == [(n, bytes(d)) for n, d in cb] and \
        {k: bytes(v) for k, v in da.items()} == {k: bytes(v) for k, v in db.items()}


def describe_diff(a, b):
    ca, da = without_digests(a[0]), a[1]
    cb, db = without_digests(b[0]), b[1]
    out = []
    if [n for n, _ in ca] != [n for n, _ in cb]:
        out.append("config names %r != %r" % ([n for n, _ in ca], [n for n, _ in cb]))
    else:
        for (n, x), (_, y) in zip(ca, cb):
            if bytes(x) != bytes(y):
                out.append("config %r differs" % n)
    if sorted(da) != sorted(db):
        out.append("devices %r != %r" % (sorted(da), sorted(db)))
    else:
        for k in sorted(da):
            x, y = bytes(da[k]), bytes(db[k])
            if x != y:
                if len(x) != len(y):
                    out.append("disk %r size %d != %d" % (k, len(x), len(y)))
                else:
                    first = next(i for i in range(len(x)) if x[i] != y[i])
                    out.append("disk %r differs first at byte %d" % (k, first))
    return "; ".join(out) or "?"


# --------------------------------------------------------------------------------------------------------
# Running the tool and checking clean behaviour
# --------------------------------------------------------------------------------------------------------

ERROR_PREFIX = "vma-tool: error:"


def child_preexec():
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(args, cwd, tmpdir, timeout, stdin=None):
    env = dict(os.environ)
    env["TMPDIR"] = tmpdir
    env.pop("PYTHONWARNINGS", None)
    t0 = time.monotonic()
    try:
        p = subprocess.run(tool_argv() + list(args), cwd=cwd, env=env, stdin=stdin or subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, preexec_fn=child_preexec)
        return p.returncode, p.stdout, p.stderr, time.monotonic() - t0, False
    except subprocess.TimeoutExpired as exc:
        return None, exc.stdout or b"", exc.stderr or b"", time.monotonic() - t0, True


def error_lines(stderr_text):
    return [l for l in stderr_text.splitlines() if l.startswith(ERROR_PREFIX)]


def clean_problems(cmd, rc, stderr, timed_out, allow_many=False):
    """Problems with the *form* of a result (independent of whether failing was right)."""
    text = stderr.decode("utf-8", "replace")
    probs = []
    if timed_out:
        return ["%s: hang (timeout)" % cmd]
    if "Traceback" in text:
        probs.append("%s: traceback: %s" % (cmd, text[-600:]))
    if "Exception ignored" in text:
        probs.append("%s: 'Exception ignored' noise on stderr" % cmd)
    if rc != 0:
        if rc not in (1, 2, 3):
            probs.append("%s: exit status %r not in 1/2/3" % (cmd, rc))
        n = len(error_lines(text))
        if n == 0 or (n > 1 and not allow_many):
            probs.append("%s: %d '%s' lines (want %s): %r" % (cmd, n, ERROR_PREFIX, "1" if not allow_many else ">=1", text[-600:]))
    return probs


def snapshot(root):
    """What is under root (without contents: the fuzz loop runs this twice per case)."""
    return support.snapshot(root, contents=False)


sha = support.sha256_file


def unpack_expected(cfgs, disks):
    exp = {}
    for n, d in cfgs:
        exp[n] = bytes(d)
    for n, d in disks.items():
        exp["vmstate.bin" if n == "vmstate" else "disk-%s.raw" % n] = bytes(d)
    return exp


def safe_names(cfgs, disks):
    names = [n for n, _ in cfgs] + ["disk-%s.raw" % n for n in disks]
    for n in names:
        if not n or "/" in n or "\0" in n or n in (".", "..") or len(n.encode("utf-8", "surrogateescape")) > 255:
            return False
    return len(set(names)) == len(names)


def check_case(data, workdir, commands, timeout=20, strict_oracle=False, orc=None):
    """Run the given commands on one input; returns (failures, notes)."""
    fails, notes = [], []
    if orc is None:
        orc = oracle(data)
    status = orc[0]
    src_dir = os.path.join(workdir, "src")
    os.makedirs(src_dir)
    src = os.path.join(src_dir, "in.vma")
    with open(src, "wb") as f:
        f.write(data)
    src_sha = hashlib.sha256(data).hexdigest()
    if data[:2] == b"\x1f\x8b" or data[:3] == b"BZh":
        commands = [c for c in commands if c != "inplace"]   # in-place output would be compressed again
    for cmd in commands:
        job = os.path.join(workdir, cmd)
        dest = os.path.join(job, "dest")
        cwd = os.path.join(job, "cwd")
        tmp = os.path.join(job, "tmp")
        for d in (dest, cwd, tmp):
            os.makedirs(d)
        target = None
        allow = set()
        if cmd == "verify":
            args = ["verify", src]
        elif cmd == "info":
            args = ["info", "--json", src]
        elif cmd == "optimize":
            target = os.path.join(dest, "out.vma")
            args = ["optimize", src, target]
            allow = {"dest/out.vma"}
        elif cmd == "inplace":
            target = os.path.join(dest, "inplace.vma")
            with open(target, "wb") as f:
                f.write(data)
            args = ["optimize", target]
        elif cmd == "unpack":
            target = os.path.join(dest, "out")
            args = ["unpack", src, target]
        elif cmd == "stream":
            # one pass through a pipe, every cluster through the scratch file when memory is 0
            args = ["optimize", "--memory", ("0", "64K", "64M")[len(data) % 3], "--tmpdir", tmp, "-", "-"]
        elif cmd == "cat":
            try:
                names = [n for n, _ in vf.parse_header(data).devices.values() if n]
            except ValueError:
                names = []
            if not names:
                continue
            args = ["cat", src, names[0]]
        else:
            raise ValueError(cmd)
        before = snapshot(job)
        if cmd == "stream":
            with open(src, "rb") as stdin:
                rc, out, err, dt, to = run(args, cwd=cwd, tmpdir=tmp, timeout=timeout, stdin=stdin)
        else:
            rc, out, err, dt, to = run(args, cwd=cwd, tmpdir=tmp, timeout=timeout)
        after = snapshot(job)
        fails += clean_problems(cmd, rc, err, to, allow_many=(cmd == "verify"))
        if to:
            continue
        if sha(src) != src_sha:
            fails.append("%s: modified its input file" % cmd)
        # writes outside the destination / leftovers
        new = set(after) - set(before)
        if cmd == "unpack":
            stray = [p for p in new if not (p == "dest/out" or p.startswith("dest/out/"))]
        elif cmd == "inplace":
            stray = list(new)
        else:
            stray = [p for p in new if p not in allow]
        if stray:
            fails.append("%s: files outside the destination or leftovers: %s" % (cmd, sorted(stray)[:8]))
        if rc != 0:
            if cmd == "optimize" and os.path.exists(target):
                fails.append("optimize: failed (rc %d) but left %s" % (rc, target))
            if cmd == "inplace" and sha(target) != src_sha:
                fails.append("inplace: failed (rc %d) but changed the original" % rc)
            if cmd == "stream" and out and oracle(out)[0] != "invalid":
                fails.append("stream: failed (rc %d) but its partial output is a valid archive" % rc)
            if cmd == "unpack" and os.path.isdir(target) and any(os.scandir(target)):
                notes.append("unpack: failed but left files in the destination: %s" % sorted(os.listdir(target))[:6])
            if status == "ok" and rc in (1, 3):
                msg = (error_lines(err.decode("utf-8", "replace")) or ["?"])[0]
                (fails if strict_oracle else notes).append(
                    "%s: tool rejects (rc %d) what the oracle accepts: %s" % (cmd, rc, msg[:200]))
            continue
        # rc == 0
        if cmd == "cat" and status == "invalid":
            # like Proxmox extracting one device, cat needs only that device complete
            status_cat, reason = oracle(data, complete={args[2]})[:2]
            if status_cat == "invalid":
                fails.append("cat: exit 0 on an archive the oracle rejects (%s)" % reason[:200])
        elif status == "invalid" and cmd in ("verify", "optimize", "inplace", "unpack", "stream"):
            fails.append("%s: exit 0 on an archive the oracle rejects (%s)" % (cmd, orc[1][:200]))
        if status == "invalid" and cmd == "info":
            notes.append("info: exit 0 on an archive the oracle rejects (%s)" % orc[1][:120])
        if cmd == "verify" and b"ok" not in out:
            fails.append("verify: exit 0 without 'ok' on stdout")
        if cmd in ("optimize", "inplace", "stream"):
            o = oracle(out if cmd == "stream" else target)
            if o[0] == "invalid":
                fails.append("%s: exit 0 but output does not restore: %s" % (cmd, o[1][:200]))
            elif o[0] == "ok" and status == "ok" and not same_content(o[1], orc[1]):
                fails.append("%s: output content differs from input: %s" % (cmd, describe_diff(orc[1], o[1])))
        if cmd == "unpack" and status == "ok" and safe_names(*orc[1]):
            exp = unpack_expected(*orc[1])
            got = sorted(os.listdir(target)) if os.path.isdir(target) else []
            if got != sorted(exp):
                fails.append("unpack: files %r, expected %r" % (got, sorted(exp)))
            else:
                for n, d in exp.items():
                    with open(os.path.join(target, n), "rb") as f:
                        if f.read() != d:
                            fails.append("unpack: %s content differs from the oracle" % n)
        if cmd == "info" and status == "ok":
            try:
                j = json.loads(out.decode("utf-8"))
                cfgs, disks = orc[1]
                # a name with an embedded NUL: vma-tool keeps it whole, Proxmox (and the oracle) cut it
                # there; a deliberate difference (README, Safety), so compare up to the NUL
                if [(c["name"].split("\0")[0], c["size"]) for c in j["configs"]] != \
                        [(n, len(d)) for n, d in cfgs]:
                    fails.append("info: configs %r != oracle" % j["configs"])
                if sorted((d["name"].split("\0")[0], d["size"]) for d in j["devices"]) != \
                        sorted((n, len(d)) for n, d in disks.items()):
                    fails.append("info: devices %r != oracle" % [(d["name"], d["size"]) for d in j["devices"]])
            except Exception as exc:
                fails.append("info --json: bad output (%s: %s)" % (type(exc).__name__, exc))
        if cmd == "cat" and status == "ok":
            name = args[2]
            disks = orc[1][1]
            if name in disks and out != bytes(disks[name]):
                fails.append("cat %s: output differs from the oracle" % name)
    return fails, notes


def commands_for(case, full=True):
    if full:
        cmds = ["verify", "info", "optimize", "unpack"]
        if case % 3 == 0:
            cmds.append("stream")
        if case % 5 == 0:
            cmds.append("inplace")
        if case % 7 == 0:
            cmds.append("cat")
        return cmds
    cmds = ["verify", "optimize"]
    if case % 5 == 0:
        cmds.append("unpack")
    if case % 11 == 0:
        cmds.append("inplace")
    return cmds


def run_case(seed, case, corpus, tmproot, full=True, timeout=20, strict_oracle=False):
    desc, data = make_case(seed, case, corpus)
    work = tempfile.mkdtemp(prefix="case%d-" % case, dir=tmproot)
    try:
        fails, notes = check_case(data, work, commands_for(case, full), timeout=timeout, strict_oracle=strict_oracle)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return desc, data, fails, notes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", default="1")
    ap.add_argument("--case", type=int, default=None, help="re-run a single case id")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--save-dir", default=os.path.join(tempfile.gettempdir(), "vma-fuzz-failures"),
                    help="where failing inputs are saved (default: $TMPDIR/vma-fuzz-failures)")
    ap.add_argument("--strict-oracle", action="store_true", help="treat 'tool stricter than oracle' as failure")
    ap.add_argument("--quick", action="store_true", help="verify+optimize only (unpack for a subset)")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args(argv)
    corpus = build_corpus()
    ids = [a.case] if a.case is not None else list(range(a.cases))
    tmproot = tempfile.mkdtemp(prefix="vma-fuzz-")
    lock = threading.Lock()
    stats = {"cases": 0, "failed": 0, "notes": 0}
    note_kinds = {}
    t0 = time.monotonic()

    def one(i):
        desc, data, fails, notes = run_case(a.seed, i, corpus, tmproot, full=not a.quick, timeout=a.timeout,
                                            strict_oracle=a.strict_oracle)
        with lock:
            stats["cases"] += 1
            for n in notes:
                key = n.split(":")[0] + ":" + (n.split(":", 2)[1][:60] if ":" in n else "")
                note_kinds[key] = note_kinds.get(key, 0) + 1
            stats["notes"] += bool(notes)
            shown = notes if a.verbose else [n for n in notes if "rejects (rc" in n]
            if shown:
                print("note seed=%s case=%d: %s | %s" % (a.seed, i, desc, " | ".join(shown)), flush=True)
            if fails:
                stats["failed"] += 1
                os.makedirs(a.save_dir, exist_ok=True)
                base = os.path.join(a.save_dir, "seed-%s-case-%d" % (a.seed, i))
                with open(base + ".vma", "wb") as f:
                    f.write(data)
                with open(base + ".txt", "w") as f:
                    f.write("seed=%s case=%d\n%s\n%s\n" % (a.seed, i, desc, "\n".join(fails + notes)))
                print("FAIL seed=%s case=%d: %s\n    %s\n    saved %s.vma" % (a.seed, i, desc, "\n    ".join(fails), base),
                      flush=True)
            if stats["cases"] % 500 == 0:
                print("... %d cases, %d failed, %.0fs" % (stats["cases"], stats["failed"], time.monotonic() - t0),
                      flush=True)

    print("fuzz: seed=%s cases=%d jobs=%d, failures go to %s" % (a.seed, len(ids), a.jobs, a.save_dir), flush=True)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, a.jobs)) as ex:
            step = max(1, a.jobs) * 8          # bounded batches: Ctrl-C stops after the current batch
            for k in range(0, len(ids), step):
                list(ex.map(one, ids[k:k + step]))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        shutil.rmtree(tmproot, ignore_errors=True)
    print("fuzz: seed=%s cases=%d failed=%d (cases with notes: %d) in %.1fs" % (
        a.seed, stats["cases"], stats["failed"], stats["notes"], time.monotonic() - t0))
    for k, v in sorted(note_kinds.items(), key=lambda kv: -kv[1])[:15]:
        print("  note x%d: %s" % (v, k))
    return 1 if stats["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
