#!/usr/bin/env python3
"""Deduplication benchmark for vma-tool (run by `make bench-dedup`).

Measures how much a backup tool has to store for day 2 of a VM once day 1 is stored, for three
disk models, each written as two Proxmox-like archives a.vma / b.vma with the fixture writer
(different uuid, ctime and cluster disorder):

  synthetic   disk A with unique content (runs of data, zero runs, sparse areas, free space;
              about 14 % of the data blocks hold an aligned 128-byte run of zero bytes, as real
              file data does) and B = A "one day later": about 1 % of the 4 KiB blocks rewritten,
              mostly in a few hot regions, plus some appended, freed and newly filled blocks
  ext4        a real ext4 file system made without mounting (tests/diskmodel.py: mke2fs -d of a
              generated tree of packages, a database, logs, an apt cache; day 2 with debugfs -w:
              packages upgraded, installed and removed, database pages rewritten in place, logs
              grown); free space zero.  A second column, "ext4 old data", is the same day 2 with
              the freed blocks keeping their old data (a guest without discard; --no-old-data
              leaves it out).  Skipped when mke2fs, debugfs or dumpe2fs (e2fsprogs) is missing.
  usr         the ext4 model with generated content that compresses like a real system disk
              (diskmodel.SystemTree: /usr 55 % of the file system, packages of ELF binaries and
              libraries, text, headers, Python modules and pyc files, documentation, icons and
              translations, made from one seeded vocabulary of words, identifiers, lines and
              instruction snippets; about 2 : 1 with zstd -3, where the other two compress
              about 1.25 : 1); upgrades rewrite files with new content of the same kind.
              Deterministic from the seed, like the other models.
  usr-host    (not in the default list) the ext4 model with /usr made of copies of this host's
              own /usr files (diskmodel.HostTree; the "usr" model before 2026-12-05 evening):
              about 2.1 : 1 too, but its figures depend on the host's /usr.

Variants (rows; --variants picks some; the default leaves out the /8 and /32 spacings, the
frame per extent and the anchored marks):

  raw           the disk images themselves (concatenated; the floor)
  original      the archives as Proxmox writes them
  ordered only  canonical order but a random uuid per archive (vma-tool optimize, then the uuid
                replaced in the header and every extent header, MD5s fixed)
  optimized     vma-tool optimize (P, the reference of the compressed forms)
  + compressed: original .vma.zst as vzdump writes it (zstd --rsyncable), optimized archives
                recompressed with zstd --rsyncable (today's form), and `vma-tool optimize
                a.vma.zst out.vma.zst` (a.vma when the original .zst row is not measured: the
                tool compresses itself; when its output holds zstd skippable frames the report
                says it is vma-tool's framed form, e.g. with VMA_TOOL or --tool naming it)
  framed .zst   the optimized archive as independent zstd level-3 frames, made here (libzstd
                through ctypes, else one zstd process per frame): the header one frame, one
                frame per cluster's data (the first of each extent with the extent header in
                front), and a skippable frame of 64 zero bytes (magic 0x184D2A50) as a cut mark
                before the first extent of each device and before every extent holding a
                cluster that is a multiple of 16 (rows /8 and /32: other mark spacings; "per
                extent": one frame per extent, the form vma-tool version 4 wrote; "anchored":
                only the marks ANCHOR_GAP of frames after the previous one placed, and every
                ANCHOR_SPACING clusters one whatever came before: an experiment)
  optimized .gz gzip --rsyncable -6 -n of the optimized archive (today's .vma.gz)
  framed .gz    one gzip member (zlib, level 6) per piece as above, the marks as 64 zero bytes in
                the FEXTRA field of the marked pieces' members
  Every compressed variant is skipped when its program (zstd, gzip) is missing.

Tools: restic (fresh repo per measurement, chunker parameters copied from a template repo so
all repos of one template cut chunks alike), borg (init --encryption none, create
--compression none), rdiff (signature of a, delta of b).  For restic and borg the delta is the
growth of the repository from backing up b.  restic runs with --compression auto (what users
run; column "restic") and off ("restic off"), each with several chunker templates (--restic,
default auto:3,off:1): restic picks a random chunker polynomial per repository and its
figures move by tens of percent from one to the next, so the report gives the mean over the
templates and, for the compressed forms, the spread.  A tool that is not installed is skipped
with a note (Debian: apt-get install restic borgbackup rdiff zstd e2fsprogs).  Measurements run
in parallel (--jobs).  The first table shows each delta as a ratio to the raw images' delta of
the same tool and column; then, per column, the compressed forms against the plain optimized
archive (P) and against today's compressed form (markdown).

Each run makes new templates unless DEDUP_RESTIC_TEMPLATE names a directory to keep them in
(subdirectories 1, 2, 3...): compare runs (e.g. two vma-tool versions) only with the same
templates.

Environment: DEDUP_SIZE (disk size, default 2G), DEDUP_SEED (default 1), DEDUP_MODELS
(default synthetic,ext4,usr), DEDUP_JOBS (default 2), DEDUP_RESTIC_TEMPLATE, DEDUP_RESTIC,
DEDUP_VARIANTS, DEDUP_OLD_DATA=0, VMA_TOOL (e.g. a vma-tool that writes framed .vma.zst),
TMPDIR.  Options: --size, --seed, --models, --jobs, --restic-template, --restic, --variants,
--no-old-data, --tool (override the environment), --markdown, --details (every measurement
with its delta), --keep.  Stdlib only, Python 3.9+.
"""

import argparse
import concurrent.futures
import filecmp
import hashlib
import itertools
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import diskmodel  # noqa: E402
import vmafixture  # noqa: E402
from support import TOOL, parse_size  # noqa: E402

PY = sys.executable

MiB = 1 << 20
BLOCK = 4096
CLUSTER = 65536
# "framed .zst anchored" (an experiment, issue 16): of the marks per 16 clusters only those at
# least ANCHOR_GAP of compressed bytes after the previous one placed, counted from an anchor mark
# placed every ANCHOR_SPACING clusters whatever came before it (so that no choice depends on
# anything before the last anchor): restic's chunker then cuts at every mark placed but an anchor
# that comes too soon, where today's marks at 2 : 1 lie about as far apart as its 512 KiB minimum
# chunk and it skips a varying subset of them.
ANCHOR_GAP = 520 << 10
ANCHOR_SPACING = 64
EFIDISK_SIZE = 540672
DAY = 86400
ZERO_RUN_FRACTION = 0.14          # data blocks with an aligned 128-byte zero run (real ext4 data)

VARIANTS = ("raw", "original", "ordered only", "optimized", "original .zst", "optimized .zst",
            "optimized .zst (vma-tool)", "framed .zst", "framed .zst /8", "framed .zst /32",
            "framed .zst per extent", "framed .zst anchored", "optimized .gz", "framed .gz")
LABELS = {"raw": "raw disks", "original": "original .vma", "ordered only":
          "ordered only (random uuid)", "optimized": "optimized .vma",
          "original .zst": "original .vma.zst",
          "optimized .zst": "optimized .vma.zst (zstd --rsyncable -3: today's form)",
          "optimized .zst (vma-tool)": "optimized .vma.zst (vma-tool's own)",
          "framed .zst": "framed .vma.zst (frame per cluster, marks per 16 clusters)",
          "framed .zst /8": "framed .vma.zst, marks per 8 clusters",
          "framed .zst /32": "framed .vma.zst, marks per 32 clusters",
          "framed .zst per extent": "framed .vma.zst, frame per extent (version 4)",
          "framed .zst anchored": "framed .vma.zst, marks >= %d KiB of frames apart, anchored "
                                  "every %d clusters" % (ANCHOR_GAP >> 10, ANCHOR_SPACING),
          "optimized .gz": "optimized .vma.gz (gzip --rsyncable -6 -n: today's form)",
          "framed .gz": "framed .vma.gz (member per extent, FEXTRA marks per 16 clusters)"}
DEFAULT_VARIANTS = tuple(v for v in VARIANTS if v not in ("framed .zst /8", "framed .zst /32",
                                                         "framed .zst per extent", "framed .zst anchored"))
# the framed variants: (form, mark spacing)
FRAMED = {"framed .zst": ("zst", 16), "framed .zst /8": ("zst", 8), "framed .zst /32": ("zst", 32),
          "framed .zst per extent": ("zst-extent", 16), "framed .zst anchored": ("zst-anchored", 16),
          "framed .gz": ("gz", 16)}
SELECTED = list(VARIANTS)         # --variants
OPTIONS = {"old data": True}
SPREAD = {}                       # (column, variant, tool name) -> (min, max, count) of deltas
# the old-data column: enough rows to see the effect, fewer to keep the run short
OLD_DATA_VARIANTS = ("raw", "original", "optimized", "optimized .zst")

T0 = time.time()


def log(*a):
    print("bench-dedup: [%4.0f s]" % (time.time() - T0), *a, file=sys.stderr, flush=True)


def human(n):
    neg = n < 0
    n = abs(n)
    for unit, m in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1024)):
        if n >= m:
            return "%s%.1f %s" % ("-" if neg else "", n / m, unit)
    return "%s%d B" % ("-" if neg else "", n)


# ---------------------------------------------------------------------------------------------
# Synthetic disks A and B


_ALPHA = b"etaoinsrhld cumfpgwy\n.,ETAOIN0123"
_LOW = bytes.maketrans(bytes(range(256)), bytes(_ALPHA[i % len(_ALPHA)] for i in range(256)))


def data(rng, n):
    """Unique data: half random (incompressible), half low-entropy text-like (compressible);
    about ZERO_RUN_FRACTION of its 4 KiB blocks hold a zero run (a file's zeroed tail or an
    inner run, >= 256 bytes, so at least one aligned 128-byte run of zeros)."""
    b = rng.randbytes(n)
    if rng.random() < 0.5:
        b = b.translate(_LOW)
    return diskmodel.add_zero_runs(rng, b, ZERO_RUN_FRACTION)


def write_disk_a(path, size, rng):
    """Unique (non-repeating) content so that dedup inside one disk does not blur the result:
    the first ~75 % in use (runs of data, zero runs, sparse areas with zero 4K blocks), the
    rest free (zero).  Returns the end of the used area."""
    used_end = (size * 3 // 4) // BLOCK * BLOCK
    with open(path, "wb") as f:
        off = 0
        while off < used_end:
            n = min(rng.choice((256 << 10, MiB, 4 * MiB)), used_end - off)
            r = rng.random()
            if r < 0.25:
                f.seek(off + n)                           # unused area (hole)
            elif r < 0.80:
                f.write(data(rng, n))
            else:
                buf = bytearray(n)
                for b in range(0, n, BLOCK):
                    if rng.random() < 0.6:
                        buf[b:b + BLOCK] = data(rng, min(BLOCK, n - b))
                f.write(buf)
            off += n
        f.truncate(size)
    return used_end


def mutate_disk(src, dst, size, used_end, rng, fraction=0.01):
    """dst = src "one day later": about fraction of the 4K blocks written; 80 % in 3-6 hot
    regions (half of the blocks of each region), 4 % scattered, 8 % appended after the used
    area, 4 % freed (a deleted file: a run of data blocks zeroed), 4 % newly filled (zero blocks
    near one place get data).  Returns {block: kind}."""
    shutil.copyfile(src, dst)
    nblocks = size // BLOCK
    ublocks = used_end // BLOCK
    target = max(16, int(nblocks * fraction))
    writes = {}
    hot = int(target * 0.80)
    nreg = rng.randint(3, 6)
    for i in range(nreg):
        want = hot // nreg
        span = max(want * 2, 16)
        start = rng.randrange(0, max(1, ublocks - span))
        for b in rng.sample(range(start, start + span), want):
            writes[b] = "hot"
    for _ in range(int(target * 0.04)):
        writes[rng.randrange(0, ublocks)] = "scattered"
    for b in range(ublocks, min(nblocks, ublocks + int(target * 0.08))):
        writes[b] = "appended"
    with open(src, "rb") as f:
        def zero(b):
            f.seek(b * BLOCK)
            return not any(f.read(BLOCK))
        for kind, want_zero in (("freed", False), ("filled", True)):
            need = int(target * 0.04)
            b = rng.randrange(0, ublocks)
            steps = 0
            while need > 0 and steps < ublocks:
                steps += 1
                b = (b + 1) % ublocks
                if b not in writes and zero(b) == want_zero:
                    writes[b] = kind
                    need -= 1
    writes = {b: k for b, k in writes.items() if b < nblocks}
    with open(dst, "r+b") as f:
        for b in sorted(writes):
            f.seek(b * BLOCK)
            f.write(bytes(BLOCK) if writes[b] == "freed" else data(rng, BLOCK))
    return writes


changed_blocks = diskmodel.changed_blocks


# ---------------------------------------------------------------------------------------------
# "ordered only": canonical order, random uuid


def header_size_of(f, path):
    """The header_size field of the archive open as f (read from its start)."""
    fixed = f.read(64)
    if fixed[:4] != b"VMA\0":
        raise ValueError("%s: not a VMA archive" % path)
    return struct.unpack_from(">I", fixed, 56)[0]


def replace_uuid(path, uuid):
    """Replace the uuid in the main header and in every extent header of the archive at path
    (in place) and fix the header and extent MD5s."""
    if len(uuid) != 16:
        raise ValueError("uuid must be 16 bytes")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        hsize = header_size_of(f, path)
        f.seek(0)
        hdr = bytearray(f.read(hsize))
        hdr[8:24] = uuid
        hdr[32:48] = bytes(16)
        hdr[32:48] = hashlib.md5(hdr).digest()
        f.seek(0)
        f.write(hdr)
        off = hsize
        n = 0
        while off + 512 <= size:
            f.seek(off)
            eh = bytearray(f.read(512))
            if eh[:4] != b"VMAE":
                raise ValueError("%s: no extent magic at offset %d" % (path, off))
            bc, = struct.unpack_from(">H", eh, 6)
            eh[8:24] = uuid
            eh[24:40] = bytes(16)
            eh[24:40] = hashlib.md5(eh).digest()
            f.seek(off)
            f.write(eh)
            off += 512 + bc * BLOCK
            n += 1
        if off != size:
            raise ValueError("%s: %d trailing bytes after the last extent" % (path, size - off))
    return n


# ---------------------------------------------------------------------------------------------
# Tools (each delta() may run in parallel with others: every call has its own directories)


def have(prog):
    return shutil.which(prog) is not None


def dir_size(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def run(cmd, env=None, cwd=None):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        last = r.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        raise RuntimeError("%s failed (exit %d): %s" % (" ".join(cmd[:3]), r.returncode,
                                                        last[0] if last else ""))
    return r


_counter = itertools.count(1)
_counter_lock = threading.Lock()


def _workdir(tmp, prefix):
    with _counter_lock:
        n = next(_counter)
    return os.path.join(tmp, "%s-%d" % (prefix, n))


class Restic:
    """restic with one chunker template and one --compression mode; name: the report column
    (its templates' figures are averaged), key: this template's own results."""
    weight = 3                  # relative cost per byte (for scheduling)

    def __init__(self, tmp, template=None, compression="auto", index=1):
        self.tmp = tmp
        self.name = "restic" if compression == "auto" else "restic " + compression
        self.key = "%s#%d" % (self.name, index)
        self.pwfile = os.path.join(tmp, "restic-password")
        with open(self.pwfile, "w") as f:
            f.write("bench\n")
        self.env = dict(os.environ, RESTIC_PASSWORD="bench")
        self.env.pop("RESTIC_REPOSITORY", None)
        # the template's random chunker polynomial decides where restic cuts (except at zero
        # runs): reuse one template (password "bench") to compare runs with each other
        self.template = os.path.abspath(template) if template else os.path.join(
            tmp, "restic-template-%d" % index)
        if not os.path.exists(os.path.join(self.template, "config")):
            run(["restic", "init", "-q", "--repo", self.template], env=dict(
                self.env, RESTIC_CACHE_DIR=os.path.join(tmp, "restic-template-cache")))
        helptext = subprocess.run(["restic", "help", "backup"], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT).stdout.decode()
        if "--compression" in helptext:
            self.comp = ["--compression", compression]
        elif compression == "auto":
            self.comp = []
        else:
            raise RuntimeError("this restic has no --compression option")
        self.note = None

    def delta(self, a, b):
        work = _workdir(self.tmp, "restic")
        repo = os.path.join(work, "repo")
        env = dict(self.env, RESTIC_CACHE_DIR=os.path.join(work, "cache"))
        os.makedirs(work)
        try:
            try:
                run(["restic", "init", "-q", "--repo", repo, "--copy-chunker-params",
                     "--from-repo", self.template, "--from-password-file", self.pwfile],
                    env=env)
            except RuntimeError as e:        # old restic: each repo gets its own polynomial
                shutil.rmtree(repo, ignore_errors=True)
                run(["restic", "init", "-q", "--repo", repo], env=env)
                self.note = "restic: chunker parameters not copied (%s); figures vary more" % e
            run(["restic", "--repo", repo, "-q"] + self.comp + ["backup", a], env=env)
            s1 = dir_size(repo)
            run(["restic", "--repo", repo, "-q"] + self.comp + ["backup", b], env=env)
            return dir_size(repo) - s1
        finally:
            shutil.rmtree(work, ignore_errors=True)


class Borg:
    name = key = "borg"
    weight = 1

    def __init__(self, tmp):
        self.tmp = tmp
        self.env = dict(os.environ, BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
                        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes", BORG_PASSPHRASE="")
        self.env.pop("BORG_REPO", None)

    def delta(self, a, b):
        work = _workdir(self.tmp, "borg")
        repo = os.path.join(work, "repo")
        env = dict(self.env, BORG_BASE_DIR=os.path.join(work, "base"))
        os.makedirs(work)
        try:
            run(["borg", "init", "--encryption", "none", repo], env=env)
            run(["borg", "create", "--compression", "none", repo + "::a", a], env=env)
            s1 = dir_size(repo)
            run(["borg", "create", "--compression", "none", repo + "::b", b], env=env)
            return dir_size(repo) - s1
        finally:
            shutil.rmtree(work, ignore_errors=True)


class Rdiff:
    name = key = "rdiff"
    weight = 1

    def __init__(self, tmp):
        self.tmp = tmp

    def delta(self, a, b):
        work = _workdir(self.tmp, "rdiff")
        os.makedirs(work)
        sig = os.path.join(work, "sig")
        dl = os.path.join(work, "delta")
        try:
            run(["rdiff", "signature", a, sig])
            run(["rdiff", "delta", sig, b, dl])
            return os.path.getsize(dl)
        finally:
            shutil.rmtree(work, ignore_errors=True)


TOOLS = (("restic", Restic), ("borg", Borg), ("rdiff", Rdiff))


# ---------------------------------------------------------------------------------------------
# Archives and their variants


def vma_tool(*args):
    return subprocess.run([PY, TOOL] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL)


concat = diskmodel.sparse_concat


def zstd(src, dst):
    """zstd --rsyncable in a pipe, as vzdump (default zstd threads 1) and vma-tool run it."""
    with open(src, "rb") as f, open(dst, "wb") as g:
        r = subprocess.run(["zstd", "--rsyncable", "-q", "-c"], stdin=f, stdout=g,
                           stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise RuntimeError("zstd failed (exit %d): %s" % (
            r.returncode, r.stderr.decode("utf-8", "replace").strip()[:200]))


def gzip_rsyncable(src, dst):
    """gzip --rsyncable -6 -n in a pipe, as vma-tool writes .vma.gz today."""
    with open(src, "rb") as f, open(dst, "wb") as g:
        r = subprocess.run(["gzip", "--rsyncable", "-6", "-n", "-c"], stdin=f, stdout=g,
                           stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise RuntimeError("gzip failed (exit %d): %s" % (
            r.returncode, r.stderr.decode("utf-8", "replace").strip()[:200]))


# ---------------------------------------------------------------------------------------------
# Framed compressed archives (issue 16): one independent frame per extent, cut marks of 64 zero
# bytes before the extent that starts each MARK_SPACING-cluster disk region


MARK_SPACING = 16
SKIPPABLE_MARK = struct.pack("<II", 0x184D2A50, 64) + bytes(64)   # zstd skippable frame
ZSTD_LEVEL = 3


def archive_pieces(path, spacing=MARK_SPACING):
    """[(offset, length, marked, ends)] of an archive: the header, then every extent; marked: a
    cut mark goes before the piece (the first extent of each device, and every extent holding a
    cluster that is a multiple of spacing); ends: where in the piece the data of each cluster
    that has some ends (the extent header lies in front of the first)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        hsize = header_size_of(f, path)
        pieces = [(0, hsize, False, [hsize])]
        off = hsize
        prev_dev = None
        while off + 512 <= size:
            f.seek(off)
            eh = f.read(512)
            if eh[:4] != b"VMAE":
                raise ValueError("%s: no extent magic at offset %d" % (path, off))
            bc, = struct.unpack_from(">H", eh, 6)
            infos = [v for v in struct.unpack_from(">59Q", eh, 40) if v]
            ends = [512]
            for info in infos:
                if info >> 48:
                    ends.append(ends[-1] + bin(info >> 48).count("1") * BLOCK)
            marked = False
            if infos:
                dev = (infos[0] >> 32) & 0xff
                first, last = infos[0] & 0xffffffff, infos[-1] & 0xffffffff
                marked = (dev != prev_dev or first % spacing == 0
                          or first // spacing != last // spacing)
                prev_dev = dev
            pieces.append((off, 512 + bc * BLOCK, marked, ends[1:] or ends))
            off += 512 + bc * BLOCK
    return pieces


class Zstd:
    """Independent zstd frames through the system's libzstd (ctypes; the calls release the GIL,
    so a thread pool compresses in parallel), else one `zstd` process per frame."""

    def __init__(self, level=ZSTD_LEVEL):
        self.level = level
        self.lib = None
        import ctypes
        import ctypes.util
        for name in ("libzstd.so.1", ctypes.util.find_library("zstd")):
            try:
                lib = ctypes.CDLL(name) if name else None
            except OSError:
                lib = None
            if lib is not None:
                lib.ZSTD_compressBound.restype = ctypes.c_size_t
                lib.ZSTD_compressBound.argtypes = [ctypes.c_size_t]
                lib.ZSTD_compress.restype = ctypes.c_size_t
                lib.ZSTD_compress.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p,
                                              ctypes.c_size_t, ctypes.c_int]
                lib.ZSTD_isError.restype = ctypes.c_uint
                lib.ZSTD_isError.argtypes = [ctypes.c_size_t]
                self.lib, self.ctypes = lib, ctypes
                break
        self.how = "libzstd via ctypes" if self.lib else "one zstd -%d process per frame" % level

    def frame(self, data):
        if self.lib is None:
            r = subprocess.run(["zstd", "-%d" % self.level, "-q", "-c"], input=data,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            if r.returncode != 0:
                raise RuntimeError("zstd failed (exit %d)" % r.returncode)
            return r.stdout
        cap = self.lib.ZSTD_compressBound(len(data))
        buf = self.ctypes.create_string_buffer(cap)
        n = self.lib.ZSTD_compress(buf, cap, data, len(data), self.level)
        if self.lib.ZSTD_isError(n):
            raise RuntimeError("ZSTD_compress failed")
        return buf.raw[:n]


def gzip_member(data, extra=None):
    """One gzip member of data (deflate level 6, no name, mtime 0, OS unix, as gzip -n writes
    it); extra: bytes carried in an FEXTRA subfield "VZ" (RFC 1952 2.3.1.1)."""
    head = b"\x1f\x8b\x08" + (b"\x04" if extra is not None else b"\x00") + bytes(4) + b"\x00\x03"
    if extra is not None:
        sub = b"VZ" + struct.pack("<H", len(extra)) + extra
        head += struct.pack("<H", len(sub)) + sub
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = c.compress(data) + c.flush()
    return head + body + struct.pack("<II", zlib.crc32(data), len(data) & 0xffffffff)


_ZSTD = None
FRAMED_BY_TOOL = set()       # day tags whose vma-tool .vma.zst held skippable frames


def write_framed(src, dst, form="zst", spacing=MARK_SPACING, jobs=2):
    """dst: src (a plain archive) as independent frames with a cut mark before each marked
    piece (archive_pieces): form "zst" (zstd frames, skippable marks; a frame per cluster with
    data, the first one's with the extent header in front, as vma-tool writes), "zst-extent"
    (a zstd frame per piece, as version 4 wrote), "gz" (a gzip member per piece, the mark as 64
    zero bytes in the FEXTRA field of the marked piece's member)."""
    global _ZSTD
    if form.startswith("zst") and _ZSTD is None:
        _ZSTD = Zstd()
    pieces = archive_pieces(src, spacing)
    with open(src, "rb") as f, open(dst, "wb") as out, \
            concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        def one(piece):
            off, length, marked, ends = piece
            data = os.pread(f.fileno(), length, off)
            if form == "gz":
                return gzip_member(data, bytes(64) if marked else None)
            if form == "zst-extent":
                ends = [length]
            frames = b"".join(_ZSTD.frame(data[start:end]) for start, end in zip([0] + ends, ends))
            if form == "zst-anchored":
                return frames
            return (SKIPPABLE_MARK if marked else b"") + frames
        anchors = [p[2] for p in archive_pieces(src, ANCHOR_SPACING)] if form == "zst-anchored" else None
        since = [0]                     # compressed bytes since the last mark placed

        def place(index, frames):
            if anchors is None:
                return frames
            marked = anchors[index] or (pieces[index][2] and since[0] >= ANCHOR_GAP)
            since[0] = len(frames) if marked else since[0] + len(frames)
            return (SKIPPABLE_MARK if marked else b"") + frames
        # in order, a bounded window ahead (memory stays small)
        window = []
        done = 0
        for piece in pieces:
            window.append(ex.submit(one, piece))
            if len(window) >= 4 * max(1, jobs):
                out.write(place(done, window.pop(0).result()))
                done += 1
        for fut in window:
            out.write(place(done, fut.result()))
            done += 1


def is_framed_zst(path):
    """True if the .vma.zst at path holds zstd skippable frames (vma-tool's framed form)."""
    with open(path, "rb") as f:
        head = f.read(16 * MiB)
    return SKIPPABLE_MARK[:8] in head


def day_files(wdir, tag, vm, paths, archive_seed, uuid, notes, want=VARIANTS):
    """{variant: path} of one day's disks (tag: file name prefix) for the variants in want."""
    out = {}
    if "raw" in want:
        out["raw"] = os.path.join(wdir, tag + ".img")
        concat(paths, out["raw"])
    orig = os.path.join(wdir, tag + ".vma")
    vmafixture.write_archive(vm, orig, seed=archive_seed, order="proxmox")
    if "original" in want:
        out["original"] = orig
    opt = os.path.join(wdir, tag + "-opt.vma")
    r = vma_tool("optimize", "-q", orig, opt)
    if r.returncode != 0:
        notes.append("vma-tool optimize %s failed (exit %d): %s; optimized variants skipped" % (
            tag, r.returncode, r.stderr.decode("utf-8", "replace").strip()[:200]))
        opt = None
    else:
        if "optimized" in want:
            out["optimized"] = opt
        if "ordered only" in want:
            out["ordered only"] = os.path.join(wdir, tag + "-ord.vma")
            shutil.copyfile(opt, out["ordered only"])
            replace_uuid(out["ordered only"], uuid)
    if have("zstd"):
        za = orig + ".zst"
        if "original .zst" in want:
            zstd(orig, za)
            out["original .zst"] = za
        if opt and "optimized .zst" in want:
            out["optimized .zst"] = opt + ".zst"
            zstd(opt, out["optimized .zst"])
        if opt and "optimized .zst (vma-tool)" in want:
            # vma-tool compresses itself: the user's path .vma.zst -> .vma.zst where the
            # original .vma.zst is made anyway, else .vma -> .vma.zst (same output bytes)
            zt = os.path.join(wdir, tag + "-tool-opt.vma.zst")
            src = za if "original .zst" in want else orig
            r = vma_tool("optimize", "-q", src, zt)
            if r.returncode != 0:
                notes.append("vma-tool optimize %s -> .zst failed (exit %d): %s" % (
                    tag, r.returncode, r.stderr.decode("utf-8", "replace").strip()[:200]))
            else:
                out["optimized .zst (vma-tool)"] = zt
                if is_framed_zst(zt):
                    FRAMED_BY_TOOL.add(tag)
    if opt and have("gzip") and "optimized .gz" in want:
        out["optimized .gz"] = opt + ".gz"
        gzip_rsyncable(opt, out["optimized .gz"])
    for v, (form, spacing) in FRAMED.items():
        if opt and v in want and (form == "gz" or have("zstd")):
            out[v] = os.path.join(wdir, "%s-framed-%d.vma.%s" % (tag, spacing, form))
            write_framed(opt, out[v], form, spacing)
    for path in (orig, opt):
        if path and path not in out.values() and os.path.exists(path):
            os.unlink(path)
    return out


class Column:
    """One column of the report: a day-1/day-2 pair of disks and its variants' files."""

    def __init__(self, name, devices, paths_a, paths_b):
        self.name = name
        self.devices = devices
        self.paths_a = paths_a
        self.paths_b = paths_b
        self.files = {}              # variant -> (a, b)
        self.same_as = {}            # variant -> earlier variant with identical files
        self.info = []               # lines for the report
        self.changed = None          # (blocks, clusters)
        self.sizes = {}              # variant -> size of b's file


def pair_columns(columns, sides):
    """columns' files from sides {column name: (a-side {variant: path}, b-side {...})};
    variants whose two files equal an earlier variant's are marked (not measured again)."""
    for col in columns:
        fa, fb = sides[col.name]
        for v in VARIANTS:
            if v in fa and v in fb:
                col.files[v] = (fa[v], fb[v])
        for i, v in enumerate(list(col.files)):
            for w in list(col.files)[:i]:
                if all(os.path.getsize(x) == os.path.getsize(y) and filecmp.cmp(x, y, False)
                       for x, y in zip(col.files[v], col.files[w])):
                    col.same_as[v] = col.same_as.get(w, w)
                    break


# ---------------------------------------------------------------------------------------------
# Models


def efidisk(paths, seed):
    efi = random.Random("efi-%d" % seed).randbytes(4 * CLUSTER)
    for p in paths:
        with open(p, "wb") as f:
            f.write(efi)
            f.truncate(EFIDISK_SIZE)


def synthetic_model(wdir, size, seed, notes):
    rng = random.Random(seed)
    devices = [("drive-efidisk0", EFIDISK_SIZE), ("drive-scsi0", size)]
    pa = [os.path.join(wdir, "a-%s.raw" % n) for n, _ in devices]
    pb = [os.path.join(wdir, "b-%s.raw" % n) for n, _ in devices]
    efidisk([pa[0], pb[0]], seed)
    used_end = write_disk_a(pa[1], size, rng)
    writes = mutate_disk(pa[1], pb[1], size, used_end, rng)
    kinds = {}
    for k in writes.values():
        kinds[k] = kinds.get(k, 0) + 1
    col = Column("synthetic", devices, pa, pb)
    n, nz = diskmodel.image_zero_run_stats(pa[1])
    col.info.append("synthetic: day 2 block writes: " + ", ".join(
        "%s %d" % (k, kinds[k]) for k in ("hot", "scattered", "appended", "freed", "filled")
        if k in kinds))
    col.info.append("synthetic: data blocks of A with an aligned 128-byte zero run: %.1f %% "
                    "(%d of %d)" % (100.0 * nz / max(1, n), nz, n))
    return [col], rng


def ext4_model(wdir, size, seed, notes, name="ext4"):
    usr = USR_TREES.get(name)
    disks = diskmodel.build_ext4(os.path.join(wdir, "ext4"), size, seed, log=log, usr=usr)
    notes.extend(disks.notes)
    devices = [("drive-efidisk0", EFIDISK_SIZE), ("drive-scsi0", size)]
    efi = [os.path.join(wdir, "efi-%s.raw" % x) for x in "ab"]
    efidisk(efi, seed)
    st = disks.stats
    zero = Column(name, devices, [efi[0], disks.a], [efi[1], disks.b_zero])
    old = Column("ext4 old data", devices, [efi[0], disks.a], [efi[1], disks.b_old])
    n, nz = st["zero runs"]
    d2 = st["day2"]
    up = st["upgraded"]
    zero.info.append(
        "%s: %d files in %d packages and the rest (%s), file system %d blocks, %d free on day 2; "
        "file data blocks with an aligned 128-byte zero run: %.1f %% (%d of %d)" % (
            name, st["files"], st["packages"], human(st["tree bytes"]), st["fs blocks"],
            st["free blocks"], 100.0 * nz / max(1, n), nz, n))
    zero.info.append(
        "%s: day 2: %d packages upgraded (%d files, %s rewritten), " % (name, up[0], up[1], human(
            d2.get("upgraded", (0, 0))[1])) + ", ".join(
            "%s %d (%s)" % (k, d2[k][0], human(d2[k][1])) for k in
            ("new .deb", "installed", "removed", "db pages", "log growth", "journal") if k in d2) +
        "; freed blocks still holding old data: %d (zeroed in \"ext4\", kept in \"ext4 old data\")"
        % st["freed blocks with old data"])
    if usr == "system":
        zero.info.append("usr: a generated system tree (diskmodel.SystemTree: /usr 55 % of the "
                         "file system, all content from one seeded vocabulary of words, "
                         "identifiers, lines and instruction snippets; about 2 : 1 with zstd -3); "
                         "upgraded files rewritten with new content of the same kind")
    elif usr == "host":
        zero.info.append("usr-host: /usr is copies of this host's /usr files (so the figures "
                         "depend on the host); upgraded files rewritten with other host files")
    columns = [zero, old] if OPTIONS["old data"] and not usr else [zero]
    # usr-host keeps the archives' seed of the host-based "usr" model it was (comparable runs)
    return columns, random.Random("%s-archives-%d" % ("usr" if usr else name, seed))


def usr_model(wdir, size, seed, notes):
    return ext4_model(wdir, size, seed, notes, "usr")


def usr_host_model(wdir, size, seed, notes):
    return ext4_model(wdir, size, seed, notes, "usr-host")


USR_TREES = {"usr": "system", "usr-host": "host"}      # model -> diskmodel.build_ext4's usr
MODELS = {"synthetic": synthetic_model, "ext4": ext4_model, "usr": usr_model,
          "usr-host": usr_host_model}
EXT4_MODELS = ("ext4", "usr", "usr-host")


def build_model(name, wdir, size, seed, notes):
    """The model's columns with their files (every variant of both days)."""
    columns, rng = MODELS[name](wdir, size, seed, notes)
    for col in columns:
        col.changed = tuple(map(sum, zip(*(changed_blocks(a, b) for a, b in
                                          zip(col.paths_a, col.paths_b)))))
    configs = vmafixture.default_configs(seed, columns[0].devices)
    vm_a = vmafixture.VM(1700000000, configs, columns[0].devices, columns[0].paths_a)
    side_a = day_files(wdir, "a", vm_a, columns[0].paths_a, seed * 100 + 1, rng.randbytes(16),
                       notes, SELECTED)
    sides = {}
    for i, col in enumerate(columns):
        vm_b = vmafixture.VM(1700000000 + DAY + 37, configs, col.devices, col.paths_b)
        want = [v for v in SELECTED if v in OLD_DATA_VARIANTS or not col.name.endswith("old data")]
        tag = "b" if i == 0 else "b%d" % i
        sides[col.name] = (side_a, day_files(wdir, tag, vm_b, col.paths_b, seed * 100 + 2,
                                             rng.randbytes(16), notes, want))
    pair_columns(columns, sides)
    return columns


# ---------------------------------------------------------------------------------------------


def measure(columns, tools, jobs, results, notes):
    """Run every (tool, column, variant) measurement, jobs at a time, largest first; results:
    {(column, variant, tool): delta}."""
    work = []
    for col in columns:
        for v, (a, b) in col.files.items():
            if v in col.same_as:
                continue
            for t in tools:
                cost = t.weight * (os.path.getsize(a) + os.path.getsize(b))
                work.append((cost, t, col, v, a, b))
    work.sort(key=lambda w: -w[0])
    done = [0]
    lock = threading.Lock()

    def one(item):
        _cost, t, col, v, a, b = item
        t1 = time.time()
        try:
            d = t.delta(a, b)
        except (RuntimeError, OSError) as e:
            with lock:
                notes.append("%s %s %s: %s" % (t.name, col.name, v, e))
            return
        with lock:
            results[(col.name, v, t.key)] = d
            done[0] += 1
            log("%2d/%d %-13s %-13s %-26s delta %s (%.0f s)" % (
                done[0], len(work), t.key, col.name, v, human(d), time.time() - t1))

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        for f in [ex.submit(one, w) for w in work]:
            f.result()
    for col in columns:
        for v, w in col.same_as.items():
            for t in tools:
                if (col.name, w, t.key) in results:
                    results[(col.name, v, t.key)] = results[(col.name, w, t.key)]
        # a report column per tool name: the mean over its templates (restic), with the spread
        for v in col.files:
            for name in dict.fromkeys(t.name for t in tools):
                got = [results[(col.name, v, t.key)] for t in tools
                       if t.name == name and (col.name, v, t.key) in results]
                if got:
                    results[(col.name, v, name)] = sum(got) / len(got)
                    SPREAD[(col.name, v, name)] = (min(got), max(got), len(got))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default=os.environ.get("DEDUP_SIZE", "2G"),
                    help="disk size (env DEDUP_SIZE, default 2G)")
    ap.add_argument("--seed", type=int, default=int(os.environ.get("DEDUP_SEED", "1")),
                    help="seed (env DEDUP_SEED, default 1)")
    ap.add_argument("--models", default=os.environ.get("DEDUP_MODELS", "synthetic,ext4,usr"),
                    help="comma-separated models: synthetic, ext4, usr, usr-host (env "
                    "DEDUP_MODELS, default synthetic,ext4,usr)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("DEDUP_JOBS", "2")),
                    help="measurements run at once (env DEDUP_JOBS, default 2)")
    ap.add_argument("--restic-template", default=os.environ.get("DEDUP_RESTIC_TEMPLATE"),
                    help="directory of the restic template repositories 1, 2, 3... (password "
                    "'bench') whose chunker parameters the restic repositories copy; created if "
                    "missing and then kept, so that runs compare (env DEDUP_RESTIC_TEMPLATE; "
                    "default: new ones per run)")
    ap.add_argument("--restic", default=os.environ.get("DEDUP_RESTIC", "auto:3,off:1"),
                    help="restic --compression modes and how many chunker templates each is "
                    "measured with (mean reported; env DEDUP_RESTIC, default auto:3,off:1)")
    ap.add_argument("--variants", default=os.environ.get("DEDUP_VARIANTS",
                                                         ",".join(DEFAULT_VARIANTS)),
                    help="comma-separated rows to measure (env DEDUP_VARIANTS; default all but "
                    "the other mark spacings; all: %s)" % ", ".join(VARIANTS))
    ap.add_argument("--no-old-data", action="store_true",
                    default=os.environ.get("DEDUP_OLD_DATA") == "0",
                    help="without the ext4 model's old-data column (env DEDUP_OLD_DATA=0)")
    ap.add_argument("--tool", default=None,
                    help="vma-tool to run (default: env VMA_TOOL, else the repository's)")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    ap.add_argument("--details", action="store_true", help="also print every delta")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    opts = ap.parse_args()
    if opts.tool:
        global TOOL
        TOOL = os.path.abspath(opts.tool)
    size = parse_size(opts.size) // BLOCK * BLOCK
    restic_runs = []
    for spec in opts.restic.split(","):
        comp, _, count = spec.strip().partition(":")
        if comp:
            if comp not in ("auto", "off", "max") or not (count or "1").isdigit():
                ap.error("bad --restic entry %r (want e.g. auto:3)" % spec)
            restic_runs.append((comp, int(count or "1")))
    selected = [v.strip() for v in opts.variants.split(",") if v.strip()]
    for v in selected:
        if v not in VARIANTS:
            ap.error("unknown variant %r (known: %s)" % (v, ", ".join(VARIANTS)))
    if "optimized" not in selected:
        ap.error("--variants needs optimized (the reference of the compressed forms)")
    SELECTED[:] = selected
    OPTIONS["old data"] = not opts.no_old_data
    models = [m.strip() for m in opts.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            ap.error("unknown model %r (known: %s)" % (m, ", ".join(MODELS)))
    tmp = tempfile.mkdtemp(prefix="vma-bench-dedup-", dir=os.environ.get("TMPDIR"))
    notes = []
    skipped = []
    log("disk %s, seed %d, models %s, %d jobs, in %s" % (human(size), opts.seed,
                                                         ", ".join(models), opts.jobs, tmp))
    try:
        versions = []
        for prog, arg in (("restic", "version"), ("borg", "--version"), ("rdiff", "--version"),
                          ("zstd", "--version")):
            if have(prog):
                r = subprocess.run([prog, arg], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                line = r.stdout.decode("utf-8", "replace").strip().splitlines()[:1]
                versions.append(line[0][:60] if line else prog)
        if any(m in EXT4_MODELS for m in models) and not diskmodel.ext4_missing():
            r = subprocess.run([diskmodel._prog("mke2fs"), "-V"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
            versions.append(r.stdout.decode("utf-8", "replace").strip().splitlines()[0])
        r = vma_tool("--version")
        with open(TOOL, "rb") as f:
            versions.append("%s (sha256 %s)" % (r.stdout.decode().strip() or "vma-tool",
                                                hashlib.sha256(f.read()).hexdigest()[:12]))
        notes.append("versions: " + "; ".join(versions))
        tools = []
        for pname, cls in TOOLS:
            if not have(pname):
                notes.append("%s not installed: skipped" % pname)
                continue
            try:
                if cls is Restic:
                    for comp, count in restic_runs:
                        for i in range(1, count + 1):
                            tools.append(Restic(tmp, os.path.join(opts.restic_template, str(i))
                                                if opts.restic_template else None, comp, i))
                else:
                    tools.append(cls(tmp))
            except (RuntimeError, OSError) as e:
                notes.append("%s unusable: %s" % (pname, e))
        if not have("zstd"):
            notes.append("zstd not installed: compressed variants skipped")
        columns = []
        results = {}
        for m in models:
            if m in EXT4_MODELS:
                why = diskmodel.ext4_missing()
                if not why and size < 66 * MiB:
                    why = "disk smaller than 66 MiB"
                if why:
                    skipped.append("ext4 model skipped: %s" % why)
                    log(skipped[-1])
                    continue
            wdir = os.path.join(tmp, m)
            os.mkdir(wdir)
            t1 = time.time()
            log("%s: generating disks and archives" % m)
            try:
                cols = build_model(m, wdir, size, opts.seed, notes)
            except (RuntimeError, OSError, ValueError) as e:
                skipped.append("%s model failed: %s" % (m, e))
                log(skipped[-1])
                continue
            log("%s: disks and archives ready (%.0f s); measuring" % (m, time.time() - t1))
            measure(cols, tools, opts.jobs, results, notes)
            for col in cols:
                col.sizes = {v: os.path.getsize(b) for v, (_a, b) in col.files.items()}
            columns += cols
            if not opts.keep:
                shutil.rmtree(wdir, ignore_errors=True)
        for t in tools:
            if getattr(t, "note", None):
                notes.append(t.note)
        if "optimized .zst (vma-tool)" in SELECTED and have("zstd"):
            notes.append("vma-tool's own .vma.zst (%s): %s" % (TOOL, (
                "framed (zstd skippable frames found), day files %s" % ", ".join(
                    sorted(FRAMED_BY_TOOL))) if FRAMED_BY_TOOL else "not framed (one stream)"))
        if _ZSTD is not None:
            notes.append("framed .zst rows made by this bench (%s, level %d)" % (_ZSTD.how,
                                                                                  ZSTD_LEVEL))
        sys.stdout.flush()
        report(opts, size, columns, tools, results, notes, skipped)
        return 0
    finally:
        if opts.keep:
            print("kept %s" % tmp, file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _short(n):
    for unit, m in (("G", 1 << 30), ("M", MiB), ("K", 1024)):
        if abs(n) >= m:
            return "%.1f%s" % (n / m, unit)
    return "%dB" % n


COMPRESSED_ROWS = ("optimized", "optimized .zst", "optimized .zst (vma-tool)", "framed .zst",
                   "framed .zst /8", "framed .zst /32", "framed .zst per extent", "optimized .gz",
                   "framed .gz")


def compressed_table(col, tools, results):
    """Markdown table of the compressed forms of one column against the plain optimized archive
    (P) and today's compressed form: file size, restic per --compression mode (mean over the
    templates of each template's ratio, and the spread), borg, rdiff."""
    rows = [v for v in COMPRESSED_ROWS if v in col.files]
    if len(rows) < 2:
        return
    names = list(dict.fromkeys(t.name for t in tools))
    keys = {n: [t.key for t in tools if t.name == n] for n in names}

    def ratios(v, ref, name):
        out = []
        for k in keys[name]:
            d, r = results.get((col.name, v, k)), results.get((col.name, ref, k))
            if d is not None and r:
                out.append(d / r)
        return out

    def today(v):
        return "optimized .gz" if v.endswith(".gz") else "optimized .zst"

    def mean(x):
        return sum(x) / len(x) if x else None

    head = ["%s: b's form" % col.name, "size", "vs today"]
    for n in names:
        if n.startswith("restic"):
            head += ["%s x P (spread)" % n, "%s x today" % n]
        elif n == "borg":
            head += ["borg MiB", "borg x today"]
        else:
            head += ["%s x P" % n, "%s x today" % n]
    print()
    print("| " + " | ".join(head) + " |")
    print("|---" + "|---:" * (len(head) - 1) + "|")
    for v in rows:
        size = col.sizes.get(v)
        ref = col.sizes.get(today(v)) if v != "optimized" else None
        line = [LABELS[v] + (" = %s" % LABELS[col.same_as[v]] if v in col.same_as else ""),
                human(size) if size else "-", "%.3f" % (size / ref) if size and ref else "-"]
        for n in names:
            rp = ratios(v, "optimized", n)
            rt = ratios(v, today(v), n) if v != "optimized" else []
            if n == "borg":
                d = results.get((col.name, v, n))
                line.append("%.0f" % (d / MiB) if d is not None else "-")
            elif len(rp) > 1:
                line.append("%.2f (%.2f-%.2f)" % (mean(rp), min(rp), max(rp)))
            else:
                line.append("%.2f" % rp[0] if rp else "-")
            line.append("%.2f" % mean(rt) if rt else "-")
        print("| " + " | ".join(line) + " |")
    print("(P: the plain optimized .vma's delta with the same tool and template; restic: mean "
          "over %s of each template's ratio, spread min-max)" % ", ".join(
              "%s %d templates" % (n, len(keys[n])) for n in names if n.startswith("restic")))


def report(opts, size, columns, tools, results, notes, skipped):
    tnames = list(dict.fromkeys(t.name for t in tools))
    print("vma-tool dedup bench: VM with drive-efidisk0 %s and drive-scsi0 %s, seed %d; delta "
          "of day 2 once day 1 is stored, as a ratio to the raw disks' delta (same tool and "
          "column)" % (human(EFIDISK_SIZE), human(size), opts.seed))
    for col in columns:
        for line in col.info:
            print(line)
        total = sum(-(-s // BLOCK) for _, s in col.devices)
        nblk, ncl = col.changed
        print("%s: %d of %d 4 KiB blocks changed (%.2f %%, %s) in %d 64 KiB clusters; b: %s" % (
            col.name, nblk, total, 100.0 * nblk / max(1, total), human(nblk * BLOCK), ncl,
            ", ".join("%s %s" % (v, human(s)) for v, s in col.sizes.items()
                      if v not in col.same_as)))
    for s in skipped:
        print(s)
    if not columns or not tnames:
        for n in notes:
            print("note: " + n)
        return
    rows = [v for v in VARIANTS if any(v in c.files for c in columns)]
    header = ["variant"] + ["%s %s" % (c.name, t) for c in columns for t in tnames]
    table = [["raw disks: delta"] + [
        _short(results[(c.name, "raw", t)]) if (c.name, "raw", t) in results else "-"
        for c in columns for t in tnames]]
    for v in rows:
        line = [LABELS[v]]
        for c in columns:
            for t in tnames:
                d = results.get((c.name, v, t))
                raw = results.get((c.name, "raw", t))
                line.append("%.2f" % (d / raw) if d is not None and raw else "-")
        table.append(line)
    if opts.markdown:
        print()
        print("| " + " | ".join(header) + " |")
        print("|---" + "|---:" * (len(header) - 1) + "|")
        for r in table:
            print("| " + " | ".join(r) + " |")
        print()
    else:
        # two header lines: column names over their tools
        w0 = max(len(r[0]) for r in table + [header])
        wt = [max(6, max(len(r[i]) for r in table)) for i in range(1, len(header))]
        top, sub = [" " * w0], ["variant".ljust(w0)]
        i = 0
        for c in columns:
            span = sum(wt[i:i + len(tnames)]) + 2 * (len(tnames) - 1)
            top.append(c.name.center(span))
            sub.append("  ".join(t.rjust(wt[i + k]) for k, t in enumerate(tnames)))
            i += len(tnames)
        print("   ".join(top).rstrip())
        print("   ".join(sub))
        for r in table:
            cells = [r[0].ljust(w0)]
            i = 1
            for c in columns:
                cells.append("  ".join(r[i + k].rjust(wt[i - 1 + k]) for k in range(len(tnames))))
                i += len(tnames)
            print("   ".join(cells))
    byname = {c.name: c for c in columns}
    for c in columns:
        for v, w in c.same_as.items():
            print("%s: %s has the same files as %s (not measured again)" % (c.name, LABELS[v],
                                                                          LABELS[w]))
    if "ext4" in byname and "ext4 old data" in byname:
        parts = []
        for t in tnames:
            rz, ro = results.get(("ext4", "raw", t)), results.get(("ext4 old data", "raw", t))
            oz = results.get(("ext4", "optimized", t))
            oo = results.get(("ext4 old data", "optimized", t))
            if rz and ro and oz is not None and oo is not None:
                parts.append("%s: raw %s -> %s, optimized %.2f -> %.2f x raw (%s -> %s)" % (
                    t, _short(rz), _short(ro), oz / rz, oo / ro, _short(oz), _short(oo)))
        if parts:
            print("free space holding old data (ext4, freed blocks not zeroed, no discard in "
                  "the guest) vs zeroed: " + "; ".join(parts))
    if opts.details:
        print()
        print("column         tool          variant                     delta       space saved")
        for c in columns:
            for v in c.files:
                for t in tnames:
                    d = results.get((c.name, v, t))
                    if d is None:
                        continue
                    saved = 100.0 * (1 - d / c.sizes[v]) if c.sizes[v] else 0.0
                    print("%-14s %-13s %-27s %11s %8.1f %%" % (c.name, t, v, human(d), saved))
    for c in columns:
        compressed_table(c, tools, results)
    print("delta: repository growth from backing up b after a (restic, borg), delta file size "
          "(rdiff); %.0f s in all" % (time.time() - T0))
    for n in notes:
        print("note: " + n)


if __name__ == "__main__":
    sys.exit(main())
