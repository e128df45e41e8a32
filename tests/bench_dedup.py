#!/usr/bin/env python3
"""Deduplication benchmark for vma-tool (run by `make bench-dedup`).

Builds disk A and disk B = A "one day later" (about 1 % of the 4 KiB blocks rewritten, mostly in
a few hot regions, plus some appended, freed and newly filled blocks), writes two Proxmox-like
archives a.vma / b.vma with the fixture writer (different uuid, ctime and cluster disorder) and
measures how much a backup tool has to store for b once a is stored, for these variants:

  raw           the disk images themselves (concatenated; the floor)
  original      the archives as Proxmox writes them
  ordered only  canonical order but a random uuid per archive (vma-tool optimize, then the uuid
                replaced in the header and every extent header, MD5s fixed)
  optimized     vma-tool optimize
  + compressed: original .vma.zst as vzdump writes it (zstd --rsyncable), optimized archives
                recompressed with zstd --rsyncable, and `vma-tool optimize a.vma.zst
                out.vma.zst` (the tool decompresses and compresses itself; skipped without zstd)

Tools: restic (fresh repo per variant, chunker parameters copied from one template repo so all
repos cut chunks alike, compression off), borg (init --encryption none, create --compression
none), rdiff (signature of a, delta of b).  For restic and borg the delta is the growth of the
repository from backing up b.  A tool that is not installed is skipped with a note (Debian:
apt-get install restic borgbackup rdiff zstd).

Environment: DEDUP_SIZE (disk size, default 512M), DEDUP_SEED (default 1), VMA_TOOL, TMPDIR.
Options: --markdown, --keep.  Stdlib only, Python 3.9+.
"""

import argparse
import hashlib
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import vmafixture  # noqa: E402
from support import TOOL, parse_size  # noqa: E402

PY = sys.executable

MiB = 1 << 20
BLOCK = 4096
CLUSTER = 65536
EFIDISK_SIZE = 540672
DAY = 86400


def log(*a):
    print("bench-dedup:", *a, file=sys.stderr, flush=True)


def human(n):
    neg = n < 0
    n = abs(n)
    for unit, m in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1024)):
        if n >= m:
            return "%s%.1f %s" % ("-" if neg else "", n / m, unit)
    return "%s%d B" % ("-" if neg else "", n)


# ---------------------------------------------------------------------------------------------
# Disks A and B


_ALPHA = b"etaoinsrhld cumfpgwy\n.,ETAOIN0123"
_LOW = bytes.maketrans(bytes(range(256)), bytes(_ALPHA[i % len(_ALPHA)] for i in range(256)))


def data(rng, n):
    """Unique data: half random (incompressible), half low-entropy text-like (compressible)."""
    b = rng.randbytes(n)
    return b.translate(_LOW) if rng.random() < 0.5 else b


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


def changed_blocks(a, b):
    """(changed 4 KiB blocks, changed 64 KiB clusters) between two equally sized files."""
    nblk = 0
    clusters = set()
    with open(a, "rb") as fa, open(b, "rb") as fb:
        off = 0
        while True:
            x = fa.read(4 * MiB)
            y = fb.read(4 * MiB)
            if not x and not y:
                break
            if x != y:
                for o in range(0, max(len(x), len(y)), BLOCK):
                    if x[o:o + BLOCK] != y[o:o + BLOCK]:
                        nblk += 1
                        clusters.add((off + o) // CLUSTER)
            off += len(x)
    return nblk, len(clusters)


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
# Tools


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


class Restic:
    name = "restic"

    def __init__(self, tmp):
        self.tmp = tmp
        self.pwfile = os.path.join(tmp, "restic-password")
        with open(self.pwfile, "w") as f:
            f.write("bench\n")
        self.env = dict(os.environ, RESTIC_PASSWORD="bench", RESTIC_CACHE_DIR=os.path.join(
            tmp, "restic-cache"))
        self.env.pop("RESTIC_REPOSITORY", None)
        self.template = os.path.join(tmp, "restic-template")
        run(["restic", "init", "-q", "--repo", self.template], env=self.env)
        helptext = subprocess.run(["restic", "help", "backup"], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT).stdout.decode()
        self.comp = ["--compression", "off"] if "--compression" in helptext else []
        self.n = 0
        self.note = None

    def delta(self, a, b):
        self.n += 1
        repo = os.path.join(self.tmp, "restic-%d" % self.n)
        try:
            run(["restic", "init", "-q", "--repo", repo, "--copy-chunker-params",
                 "--from-repo", self.template, "--from-password-file", self.pwfile],
                env=self.env)
        except RuntimeError as e:        # old restic: each repo gets its own polynomial
            shutil.rmtree(repo, ignore_errors=True)
            run(["restic", "init", "-q", "--repo", repo], env=self.env)
            self.note = "restic: chunker parameters not copied (%s); figures vary more" % e
        try:
            run(["restic", "--repo", repo, "-q"] + self.comp + ["backup", a], env=self.env)
            s1 = dir_size(repo)
            run(["restic", "--repo", repo, "-q"] + self.comp + ["backup", b], env=self.env)
            return dir_size(repo) - s1
        finally:
            shutil.rmtree(repo, ignore_errors=True)


class Borg:
    name = "borg"

    def __init__(self, tmp):
        self.tmp = tmp
        self.env = dict(os.environ, BORG_BASE_DIR=os.path.join(tmp, "borg-base"),
                        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
                        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes", BORG_PASSPHRASE="")
        self.env.pop("BORG_REPO", None)
        self.n = 0

    def delta(self, a, b):
        self.n += 1
        repo = os.path.join(self.tmp, "borg-%d" % self.n)
        run(["borg", "init", "--encryption", "none", repo], env=self.env)
        try:
            run(["borg", "create", "--compression", "none", repo + "::a", a], env=self.env)
            s1 = dir_size(repo)
            run(["borg", "create", "--compression", "none", repo + "::b", b], env=self.env)
            return dir_size(repo) - s1
        finally:
            shutil.rmtree(repo, ignore_errors=True)
            shutil.rmtree(os.path.join(self.tmp, "borg-base"), ignore_errors=True)


class Rdiff:
    name = "rdiff"

    def __init__(self, tmp):
        self.tmp = tmp

    def delta(self, a, b):
        sig = os.path.join(self.tmp, "rdiff.sig")
        dl = os.path.join(self.tmp, "rdiff.delta")
        try:
            run(["rdiff", "signature", a, sig])
            run(["rdiff", "delta", sig, b, dl])
            return os.path.getsize(dl)
        finally:
            for p in (sig, dl):
                if os.path.exists(p):
                    os.unlink(p)


TOOLS = (("restic", Restic), ("borg", Borg), ("rdiff", Rdiff))


# ---------------------------------------------------------------------------------------------


def vma_tool(*args):
    return subprocess.run([PY, TOOL] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL)


def concat(paths, dst):
    with open(dst, "wb") as out:
        for p in paths:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out, 8 * MiB)


def zstd(src, dst):
    run(["zstd", "-q", "-f", "--rsyncable", "-T0", src, "-o", dst])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    opts = ap.parse_args()
    size = parse_size(os.environ.get("DEDUP_SIZE", "512M")) // BLOCK * BLOCK
    seed = int(os.environ.get("DEDUP_SEED", "1"))
    tmp = tempfile.mkdtemp(prefix="vma-bench-dedup-", dir=os.environ.get("TMPDIR"))
    notes = []
    try:
        t0 = time.time()
        rng = random.Random(seed)
        da, db = os.path.join(tmp, "A"), os.path.join(tmp, "B")
        os.mkdir(da)
        os.mkdir(db)
        devices = [("drive-efidisk0", EFIDISK_SIZE), ("drive-scsi0", size)]
        efi = rng.randbytes(4 * CLUSTER)
        paths_a, paths_b = [], []
        kinds = {}
        for name, dsize in devices:
            pa = os.path.join(da, "disk-%s.raw" % name)
            pb = os.path.join(db, "disk-%s.raw" % name)
            if name == "drive-efidisk0":
                for p in (pa, pb):
                    with open(p, "wb") as f:
                        f.write(efi)
                        f.truncate(dsize)
            else:
                used_end = write_disk_a(pa, dsize, rng)
                writes = mutate_disk(pa, pb, dsize, used_end, rng)
                for k in writes.values():
                    kinds[k] = kinds.get(k, 0) + 1
            paths_a.append(pa)
            paths_b.append(pb)
        nblk, ncl = 0, 0
        for pa, pb in zip(paths_a, paths_b):
            x, y = changed_blocks(pa, pb)
            nblk += x
            ncl += y
        total_blocks = sum(-(-s // BLOCK) for _, s in devices)
        configs = vmafixture.default_configs(seed, devices)
        vma_a = vmafixture.VM(1700000000, configs, devices, paths_a)
        vma_b = vmafixture.VM(1700000000 + DAY + 37, configs, devices, paths_b)
        files = {}
        files["raw"] = (os.path.join(tmp, "a.img"), os.path.join(tmp, "b.img"))
        concat(paths_a, files["raw"][0])
        concat(paths_b, files["raw"][1])
        orig = (os.path.join(tmp, "a.vma"), os.path.join(tmp, "b.vma"))
        vmafixture.write_archive(vma_a, orig[0], seed=seed * 100 + 1, order="proxmox")
        vmafixture.write_archive(vma_b, orig[1], seed=seed * 100 + 2, order="proxmox")
        files["original"] = orig
        log("generated disks and archives (%.0f s)" % (time.time() - t0))

        opt = (os.path.join(tmp, "opt-a.vma"), os.path.join(tmp, "opt-b.vma"))
        ok = True
        for s, d in zip(orig, opt):
            r = vma_tool("optimize", "-q", s, d)
            if r.returncode != 0:
                ok = False
                notes.append("vma-tool optimize failed (exit %d): %s; optimized variants skipped"
                             % (r.returncode, r.stderr.decode("utf-8", "replace").strip()[:200]))
                break
        if ok:
            ordered = (os.path.join(tmp, "ord-a.vma"), os.path.join(tmp, "ord-b.vma"))
            for s, d in zip(opt, ordered):
                shutil.copyfile(s, d)
                replace_uuid(d, rng.randbytes(16))
            files["ordered only"] = ordered
            files["optimized"] = opt
        if have("zstd"):
            za = tuple(p + ".zst" for p in orig)
            for s, d in zip(orig, za):
                zstd(s, d)
            files["original .zst"] = za
            if ok:
                zo = tuple(p + ".zst" for p in opt)
                for s, d in zip(opt, zo):
                    zstd(s, d)
                files["optimized .zst"] = zo
                # the user's path: vma-tool reads the .vma.zst and writes .vma.zst itself
                zt = tuple(os.path.join(tmp, "tool-opt-%s.vma.zst" % x) for x in "ab")
                for s, d in zip(za, zt):
                    r = vma_tool("optimize", "-q", s, d)
                    if r.returncode != 0:
                        notes.append("vma-tool optimize .zst -> .zst failed (exit %d): %s" % (
                            r.returncode, r.stderr.decode("utf-8", "replace").strip()[:200]))
                        break
                else:
                    files["optimized .zst (vma-tool)"] = zt
        else:
            notes.append("zstd not installed: compressed variants skipped")

        versions = []
        for prog, arg in (("restic", "version"), ("borg", "--version"), ("rdiff", "--version"),
                          ("zstd", "--version")):
            if have(prog):
                r = subprocess.run([prog, arg], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                line = r.stdout.decode("utf-8", "replace").strip().splitlines()[:1]
                versions.append(line[0][:60] if line else prog)
        if versions:
            notes.insert(0, "versions: " + "; ".join(versions))
        results = []     # (tool, variant, delta, size of b)
        for pname, cls in TOOLS:
            if not have(pname):
                notes.append("%s not installed: skipped" % pname)
                continue
            try:
                t = cls(tmp)
            except (RuntimeError, OSError) as e:
                notes.append("%s unusable: %s" % (pname, e))
                continue
            for variant, (a, b) in files.items():
                t1 = time.time()
                try:
                    d = t.delta(a, b)
                except (RuntimeError, OSError) as e:
                    notes.append("%s %s: %s" % (pname, variant, e))
                    continue
                results.append((pname, variant, d, os.path.getsize(b)))
                log("%-6s %-15s delta %s (%.0f s)" % (pname, variant, human(d), time.time() - t1))
            if getattr(t, "note", None):
                notes.append(t.note)

        sys.stdout.flush()
        report(opts.markdown, results, notes, devices, nblk, ncl, total_blocks, files, kinds)
        return 0
    finally:
        if opts.keep:
            print("kept %s" % tmp, file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def report(markdown, results, notes, devices, nblk, ncl, total_blocks, files, kinds):
    raw = {t: d for t, v, d, _ in results if v == "raw"}
    print("vma-tool dedup bench: disks %s; B = A one day later: %d of %d 4 KiB blocks changed "
          "(%.2f %%, %s), in %d 64 KiB clusters" % (
              ", ".join("%s %s" % (n, human(s)) for n, s in devices), nblk, total_blocks,
              100.0 * nblk / max(1, total_blocks), human(nblk * BLOCK), ncl))
    print("block writes: " + ", ".join("%s %d" % (k, kinds[k]) for k in
                                       ("hot", "scattered", "appended", "freed", "filled")
                                       if k in kinds))
    print("sizes of b: " + ", ".join("%s %s" % (v, human(os.path.getsize(p[1])))
                                     for v, p in files.items()))
    header = ["tool", "variant", "delta size", "space saved", "ratio to raw"]
    rows = []
    for t, v, d, bsize in results:
        saved = 100.0 * (1 - d / bsize) if bsize else 0.0
        if abs(saved) < 0.05:
            saved = 0.0
        ratio = ("%.2f" % (d / raw[t])) if raw.get(t) else "-"
        rows.append([t, v, human(d), "%.1f %%" % saved, ratio])
    if markdown:
        print()
        print("| " + " | ".join(header) + " |")
        print("|---|---|---:|---:|---:|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        w = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
        fmt = "  ".join(("%%-%ds" if i < 2 else "%%%ds") % x for i, x in enumerate(w))
        print(fmt % tuple(header))
        for r in rows:
            print(fmt % tuple(r))
    print("delta: repository growth from backing up b after a (restic, borg), delta file size "
          "(rdiff); space saved: vs storing b whole; ratio to raw: delta / delta of the raw images")
    for n in notes:
        print("note: " + n)


if __name__ == "__main__":
    sys.exit(main())
