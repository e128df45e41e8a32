"""Disk models for tests/bench_dedup.py: a real ext4 file system, day 1 and day 2.

    zero_run_stats(buf) -> (data blocks, of which with an aligned 128-byte zero run)
    add_zero_runs(rng, buf, fraction) -> bytes with zero runs in about fraction of the 4 KiB blocks
    image_zero_run_stats(path) -> zero_run_stats over a whole file
    ext4_missing() -> None, or a text naming the missing programs (mke2fs, debugfs)
    build_ext4(workdir, disk_size, seed, log, usr=None|"system"|"host") -> Ext4Disks

build_ext4 makes a disk image (fake GPT, one partition at 1 MiB) holding an ext4 file system
made without mounting (`mke2fs -t ext4 -d TREE`) from a generated tree: /usr of packages
(ELF-like binaries and libraries with zero padding between segments, text, compressed data,
Python files), /etc, an SQLite-like database of 4 KiB pages, logs, an apt cache and a home
directory; the journal holds old transactions.  Free space is zero.  Day 2 is made with
`debugfs -w` and direct writes into the image: packages upgraded the dpkg way (new file
written beside the old one, old one removed, new one renamed), a package installed, one
removed, new .deb files in the apt cache and old ones cleaned, database pages rewritten in
place inside the database file's blocks, logs grown (fallocate plus the new text), and the
metadata writes copied into the journal.  Two day-2 images: "zero" (freed blocks zeroed, as
with discard in the guest) and "old" (freed blocks keep their old data, as debugfs `rm` and a
guest without discard leave them).  Everything is deterministic from the seed.

The tree's content (usr): None, Tree's order-0 content (random letters, byte-weighted code: about
1.25 : 1 with zstd -3, /usr 30 % of the file system); "system", SystemTree: the same kinds of
files made from one seeded vocabulary (Zipf-used words, identifiers, source lines, machine-code
snippets, strings, symbol entries), so that they hold the matches of a real system (about 2 : 1,
/usr 55 %); "host", HostTree: /usr made of copies of this host's /usr files (about 2 : 1 too,
but it changes with the host).

Stdlib only, Python 3.9+; needs mke2fs, debugfs and dumpe2fs (e2fsprogs), e2fsck optionally
(checks the images; a failure becomes a note).
"""

import array
import itertools
import math
import os
import random
import re
import shutil
import stat
import struct
import subprocess
import sys
import zlib

BLOCK = 4096
MiB = 1 << 20
PART_OFFSET = MiB                  # the file system starts at 1 MiB, like a partitioned disk
FAKE_TIME = 1700000000             # mke2fs/debugfs time stamps (E2FSPROGS_FAKE_TIME)
DAY = 86400

Z128 = bytes(128)
ZBLOCK = bytes(BLOCK)


# ---------------------------------------------------------------------------------------------
# Zero runs inside data blocks


def _has_aligned_zero128(blk):
    if blk.find(Z128) < 0:
        return False
    return any(blk[k:k + 128] == Z128 for k in range(0, len(blk), 128))


def zero_run_stats(buf):
    """(non-zero 4 KiB blocks, of which with at least one 128-byte aligned run of zero bytes) of
    buf, whose last partial block counts as zero-padded (like a file's last block on disk)."""
    n = nz = 0
    for o in range(0, len(buf), BLOCK):
        blk = buf[o:o + BLOCK]
        if len(blk) < BLOCK:
            blk = bytes(blk) + bytes(BLOCK - len(blk))
        if blk == ZBLOCK:
            continue
        n += 1
        if _has_aligned_zero128(blk):
            nz += 1
    return n, nz


def image_zero_run_stats(path):
    n = nz = 0
    with open(path, "rb") as f:
        while True:
            buf = f.read(4 * MiB)
            if not buf:
                break
            a, b = zero_run_stats(buf)
            n += a
            nz += b
    return n, nz


def add_zero_runs(rng, buf, fraction=0.14):
    """buf with zero runs in about fraction of its 4 KiB blocks: half of them a zeroed tail (a
    file's end: 256 bytes to all but the first 64), half an inner run of 256 to 2048 bytes; either
    holds at least one aligned 128-byte zero run, and no block becomes all zero."""
    out = None
    for o in range(0, len(buf), BLOCK):
        if rng.random() >= fraction:
            continue
        blen = min(BLOCK, len(buf) - o)
        if blen < 512:
            continue
        if out is None:
            out = bytearray(buf)
        if rng.random() < 0.5:
            s = rng.randrange(64, blen - 255)
            out[o + s:o + blen] = bytes(blen - s)
        else:
            n = rng.randint(256, min(2048, blen - 128))
            s = rng.randrange(64, blen - n + 1)
            out[o + s:o + s + n] = bytes(n)
    return buf if out is None else bytes(out)


# ---------------------------------------------------------------------------------------------
# File content


def _table(weights):
    """A 256-byte translation table drawing bytes with the given {byte: weight} (the rest of
    the 256 slots spread over all other byte values)."""
    t = []
    for b, w in weights.items():
        t += [b] * w
    rest = [b for b in range(256) if b not in weights]
    i = 0
    while len(t) < 256:
        t.append(rest[i % len(rest)])
        i += 7
    return bytes(t[:256])


_TEXT = bytes(b"eeeeeeeeeeeetttttttttaaaaaaaaooooooooiiiiiiinnnnnnnsssssssrrrrrrhhhhhhlllll"
              b"ddddcccuuummmffppggwwyybbvk.,-:;()/=_\"'0123456789TAISOWHE            "
              b"                    \n\n\n\n\t\t")
_TEXT = (_TEXT * (256 // len(_TEXT) + 1))[:256]
# x86-64 code: many 0x00, 0x48 (REX.W), 0x89/0x8b (mov), 0xe8 (call), 0xff, 0x0f...
_CODE = _table({0x00: 24, 0x48: 12, 0x89: 8, 0x8b: 8, 0xff: 8, 0x0f: 6, 0xe8: 5, 0x24: 4,
                0x44: 4, 0x85: 4, 0xc0: 4, 0x74: 3, 0x75: 3, 0x83: 4, 0x8d: 4, 0x01: 4})
# NUL-separated strings (.rodata, .dynstr)
_STR = bytes(b"\0\0\0\0" + _TEXT[:252])


def text(rng, n):
    return rng.randbytes(n).translate(_TEXT)


def code(rng, n):
    return rng.randbytes(n).translate(_CODE)


def strings(rng, n):
    return rng.randbytes(n).translate(_STR)


def words64(rng, n):
    """Pointer/integer tables: 8-byte little-endian values whose top three bytes are zero."""
    b = bytearray(rng.randbytes(n))
    for k in (5, 6, 7):
        b[k::8] = bytes(len(range(k, n, 8)))
    return bytes(b)


def _pad(n):
    return (-n) % BLOCK


def _elf_sections(rng, n, out, size, sections):
    """Append sections to an ELF file's pieces out (size bytes so far): for each (share of n,
    generator), zero padding to the next 4 KiB boundary, then the section, sometimes with a
    zero-initialised array inside when it is made of words64."""
    for share, fn in sections:
        out.append(bytes(_pad(size)))
        size += _pad(size)
        part = fn(rng, max(256, int(n * share)))
        if fn is words64 and rng.random() < 0.3:
            part += bytes(rng.randint(256, 4096)) + fn(rng, 256)
        out.append(part)
        size += len(part)


def elf(rng, n):
    """An ELF-like binary of about n bytes: headers/dynsym, .text, .rodata, .data, symbols, each
    loadable segment starting on a 4 KiB boundary (zero padding between, like -z separate-code);
    sometimes a zero-initialised array in .data."""
    n = max(n, 2048)
    head = rng.randint(1024, max(1024, min(n // 12, 64 << 10)))
    out = [b"\x7fELF\x02\x01\x01\0" + bytes(8), words64(rng, head - 16)]
    _elf_sections(rng, n, out, head, ((0.55, code), (0.22, strings), (0.08, words64)))
    out.append(strings(rng, max(64, n // 40)))          # .symtab/.strtab, section headers
    out.append(words64(rng, 64 * rng.randint(20, 40)))
    return b"".join(out)


def blob(rng, n):
    """Compressed data (.gz, .deb, .png, .jpg): incompressible."""
    return rng.randbytes(n)


def pyc(rng, n):
    b = bytearray(code(rng, n))
    b[0:16] = b"\x6f\x0d\x0d\x0a" + bytes(4) + rng.randbytes(8)
    return bytes(b)


GEN = {"bin": elf, "lib": elf, "doc": text, "man": blob, "gz": blob, "data": text,
       "blob": blob, "py": text, "pyc": pyc, "conf": text, "deb": blob}

# size distributions: (median bytes, sigma of ln, cap in bytes)
SIZES = {"bin": (48 << 10, 1.3, 24 * MiB), "lib": (160 << 10, 1.4, 32 * MiB),
         "doc": (2500, 1.0, 256 << 10), "man": (3000, 0.8, 128 << 10),
         "gz": (6000, 1.2, MiB), "data": (6000, 1.4, 4 * MiB), "blob": (12 << 10, 1.6, 8 * MiB),
         "py": (7000, 1.1, 512 << 10), "pyc": (6000, 1.1, 512 << 10), "conf": (1500, 1.0, 64 << 10),
         "deb": (300 << 10, 1.5, 32 * MiB)}


def _size(rng, kind, cap):
    med, sigma, hard = SIZES[kind]
    return max(1, min(int(rng.lognormvariate(math.log(med), sigma)), hard, cap))


_SYL = ("ba", "ce", "di", "fo", "gu", "ha", "ke", "li", "mo", "nu", "pa", "re", "si", "to", "vu",
        "xa", "ze", "lib", "gt", "kde", "net", "sys", "x", "py", "perl", "font", "core", "util")


def _name(rng, i):
    return "".join(rng.choice(_SYL) for _ in range(rng.randint(1, 3))) + str(i)


def db_page(rng, full):
    """An SQLite-like b-tree page: header, cell pointer array, unallocated gap (zero), cells."""
    page = bytearray(BLOCK)
    fill = rng.uniform(0.97, 1.0) if full else rng.uniform(0.3, 0.95)
    ncells = rng.randint(4, 40)
    hdr = 12 + 2 * ncells
    content = max(0, min(BLOCK - hdr, int(BLOCK * fill) - hdr))
    page[0] = 0x0d
    page[1:hdr] = rng.randbytes(hdr - 1)
    if content:
        cells = text(rng, content) if rng.random() < 0.7 else rng.randbytes(content)
        page[BLOCK - content:] = cells
    return page


def db_page_update(rng, page):
    """The page after a transaction: header changed, one to three cells rewritten, sometimes a
    new cell in the gap."""
    page = bytearray(page)
    ncells = 4
    page[1:12 + 2 * ncells] = rng.randbytes(11 + 2 * ncells)
    for _ in range(rng.randint(1, 3)):
        n = rng.randint(64, 600)
        s = rng.randrange(BLOCK // 2, BLOCK - n)
        page[s:s + n] = text(rng, n)
    if rng.random() < 0.3:
        # a new cell just below the content area
        k = BLOCK - 1
        while k > 64 and page[k - 1] != 0:
            k -= 1
        n = min(k - 64, rng.randint(50, 400))
        if n > 0:
            page[k - n:k] = text(rng, n)
    return bytes(page)


_PROCS = ("systemd", "kernel", "sshd", "cron", "postfix/smtpd", "dbus-daemon", "app",
          "systemd-logind", "rsyslogd", "apt-daily")


def log_text(rng, n, t0):
    lines = []
    size = 0
    t = t0
    while size < n:
        t += rng.randint(0, 40)
        proc = rng.choice(_PROCS)
        msg = text(rng, rng.randint(20, 140)).replace(b"\n", b" ").decode("ascii")
        line = "%s vm %s[%d]: %s\n" % (_ts(t), proc, rng.randint(100, 40000), msg)
        lines.append(line)
        size += len(line)
    return "".join(lines).encode("ascii")[:n]


_MON = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _ts(t):
    d, s = divmod(t, 86400)
    return "%s %2d %02d:%02d:%02d" % (_MON[(d // 30) % 12], d % 30 + 1, s // 3600, s // 60 % 60,
                                       s % 60)


def metadata_block(rng):
    """A metadata-like block (journal copies): inode table, directory, bitmap or extent blocks."""
    k = rng.random()
    b = bytearray(BLOCK)
    if k < 0.5:                                   # 16 inodes of 256 bytes, ~160 bytes used
        for i in range(0, BLOCK, 256):
            if rng.random() < 0.8:
                b[i:i + 160] = words64(rng, 160)
    elif k < 0.75:                                # directory entries
        n = rng.randint(200, BLOCK)
        b[:n] = text(rng, n)
    elif k < 0.9:                                 # bitmap
        n = rng.randint(0, BLOCK)
        b[:n] = b"\xff" * n
        m = rng.randint(0, BLOCK - n)
        b[n:n + m] = rng.randbytes(m)
    else:                                         # extent index
        n = 12 * rng.randint(1, 340)
        b[:n] = words64(rng, n)
    return bytes(b)


# ---------------------------------------------------------------------------------------------
# e2fsprogs


def _prog(name):
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def ext4_missing():
    miss = [p for p in ("mke2fs", "debugfs", "dumpe2fs") if not _prog(p)]
    return (" and ".join(miss) + " not found (Debian: apt-get install e2fsprogs)") if miss else None


def _env(day):
    return dict(os.environ, E2FSPROGS_FAKE_TIME=str(FAKE_TIME + day * DAY), TZ="UTC")


def _run(cmd, day=0):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(day),
                       stdin=subprocess.DEVNULL)
    err = [ln for ln in r.stderr.decode("utf-8", "replace").splitlines()
           if ln.strip() and not re.match(r"(debugfs|mke2fs|e2fsck|dumpe2fs) \d", ln)]
    if r.returncode != 0 or (cmd[0].endswith("debugfs") and err):
        raise RuntimeError("%s failed (exit %d): %s" % (os.path.basename(cmd[0]), r.returncode,
                                                        "; ".join(err[:3])))
    return r.stdout.decode("utf-8", "replace")


def _fsarg(disk):
    return "%s?offset=%d" % (disk, PART_OFFSET)


def debugfs(disk, commands, write=False, day=1, workdir=None):
    """Run debugfs commands on the file system of disk; returns stdout."""
    if len(commands) <= 1:
        return _run([_prog("debugfs")] + (["-w"] if write else []) +
                    ["-R", commands[0], _fsarg(disk)], day)
    path = os.path.join(workdir or os.path.dirname(disk), "debugfs.cmds")
    with open(path, "w") as f:
        f.write("\n".join(commands) + "\n")
    try:
        return _run([_prog("debugfs")] + (["-w"] if write else []) + ["-f", path, _fsarg(disk)],
                    day)
    finally:
        os.unlink(path)


def file_blocks(disk, path):
    """Physical blocks (file system block numbers) of path's data, in logical order."""
    out = debugfs(disk, ["blocks %s" % path])
    return [int(x) for x in out.split()]


def free_blocks(disk):
    """Free blocks of disk's file system (dumpe2fs: debugfs's ffb may have to write bitmaps)."""
    out = _run([_prog("dumpe2fs"), _fsarg(disk)])
    free = []
    for line in out.splitlines():
        if line.startswith("  Free blocks: "):
            for r in line.split(":", 1)[1].split(","):
                r = r.strip()
                if r:
                    lo, _, hi = r.partition("-")
                    free.extend(range(int(lo), int(hi or lo) + 1))
    return free


# ---------------------------------------------------------------------------------------------
# The tree (day 1)


class File:
    __slots__ = ("path", "kind", "size", "pkg")

    def __init__(self, path, kind, size, pkg):
        self.path, self.kind, self.size, self.pkg = path, kind, size, pkg


# The files of a generated package that Tree and SystemTree make alike (add(path, kind) makes a
# file's content; the draws from rng, and so the model's bytes, are the same as before they
# were shared).

def _doc_files(add, rng, doc):
    add(doc + "changelog.Debian.gz", "gz")
    if rng.random() < 0.5:
        add(doc + "README", "doc")


def _program_files(add, rng, name):
    for k in range(rng.randint(1, 3)):
        add("/usr/bin/%s%s" % (name, "-%d" % k if k else ""), "bin")
        add("/usr/share/man/man1/%s%s.1.gz" % (name, "-%d" % k if k else ""), "man")
    for k in range(rng.randint(0, 10)):
        add("/usr/share/%s/%s.%s" % (name, _name(rng, k), rng.choice(("txt", "xml", "ui"))), "data")


def _library_files(add, rng, name):
    for k in range(rng.randint(1, 2)):
        add("/usr/lib/x86_64-linux-gnu/lib%s.so.%d.0.%d" % (name, k + 1, rng.randint(0, 9)), "lib")


def _python_files(add, rng, name):
    directory = "/usr/lib/python3/dist-packages/%s/" % name
    for k in range(rng.randint(3, 40)):
        module = _name(rng, k)
        add(directory + module + ".py", "py")
        add(directory + "__pycache__/%s.cpython-311.pyc" % module, "pyc")


class Tree:
    """Generates and writes the day-1 tree under root; remembers every file and package."""

    USR_SHARE = 0.30                 # share of the file system filled by /usr

    def __init__(self, root, rng, fs_size):
        self.root = root
        self.rng = rng
        self.fs_size = fs_size
        self.files = {}                  # path -> File
        self.packages = []               # [(name, [paths])]
        self.blocks = 0                  # data blocks written
        self.zero_run_blocks = 0
        self.bytes = 0
        self.names = set()

    def write(self, path, content, kind, pkg=None, mtime=None):
        full = os.path.join(self.root, path.lstrip("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(content)
        t = mtime if mtime is not None else FAKE_TIME - self.rng.randint(DAY, 400 * DAY)
        os.utime(full, (t, t))
        a, b = zero_run_stats(content)
        self.blocks += a
        self.zero_run_blocks += b
        self.bytes += len(content)
        self.files[path] = File(path, kind, len(content), pkg)

    def gen(self, kind, cap, rng=None):
        rng = rng or self.rng
        return GEN[kind](rng, _size(rng, kind, cap))

    def new_package(self, i, cap, rng=None):
        """[(path, kind, content)] of a new package."""
        rng = rng or self.rng
        name = _name(rng, i)
        profile = rng.choices(("prog", "lib", "data", "python"), (35, 30, 20, 15))[0]
        out = []

        def add(path, kind):
            out.append((path, kind, self.gen(kind, cap, rng)))
        doc = "/usr/share/doc/%s/" % name
        add(doc + "copyright", "doc")
        _doc_files(add, rng, doc)
        if profile == "prog":
            _program_files(add, rng, name)
        elif profile == "lib":
            _library_files(add, rng, name)
        elif profile == "data":
            for k in range(rng.randint(5, 60)):
                kind = rng.choice(("data", "blob", "blob"))
                add("/usr/share/%s/%s/%s.%s" % (name, rng.choice(("icons", "pixmaps", "data", "l10n")),
                                                _name(rng, k), "png" if kind == "blob" else "xml"),
                    kind)
        else:
            _python_files(add, rng, name)
        return name, out

    def regen(self, kind, rng, n):
        """New content of about n bytes for a file of kind (an upgraded package's file)."""
        return GEN[kind](rng, n)

    def build_usr(self, budget):
        """/usr: generated packages until the tree holds budget bytes."""
        cap = max(64 << 10, budget // 25)
        i = 0
        while self.bytes < budget:
            name, files = self.new_package(i, cap)
            i += 1
            for path, kind, content in files:
                self.write(path, content, kind, pkg=len(self.packages))
            self.packages.append((name, [p for p, _, _ in files]))

    def build(self):
        rng = self.rng
        fs = self.fs_size
        self.build_usr(int(fs * self.USR_SHARE))
        # /etc
        for k in range(max(20, fs // (10 * MiB))):
            self.write("/etc/%s/%s.conf" % (rng.choice(("apt", "ssh", "systemd", "default", "app")),
                                            _name(rng, k)), self.gen("conf", 64 << 10), "conf")
        # database: one SQLite-like file of 4 KiB pages, 75 % full pages
        pages = max(64, int(fs * 0.08) // BLOCK)
        self.db_path = "/var/lib/app/data.sqlite"
        db = b"".join(db_page(rng, rng.random() < 0.75) for _ in range(pages))
        self.write(self.db_path, db, "db", mtime=FAKE_TIME)
        # logs
        self.logs = ["/var/log/syslog", "/var/log/dpkg.log", "/var/log/apt/history.log",
                     "/var/log/auth.log"]
        for path, share in zip(self.logs, (0.012, 0.002, 0.001, 0.002)):
            self.write(path, log_text(rng, max(5000, int(fs * share)), FAKE_TIME - 30 * DAY),
                       "log", mtime=FAKE_TIME)
        for k in range(1, 5):
            self.write("/var/log/syslog.%d.gz" % k, blob(rng, max(4096, int(fs * 0.002))), "gz")
        # apt cache
        self.debs = []
        for k in range(max(4, int(fs * 0.04) // (300 << 10))):
            p = "/var/cache/apt/archives/%s_1.%d_amd64.deb" % (_name(rng, k), k)
            self.write(p, self.gen("deb", max(64 << 10, fs // 200)), "deb")
            self.debs.append(p)
        # home
        budget = self.bytes + int(fs * 0.05)
        k = 0
        while self.bytes < budget:
            kind = rng.choice(("doc", "data", "blob", "blob"))
            self.write("/home/user/%s/%s" % (rng.choice(("Documents", "Pictures", "src", "tmp")),
                                             _name(rng, k)), self.gen(kind, fs // 50), kind)
            k += 1
        # directories: fixed times
        for dirpath, _dirs, _files in os.walk(self.root):
            os.utime(dirpath, (FAKE_TIME, FAKE_TIME))


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.+@,=/-]+$")    # names debugfs takes unquoted
_PACKED_EXT = (".gz", ".xz", ".bz2", ".zst", ".lz4", ".zip", ".whl", ".jar", ".png", ".jpg",
               ".jpeg", ".gif", ".webp", ".ogg", ".mp3", ".deb", ".woff", ".woff2", ".mo")


def host_kind(path, head):
    """The GEN kind a real file stands for (by its first bytes and name)."""
    if head.startswith(b"\x7fELF"):
        return "lib" if ".so" in os.path.basename(path) else "bin"
    if path.endswith(".pyc"):
        return "pyc"
    if path.endswith(".py"):
        return "py"
    if path.endswith(_PACKED_EXT):
        return "gz"
    return "doc"


class HostTree(Tree):
    """A Tree whose /usr is copies of this host's own /usr files (Python's library, binaries,
    libraries, documentation: data that compresses like a real system disk), grouped into
    "packages" by directory (/usr/lib/python3.11/email, /usr/share/doc/foo; a file directly in
    /usr/bin or a library directory is a package of its own).  The groups not copied are the
    reserve: installed packages come from it and upgraded files are rewritten with reserve
    files of the same kind.  Deterministic for one host and seed (the host's files decide)."""

    USR_SHARE = 0.55
    SOURCE = "/usr"

    def __init__(self, root, rng, fs_size):
        Tree.__init__(self, root, rng, fs_size)
        self.cap = max(64 << 10, fs_size // 100)
        groups = {}
        for dirpath, dirs, files in os.walk(self.SOURCE):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(dirpath, name)
                try:
                    st = os.lstat(full)
                except OSError:
                    continue
                if (not (0 < st.st_size <= self.cap) or not stat.S_ISREG(st.st_mode)
                        or not _PLAIN_NAME.match(full)):
                    continue
                parts = os.path.relpath(full, self.SOURCE).split(os.sep)
                key = "/".join(parts[:3]) if len(parts) > 3 else "/".join(parts)
                groups.setdefault(key, []).append((full, st.st_size))
        self.groups = sorted(groups.items())
        rng.shuffle(self.groups)
        self.next_group = 0
        self.pool = []                   # host files for regen

    def _read_group(self, files, prefix):
        out = []
        for full, _size in files:
            try:
                with open(full, "rb") as f:
                    content = f.read()
            except OSError:
                continue
            rel = os.path.relpath(full, self.SOURCE)
            out.append(("/usr/%s%s" % (prefix, rel), host_kind(full, content[:4]), content))
        return out

    def take_group(self, cap):
        """(name, [(path, kind, content)]) of the next host group not larger than cap; after the
        last group the groups come again as copies under /usr/local/copyN/."""
        for _ in range(len(self.groups)):
            n, self.next_group = self.next_group, self.next_group + 1
            key, files = self.groups[n % len(self.groups)]
            if sum(s for _, s in files) > cap:
                continue
            copy = n // len(self.groups)
            name = key.replace("/", "-") + ("-copy%d" % copy if copy else "")
            return name, self._read_group(files, "local/copy%d/" % copy if copy else "")
        raise ValueError("no files in %s" % self.SOURCE)

    def build_usr(self, budget):
        while self.bytes < budget:
            name, files = self.take_group(max(self.cap, budget // 25))
            for path, kind, content in files:
                if path not in self.files:
                    self.write(path, content, kind, pkg=len(self.packages))
            self.packages.append((name, [p for p, _, _ in files if p in self.files]))
        # the reserve (files of the groups not copied) rewrites upgraded files
        self.pool = [full for _key, files in self.groups[self.next_group:] for full, _ in files]

    def new_package(self, i, cap, rng=None):
        return self.take_group(cap)

    def regen(self, kind, rng, n):
        """n bytes from reserve files of the same kind (generated when there are none)."""
        out = b""
        for _ in range(200 if self.pool else 0):
            if len(out) >= n:
                break
            full = rng.choice(self.pool)
            try:
                with open(full, "rb") as f:
                    if host_kind(full, f.read(4)) == kind:
                        f.seek(0)
                        out += f.read(n - len(out))
            except OSError:
                pass
        return out + GEN[kind](rng, n - len(out)) if len(out) < n else out


# ---------------------------------------------------------------------------------------------
# A generated system tree: content with the LZ structure of a real /usr (the "usr" model)


def _zipf(n, s=1.0, q=2.7):
    """Cumulative Zipf-Mandelbrot weights 1 / (rank + q) ** s of ranks 0..n-1 (rng.choices)."""
    return list(itertools.accumulate(1.0 / (r + q) ** s for r in range(n)))


class Pieces:
    """A table of 65536 slots, each a byte string (piece) made by make(rng) when the table is
    built; fill(rng, n) joins slots drawn with random 16-bit numbers into n bytes.  A piece that
    make returns often fills many slots, so the output is order-0 over pieces with the matches
    that repeated pieces give an LZ compressor, and costs no Python work per byte.  local: the
    share of one fill's draws that go to a few blocks of 256 slots chosen for that fill (a file
    repeats its own words), made by mapping the top values of each number's high byte onto the
    chosen blocks."""

    SLOTS = 1 << 16

    def __init__(self, rng, make, local=0.0, blocks=2):
        self.table = [make(rng) for _ in range(self.SLOTS)]
        self.mean = sum(map(len, self.table)) / self.SLOTS
        self.local = int(256 * local)
        self.blocks = blocks

    def fill(self, rng, n):
        hi = None
        if self.local:
            chosen = [rng.randrange(256) for _ in range(self.blocks)]
            hi = bytes(range(256 - self.local)) + bytes(chosen[v % self.blocks]
                                                        for v in range(self.local))
        out = []
        got = 0
        while got < n:
            raw = bytearray(rng.randbytes(2 * (int((n - got) / self.mean * 1.02) + 4)))
            if hi:
                raw[1::2] = raw[1::2].translate(hi)           # little-endian: odd bytes high
            idx = array.array("H", raw)
            if sys.byteorder != "little":
                idx.byteswap()
            part = b"".join(map(self.table.__getitem__, idx))
            out.append(part)
            got += len(part)
        return b"".join(out)[:n]


_ONSET = ("", "", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
          "z", "st", "tr", "pr", "ch", "sh", "th", "bl", "gr", "sp", "cl", "qu")
_VOWEL = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "ea", "io", "ou", "y", "ai", "ee")
_CODA = ("", "", "", "n", "r", "s", "t", "l", "m", "x", "nd", "ng", "st", "ck", "rt", "ll")
_KEYWORDS = ("def", "return", "if", "else", "self", "import", "from", "for", "in", "not", "None",
             "True", "False", "and", "or", "class", "try", "except", "raise", "with", "as",
             "while", "lambda", "yield", "pass", "int", "char", "const", "void", "struct",
             "static", "unsigned", "case", "break", "size_t", "#include", "#define", "typedef")
_PUNCT = ("(", ")", ", ", " = ", ".", ":", "[", "]", " + ", " == ", "\"", "'", "): ", "()",
          "):", " {", "}", ";", " != ", " - ", "->", "_", " < ", " * ", "/", "=\"", "\">", "</",
          "<", ">", " && ", " || ", "{", "%s", "%d")
_SEPS = ((" ", 72), (", ", 5), (". ", 5), ("\n", 10), (".\n", 2), (".\n\n", 1), (": ", 1),
         (" (", 1), (") ", 1), ("-", 1), ("; ", 1))
_LINES = ("%s = %s(%s)", "return %s.%s", "if %s is None:", "self.%s = %s", "%s(%s, %s);",
          "for %s in %s:", "#include <%s/%s.h>", "<%s name=\"%s\">%s</%s>", "%s->%s = %s;",
          "} else if (%s) {")
_PYC_OPS = (0x7c, 0x64, 0x74, 0x6a, 0xab, 0xa6, 0x7d, 0x53, 0x01, 0x97, 0x6b, 0x72, 0x6e, 0x5a,
            0x7a)


class SystemContent:
    """The content of a generated system tree, from one seeded vocabulary: 6000 pseudo-words of
    syllables (Zipf use, frequent words short), 5000 identifiers and 3000 phrases made of them,
    2000 source lines, 1500 machine-code snippets (Zipf use); Pieces tables of prose, source
    text, code, NUL-terminated strings, symbol/relocation entries and pyc pieces over them.  With
    zstd -3, a tree's files of one kind one after another compress: text 4.0 : 1, source 4.1,
    ELF 2.7, pyc 2.9 (a copy of a Debian host's /usr: documentation and other text 4.1,
    binaries 2.5, libraries 2.9, Python 5.7, pyc 3.0); files alone compress less (small ones
    have no history)."""

    def __init__(self, rng):
        syl = sorted({rng.choice(_ONSET) + rng.choice(_VOWEL) + rng.choice(_CODA)
                      for _ in range(900)})
        rng.shuffle(syl)
        scum = _zipf(len(syl), 0.8, 5)
        words = set()
        while len(words) < 6000:
            k = rng.choices((1, 2, 3, 4), (30, 40, 22, 8))[0]
            words.add("".join(rng.choices(syl, cum_weights=scum, k=k)))
        words = sorted(words)
        rng.shuffle(words)
        noise = [rng.random() * 5 for _ in words]
        words = [w for _, w in sorted(zip([len(w) + x for w, x in zip(words, noise)], words))]
        wcum = _zipf(len(words), 1.1)
        self.word = lambda r: r.choices(words, cum_weights=wcum)[0]
        idents = set()
        while len(idents) < 5000:
            parts = [self.word(rng) for _ in range(rng.choices((1, 2, 3), (25, 50, 25))[0])]
            style = rng.random()
            if style < 0.6:
                idents.add("_".join(parts))
            elif style < 0.85:
                idents.add(parts[0] + "".join(p.capitalize() for p in parts[1:]))
            else:
                idents.add("".join(parts))
        idents = sorted(idents)
        rng.shuffle(idents)
        icum = _zipf(len(idents))
        self.ident = lambda r: r.choices(idents, cum_weights=icum)[0]
        phrases = [" ".join(self.word(rng) for _ in range(rng.randint(2, 5)))
                   for _ in range(3000)]
        pcum = _zipf(len(phrases))
        self.phrase = lambda r: r.choices(phrases, cum_weights=pcum)[0]
        lines = []
        for _ in range(2000):
            body = rng.choice(_LINES)
            body %= tuple(self.ident(rng) for _ in range(body.count("%s")))
            lines.append(b"\n" + b"    " * min(4, int(rng.expovariate(0.6))) + body.encode())
        lcum = _zipf(len(lines))
        self.line = lambda r: r.choices(lines, cum_weights=lcum)[0]
        self.prose = Pieces(rng, self._prose_piece, 0.4)
        self.source_text = Pieces(rng, self._source_piece, 0.4)
        self.strs = Pieces(rng, self._str_piece)
        snippets = [self._snippet(rng) for _ in range(1500)]
        ccum = _zipf(len(snippets), 1.2, 3)
        self.code = Pieces(rng, lambda r: r.choices(snippets, cum_weights=ccum)[0](r), 0.6)
        self.syms = Pieces(rng, self._sym_piece)
        self.pyc_body = Pieces(rng, self._pyc_piece)
        # license texts, quoted whole by about half the copyright files
        self.licenses = [self.prose.fill(rng, rng.randint(1500, 18000)) for _ in range(6)]

    # -- pieces (one per slot of a table)

    def _prose_piece(self, rng):
        w = self.phrase(rng) if rng.random() < 0.35 else self.word(rng)
        if rng.random() < 0.08:
            w = w.capitalize()
        return (w + rng.choices([s for s, _ in _SEPS], [c for _, c in _SEPS])[0]).encode()

    def _source_piece(self, rng):
        k = rng.choices(range(8), (30, 12, 22, 12, 4, 4, 12, 3))[0]
        if k == 0:
            return self.ident(rng).encode()
        if k == 1:
            return rng.choice(_KEYWORDS).encode() + b" "
        if k == 2:
            return rng.choice(_PUNCT).encode()
        if k == 3:
            return b"\n" + b"    " * min(5, int(rng.expovariate(0.7)))
        if k == 4:
            return str(int(rng.expovariate(0.05))).encode()
        if k == 5:
            return ("\"%s\"" % self.word(rng)).encode()
        if k == 6:
            return self.line(rng)
        return ("%s.%s(" % (self.ident(rng), self.ident(rng))).encode()

    def _str_piece(self, rng):
        k = rng.random()
        if k < 0.5:
            return self.ident(rng).encode() + b"\0"
        if k < 0.8:
            tail = rng.choice(("", "", ": %s", " %d", "\n", ": %s\n"))
            return (self.phrase(rng).capitalize() + tail).encode() + b"\0"
        fmt = rng.choice(("%s", "%d", "%u", "0x%x", "%zu", "%lu"))
        return ("%s %s" % (self.word(rng), fmt)).encode() + b"\0"

    @staticmethod
    def _snippet(rng):
        """One to three x86-64-like instructions (at most 14 bytes): a function of the slot's
        rng giving them with the variable bytes (call targets, branch offsets, displacements,
        immediates) drawn anew for each slot."""
        fixed = b""
        var = []                          # (offset, random bytes, width) of variable fields
        for _ in range(rng.choices((1, 2, 3), (50, 35, 15))[0]):
            k = rng.random()
            rex = rng.choices((b"", b"\x48", b"\x49", b"\x4c", b"\x41", b"\x66"),
                              (40, 35, 7, 7, 8, 3))[0]
            if k < 0.12:                                  # call/jmp rel32
                fixed += rng.choice((b"\xe8", b"\xe8", b"\xe9"))
                var.append((len(fixed), 4, 4))
                fixed += bytes(4)
            elif k < 0.24:                                # jcc rel8 / rel32
                if rng.random() < 0.7:
                    fixed += bytes([rng.choice((0x74, 0x75, 0xeb, 0x7e, 0x7f, 0x76))])
                    var.append((len(fixed), 1, 1))
                    fixed += b"\0"
                else:
                    fixed += b"\x0f" + bytes([rng.choice((0x84, 0x85, 0x8e, 0x8f))])
                    var.append((len(fixed), 2, 4))
                    fixed += bytes(4)
            elif k < 0.32:                                # push/pop/ret/nop
                fixed += (b"\x41" if rng.random() < 0.2 else b"") + bytes([rng.choice(
                    (0x50, 0x53, 0x55, 0x5b, 0x5d, 0x54, 0xc3, 0x90, 0x5c, 0x5e))])
            elif k < 0.40:                                # rip-relative lea/mov: disp32
                fixed += b"\x48" + bytes([rng.choice((0x8d, 0x8b)),
                                          rng.choice((0x05, 0x0d, 0x15, 0x35, 0x3d))])
                var.append((len(fixed), 3, 4))
                fixed += bytes(4)
            else:                                         # mov/add/cmp/test... r/m with modrm
                op = rng.choice((0x89, 0x8b, 0x8b, 0x89, 0x8d, 0x83, 0x85, 0x39, 0x31, 0x01,
                                 0x29, 0xc7, 0x3b, 0x63, 0x0f))
                modrm = rng.choice((0xc0, 0xc7, 0xd8, 0xe5, 0xf8, 0xde, 0x45, 0x44, 0x47, 0x43,
                                    0x7d, 0x75, 0x85, 0x87))
                if op == 0x0f:
                    fixed += rex + bytes([op, rng.choice((0xb6, 0xb7, 0x1f, 0xaf, 0x94)), modrm])
                else:
                    fixed += rex + bytes([op, modrm])
                if modrm == 0x44:
                    fixed += b"\x24"                      # SIB: [rsp + disp8]
                if modrm >> 6 == 1:
                    fixed += bytes([rng.choice((0x08, 0x10, 0x18, 0x20, 0x28, 0x30, 0x38, 0xf8,
                                                0xf0, 0xe8, 0x40, 0x48))])
                elif modrm >> 6 == 2:
                    var.append((len(fixed), 2, 4))
                    fixed += bytes(4)
                if op == 0x83:
                    fixed += bytes([rng.choice((0x01, 0x08, 0x10, 0xff, 0x00, 0x20))])
                elif op == 0xc7:
                    var.append((len(fixed), 1, 4))
                    fixed += bytes(4)
        fixed = fixed[:14]
        var = [v for v in var if v[0] + v[2] <= len(fixed)]
        if not var:
            return lambda r: fixed

        def make(r):
            b = bytearray(fixed)
            for o, w, width in var:               # near targets: high bytes 00 or ff
                high = b"\xff" if r.random() < 0.4 else b"\0"
                b[o:o + width] = r.randbytes(w) + high * (width - w)
            return bytes(b)
        return make

    @staticmethod
    def _sym_piece(rng):
        """An Elf64_Sym or Elf64_Rela entry (24 bytes)."""
        if rng.random() < 0.6:
            value = 0 if rng.random() < 0.35 else rng.randrange(0x1000, 0x400000) & ~0xf
            return struct.pack("<IBBHQQ", rng.randrange(1, 1 << 16),
                               rng.choice((0x12, 0x12, 0x11, 0x22, 0x10, 0x20)), 0,
                               rng.choice((0x0d, 0x0f, 0x10, 0x17, 0x18)) if value else 0, value,
                               int(rng.expovariate(1 / 200)) if value
                               else rng.choice((0, 8, 16, 24, 32, 48)))
        addend = rng.randrange(0x1000, 0x400000) if rng.random() < 0.25 else 0
        return struct.pack("<QQq", rng.randrange(0x3000, 0x400000) & ~7,
                           (rng.randrange(0, 600) << 32) | rng.choice((6, 7, 8, 1)), addend)

    def _pyc_piece(self, rng):
        k = rng.random()
        if k < 0.45:                                      # bytecode: (op, arg) pairs, caches
            out = bytearray()
            for _ in range(rng.randint(1, 5)):
                op = rng.choice(_PYC_OPS)
                out += bytes([op, min(255, int(rng.expovariate(0.15)))])
                if op in (0x74, 0x6a, 0xab, 0xa6, 0x6b):
                    out += bytes(2 * rng.choice((1, 2, 4, 4, 5)))
            return bytes(out)
        if k < 0.75:                                      # interned names
            w = self.ident(rng).encode()[:255]
            return b"\xda" + bytes([len(w)]) + w
        if k < 0.88:                                      # references
            return b"r" + struct.pack("<I", int(rng.expovariate(0.02)))
        if k < 0.95:                                      # small ints, tuples, constants
            return (rng.choice((b"\xe9", b")", b"\xa9", b"N", b"F", b"T")) +
                    bytes([int(rng.expovariate(0.2)) & 255]) + bytes(3))
        w = self.word(rng).encode()
        return b"\xfa" + bytes([len(w)]) + w

    # -- file content

    def text(self, rng, n):
        return self.prose.fill(rng, n)

    def source(self, rng, n):
        return self.source_text.fill(rng, n)

    def copyright(self, rng, n):
        """A copyright file: a header, and about half the time one of the license texts."""
        head = self.prose.fill(rng, min(n, rng.randint(200, 1500)))
        return head + rng.choice(self.licenses) if rng.random() < 0.5 else head

    def elf(self, rng, n):
        """An ELF-like binary of about n bytes: ELF header, dynamic symbols and relocations,
        .dynstr; then, each loadable segment starting on a 4 KiB boundary (zero padding
        between, like -z separate-code), .text, .rodata, .eh_frame-like entries, .data
        (pointers; sometimes a zero-initialised array); .symtab, .strtab, section headers."""
        n = max(n, 2048)
        head = rng.randint(1024, max(1024, min(n // 10, 96 << 10)))
        out = [b"\x7fELF\x02\x01\x01\0" + bytes(8) + struct.pack("<HHI", 3, 0x3e, 1),
               self.syms.fill(rng, head * 2 // 3 // 24 * 24), self.strs.fill(rng, head // 3)]
        _elf_sections(rng, n, out, sum(map(len, out)),
                      ((0.50, self.code.fill), (0.20, self.strs.fill), (0.08, self.syms.fill), (0.05, words64)))
        out.append(self.syms.fill(rng, max(64, n // 40) // 24 * 24))
        out.append(self.strs.fill(rng, max(64, n // 60)))
        out.append(words64(rng, 64 * rng.randint(20, 40)))
        return b"".join(out)

    def pyc(self, rng, n):
        """A pyc-like file: header, then marshal-like code (bytecode, interned names,
        references, small constants) with docstrings."""
        out = [b"\xa7\x0d\x0d\x0a" + bytes(4) + rng.randbytes(4) + struct.pack("<I", n)]
        size = 16
        while size < n:
            k = min(n - size, rng.randint(200, 3000))
            out.append(self.pyc_body.fill(rng, k))
            size += k
            if rng.random() < 0.3:
                doc = self.prose.fill(rng, rng.randint(30, 600))
                out.append(b"\xf5" + struct.pack("<I", len(doc)) + doc)
                size += len(doc) + 5
        return b"".join(out)[:max(n, 16)]


class SystemTree(Tree):
    """A Tree whose content (/usr, and /etc and /home files) is generated from one seeded
    SystemContent: text, source, ELF binaries and pyc files with the repeated words, lines,
    instruction sequences and strings of a real system, so that the disk compresses like a real
    system disk (about 2 : 1 with zstd -3, like a copy of a host's /usr), where Tree's order-0
    content compresses about 1.25 : 1.  /usr holds packages of programs, libraries with headers,
    data (text, icons, translations), Python modules with their pyc files and documentation.
    Deterministic from the seed alone (day 2's upgrades: new content of the same kind)."""

    USR_SHARE = 0.55

    def __init__(self, root, rng, fs_size):
        Tree.__init__(self, root, rng, fs_size)
        self.content = SystemContent(random.Random("system-%x" % rng.getrandbits(64)))
        c = self.content
        self.make = {"bin": c.elf, "lib": c.elf, "doc": c.text, "man": blob, "gz": blob,
                     "data": c.source, "blob": blob, "py": c.source, "pyc": c.pyc,
                     "conf": c.source, "deb": blob}

    def gen(self, kind, cap, rng=None):
        rng = rng or self.rng
        return self.make[kind](rng, _size(rng, kind, cap))

    def regen(self, kind, rng, n):
        return self.make[kind](rng, n)

    def build_usr(self, budget):
        """Tree's /usr, drawn from an rng of its own: the rest of the tree (/etc, the database,
        logs, the apt cache, /home) does not change when the /usr content does."""
        main = self.rng
        self.rng = random.Random("system-usr-%x" % main.getrandbits(64))
        try:
            Tree.build_usr(self, budget)
        finally:
            self.rng = main

    def new_package(self, i, cap, rng=None):
        """[(path, kind, content)] of a new package."""
        rng = rng or self.rng
        name = _name(rng, i)
        profile = rng.choices(("prog", "lib", "data", "python", "doc"), (30, 25, 18, 12, 18))[0]
        out = []

        def add(path, kind):
            out.append((path, kind, self.gen(kind, cap, rng)))
        doc = "/usr/share/doc/%s/" % name
        out.append((doc + "copyright", "doc", self.content.copyright(rng, _size(rng, "doc", cap))))
        _doc_files(add, rng, doc)
        if profile == "prog":
            _program_files(add, rng, name)
        elif profile == "lib":
            _library_files(add, rng, name)
            for k in range(rng.randint(0, 12)):
                add("/usr/include/%s/%s.h" % (name, _name(rng, k)), "data")
        elif profile == "data":
            for k in range(rng.randint(5, 60)):
                kind = rng.choices(("data", "blob", "gz"), (9, 1, 1))[0]
                where, ext = {"data": ("data", "xml"), "blob": ("icons", "png"),
                              "gz": ("locale", "mo")}[kind]
                add("/usr/share/%s/%s/%s.%s" % (name, where, _name(rng, k), ext), kind)
        elif profile == "python":
            _python_files(add, rng, name)
        else:
            for k in range(rng.randint(5, 60)):
                add(doc + "html/%s.html" % _name(rng, k), "doc")
        return name, out


# ---------------------------------------------------------------------------------------------
# Disk image


def _gpt(rng, disk_size, fs_size):
    """Protective MBR, GPT header and one partition entry (not checksummed, content only)."""
    sectors = disk_size // 512
    mbr = bytearray(512)
    mbr[0:440] = code(rng, 440)
    mbr[446:462] = struct.pack("<BBBBBBBBII", 0, 0, 2, 0, 0xee, 0xff, 0xff, 0xff, 1,
                               min(sectors - 1, 0xffffffff))
    mbr[510:512] = b"\x55\xaa"
    entry = bytearray(128)
    entry[0:16] = bytes.fromhex("af3dc60f838472478e793d69d8477de4")   # Linux filesystem
    entry[16:32] = rng.randbytes(16)
    entry[32:48] = struct.pack("<QQ", PART_OFFSET // 512, (PART_OFFSET + fs_size) // 512 - 1)
    entry[56:56 + 8] = "root".encode("utf-16-le")
    entries = bytes(entry) + bytes(127 * 128)
    hdr = bytearray(512)
    hdr[0:92] = struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x10000, 92,
                            0, 0, 1, sectors - 1, 34, sectors - 34, rng.randbytes(16), 2, 128, 128,
                            zlib.crc32(entries))
    hdr[16:20] = struct.pack("<I", zlib.crc32(bytes(hdr[0:92])))
    return bytes(mbr) + bytes(hdr) + entries, entries + bytes(hdr)


def sparse_concat(paths, dst):
    """Concatenate paths into dst, leaving holes where they have all-zero 1 MiB pieces."""
    zero = bytes(MiB)
    with open(dst, "wb") as out:
        for path in paths:
            with open(path, "rb") as f:
                while True:
                    buf = f.read(MiB)
                    if not buf:
                        break
                    if buf == zero[:len(buf)]:
                        out.seek(len(buf), 1)
                    else:
                        out.write(buf)
        out.truncate(out.tell())


def sparse_copy(src, dst):
    """Copy src to dst, leaving holes where src has all-zero 1 MiB pieces."""
    sparse_concat([src], dst)


class Ext4Disks:
    """Result of build_ext4: paths a, b_zero, b_old (disk images of disk_size bytes) and
    stats (dict of counters for the report)."""

    def __init__(self, a, b_zero, b_old, stats, notes):
        self.a, self.b_zero, self.b_old, self.stats, self.notes = a, b_zero, b_old, stats, notes


def _patch(disk, block, data):
    with open(disk, "r+b") as f:
        f.seek(PART_OFFSET + block * BLOCK)
        f.write(data)


def _read(disk, block, n=1):
    with open(disk, "rb") as f:
        f.seek(PART_OFFSET + block * BLOCK)
        return f.read(n * BLOCK)


TREES = {None: Tree, "system": SystemTree, "host": HostTree}


def build_ext4(workdir, disk_size, seed, log=lambda *a: None, fraction=0.01, usr=None):
    """Build day 1 and the two day-2 disks in workdir (see the module docstring).  fraction:
    day-2 writes, roughly, as a share of the file system's blocks; usr: the tree's content,
    None (Tree: packages of order-0 content, /usr 30 % of the file system), "system"
    (SystemTree: generated content that compresses like a real system disk, /usr 55 %) or "host"
    (HostTree: /usr made of copies of this host's /usr files, 55 %)."""
    rng = random.Random("ext4-%d" % seed)
    os.makedirs(workdir, exist_ok=True)
    fs_size = (disk_size - 2 * PART_OFFSET) // BLOCK * BLOCK
    if fs_size < 64 * MiB:
        raise ValueError("disk too small for the ext4 model (needs 66 MiB)")
    nblocks = fs_size // BLOCK
    stats = {}
    notes = []

    # ---- day 1: tree, mke2fs, journal
    root = os.path.join(workdir, "tree")
    shutil.rmtree(root, ignore_errors=True)
    tree = TREES[usr](root, rng, fs_size)
    tree.build()
    stats["files"] = len(tree.files)
    stats["packages"] = len(tree.packages)
    stats["tree bytes"] = tree.bytes
    stats["zero runs"] = (tree.blocks, tree.zero_run_blocks)
    log("ext4: tree of %d files, %d packages, %.0f MiB" % (len(tree.files), len(tree.packages),
                                                           tree.bytes / MiB))
    a = os.path.join(workdir, "disk-a.raw")
    with open(a, "wb") as f:
        f.truncate(disk_size)
    head, tail = _gpt(rng, disk_size, fs_size)
    with open(a, "r+b") as f:
        f.write(head)
        f.seek(disk_size - len(tail))
        f.write(tail)
    u = random.Random("ext4-uuid-%d" % seed)
    uuid = "%08x-%04x-4%03x-8%03x-%012x" % (u.getrandbits(32), u.getrandbits(16), u.getrandbits(12),
                                             u.getrandbits(12), u.getrandbits(48))
    hseed = "%08x-%04x-4%03x-8%03x-%012x" % (u.getrandbits(32), u.getrandbits(16),
                                              u.getrandbits(12), u.getrandbits(12),
                                              u.getrandbits(48))
    _run([_prog("mke2fs"), "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-L", "rootfs",
          "-U", uuid, "-E", "offset=%d,hash_seed=%s,lazy_itable_init=0,lazy_journal_init=0,"
          "nodiscard" % (PART_OFFSET, hseed), "-d", root, a, str(fs_size // 1024) + "k"], day=0)
    # mke2fs -d copies the tree's ctimes (the time of this run): set them like the mtimes
    fix = []
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            full = os.path.join(dirpath, n)
            fix.append("sif /%s ctime %d" % (os.path.relpath(full, root),
                                              int(os.lstat(full).st_mtime)))
    fix.append("sif / ctime %d" % FAKE_TIME)
    debugfs(a, fix, write=True, day=0, workdir=workdir)
    journal = file_blocks(a, "<8>")
    # an active system's journal is full of old transactions (block 0: journal superblock)
    with open(a, "r+b") as f:
        for blk in journal[1:]:
            f.seek(PART_OFFSET + blk * BLOCK)
            f.write(metadata_block(rng))
    stats["journal blocks"] = len(journal)
    db_blocks = file_blocks(a, tree.db_path)
    db_pages = tree.files[tree.db_path].size // BLOCK
    if len(db_blocks) != db_pages:
        raise RuntimeError("database file has %d blocks, expected %d" % (len(db_blocks), db_pages))
    log("ext4: day 1 image made (mke2fs -d)")

    # ---- day 2
    b = os.path.join(workdir, "disk-b-old.raw")
    sparse_copy(a, b)
    local = os.path.join(workdir, "day2")
    os.makedirs(local, exist_ok=True)
    nlocal = [0]

    def put(content):
        nlocal[0] += 1
        p = os.path.join(local, "f%06d" % nlocal[0])
        with open(p, "wb") as f:
            f.write(content)
        return p

    cmds = []
    target = nblocks * fraction * BLOCK            # bytes of day-2 writes, roughly
    counts = {}

    def count(kind, nbytes):
        n, s = counts.get(kind, (0, 0))
        counts[kind] = (n + 1, s + nbytes)

    def write_file(path, content, kind):
        d, name = os.path.split(path)
        cmds.append("cd %s" % d)
        cmds.append("write %s %s" % (put(content), name))
        count(kind, len(content))

    def read_tree(path):
        with open(os.path.join(root, path.lstrip("/")), "rb") as f:
            return f.read()

    # upgraded packages: new content written beside (.dpkg-new), old removed, new renamed
    order = list(range(len(tree.packages)))
    rng.shuffle(order)
    up_bytes = 0
    upgraded = []
    for pi in order:
        if up_bytes >= 0.45 * target:
            break
        name, paths = tree.packages[pi]
        psize = sum(tree.files[p].size for p in paths)
        if psize > 0.25 * target:
            continue
        upgraded.append(pi)
        up_bytes += psize
        new = []
        for p in paths:
            kind = tree.files[p].kind
            old = read_tree(p)
            r = rng.random()
            if kind in ("bin", "lib", "pyc"):      # rebuilt: a quarter of the blocks unchanged
                new_len = max(1, int(len(old) * rng.uniform(0.97, 1.05)))
                c = bytearray(tree.regen(kind, rng, new_len))
                for o in range(0, min(len(c), len(old)) - BLOCK, BLOCK):
                    if rng.random() < 0.25:
                        c[o:o + BLOCK] = old[o:o + BLOCK]
                c = bytes(c)
            elif kind in ("doc", "py", "data") and r < 0.3:     # edited: a few lines inserted
                c = old
                for _ in range(rng.randint(1, 4)):
                    s = rng.randrange(0, len(c) + 1)
                    c = c[:s] + text(rng, rng.randint(20, 400)) + c[s:]
            elif kind in ("gz", "man") or r < 0.2:              # recompressed / changed
                c = tree.regen(kind, rng, max(1, int(len(old) * rng.uniform(0.95, 1.1))))
            else:
                c = old                                        # unchanged, rewritten anyway
            new.append((p, c, kind))
        for p, c, kind in new:
            write_file(p + ".dpkg-new", c, "upgraded")
        for p, c, kind in new:
            d, fname = os.path.split(p)
            cmds += ["cd %s" % d, "rm %s" % fname, "ln %s.dpkg-new %s" % (fname, fname),
                     "unlink %s.dpkg-new" % fname]
        # the new .deb in the apt cache
        write_file("/var/cache/apt/archives/%s_2.0_amd64.deb" % name,
                   blob(rng, max(1024, int(psize * 0.4))), "new .deb")
    stats["upgraded"] = (len(upgraded), sum(len(tree.packages[i][1]) for i in upgraded), up_bytes)
    # apt autoclean: old .debs removed
    freed = 0
    for p in tree.debs:
        if freed >= 0.1 * target:
            break
        cmds.append("rm %s" % p)
        freed += tree.files[p].size
        count("removed", tree.files[p].size)
    # a package removed
    left = [i for i in order if i not in upgraded]
    removed = 0
    for pi in left:
        if removed >= 0.08 * target:
            break
        name, paths = tree.packages[pi]
        if sum(tree.files[p].size for p in paths) > 0.25 * target:
            continue
        for p in paths:
            cmds.append("rm %s" % p)
            count("removed", tree.files[p].size)
            removed += tree.files[p].size
    # a package installed (new directories first)
    installed = 0
    k = len(tree.packages)
    while installed < 0.08 * target:
        name, files = tree.new_package(k, max(64 << 10, int(0.08 * target)), rng)
        k += 1
        dirs = sorted({os.path.dirname(p) for p, _, _ in files})
        have = set()
        for d in dirs:
            parts = d.strip("/").split("/")
            for j in range(1, len(parts) + 1):
                sub = "/" + "/".join(parts[:j])
                if sub not in have and not os.path.isdir(os.path.join(root, sub.lstrip("/"))):
                    cmds.append("mkdir %s" % sub)
                have.add(sub)
        for p, kind, c in files:
            write_file(p, c, "installed")
            installed += len(c)
    # logs grow: fallocate the new blocks (initialised below), size set
    grow = {tree.logs[0]: int(0.12 * target), tree.logs[1]: int(0.01 * target) + 2000,
            tree.logs[2]: int(0.004 * target) + 800, tree.logs[3]: int(0.004 * target) + 300}
    log_new = {}
    for p, n in grow.items():
        old = tree.files[p].size
        first_new = -(-old // BLOCK)
        last = -(-(old + n) // BLOCK) - 1
        if last >= first_new:
            cmds.append("fallocate %s %d %d" % (p, first_new, last))
        cmds.append("sif %s size %d" % (p, old + n))
        cmds.append("sif %s mtime %d" % (p, FAKE_TIME + DAY))
        log_new[p] = (old, n)
        count("log growth", n)
    log("ext4: day 2: %d debugfs commands" % len(cmds))
    debugfs(b, cmds, write=True, workdir=workdir)

    # logs: mark the fallocated (uninitialised) extents initialised, write the new text
    setmap = []
    log_blocks = {}
    for p, (old, n) in log_new.items():
        blks = file_blocks(b, p)
        log_blocks[p] = blks
        first_new = -(-old // BLOCK)
        if len(blks) != -(-(old + n) // BLOCK):
            raise RuntimeError("%s: %d blocks after growing, expected %d" % (
                p, len(blks), -(-(old + n) // BLOCK)))
        if len(blks) > first_new:
            setmap.append("extent_open %s" % p)
            setmap += ["set_bmap %d %d" % (lb, blks[lb]) for lb in range(first_new, len(blks))]
            setmap.append("extent_close")
    if setmap:
        debugfs(b, setmap, write=True, workdir=workdir)
    for p, (old, n) in log_new.items():
        blks = log_blocks[p]
        body = log_text(rng, n, FAKE_TIME + rng.randint(0, DAY // 2))
        start = old // BLOCK
        head_len = old - start * BLOCK
        cur = _read(b, blks[start])[:head_len] if head_len else b""
        buf = cur + body
        buf += bytes(_pad(len(buf)))
        for j in range(len(buf) // BLOCK):
            _patch(b, blks[start + j], buf[j * BLOCK:(j + 1) * BLOCK])

    # database pages rewritten in place: 60 % in a few hot ranges, the rest scattered
    want = max(8, int(0.14 * target) // BLOCK)
    want = min(want, db_pages // 2)
    chosen = set()
    hot = int(want * 0.6)
    nreg = rng.randint(2, 5)
    for _ in range(nreg):
        span = max(4, 3 * hot // nreg)
        s = rng.randrange(0, max(1, db_pages - span))
        for pg in rng.sample(range(s, min(db_pages, s + span)), min(hot // nreg, span)):
            chosen.add(pg)
    while len(chosen) < want:
        chosen.add(rng.randrange(db_pages))
    for pg in sorted(chosen):
        _patch(b, db_blocks[pg], db_page_update(rng, _read(b, db_blocks[pg])))
    counts["db pages"] = (len(chosen), len(chosen) * BLOCK)

    # journal: the metadata writes (changed blocks that are no file data) copied in, plus
    # descriptor and commit blocks, from a seeded position on, wrapping
    changed = changed_blocks(a, b)[0]
    data_blocks = sum(-(-s // BLOCK) for k, (n, s) in counts.items()
                      if k in ("upgraded", "new .deb", "installed")) + len(chosen)
    data_blocks += sum(-(-(o + n) // BLOCK) - o // BLOCK for o, n in log_new.values())
    meta = max(0, changed - data_blocks)
    jn = min(len(journal) - 1, meta + meta // 60 + 2 * max(1, meta // 200))
    pos = rng.randrange(1, len(journal))
    for j in range(jn):
        _patch(b, journal[1 + (pos - 1 + j) % (len(journal) - 1)], metadata_block(rng))
    counts["journal"] = (jn, jn * BLOCK)
    stats["day2"] = counts

    # "zero" variant: every free block zeroed (freed blocks read as zero, as after discard)
    bz = os.path.join(workdir, "disk-b-zero.raw")
    sparse_copy(b, bz)
    free = free_blocks(bz)
    zeroed = 0
    with open(bz, "r+b") as f:
        for blk in free:
            f.seek(PART_OFFSET + blk * BLOCK)
            if f.read(BLOCK) != ZBLOCK:
                f.seek(PART_OFFSET + blk * BLOCK)
                f.write(ZBLOCK)
                zeroed += 1
    stats["freed blocks with old data"] = zeroed
    stats["free blocks"] = len(free)
    stats["fs blocks"] = nblocks
    if _prog("e2fsck"):
        for p in (a, b, bz):
            r = subprocess.run([_prog("e2fsck"), "-fn", _fsarg(p)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env=_env(1), stdin=subprocess.DEVNULL)
            if r.returncode != 0:
                tail = r.stdout.decode("utf-8", "replace").strip().splitlines()
                notes.append("ext4: e2fsck -fn %s: exit %d (%s)" % (
                    os.path.basename(p), r.returncode, "; ".join(tail[1:3])))
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(local, ignore_errors=True)
    log("ext4: day 2 images made")
    return Ext4Disks(a, bz, b, stats, notes)


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
                        clusters.add((off + o) // 65536)
            off += len(x)
    return nblk, len(clusters)
