#!/usr/bin/env python3
"""Deduplication benchmark for vma-tool (run by `make bench-dedup`).

Measures how much a backup tool has to store for day 2 of a VM once day 1 is stored, for two
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
              the freed blocks keeping their old data (a guest without discard).  Skipped when
              mke2fs, debugfs or dumpe2fs (e2fsprogs) is missing.

Variants (rows):

  raw           the disk images themselves (concatenated; the floor)
  original      the archives as Proxmox writes them
  ordered only  canonical order but a random uuid per archive (vma-tool optimize, then the uuid
                replaced in the header and every extent header, MD5s fixed)
  optimized     vma-tool optimize
  + compressed: original .vma.zst as vzdump writes it (zstd --rsyncable), optimized archives
                recompressed with zstd --rsyncable, and `vma-tool optimize a.vma.zst
                out.vma.zst` (the tool decompresses and compresses itself; skipped without zstd;
                not measured again when its files are identical to the previous row's)

Tools: restic (fresh repo per measurement, chunker parameters copied from one template repo so
all repos cut chunks alike, compression off), borg (init --encryption none, create
--compression none), rdiff (signature of a, delta of b).  For restic and borg the delta is the
growth of the repository from backing up b.  A tool that is not installed is skipped with a note
(Debian: apt-get install restic borgbackup rdiff zstd e2fsprogs).  Measurements run in parallel
(--jobs).  The table shows each delta as a ratio to the raw images' delta of the same tool and
column.

restic's chunker polynomial is random per repository; all repositories of a run copy it from
one template, but each run makes a new template unless DEDUP_RESTIC_TEMPLATE names a directory
to keep it in, and restic's figures move by tens of percent from one polynomial to the next:
compare runs (e.g. two vma-tool versions) only with the same template.

Environment: DEDUP_SIZE (disk size, default 2G), DEDUP_SEED (default 1), DEDUP_MODELS
(default synthetic,ext4), DEDUP_JOBS (default 2), DEDUP_RESTIC_TEMPLATE, VMA_TOOL, TMPDIR.
Options: --size, --seed, --models, --jobs, --restic-template (override the environment),
--markdown, --details (every measurement with its delta), --keep.  Stdlib only, Python 3.9+.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import diskmodel  # noqa: E402
import vmafixture  # noqa: E402
from support import TOOL, parse_size  # noqa: E402

PY = sys.executable

MiB = 1 << 20
BLOCK = 4096
CLUSTER = 65536
EFIDISK_SIZE = 540672
DAY = 86400
ZERO_RUN_FRACTION = 0.14          # data blocks with an aligned 128-byte zero run (real ext4 data)

VARIANTS = ("raw", "original", "ordered only", "optimized", "original .zst", "optimized .zst",
            "optimized .zst (vma-tool)")
LABELS = {"raw": "raw disks", "original": "original .vma", "ordered only":
          "ordered only (random uuid)", "optimized": "optimized .vma",
          "original .zst": "original .vma.zst", "optimized .zst": "optimized .vma.zst",
          "optimized .zst (vma-tool)": "optimized .vma.zst (vma-tool)"}
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


def replace_uuid(path, uuid):
    """Replace the uuid in the main header and in every extent header of the archive at path
    (in place) and fix the header and extent MD5s."""
    if len(uuid) != 16:
        raise ValueError("uuid must be 16 bytes")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        fixed = f.read(12288)
        if fixed[:4] != b"VMA\0":
            raise ValueError("%s: not a VMA archive" % path)
        hsize, = struct.unpack_from(">I", fixed, 56)
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
    name = "restic"
    weight = 3                  # relative cost per byte (for scheduling)

    def __init__(self, tmp, template=None):
        self.tmp = tmp
        self.pwfile = os.path.join(tmp, "restic-password")
        with open(self.pwfile, "w") as f:
            f.write("bench\n")
        self.env = dict(os.environ, RESTIC_PASSWORD="bench")
        self.env.pop("RESTIC_REPOSITORY", None)
        # the template's random chunker polynomial decides where restic cuts (except at zero
        # runs): reuse one template (password "bench") to compare runs with each other
        self.template = os.path.abspath(template) if template else os.path.join(
            tmp, "restic-template")
        if not os.path.exists(os.path.join(self.template, "config")):
            run(["restic", "init", "-q", "--repo", self.template], env=dict(
                self.env, RESTIC_CACHE_DIR=os.path.join(tmp, "restic-template-cache")))
        helptext = subprocess.run(["restic", "help", "backup"], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT).stdout.decode()
        self.comp = ["--compression", "off"] if "--compression" in helptext else []
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
    name = "borg"
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
    name = "rdiff"
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
        if any(v in want for v in ("original .zst", "optimized .zst (vma-tool)")):
            zstd(orig, za)
        if "original .zst" in want:
            out["original .zst"] = za
        if opt and "optimized .zst" in want:
            out["optimized .zst"] = opt + ".zst"
            zstd(opt, out["optimized .zst"])
        if opt and "optimized .zst (vma-tool)" in want:
            # the user's path: vma-tool reads the .vma.zst and writes .vma.zst itself
            zt = os.path.join(wdir, tag + "-tool-opt.vma.zst")
            r = vma_tool("optimize", "-q", za, zt)
            if r.returncode != 0:
                notes.append("vma-tool optimize %s .zst -> .zst failed (exit %d): %s" % (
                    tag, r.returncode, r.stderr.decode("utf-8", "replace").strip()[:200]))
            else:
                out["optimized .zst (vma-tool)"] = zt
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


def ext4_model(wdir, size, seed, notes):
    disks = diskmodel.build_ext4(os.path.join(wdir, "ext4"), size, seed, log=log)
    notes.extend(disks.notes)
    devices = [("drive-efidisk0", EFIDISK_SIZE), ("drive-scsi0", size)]
    efi = [os.path.join(wdir, "efi-%s.raw" % x) for x in "ab"]
    efidisk(efi, seed)
    st = disks.stats
    zero = Column("ext4", devices, [efi[0], disks.a], [efi[1], disks.b_zero])
    old = Column("ext4 old data", devices, [efi[0], disks.a], [efi[1], disks.b_old])
    n, nz = st["zero runs"]
    d2 = st["day2"]
    up = st["upgraded"]
    zero.info.append(
        "ext4: %d files in %d packages and the rest (%s), file system %d blocks, %d free on day 2; "
        "file data blocks with an aligned 128-byte zero run: %.1f %% (%d of %d)" % (
            st["files"], st["packages"], human(st["tree bytes"]), st["fs blocks"],
            st["free blocks"], 100.0 * nz / max(1, n), nz, n))
    zero.info.append(
        "ext4: day 2: %d packages upgraded (%d files, %s rewritten), " % (up[0], up[1], human(
            d2.get("upgraded", (0, 0))[1])) + ", ".join(
            "%s %d (%s)" % (k, d2[k][0], human(d2[k][1])) for k in
            ("new .deb", "installed", "removed", "db pages", "log growth", "journal") if k in d2) +
        "; freed blocks still holding old data: %d (zeroed in \"ext4\", kept in \"ext4 old data\")"
        % st["freed blocks with old data"])
    return [zero, old], random.Random("ext4-archives-%d" % seed)


MODELS = {"synthetic": synthetic_model, "ext4": ext4_model}


def build_model(name, wdir, size, seed, notes):
    """The model's columns with their files (every variant of both days)."""
    columns, rng = MODELS[name](wdir, size, seed, notes)
    for col in columns:
        col.changed = tuple(map(sum, zip(*(changed_blocks(a, b) for a, b in
                                          zip(col.paths_a, col.paths_b)))))
    configs = vmafixture.default_configs(seed, columns[0].devices)
    vm_a = vmafixture.VM(1700000000, configs, columns[0].devices, columns[0].paths_a)
    side_a = day_files(wdir, "a", vm_a, columns[0].paths_a, seed * 100 + 1, rng.randbytes(16), notes)
    sides = {}
    for i, col in enumerate(columns):
        vm_b = vmafixture.VM(1700000000 + DAY + 37, configs, col.devices, col.paths_b)
        want = OLD_DATA_VARIANTS if col.name.endswith("old data") else VARIANTS
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
            results[(col.name, v, t.name)] = d
            done[0] += 1
            log("%2d/%d %-6s %-13s %-26s delta %s (%.0f s)" % (
                done[0], len(work), t.name, col.name, v, human(d), time.time() - t1))

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        for f in [ex.submit(one, w) for w in work]:
            f.result()
    for col in columns:
        for v, w in col.same_as.items():
            for t in tools:
                if (col.name, w, t.name) in results:
                    results[(col.name, v, t.name)] = results[(col.name, w, t.name)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default=os.environ.get("DEDUP_SIZE", "2G"),
                    help="disk size (env DEDUP_SIZE, default 2G)")
    ap.add_argument("--seed", type=int, default=int(os.environ.get("DEDUP_SEED", "1")),
                    help="seed (env DEDUP_SEED, default 1)")
    ap.add_argument("--models", default=os.environ.get("DEDUP_MODELS", "synthetic,ext4"),
                    help="comma-separated models: synthetic, ext4 (env DEDUP_MODELS)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("DEDUP_JOBS", "2")),
                    help="measurements run at once (env DEDUP_JOBS, default 2)")
    ap.add_argument("--restic-template", default=os.environ.get("DEDUP_RESTIC_TEMPLATE"),
                    help="restic repository (password 'bench') whose chunker parameters every "
                    "restic repository copies; created if missing and then kept, so that runs "
                    "compare (env DEDUP_RESTIC_TEMPLATE; default: a new one per run)")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    ap.add_argument("--details", action="store_true", help="also print every delta")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    opts = ap.parse_args()
    size = parse_size(opts.size) // BLOCK * BLOCK
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
        if "ext4" in models and not diskmodel.ext4_missing():
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
                tools.append(cls(tmp, opts.restic_template) if cls is Restic else cls(tmp))
            except (RuntimeError, OSError) as e:
                notes.append("%s unusable: %s" % (pname, e))
        if not have("zstd"):
            notes.append("zstd not installed: compressed variants skipped")
        columns = []
        results = {}
        for m in models:
            if m == "ext4":
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


def report(opts, size, columns, tools, results, notes, skipped):
    tnames = [t.name for t in tools]
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
        print("column         tool    variant                     delta       space saved")
        for c in columns:
            for v in c.files:
                for t in tnames:
                    d = results.get((c.name, v, t))
                    if d is None:
                        continue
                    saved = 100.0 * (1 - d / c.sizes[v]) if c.sizes[v] else 0.0
                    print("%-14s %-7s %-27s %11s %8.1f %%" % (c.name, t, v, human(d), saved))
    print("delta: repository growth from backing up b after a (restic, borg), delta file size "
          "(rdiff); %.0f s in all" % (time.time() - T0))
    for n in notes:
        print("note: " + n)


if __name__ == "__main__":
    sys.exit(main())
