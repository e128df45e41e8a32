#!/usr/bin/env python3
"""Throughput / memory benchmark for vma-tool (run by `make bench`, not part of `make test`).

Generates a Proxmox-like multi-device archive with the fixture writer (tests/vmafixture.py)
in a temporary directory under $TMPDIR (removed afterwards) and times, in one run:

  cp / cat of the archive and cp of the disk images   (the physical limit of this machine)
  vma-tool optimize file->file, in place, `- -` through pipes
  vma-tool unpack from a file and from a pipe, pack, verify, info

and, unless BENCH_SCALE=0, verify / optimize / unpack of an archive with a 1 TiB sparse device
(16.7 M clusters, a few MiB of data; written by a fast dedicated writer in this file).

Every figure is the median of BENCH_RUNS (default 3) runs on a warm cache.  Peak RSS is
measured per command in a fresh wrapper process (RUSAGE_CHILDREN of that wrapper).

Environment:
  BENCH_SIZE   total disk size of the VM (default 2G; e.g. 256M, 8G)
  BENCH_RUNS   runs per figure (default 3, at least 1)
  BENCH_SCALE  0 skips the 1 TiB case
  BENCH_SCALE_RUNS  runs per figure of the 1 TiB case (default BENCH_RUNS)
  VMA_TOOL     vma-tool to run (default <repo>/vma-tool), run with this script's interpreter
  TMPDIR       where the temporary files go (needs about 3.5 x BENCH_SIZE of free space)

Options: --markdown (table as markdown), --keep (keep the temporary directory).
Stdlib only, Python 3.9+.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import shlex
import shutil
import statistics
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
GiB = 1 << 30
TiB = 1 << 40
CLUSTER = 65536
BLOCK = 4096
EFIDISK_SIZE = 540672

# Runs one command (argv, or a shell string) and reports its wall time and the peak RSS of
# its process tree (RUSAGE_CHILDREN of this small wrapper = max over the command's processes).
WRAPPER = r"""
import json, resource, subprocess, sys, time
res, shell, cmd = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
t0 = time.perf_counter()
rc = subprocess.call(cmd[0] if shell else cmd, shell=shell)
t = time.perf_counter() - t0
with open(res, "w") as f:
    json.dump({"rc": rc, "sec": t,
               "rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}, f)
"""


def human(n):
    for unit, m in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= m:
            return "%.1f %s" % (n / m, unit)
    return "%d B" % n


def machine_line():
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    py = subprocess.run([PY, "-c", "import platform; print(platform.python_version())"],
                        stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
    return "machine: nproc %d, CPU %s, Python %s (%s), %s, %s" % (
        os.cpu_count() or 0, cpu, py, PY, platform.system() + " " + platform.release(),
        datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))


# ---------------------------------------------------------------------------------------------
# Disk content for the main benchmark


def write_disk(path, size, rng, pool):
    """A realistic-looking disk image: per 1 MiB region zero (hole), full data, data with zero
    4K blocks in between, or compressible text; data slices come from a random pool."""
    plen = len(pool)
    text = b"".join(b"Nov 26 07:%02d:%02d host kernel: [%8d.%06d] audit: op=%d res=1\n"
                    % (i % 60, i * 7 % 60, i, i * 31337 % 1000000, i) for i in range(20000))
    with open(path, "wb") as f:
        off = 0
        while off < size:
            n = min(MiB, size - off)
            r = rng.random()
            if off == 0:
                r = 0.5                      # boot sector area always has data
            if r < 0.35:
                f.seek(off + n)              # zero region -> hole
            elif r < 0.75:
                p = rng.randrange(0, plen - n) & ~(BLOCK - 1)
                f.write(pool[p:p + n])
            elif r < 0.92:
                buf = bytearray(n)
                for b in range(0, n, BLOCK):
                    if rng.random() < 0.6:
                        p = rng.randrange(0, plen - BLOCK)
                        ln = min(BLOCK, n - b)
                        buf[b:b + ln] = pool[p:p + ln]
                f.write(buf)
            else:
                p = rng.randrange(0, len(text) - n) if len(text) > n else 0
                piece = text[p:p + n]
                f.write(piece + bytes(n - len(piece)))
            off += n
        f.truncate(size)


def bench_vm(workdir, total, seed=1):
    """VM with efidisk0 + scsi0 (70 %) + scsi1 (30 %), disks written to workdir/images
    (laid out like an unpacked archive: configs and disk-<name>.raw)."""
    rest = max(2 * MiB, total - EFIDISK_SIZE)
    s0 = max(MiB, (rest * 7 // 10) // MiB * MiB)
    s1 = max(MiB, (rest - s0) // MiB * MiB)
    devices = [("drive-efidisk0", EFIDISK_SIZE), ("drive-scsi0", s0), ("drive-scsi1", s1)]
    imgdir = os.path.join(workdir, "images")
    os.mkdir(imgdir)
    rng = random.Random(seed)
    pool = os.urandom(64 * MiB)
    disks = []
    for name, size in devices:
        p = os.path.join(imgdir, "disk-%s.raw" % name)
        if name == "drive-efidisk0":
            with open(p, "wb") as f:              # OVMF vars: some data, mostly zero
                f.write(pool[:16 * BLOCK])
                f.truncate(size)
        else:
            write_disk(p, size, rng, pool)
        disks.append(p)
    del pool
    configs = vmafixture.default_configs(seed, devices)
    for name, data in configs:
        with open(os.path.join(imgdir, name), "wb") as f:
            f.write(data)
    vm = vmafixture.VM(1700000000, configs, devices, disks)
    return vm, imgdir


# ---------------------------------------------------------------------------------------------
# Fast writer for the 1 TiB sparse archive (the fixture writer handles 16.7 M clusters slowly)


def _header(ctime, configs, devices, uuid):
    """Main header (blob growth rule of vma-format.md 2.4); devices [(dev_id, name, size)]."""
    blobs = bytearray(b"\0")
    st = {"cap": 0}

    def add(payload):
        pos, ln = len(blobs), len(payload)
        if st["cap"] < pos + ln + 2:
            st["cap"] += -(-(ln + 2) // 512) * 512
        blobs.extend(struct.pack("<H", ln) + payload)
        return pos

    cptr = [(add(n.encode() + b"\0"), add(d)) for n, d in configs]
    dptr = [(i, add(n.encode() + b"\0"), s) for i, n, s in sorted(devices)]
    hsize = 12288 + st["cap"]
    h = bytearray(hsize)
    struct.pack_into(">4sI16sq16sIII", h, 0, b"VMA\0", 1, uuid, ctime, bytes(16), 12288,
                     len(blobs), hsize)
    for i, (n, d) in enumerate(cptr):
        struct.pack_into(">I", h, 2044 + 4 * i, n)
        struct.pack_into(">I", h, 3068 + 4 * i, d)
    for i, p, s in dptr:
        struct.pack_into(">IIQ", h, 4096 + 32 * i, p, 0, s)
    h[12288:12288 + len(blobs)] = blobs
    h[32:48] = hashlib.md5(h).digest()
    return bytes(h)


_EXT = struct.Struct(">4sHH16s16s59Q")


def write_sparse_archive(path, big_size=TiB, seed=7, data_clusters=64):
    """Archive with drive-efidisk0 (540672 bytes) and drive-scsi0 (big_size, mostly zero: the
    first 1 MiB and data_clusters scattered clusters hold data) in Proxmox order (scsi0 first,
    16 chunk workers interleaved cluster by cluster, 58 clusters per extent).
    Returns (archive size, {device name: {cluster: 65536 bytes}}) for checking."""
    rng = random.Random(seed)
    uuid = bytes(rng.getrandbits(8) for _ in range(16))
    devices = [("drive-efidisk0", EFIDISK_SIZE), ("drive-scsi0", big_size)]
    configs = vmafixture.default_configs(seed, devices)
    hdr = _header(1700000000, configs, [(i + 1, n, s) for i, (n, s) in enumerate(devices)], uuid)
    ncl = -(-big_size // CLUSTER)
    content = {"drive-scsi0": {}, "drive-efidisk0": {}}
    for c in list(range(min(16, ncl))) + [rng.randrange(ncl) for _ in range(data_clusters)]:
        content["drive-scsi0"][c] = rng.randbytes(CLUSTER)
    for c in (0, 1, 8):                                 # efidisk: 8.25 clusters
        content["drive-efidisk0"][c] = rng.randbytes(CLUSTER if c < 8 else BLOCK) + \
            (bytes(CLUSTER - BLOCK) if c == 8 else b"")
    zero_block = bytes(BLOCK)

    pending = []          # blockinfo ints of the current extent
    pdata = []
    out = open(path, "wb")
    out.write(hdr)
    total = [len(hdr)]
    wbuf = []
    wlen = [0]
    pack = _EXT.pack
    md5 = hashlib.md5

    def flush_extent(infos, blocks):
        nb = len(blocks)
        raw = bytearray(pack(b"VMAE", 0, nb, uuid, bytes(16), *(infos + [0] * (59 - len(infos)))))
        raw[24:40] = md5(raw).digest()
        wbuf.append(bytes(raw))
        wbuf.extend(blocks)
        n = 512 + nb * BLOCK
        total[0] += n
        wlen[0] += n
        if wlen[0] >= 8 * MiB:
            out.write(b"".join(wbuf))
            del wbuf[:]
            wlen[0] = 0

    def emit(dev_id, dev_name, size, order_iter):
        data = content[dev_name]
        base = dev_id << 32
        for group in order_iter:
            hit = [c for c in group if c in data] if data else ()
            if not hit:
                infos = [base | c for c in group]
                blocks = []
            else:
                infos = []
                blocks = []
                for c in group:
                    d = data.get(c)
                    mask = 0
                    if d is not None:
                        for b in range(16):
                            if c * CLUSTER + b * BLOCK >= size:
                                break
                            blk = d[b * BLOCK:(b + 1) * BLOCK]
                            if blk != zero_block:
                                mask |= 1 << b
                                blocks.append(blk)
                    infos.append((mask << 48) | base | c)
            # keep the per-cluster granularity only for groups with data
            if blocks:
                # split infos/blocks per cluster to fill extents exactly like the writer
                bi = 0
                for info in infos:
                    k = bin(info >> 48).count("1")
                    pending.append(info)
                    pdata.extend(blocks[bi:bi + k])
                    bi += k
                    if len(pending) == 58:
                        flush_extent(pending[:], pdata[:])
                        del pending[:]
                        del pdata[:]
            else:
                pending.extend(infos)
                while len(pending) >= 58:
                    if pdata:
                        # pdata belongs to the first entries (all in the first 58)
                        flush_extent(pending[:58], pdata[:])
                        del pdata[:]
                    else:
                        flush_extent(pending[:58], [])
                    del pending[:58]

    def proxmox_groups(n, workers=16, chunk=16):
        span = workers * chunk
        pattern = [w * chunk + i for i in range(chunk) for w in range(workers)]
        for g in range(0, n - n % span, span):
            yield [g + p for p in pattern]
        if n % span:
            g = n - n % span
            rest = list(range(g, n))
            chunks = [rest[i:i + chunk] for i in range(0, len(rest), chunk)]
            order = []
            for i in range(chunk):
                for ch in chunks:
                    if i < len(ch):
                        order.append(ch[i])
            yield order

    emit(2, "drive-scsi0", big_size, proxmox_groups(ncl))
    emit(1, "drive-efidisk0", EFIDISK_SIZE, proxmox_groups(-(-EFIDISK_SIZE // CLUSTER)))
    if pending:
        flush_extent(pending[:], pdata[:])
    out.write(b"".join(wbuf))
    out.close()
    return total[0], content, configs, devices


def check_sparse_writer(tmp):
    """Self-check of write_sparse_archive against the fixture's strict reader (small size)."""
    p = os.path.join(tmp, "small.vma")
    size, content, configs, devices = write_sparse_archive(p, big_size=64 * MiB + 4096 * 3)
    cfg, disks = vmafixture.restore(p)
    assert os.path.getsize(p) == size
    assert cfg == configs, "configs differ"
    for name, dsize in devices:
        exp = bytearray(dsize)
        for c, d in content[name].items():
            exp[c * CLUSTER:c * CLUSTER + CLUSTER] = d
        del exp[dsize:]
        assert disks[name] == exp, "device %s differs" % name
    os.unlink(p)


# ---------------------------------------------------------------------------------------------
# Measuring


class Runner:
    def __init__(self, tmp, runs):
        self.tmp = tmp
        self.runs = runs
        self.res = os.path.join(tmp, "wrapper-result.json")
        self.errfile = os.path.join(tmp, "wrapper-stderr.txt")

    def once(self, cmd, shell=False, stdout=None):
        argv = [PY, "-I", "-S", "-c", WRAPPER, self.res, "1" if shell else "0"]
        argv += [cmd] if shell else cmd
        rm(self.res)
        with open(self.errfile, "wb") as err, \
                open(stdout or os.devnull, "wb") as out:
            subprocess.call(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        with open(self.errfile, "rb") as f:
            errtext = f.read().decode("utf-8", "replace")
        try:
            with open(self.res) as f:
                r = json.load(f)
        except (OSError, ValueError):
            r = {"rc": 127, "sec": 0.0, "rss_kib": 0}
        r["stderr"] = errtext
        return r

    def measure(self, cmd, shell=False, prepare=None, cleanup=None, stdout=None, runs=None):
        """Median seconds, max RSS (KiB) over runs; status 'ok', 'n/a' or 'error: ...'."""
        times, rss = [], []
        for i in range(runs or self.runs):
            if prepare:
                prepare()
            os.sync()
            r = self.once(cmd, shell, stdout)
            if r["rc"] != 0:
                if cleanup:
                    cleanup()
                msg = r["stderr"].strip().splitlines()
                text = msg[-1] if msg else ""
                if r["rc"] == 2 and ("usage" in r["stderr"].lower() or "invalid choice" in
                                     r["stderr"].lower() or "not implemented" in
                                     r["stderr"].lower() or not r["stderr"].strip()):
                    return {"status": "n/a", "detail": text[:100]}
                return {"status": "error", "detail": "exit %d: %s" % (r["rc"], text[:160])}
            times.append(r["sec"])
            rss.append(r["rss_kib"])
            if cleanup and i < (runs or self.runs) - 1:
                cleanup()
        return {"status": "ok", "sec": statistics.median(times), "rss_kib": max(rss),
                "all": times}


def rm(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def file_md5(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        while True:
            b = f.read(8 * MiB)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def tool(*args):
    return [PY, TOOL] + list(args)


def qtool(*args):
    return " ".join(shlex.quote(a) for a in tool(*args))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--check-scale-writer", action="store_true",
                    help="only self-check the 1 TiB fast writer at a small size")
    opts = ap.parse_args()

    size = parse_size(os.environ.get("BENCH_SIZE", "2G"))
    runs = max(1, int(os.environ.get("BENCH_RUNS", "3")))
    scale = os.environ.get("BENCH_SCALE", "1") not in ("0", "", "no", "false")
    scale_runs = max(1, int(os.environ.get("BENCH_SCALE_RUNS", str(runs))))
    if not os.path.isfile(TOOL):
        print("bench: %s not found (set VMA_TOOL)" % TOOL, file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="vma-bench-", dir=os.environ.get("TMPDIR"))
    failures = []
    try:
        if opts.check_scale_writer:
            check_sparse_writer(tmp)
            print("scale writer ok")
            return 0
        log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
        log("bench: %s of disks, %d runs, temp %s" % (human(size), runs, tmp))
        t0 = time.time()
        vm, imgdir = bench_vm(tmp, size)
        src = os.path.join(tmp, "src.vma")
        vmafixture.write_archive(vm, src, seed=3, order="proxmox")
        asize = os.path.getsize(src)
        isize = sum(s for _, s in vm.devices)
        log("bench: generated archive %s (%.0f s)" % (human(asize), time.time() - t0))
        R = Runner(tmp, runs)
        out = os.path.join(tmp, "out.vma")
        udir = os.path.join(tmp, "unpacked")
        imgcopy = os.path.join(tmp, "imgcopy")
        subprocess.call(["cp", src, out])                  # warm the cache
        for name in os.listdir(imgdir):
            with open(os.path.join(imgdir, name), "rb") as f:
                while f.read(8 * MiB):
                    pass
        rm(out)

        rows = []   # (name, result, bytes, base_key, target)

        def add(name, res, nbytes, base, target=None):
            rows.append((name, res, nbytes, base, target))
            if res["status"] == "error":
                failures.append("%s: %s" % (name, res["detail"]))
            log("bench: %-28s %s" % (name, ("%.2f s" % res["sec"]) if res["status"] == "ok"
                                     else res["status"] + " " + res.get("detail", "")))

        rmout = lambda: rm(out)  # noqa: E731
        q = shlex.quote
        add("cp archive", R.measure(["cp", src, out], cleanup=rmout), asize, None)
        add("cat archive > file", R.measure("cat %s > %s" % (q(src), q(out)), shell=True,
                                            cleanup=rmout), asize, "cp")
        add("cat | cat > file (pipe)", R.measure("cat %s | cat > %s" % (q(src), q(out)),
                                                 shell=True, cleanup=rmout), asize, "cp")
        rm(out)
        add("cp archive + sync", R.measure("cp %s %s && sync %s" % (q(src), q(out), q(out)),
                                           shell=True, cleanup=rmout), asize, "cp")
        rm(out)
        add("cp -r images", R.measure(["cp", "-r", imgdir, imgcopy],
                                      cleanup=lambda: rm(imgcopy)), isize, None)
        rm(imgcopy)
        add("cp -r images + sync", R.measure("cp -r %s %s && sync %s/*" % (
            q(imgdir), q(imgcopy), q(imgcopy)), shell=True, cleanup=lambda: rm(imgcopy)),
            isize, "cp -r images")
        rm(imgcopy)

        # the floor every command pays: interpreter start-up plus compiling the script
        add("vma-tool start (--version)", R.measure(tool("--version")), None, None)

        digests = {}

        def keep_digest(key):
            def f():
                if key not in digests and os.path.exists(out):
                    digests[key] = file_md5(out)
                rm(out)
            return f

        add("optimize file -> file", R.measure(tool("optimize", "-q", src, out),
                                               cleanup=keep_digest("file")),
            asize, "cp", 0.8)
        keep_digest("file")()
        inplace = os.path.join(tmp, "inplace.vma")
        res = R.measure(tool("optimize", "-q", inplace),
                        prepare=lambda: (rm(inplace), shutil.copyfile(src, inplace)))
        add("optimize in place", res, asize, "cp", 0.8)
        if os.path.exists(inplace):
            if res["status"] == "ok":
                digests["inplace"] = file_md5(inplace)
            rm(inplace)
        add("optimize - - (pipes)", R.measure(
            "cat %s | %s > %s" % (q(src), qtool("optimize", "-q", "-", "-"), q(out)),
            shell=True, cleanup=keep_digest("pipe")), asize, "cp", 0.8)
        keep_digest("pipe")()
        if len(set(digests.values())) > 1:
            failures.append("optimize outputs differ: %r" % digests)

        unpack_ok = {}
        image_md5 = {}

        def check_unpack(key):
            def f():
                if key not in unpack_ok and os.path.isdir(udir):
                    bad = []
                    for name, _size in vm.devices:
                        a = os.path.join(udir, "disk-%s.raw" % name)
                        b = os.path.join(imgdir, "disk-%s.raw" % name)
                        if b not in image_md5:
                            image_md5[b] = file_md5(b)
                        if not os.path.exists(a) or file_md5(a) != image_md5[b]:
                            bad.append(name)
                    unpack_ok[key] = bad
                    if bad:
                        failures.append("unpack (%s) output differs from the images: %s"
                                        % (key, ", ".join(bad)))
                rm(udir)
            return f

        add("unpack file", R.measure(tool("unpack", "-q", src, udir),
                                     cleanup=check_unpack("file")), asize, "cp", 0.8)
        check_unpack("file")()
        add("unpack - (pipe)", R.measure("cat %s | %s" % (q(src), qtool("unpack", "-q", "-", udir)),
                                         shell=True, cleanup=check_unpack("pipe")),
            asize, "cp", 0.8)
        check_unpack("pipe")()
        add("pack", R.measure(tool("pack", "-q", "--ctime", str(vm.ctime), imgdir, out),
                              cleanup=keep_digest("pack")), isize, "cp -r images", 0.5)
        keep_digest("pack")()
        if "pack" in digests and digests.get("file") and digests["pack"] != digests["file"]:
            failures.append("pack output differs from the optimize output of the same VM")
        add("verify", R.measure(tool("verify", "-q", src)), asize, "cp")
        add("info", R.measure(tool("info", src)), asize, "cp")

        scale_rows = []
        if scale:
            big = os.path.join(tmp, "big.vma")
            t1 = time.time()
            bsize, bcontent, _cfg, bdevices = write_sparse_archive(big)
            log("bench: wrote 1 TiB sparse archive %s (%.0f s)" % (human(bsize), time.time() - t1))
            bout = os.path.join(tmp, "big-out.vma")
            bdir = os.path.join(tmp, "big-unpacked")
            checked = []

            def check_big_unpack():
                if checked or not os.path.isdir(bdir):
                    rm(bdir)
                    return
                checked.append(1)
                for name, dsize in bdevices:
                    p = os.path.join(bdir, "disk-%s.raw" % name)
                    try:
                        st = os.stat(p)
                        with open(p, "rb") as f:
                            bad = []
                            for c, d in sorted(bcontent[name].items()):
                                f.seek(c * CLUSTER)
                                want = d[:max(0, dsize - c * CLUSTER)]
                                if f.read(len(want)) != want:
                                    bad.append(c)
                    except OSError as e:
                        failures.append("1 TiB unpack: %s" % e)
                        continue
                    if st.st_size != dsize or bad:
                        failures.append("1 TiB unpack: %s wrong (size %d, bad clusters %s)"
                                        % (name, st.st_size, bad[:5]))
                    if st.st_blocks * 512 > 256 * MiB:
                        failures.append("1 TiB unpack: %s not sparse (%s allocated)"
                                        % (name, human(st.st_blocks * 512)))
                rm(bdir)

            for name, cmd, clean in (
                    ("verify", tool("verify", "-q", big), None),
                    ("optimize", tool("optimize", "-q", big, bout), lambda: rm(bout)),
                    ("unpack", tool("unpack", "-q", big, bdir), check_big_unpack)):
                r = R.measure(cmd, cleanup=clean, runs=scale_runs)
                if clean:
                    clean()
                scale_rows.append(("1 TiB sparse: " + name, r, bsize))
                if r["status"] == "error":
                    failures.append("1 TiB %s: %s" % (name, r["detail"]))
                log("bench: 1 TiB %-15s %s" % (name, ("%.2f s" % r["sec"]) if r["status"] == "ok"
                                                 else r["status"] + " " + r.get("detail", "")))
            rm(big)

        floor = R.measure(["true"], runs=1)
        print_report(opts.markdown, rows, scale_rows, size, asize, isize, runs, vm,
                     floor.get("rss_kib", 0))
        if failures:
            print("\nproblems:")
            for f in failures:
                print("  - " + f)
            return 1
        return 0
    finally:
        if opts.keep:
            print("kept %s" % tmp, file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def spread(res):
    """(max - min) / median of the runs, in percent ("-" for a single run)."""
    t = res.get("all") or []
    if len(t) < 2 or not res["sec"]:
        return "-"
    return "%.0f%%" % (100.0 * (max(t) - min(t)) / res["sec"])


def print_report(markdown, rows, scale_rows, size, asize, isize, runs, vm, floor_kib):
    base = {}
    for name, res, nbytes, _b, _t in rows:
        if res["status"] == "ok":
            base[name] = res["sec"]
    cp_archive = base.get("cp archive")
    header = ["operation", "seconds", "spread", "MB/s", "x cp", "x cp+sync", "peak RSS",
              "target", ""]
    table = []
    for name, res, nbytes, bkey, target in rows:
        if res["status"] != "ok":
            table.append([name, res["status"], "", "", "", "", "", "" if target is None else
                          ">= %.1f x cp" % target, res.get("detail", "")[:60]])
            continue
        sec = res["sec"]
        ref = None
        if bkey == "cp":
            ref = cp_archive
        elif bkey:
            ref = base.get(bkey)
        ratio = (ref / sec) if (ref and sec > 0) else None
        sref = None
        if bkey and target is not None:
            sref = base.get(("cp archive" if bkey == "cp" else bkey) + " + sync")
        sratio = "%.2f" % (sref / sec) if (sref and sec > 0) else "-"
        verdict = ""
        if target is not None and ratio is not None:
            verdict = "ok" if ratio >= target else "MISS"
        table.append([name, "%.2f" % sec, spread(res),
                      "%.0f" % (nbytes / sec / 1e6 if sec > 0 else 0) if nbytes else "-",
                      "%.2f" % ratio if ratio is not None else "-", sratio,
                      "%.0f MiB" % (res["rss_kib"] / 1024),
                      "" if target is None else ">= %.1f x cp" % target, verdict])
    for name, res, nbytes in scale_rows:
        if res["status"] != "ok":
            table.append([name, res["status"], "", "", "", "", "", "< 60 s, < 200 MiB",
                          res.get("detail", "")[:60]])
            continue
        sec, rss = res["sec"], res["rss_kib"] / 1024
        table.append([name, "%.2f" % sec, spread(res),
                      "%.0f" % (nbytes / sec / 1e6 if sec > 0 else 0), "-", "-",
                      "%.0f MiB" % rss, "< 60 s, < 200 MiB",
                      "ok" if sec < 60 and rss < 200 else "MISS"])
    print(machine_line())
    print("vma-tool bench: disks %s (%s), archive %s, median of %d runs; MB/s = archive bytes "
          "(pack, cp -r images: image bytes) / s; spread = (max - min) / median; x cp = cp time / "
          "time (cp of the archive; for pack: cp -r of the images); x cp+sync: the same with the "
          "copy synced to disk (vma-tool fsyncs its output)" % (
              human(size), ", ".join("%s %s" % (n, human(s)) for n, s in vm.devices),
              human(asize), runs))
    print("peak RSS: max over the command's processes; includes the measuring wrapper's own "
          "%.0f MiB at fork (the value for `true`), so values near it mean 'at most that'"
          % (floor_kib / 1024))
    if markdown:
        print()
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join(["---"] + ["---:"] * 6 + ["---", "---"]) + "|")
        for r in table:
            print("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |")
    else:
        widths = [max(len(str(r[i])) for r in table + [header]) for i in range(len(header))]
        fmt = "  ".join("%%-%ds" % w if i in (0, 7, 8) else "%%%ds" % w
                        for i, w in enumerate(widths))
        print(fmt % tuple(header))
        for r in table:
            print((fmt % tuple(r)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
