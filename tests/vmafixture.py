"""Seeded VMA fixture writer and strict reference reader (test oracle).

An independent implementation of the Proxmox VMA format as FORMAT.md (repository root) describes
it.  It never imports vma-tool.  Stdlib only, Python 3.9+.

Main API:

    make_vm(seed, devices=None, configs=None, ctime=None, fill=0.5, directory=None) -> VM
    mutate_vm(vm, seed, fraction=0.01, configs=None, ctime=None, directory=None) -> VM
    write_archive(vm, dest=None, seed=0, order="proxmox", per_extent=58, uuid=None,
                  empty_extents=False, stored_zero_blocks=False, tail_garbage=False,
                  dev_ids=None, omit=(), duplicate=(), device_break=False, chunk=16) -> int | bytes
    restore(path_or_bytes, allow_missing=False) -> (configs [(name, bytes)], {device name: bytes})
                              (devices > 256 MiB come back as bytearray to avoid a copy)
    parse_layout(data) -> Layout
    rewrite_extent_header(data, extent_index, fn, fix_md5=True) -> offset of the extent

Extra helpers:

    Disk                      namedtuple (name, size); VM.devices holds these (they compare equal to tuples)
    VM.contents()             (configs, {name: bytes}) in the same shape restore() returns
    VM.copy()                 deep copy (in-memory disks are copied)
    canonical_archive(vm, dest=None) -> int | bytes
                              the canonical form, version 3 (FORMAT.md "Canonical form (version 3)";
                              what `vma-tool optimize` and `pack` write, uncompressed): uuid
                              CANONICAL_UUID, header as build_header, devices in descending dev_id
                              order, each device's clusters ascending, zero blocks never stored, tail
                              past the device end zeroed; extent boundaries at cluster 0, every
                              change between zero (mask 0) and data clusters, every multiple of 59
                              that is a zero cluster and every multiple of 8 that is a data cluster;
                              header + one empty extent when diskless.
    framed_zstd(plain, compress) -> bytes
                              the compressed form of a canonical archive (FORMAT.md "The compressed
                              form"), each frame compressed by compress(bytes) -> one zstd frame
    canonical_extents(vm) -> [(dev_id, first cluster, cluster count)]
                              the extents of canonical_archive(vm), in file order
    canonical_archive_v2(vm, dest=None)
                              the previous canonical form (version 2, not canonical any more): as
                              version 3, but zero runs cut at every multiple of 56 clusters
    canonical_archive_v1(vm, dest=None)
                              the first canonical form (version 1, not canonical any more):
                              ascending dev_id, 59 clusters per extent, new extent at each device
    CANONICAL_UUID            bytes of 12345678-aabb-ccdd-eeff-aabbccddeeff
    CANONICAL_ZERO_SPAN, CANONICAL_GRID, CANONICAL_CELL
                              59, 8 and 56 (clusters): the extent boundary rules (56: version 2)
    contents_diff(expected, actual) -> None or a short text naming the first difference
                              (expected/actual: VM or (configs, disks) tuples)
    assert_same_content(testcase, archive_or_contents, vm)
                              restore() (if given an archive) and compare with vm, short failure text
    build_header(ctime, configs, devices, uuid) -> bytes
                              main header; devices = [(dev_id, name, size)]; names str or bytes
                              (bytes verbatim: hostile names for corruption tests)
    write_sparse_archive(dest, ctime, configs, devices, uuid, clusters, order=None, per_extent=58)
                              fast streaming writer for huge, mostly zero devices (only the data
                              clusters given; 1 TiB in seconds); same bytes as write_archive
    proxmox_cluster_groups(nclusters, workers=16, chunk=16, early=())
                              deterministic Proxmox-like cluster order in lists (for the above)
    archive_order(vm, seed=0, order="proxmox", dev_ids=None, chunk=16) -> [(dev_index, cluster)]
    VMA_UUID_STR(uuid_bytes)  textual uuid
    Layout.entries(), Layout.locate(dev_id, cluster)
                              iterate used slots with their data offsets / find one cluster

Corruption helpers (tests/fuzz.py, tests/test_hostile.py), all lenient (no checks):

    parse_header(data, strict=False) -> header fields, blobs, devices, dev_info, configs,
                              config_slots
    header_size(data)         the header_size field, None below 60 bytes
    walk_extents(data, start=None, magic=EXTENT_MAGIC) -> [Extent]
                              extents one after the other up to a truncated one or a bad magic
    decode_extent(data, ext) -> [[mask, reserved, dev_id, cluster, [blocks]]] or None
    encode_extent(uuid, entries, block_count=None, magic=EXTENT_MAGIC, reserved1=0,
                  fix_md5=True) -> bytes of a whole extent (values cut to their field widths)
    fix_header_md5(data, clamp=True), fix_extent_md5(data, offset) -> True if written
    u32(data, offset), put_u32(data, offset, value)

VM disks may be bytearrays (default) or file paths (make_vm(..., directory=D) writes
D/disk-<name>.raw); write_archive streams file-backed disks with bounded memory.
"""

import collections
import hashlib
import os
import random
import struct
import uuid as _uuidmod

BLOCK = 4096
CLUSTER = 65536
BLOCKS_PER_CLUSTER = 16
EXTENT_HEADER = 512
SLOTS = 59
FIXED_HEADER = 12288
MAX_BLOCKS = SLOTS * BLOCKS_PER_CLUSTER  # 944

MAGIC = b"VMA\0"
EXTENT_MAGIC = b"VMAE"
CANONICAL_UUID = bytes.fromhex("12345678aabbccddeeffaabbccddeeff")

BIG_DEVICE = 256 << 20   # restore() returns bytearray instead of bytes above this size
ZERO_CLUSTER = bytes(CLUSTER)
ZERO_BLOCK = bytes(BLOCK)

_HDR = struct.Struct(">4sI16sq16sIII")
_DEVINFO = struct.Struct(">IIQQQ")
_EXT = struct.Struct(">4sHH16s16s")
_EXT_FULL = struct.Struct(">4sHH16s16s59Q")   # the whole extent header: _EXT + 59 blockinfo
_INFO = struct.Struct(">Q")

Disk = collections.namedtuple("Disk", "name size")


def _md5(data):
    return hashlib.md5(data, usedforsecurity=False)


def VMA_UUID_STR(b):
    return str(_uuidmod.UUID(bytes=bytes(b)))


def _rng(seed, tag):
    return random.Random("%r:%s" % (seed, tag))


def _nclusters(size):
    return (size + CLUSTER - 1) // CLUSTER


# ---------------------------------------------------------------------------------------------
# VM model


class VM:
    """A virtual machine: ctime, configs [(name, bytes)], devices [Disk(name, size)],
    disks [bytearray or file path] (exact device size) and dev_ids [1..n]."""

    def __init__(self, ctime, configs, devices, disks, dev_ids=None):
        self.ctime = int(ctime)
        self.configs = [(str(n), bytes(d)) for n, d in configs]
        self.devices = [Disk(str(n), int(s)) for n, s in devices]
        self.disks = list(disks)
        self.dev_ids = list(dev_ids) if dev_ids is not None else list(range(1, len(self.devices) + 1))
        if len(self.disks) != len(self.devices) or len(self.dev_ids) != len(self.devices):
            raise ValueError("devices, disks and dev_ids differ in length")

    def copy(self):
        disks = [bytearray(d) if isinstance(d, (bytes, bytearray)) else d for d in self.disks]
        return VM(self.ctime, self.configs, self.devices, disks, self.dev_ids)

    def disk_bytes(self, index):
        d = self.disks[index]
        if isinstance(d, (bytes, bytearray, memoryview)):
            return bytes(d)
        with open(d, "rb") as f:
            return f.read()

    def disk_data(self, index):
        """The disk's bytes to read from, a copy only if it is a file: copying a 1 GiB disk in memory
        costs seconds on a VM whose host backs its memory only when first touched."""
        d = self.disks[index]
        return d if isinstance(d, (bytes, bytearray, memoryview)) else self.disk_bytes(index)

    def contents(self):
        return (list(self.configs), {dev.name: self.disk_bytes(i) for i, dev in enumerate(self.devices)})

    def __repr__(self):
        return "VM(ctime=%d, configs=%r, devices=%r, dev_ids=%r)" % (
            self.ctime, [n for n, _ in self.configs], self.devices, self.dev_ids)


DEFAULT_DEVICES = (
    ("drive-efidisk0", 540672),          # 8.25 clusters, 4K aligned
    ("drive-scsi0", 3 * 1048576 + 36352),  # 512-aligned, straddling last 4K block
    ("drive-scsi1", 1048576 + 40960),    # 4K aligned, not 64K aligned
)


def _size_text(size):
    for unit, mult in (("G", 1 << 30), ("M", 1 << 20)):
        if size % mult == 0:
            return "%d%s" % (size // mult, unit)
    return "%dK" % ((size + 1023) // 1024)


def _map_key(name):
    key = name[6:] if name.startswith("drive-") else name
    if key.endswith("-backup"):
        key = key[:-7]
    return key


def default_configs(seed, devices):
    rng = _rng(seed, "configs")
    mac = ":".join("%02X" % b for b in [0xBC, 0x24, 0x11] + [rng.randrange(256) for _ in range(3)])
    lines = [
        "agent: 1",
        "boot: order=scsi0;net0",
        "cores: %d" % rng.choice((1, 2, 4)),
        "cpu: x86-64-v2-AES",
        "memory: %d" % rng.choice((1024, 2048, 4096)),
        "meta: creation-qemu=8.1.2,ctime=%d" % (1600000000 + rng.randrange(10 ** 8)),
        "name: fixture-vm-%s" % (seed,),
        "net0: virtio=%s,bridge=vmbr0,firewall=1" % mac,
        "numa: 0",
        "ostype: l26",
        "scsihw: virtio-scsi-single",
        "smbios1: uuid=%s" % _uuidmod.UUID(int=rng.getrandbits(128), version=4),
        "sockets: 1",
        "vmgenid: %s" % _uuidmod.UUID(int=rng.getrandbits(128), version=4),
    ]
    disk_lines = []
    for i, (name, size) in enumerate(devices):
        key = _map_key(name)
        extra = ",efitype=4m,pre-enrolled-keys=1" if key.startswith("efidisk") else ",iothread=1"
        disk_lines.append("%s: local-lvm:vm-100-disk-%d%s,size=%s" % (key, i, extra, _size_text(size)))
    lines = sorted(lines + disk_lines)
    for name, size in devices:
        lines.append("#qmdump#map:%s:%s:local-lvm:raw:" % (_map_key(name), name))
    conf = ("\n".join(lines) + "\n").encode()
    fw = b"[OPTIONS]\n\nenable: 1\n\n[RULES]\n\nIN ACCEPT -p tcp -dport 22 -log nolog\n"
    return [("qemu-server.conf", conf), ("qemu-server.fw", fw)]


def _nonzero_randbytes(rng, n):
    b = bytearray(rng.randbytes(n))
    if not any(b):
        b[0] = 1
    return bytes(b)


def _sparse_cluster(rng, clen, force_last=False):
    nblk = (clen + BLOCK - 1) // BLOCK
    flags = [rng.random() < 0.5 for _ in range(nblk)]
    if nblk >= 2:
        flags[rng.randrange(nblk)] = True
        k = rng.randrange(nblk)
        if force_last and k == nblk - 1:
            k = 0
        flags[k] = False
    else:
        flags[0] = True
    if force_last:
        flags[-1] = True
    out = bytearray(nblk * BLOCK)
    for i, f in enumerate(flags):
        if not f:
            continue
        o = i * BLOCK
        kind = rng.random()
        if kind < 0.6:
            out[o:o + BLOCK] = _nonzero_randbytes(rng, BLOCK)
        else:  # partly used block: a few non-zero bytes somewhere (at least one inside the device)
            lim = min(BLOCK, clen - o)
            ln = rng.randint(1, 64)
            st = rng.randrange(max(1, lim - ln + 1))
            piece = _nonzero_randbytes(rng, ln)
            out[o + st:o + st + ln] = piece
            if not any(out[o:o + lim]):
                out[o] = 0xA5
    if force_last:
        # the last block must be non-zero inside the device
        o = (nblk - 1) * BLOCK
        if not any(out[o:clen]):
            out[o] = 0x5A
    del out[clen:]
    return bytes(out)


def _gen_device(rng, size, fill):
    """Yield the clusters of one device (the last one cut at the device end)."""
    ncl = _nclusters(size)
    recent = []
    for c in range(ncl):
        clen = min(CLUSTER, size - c * CLUSTER)
        last = c == ncl - 1
        if fill <= 0:
            kind = "zero"
        elif last:
            kind = "sparse_last"
        elif c == 0:
            kind = "random"
        elif c == 1 and ncl >= 4 and fill < 1:
            kind = "zero"
        elif c == 2 and ncl >= 4:
            kind = "sparse"
        elif rng.random() >= fill:
            kind = "zero"
        else:
            r = rng.random()
            if r < 0.40:
                kind = "random"
            elif r < 0.65:
                kind = "sparse"
            elif r < 0.80:
                kind = "pattern"
            elif r < 0.90:
                kind = "byte"
            else:
                kind = "copy" if recent else "random"
        if kind == "zero":
            data = bytes(clen)
        elif kind == "random":
            data = rng.randbytes(clen)
            if clen <= BLOCK and not any(data):
                data = b"\x01" + data[1:]
        elif kind == "sparse":
            data = _sparse_cluster(rng, clen)
        elif kind == "sparse_last":
            data = _sparse_cluster(rng, clen, force_last=True)
        elif kind == "pattern":
            pat = _nonzero_randbytes(rng, rng.randint(1, 600))
            data = (pat * (CLUSTER // len(pat) + 1))[:clen]
        elif kind == "byte":
            data = bytes([rng.randint(1, 255)]) * clen
        else:
            data = rng.choice(recent)[:clen]
        if kind != "zero" and clen == CLUSTER:
            recent.append(data)
            if len(recent) > 8:
                recent.pop(0)
        yield data


def make_vm(seed, devices=None, configs=None, ctime=None, fill=0.5, directory=None):
    """Build a seeded VM.  devices: [(name, size)] in dev_id order (dev_ids 1..n).
    directory: if given, disks are written to directory/disk-<name>.raw (bounded memory) and
    VM.disks holds the paths."""
    if devices is None:
        devices = DEFAULT_DEVICES
    devices = [(str(n), int(s)) for n, s in devices]
    if ctime is None:
        ctime = 1600000000 + _rng(seed, "ctime").randrange(200000000)
    if configs is None:
        configs = default_configs(seed, devices)
    disks = []
    for i, (name, size) in enumerate(devices):
        rng = _rng(seed, "disk%d:%s" % (i, name))
        if directory is None:
            buf = bytearray()
            for data in _gen_device(rng, size, fill):
                buf += data
            disks.append(buf)
        else:
            path = os.path.join(os.fspath(directory), "disk-%s.raw" % name)
            with open(path, "wb") as f:
                pending = []
                plen = 0
                for data in _gen_device(rng, size, fill):
                    pending.append(data)
                    plen += len(data)
                    if plen >= (4 << 20):
                        f.write(b"".join(pending))
                        pending, plen = [], 0
                f.write(b"".join(pending))
            disks.append(path)
    return VM(ctime, configs, devices, disks)


def mutate_vm(vm, seed, fraction=0.01, configs=None, ctime=None, directory=None):
    """Return a "one day later" copy of vm: about fraction of the 4K blocks rewritten, mostly in a
    few hot regions; some blocks freed (zeroed), some newly filled.  File-backed disks need
    directory (copies are written there)."""
    rng = _rng(seed, "mutate")
    nblocks = [(s + BLOCK - 1) // BLOCK for _, s in vm.devices]
    total = sum(nblocks)
    chosen = set()
    if total:
        k = max(1, int(round(fraction * total)))
        k = min(k, total)
        regions = []
        for di, nb in enumerate(nblocks):
            if nb == 0:
                continue
            for _ in range(rng.randint(1, 3)):
                ln = max(1, min(nb, int(k * rng.uniform(0.3, 1.5)) + 1))
                regions.append((di, rng.randrange(max(1, nb - ln + 1)), ln))
        weights = [nb for nb in nblocks]
        attempts = 0
        while len(chosen) < k and attempts < 20 * k + 100:
            attempts += 1
            if regions and rng.random() < 0.8:
                di, st, ln = rng.choice(regions)
                chosen.add((di, st + rng.randrange(ln)))
            else:
                di = rng.choices(range(len(nblocks)), weights=weights)[0]
                chosen.add((di, rng.randrange(nblocks[di])))
    new = vm.copy()
    if configs is not None:
        new.configs = [(str(n), bytes(d)) for n, d in configs]
    if ctime is not None:
        new.ctime = int(ctime)
    handles = {}
    try:
        for i, d in enumerate(new.disks):
            if not isinstance(d, (bytes, bytearray)):
                if directory is None:
                    raise ValueError("mutate_vm: file-backed disks need directory=")
                path = os.path.join(os.fspath(directory), "disk-%s.raw" % new.devices[i].name)
                if os.path.abspath(path) == os.path.abspath(os.fspath(d)):
                    raise ValueError("mutate_vm: directory would overwrite the source disk")
                with open(d, "rb") as src, open(path, "wb") as dst:
                    while True:
                        piece = src.read(1 << 22)
                        if not piece:
                            break
                        dst.write(piece)
                new.disks[i] = path
                handles[i] = open(path, "r+b")
        for di, blk in sorted(chosen):
            size = vm.devices[di].size
            off = blk * BLOCK
            ln = min(BLOCK, size - off)
            r = rng.random()
            if r < 0.15:
                data = bytes(ln)                                   # freed
            elif r < 0.80:
                data = _nonzero_randbytes(rng, ln)                 # rewritten / newly filled
            elif r < 0.90:
                pat = _nonzero_randbytes(rng, rng.randint(1, 64))
                data = (pat * (BLOCK // len(pat) + 1))[:ln]
            else:                                                  # a few bytes tweaked
                if di in handles:
                    handles[di].seek(off)
                    cur = bytearray(handles[di].read(ln))
                else:
                    cur = bytearray(new.disks[di][off:off + ln])
                for _ in range(rng.randint(1, 8)):
                    cur[rng.randrange(ln)] = rng.randint(1, 255)
                data = bytes(cur)
            if di in handles:
                handles[di].seek(off)
                handles[di].write(data)
            else:
                new.disks[di][off:off + ln] = data
    finally:
        for h in handles.values():
            h.close()
    return new


# ---------------------------------------------------------------------------------------------
# Writer


def _name_blob(name):
    """A config or device name as its blob: str encoded as UTF-8, bytes taken verbatim (hostile
    names: not UTF-8, with "/" or NUL inside, empty), then the terminating NUL."""
    if isinstance(name, str):
        name = name.encode("utf-8", "surrogateescape")
    return bytes(name) + b"\0"


def build_header(ctime, configs, devices, uuid):
    """Main header bytes.  configs [(name, bytes)] in slot order; devices [(dev_id, name, size)]
    (any order: written by dev_id).  Names are str (written as UTF-8) or bytes (written verbatim,
    so corruption tests can build headers with hostile names: duplicates, "../x", embedded NUL,
    not UTF-8); sizes are written as given.
    Blob layout per FORMAT.md "Blob area" / "Blob area allocation": config name + data in order,
    then device names by dev_id, Proxmox's 512-byte growth rule (plus the two fixes of
    "Canonical header": never an empty area, never a blob past the area)."""
    configs = list(configs)
    if len(configs) > 256:
        raise ValueError("too many configs")
    area = bytearray()
    state = {"cap": 0, "pos": 1}

    def alloc(payload):
        ln = len(payload)
        if ln > 65535:
            raise ValueError("blob too large (%d bytes)" % ln)
        pos = state["pos"]
        if state["cap"] < pos + ln + 2:
            state["cap"] += -(-(ln + 2) // 512) * 512
        while state["cap"] < pos + ln + 2:   # Proxmox quirk (first blob of 510, 1022.. bytes) fixed
            state["cap"] += 512
        if len(area) < pos:
            area.extend(bytes(pos - len(area)))
        area[pos:pos] = bytes([ln & 0xFF, ln >> 8]) + bytes(payload)
        state["pos"] = pos + ln + 2
        return pos

    cfg_ptrs = []
    for name, data in configs:
        n = alloc(_name_blob(name))
        d = alloc(data)
        cfg_ptrs.append((n, d))
    dev_ptrs = {}
    for dev_id, name, size in sorted(devices, key=lambda x: x[0]):
        if not 1 <= dev_id <= 255:
            raise ValueError("bad dev_id %r" % (dev_id,))
        if dev_id in dev_ptrs:
            raise ValueError("duplicate dev_id %r" % (dev_id,))
        dev_ptrs[dev_id] = (alloc(_name_blob(name)), size)
    cap = state["cap"]
    if cap == 0:
        cap = 512
    pos = state["pos"]
    hdr = bytearray(FIXED_HEADER + cap)
    _HDR.pack_into(hdr, 0, MAGIC, 1, bytes(uuid), int(ctime), bytes(16), FIXED_HEADER, pos,
                   FIXED_HEADER + cap)
    for i, (n, d) in enumerate(cfg_ptrs):
        struct.pack_into(">I", hdr, 2044 + 4 * i, n)
        struct.pack_into(">I", hdr, 3068 + 4 * i, d)
    for dev_id, (ptr, size) in dev_ptrs.items():
        _DEVINFO.pack_into(hdr, 4096 + 32 * dev_id, ptr, 0, size, 0, 0)
    hdr[FIXED_HEADER:FIXED_HEADER + len(area)] = area
    hdr[32:48] = _md5(hdr).digest()
    return bytes(hdr)


def _proxmox_order(rng, devs, chunk):
    """devs: [(dev_index, dev_id, nclusters)].  Devices one after another, highest dev_id first;
    within a device chunks of `chunk` clusters processed by up to 16 workers, interleaved cluster
    by cluster; then a few copy-before-write clusters moved earlier."""
    seq = []
    for di, _did, n in sorted(devs, key=lambda d: -d[1]):
        workers = rng.choice((1, 4, 8, 16, 16, 16))
        starts = list(range(0, n, chunk))
        nxt = 0
        active = []
        while active or nxt < len(starts):
            while len(active) < workers and nxt < len(starts):
                s = starts[nxt]
                active.append([s, min(s + chunk, n)])
                nxt += 1
            k = rng.randrange(len(active))
            ch = active[k]
            seq.append((di, ch[0]))
            ch[0] += 1
            if ch[0] >= ch[1]:
                active.pop(k)
    if len(seq) >= 4:
        for _ in range(rng.randint(1, 3)):
            p = rng.randrange(len(seq) // 2, len(seq))
            item = seq.pop(p)
            seq.insert(rng.randrange(0, p), item)
    return seq


def archive_order(vm, seed=0, order="proxmox", dev_ids=None, chunk=16):
    """The (dev_index, cluster) emission order write_archive uses (before omit/duplicate)."""
    ids = list(dev_ids) if dev_ids is not None else list(vm.dev_ids)
    devs = [(i, ids[i], _nclusters(dev.size)) for i, dev in enumerate(vm.devices)]
    rng = _rng(seed, "order")
    if order == "proxmox":
        seq = _proxmox_order(rng, devs, chunk)
    elif order in ("sequential", "reverse", "random"):
        seq = [(di, c) for di, _did, n in sorted(devs, key=lambda d: d[1]) for c in range(n)]
        if order == "reverse":
            seq.reverse()
        elif order == "random":
            rng.shuffle(seq)
    else:
        raise ValueError("unknown order %r" % (order,))
    return seq


class _DiskReader:
    def __init__(self, disk, size):
        self.size = size
        if isinstance(disk, (bytes, bytearray, memoryview)):
            if len(disk) != size:
                raise ValueError("disk length %d != device size %d" % (len(disk), size))
            self.buf = disk
            self.f = None
        else:
            self.buf = None
            self.f = open(disk, "rb")
            self.pos = 0

    def cluster(self, c):
        off = c * CLUSTER
        if self.buf is not None:
            return self.buf[off:off + CLUSTER]
        if self.pos != off:
            self.f.seek(off)
        data = self.f.read(CLUSTER)
        self.pos = off + len(data)
        want = min(CLUSTER, self.size - off)
        if len(data) != want:
            raise ValueError("disk file shorter than the device size")
        return data

    def close(self):
        if self.f is not None:
            self.f.close()


def _blockinfo(mask, dev_id, cluster, reserved=0):
    """One 64-bit blockinfo entry: mask (bits 63..48), reserved (47..40), dev_id (39..32),
    cluster (31..0); every value is cut to its field width (hostile callers may pass anything)."""
    return (((mask & 0xFFFF) << 48) | ((reserved & 0xFF) << 40) | ((dev_id & 0xFF) << 32)
            | (cluster & 0xFFFFFFFF))


def _pack_extent_header(uuid, infos, block_count, magic=EXTENT_MAGIC, reserved1=0, md5=None):
    """The 512-byte extent header with blockinfo values infos (at most 59; the rest zero).
    md5: the 16 bytes to store, or None to store the correct checksum."""
    if len(infos) > SLOTS:
        raise ValueError("more than 59 slots")
    raw = bytearray(_EXT_FULL.pack(bytes(magic), reserved1 & 0xFFFF, block_count & 0xFFFF,
                                   bytes(uuid), bytes(16) if md5 is None else bytes(md5),
                                   *infos, *([0] * (SLOTS - len(infos)))))
    if md5 is None:
        raw[24:40] = _md5(raw).digest()
    return raw


def _extent_header(uuid, slots, block_count):
    """Valid extent header: slots [(mask, dev_id, cluster)], checksum set."""
    return _pack_extent_header(uuid, [_blockinfo(m, d, c) for m, d, c in slots], block_count)


class _Output:
    """Where write_archive and canonical_archive put an archive: dest is a path, a binary file
    object, or None (collect the bytes).  result(): the bytes for None, else the length."""

    def __init__(self, dest):
        self.parts = [] if dest is None else None
        self.file = open(dest, "wb") if dest is not None and not hasattr(dest, "write") else None
        self._write = self.parts.append if dest is None else (self.file or dest).write
        self.total = 0

    def write(self, data):
        self._write(data)
        self.total += len(data)

    def close(self):
        if self.file is not None:
            self.file.close()

    def result(self):
        return b"".join(self.parts) if self.parts is not None else self.total


def write_archive(vm, dest=None, seed=0, order="proxmox", per_extent=58, uuid=None,
                  empty_extents=False, stored_zero_blocks=False, tail_garbage=False, dev_ids=None,
                  omit=(), duplicate=(), device_break=False, chunk=16):
    """Write vm as a VMA archive like Proxmox does.  dest: path, binary file object or None.
    Returns the number of bytes written, or the archive bytes when dest is None.

    Extra options: device_break=True starts a new extent whenever the device changes (canonical
    form version 1); chunk = clusters per block-copy chunk in "proxmox" order (16; 64 with fleecing)."""
    ids = list(dev_ids) if dev_ids is not None else list(vm.dev_ids)
    if len(ids) != len(vm.devices) or len(set(ids)) != len(ids):
        raise ValueError("dev_ids must be unique, one per device")
    if per_extent != "random" and not (isinstance(per_extent, int) and 1 <= per_extent <= SLOTS):
        raise ValueError("per_extent must be 1..59 or 'random'")
    if uuid is None:
        u = _uuidmod.UUID(int=_rng(seed, "uuid").getrandbits(128), version=4)
        uuid = u.bytes
    elif isinstance(uuid, str):
        uuid = _uuidmod.UUID(uuid).bytes
    uuid = bytes(uuid)
    if len(uuid) != 16:
        raise ValueError("uuid must be 16 bytes")
    header = build_header(vm.ctime, vm.configs,
                          [(ids[i], d.name, d.size) for i, d in enumerate(vm.devices)], uuid)

    seq = archive_order(vm, seed, order, ids, chunk)
    omit = set((int(a), int(b)) for a, b in omit)
    for di, c in omit:
        if not (0 <= di < len(vm.devices) and 0 <= c < _nclusters(vm.devices[di].size)):
            raise ValueError("omit: no cluster %d on device index %d" % (c, di))
    if omit:
        seq = [x for x in seq if x not in omit]
    for item in duplicate:
        item = (int(item[0]), int(item[1]))
        if not (0 <= item[0] < len(vm.devices) and 0 <= item[1] < _nclusters(vm.devices[item[0]].size)):
            raise ValueError("duplicate: no cluster %d on device index %d" % (item[1], item[0]))
        drng = _rng(seed, "dup%r" % (item,))
        try:
            p = seq.index(item)
        except ValueError:
            p = -1
        seq.insert(drng.randint(p + 1, len(seq)), item)
    # vmstate clusters must appear in sequential order
    for di, dev in enumerate(vm.devices):
        if dev.name == "vmstate":
            pos = [i for i, x in enumerate(seq) if x[0] == di]
            cl = sorted(seq[i][1] for i in pos)
            for i, c in zip(pos, cl):
                seq[i] = (di, c)

    # cut into extents
    erng = _rng(seed, "extents")
    extents = []
    cur = []
    limit = erng.randint(1, SLOTS) if per_extent == "random" else per_extent
    for item in seq:
        if cur and (len(cur) >= limit or (device_break and cur[-1][0] != item[0])):
            extents.append(cur)
            cur = []
            limit = erng.randint(1, SLOTS) if per_extent == "random" else per_extent
        cur.append(item)
    if cur:
        extents.append(cur)
    if not vm.devices and not extents:
        extents.append([])          # diskless: header + one empty extent (like vma create)
    if empty_extents:
        xrng = _rng(seed, "empty")
        nins = max(1, len(extents) // 8)
        for _ in range(nins):
            extents.insert(xrng.randint(0, len(extents)), [])
        if len(extents) >= 3 and xrng.random() < 0.5:
            extents.append([])

    zrng = _rng(seed, "storedzero")
    grng = _rng(seed, "garbage")
    forced_zero = [not stored_zero_blocks]   # first candidate zero block is always stored
    readers = [_DiskReader(vm.disks[i], d.size) for i, d in enumerate(vm.devices)]
    garbage = {}
    for di, d in enumerate(vm.devices):
        if tail_garbage and d.size % BLOCK:
            garbage[di] = bytes(grng.randint(1, 255) for _ in range(BLOCK - d.size % BLOCK))

    out = _Output(dest)
    try:
        out.write(header)
        for ext in extents:
            slots = []
            pieces = []
            nblk = 0
            for di, c in ext:
                rd = readers[di]
                size = rd.size
                off = c * CLUSTER
                data = rd.cluster(c)
                nvalid = min(BLOCKS_PER_CLUSTER, (size - off + BLOCK - 1) // BLOCK)
                if len(data) < CLUSTER:
                    data = bytes(data) + bytes(CLUSTER - len(data))
                    if di in garbage:
                        g = garbage[di]
                        rel = size - off
                        data = data[:rel] + g + data[rel + len(g):]
                if not stored_zero_blocks and data == ZERO_CLUSTER:
                    mask = 0
                elif nvalid == BLOCKS_PER_CLUSTER and not stored_zero_blocks and \
                        ZERO_BLOCK not in _block_probe(data):
                    mask = 0xFFFF
                    pieces.append(data)
                    nblk += 16
                else:
                    mask = 0
                    for i in range(nvalid):
                        blk = data[i * BLOCK:(i + 1) * BLOCK]
                        store = blk != ZERO_BLOCK
                        if not store and stored_zero_blocks:
                            if not forced_zero[0]:
                                forced_zero[0] = True
                                store = True
                            else:
                                store = zrng.random() < 0.3
                        if store:
                            mask |= 1 << i
                            pieces.append(blk)
                            nblk += 1
                slots.append((mask, ids[di], c))
            out.write(_extent_header(uuid, slots, nblk))
            out.write(b"".join(pieces))
    finally:
        for rd in readers:
            rd.close()
        out.close()
    return out.result()


def _block_probe(data):
    """The 16 blocks of a full cluster (helper for the all-blocks-non-zero fast path)."""
    return [data[i:i + BLOCK] for i in range(0, CLUSTER, BLOCK)]


def canonical_archive_v1(vm, dest=None):
    """The previous canonical form (version 1, FORMAT.md "Versions 1 and 2 (not canonical any more)"):
    CANONICAL_UUID, ascending dev_id / cluster order, 59 clusters per extent, new extent at each
    device, zero blocks never stored, tail zeroed.  A valid archive that is no longer canonical."""
    return write_archive(vm, dest, order="sequential", per_extent=59, uuid=CANONICAL_UUID,
                         device_break=True)


# ---------------------------------------------------------------------------------------------
# Canonical form, version 3 (FORMAT.md "Canonical form (version 3)")

CANONICAL_ZERO_SPAN = 59   # zero-run extents end at every multiple of 59 clusters
CANONICAL_GRID = 8     # data extents end at every multiple of 8 clusters
CANONICAL_CELL = 56    # version 2 only: a new extent at every multiple of 56 clusters


def _canonical_cluster(chunk):
    """(mask, [4096-byte blocks]) of one cluster given its bytes inside the device (1..65536 bytes):
    a block is stored iff it starts inside the device and is not all zero; the part of a block
    past the device end is zero."""
    n = len(chunk)
    if n == CLUSTER and chunk == ZERO_CLUSTER:
        return 0, []
    mask = 0
    blocks = []
    for i in range((n + BLOCK - 1) // BLOCK):
        blk = bytes(chunk[i * BLOCK:(i + 1) * BLOCK])
        if len(blk) < BLOCK:
            blk += bytes(BLOCK - len(blk))
        if blk != ZERO_BLOCK:
            mask |= 1 << i
            blocks.append(blk)
    return mask, blocks


def _canonical_starts_here(c, zero, prev_zero):
    """True iff a version 3 extent starts at cluster c (zero: mask(c) == 0; prev_zero: of c-1)."""
    return (c == 0 or zero != prev_zero
            or (c % CANONICAL_ZERO_SPAN == 0 if zero else c % CANONICAL_GRID == 0))


def _canonical_v2_starts_here(c, zero, prev_zero):
    """True iff a version 2 extent starts at cluster c."""
    return (c == 0 or c % CANONICAL_CELL == 0 or zero != prev_zero
            or (c % CANONICAL_GRID == 0 and not zero))


def _canonical_device_extents(disk, size, starts_here=_canonical_starts_here):
    """Yield the extents of one device (version 3, or as starts_here says): lists of
    (cluster, mask, blocks)."""
    rd = _DiskReader(disk, size)
    try:
        cur = []
        prev_zero = None
        for c in range(_nclusters(size)):
            mask, blocks = _canonical_cluster(rd.cluster(c))
            zero = mask == 0
            if cur and starts_here(c, zero, prev_zero):
                yield cur
                cur = []
            cur.append((c, mask, blocks))
            prev_zero = zero
        if cur:
            yield cur
    finally:
        rd.close()


def _canonical_device_order(vm):
    """Device indexes in canonical order: descending dev_id."""
    if len(set(vm.dev_ids)) != len(vm.dev_ids):
        raise ValueError("dev_ids must be unique")
    return sorted(range(len(vm.devices)), key=lambda i: -vm.dev_ids[i])


def canonical_extents(vm):
    """[(dev_id, first cluster, cluster count)] of the extents of canonical_archive(vm), in file
    order ([] when diskless: the single empty extent is not listed)."""
    out = []
    for di in _canonical_device_order(vm):
        for ext in _canonical_device_extents(vm.disks[di], vm.devices[di].size):
            out.append((vm.dev_ids[di], ext[0][0], len(ext)))
    return out


def canonical_archive(vm, dest=None):
    """The canonical form, version 4 (FORMAT.md "Canonical form (version 4)"), i.e. exactly what
    `vma-tool optimize` and `pack` write for vm to a file, uncompressed.  dest: path, binary file
    object or None.  Returns the number of bytes written, or the archive bytes when dest is None.

    As version 3 (canonical_archive_v3), with one more config, last: vma-tool.digests holding
    digests_blob(vm) (a config of that name in vm.configs is left out, as the tool never copies one)."""
    return _write_canonical(vm, dest, _canonical_starts_here, canonical_configs(vm))


DIGESTS_NAME = "vma-tool.digests"


def canonical_configs(vm):
    """The configs of vm's canonical archive: its own (but a vma-tool.digests), then the digests blob."""
    return [(n, d) for n, d in vm.configs if n != DIGESTS_NAME] + [(DIGESTS_NAME, digests_blob(vm))]


def canonical_archive_v3(vm, dest=None):
    """The previous canonical form (version 3, not canonical any more: no digests blob), what
    `optimize` writes to standard output.  dest: as canonical_archive.

    uuid CANONICAL_UUID; header as build_header (configs in slot order, then device names by
    dev_id, ctime kept); devices in descending dev_id order; in each device clusters 0..n-1 once
    each; zero 4 KiB blocks never stored (an all-zero cluster is a mask-0 entry); bytes past the
    device end zero, blocks starting at/past it never stored.  A new extent starts at cluster c iff
    c == 0, zero(c) != zero(c-1), or c is a multiple of 59 (zero(c)) or of 8 (not zero(c)), where
    zero(c) means mask 0.  No devices: the header and one empty extent."""
    return _write_canonical(vm, dest, _canonical_starts_here)


def canonical_archive_v2(vm, dest=None):
    """The canonical form version 2 (not canonical any more): as canonical_archive_v3 but
    a new extent at cluster c iff c == 0, c % 56 == 0, zero(c) != zero(c-1), or (c % 8 == 0 and
    not zero(c))."""
    return _write_canonical(vm, dest, _canonical_v2_starts_here)


def _write_canonical(vm, dest, starts_here, configs=None):
    order = _canonical_device_order(vm)
    header = build_header(vm.ctime, vm.configs if configs is None else configs,
                          [(vm.dev_ids[i], d.name, d.size) for i, d in enumerate(vm.devices)],
                          CANONICAL_UUID)
    out = _Output(dest)
    try:
        out.write(header)
        if not vm.devices:
            out.write(_extent_header(CANONICAL_UUID, [], 0))
        for di in order:
            dev_id = vm.dev_ids[di]
            for ext in _canonical_device_extents(vm.disks[di], vm.devices[di].size, starts_here):
                slots = [(mask, dev_id, c) for c, mask, _ in ext]
                blocks = [b for _, _, bl in ext for b in bl]
                out.write(_extent_header(CANONICAL_UUID, slots, len(blocks)))
                out.write(b"".join(blocks))
    finally:
        out.close()
    return out.result()


# ---------------------------------------------------------------------------------------------
# The compressed form (FORMAT.md "The compressed form")

CUT_MARK = b"\x50\x2a\x4d\x18" + b"\x40\x00\x00\x00" + bytes(64)   # skippable frame, 64 zero bytes
MARK_SPACING = 16      # clusters: a cut mark before every extent that starts at a multiple of this


def framed_units(plain, per_extent=False):
    """Yield (needs a cut mark before it, bytes) of each unit of a plain canonical archive that
    is a frame of its own: the header, then of every extent the stored data of each of its
    clusters, the first one's behind the extent's 512-byte header (the header alone in an
    extent of zero clusters); per_extent: the extent whole, the form of version 4."""
    header_size = struct.unpack_from(">I", plain, 56)[0]
    yield False, plain[:header_size]
    pos = header_size
    while pos < len(plain):
        block_count = struct.unpack_from(">H", plain, pos + 6)[0]
        end = pos + 512 + block_count * BLOCK
        infos = struct.unpack_from(">59Q", plain, pos + 40)
        dev_id, cluster = infos[0] >> 32 & 0xFF, infos[0] & 0xFFFFFFFF
        mark = dev_id != 0 and cluster % MARK_SPACING == 0
        if per_extent:
            yield mark, plain[pos:end]
        else:
            lengths = [bin(info >> 48).count("1") * BLOCK for info in infos]
            lengths = [length for length in lengths if length]
            if not lengths:
                yield mark, plain[pos:pos + 512]
            start, data = pos, pos + 512
            for number, length in enumerate(lengths):
                data += length
                yield mark and number == 0, plain[start:data]
                start = data
        pos = end
    if pos != len(plain):
        raise ValueError("the plain archive ends inside an extent")


def framed_zstd(plain, compress, per_extent=False):
    """The compressed form of a plain canonical archive: the header as raw_frame(), every other
    unit of framed_units as one frame by compress(bytes) -> bytes, CUT_MARK before the units that
    need one."""
    out = []
    for number, (mark, unit) in enumerate(framed_units(bytes(plain), per_extent)):
        if mark:
            out.append(CUT_MARK)
        out.append(raw_frame(unit) if number == 0 else compress(unit))
    return b"".join(out)


_M64 = (1 << 64) - 1
_P1, _P2, _P3, _P4, _P5 = (11400714785074694791, 14029467366897019727, 1609587929392839161,
                           9650029242287828579, 2870177450012600261)


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & _M64


def _xxh_round(acc, lane):
    return (_rotl((acc + lane * _P2) & _M64, 31) * _P1) & _M64


def xxh64(data, seed=0):
    """XXH64 as its specification (xxhash's doc/xxhash_spec.md) describes it."""
    n, p = len(data), 0
    if n >= 32:
        v = [(seed + _P1 + _P2) & _M64, (seed + _P2) & _M64, seed, (seed - _P1) & _M64]
        while p + 32 <= n:
            for i in range(4):
                v[i] = _xxh_round(v[i], struct.unpack_from("<Q", data, p + 8 * i)[0])
            p += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & _M64
        for x in v:
            h = ((h ^ _xxh_round(0, x)) * _P1 + _P4) & _M64
    else:
        h = (seed + _P5) & _M64
    h = (h + n) & _M64
    while p + 8 <= n:
        h = (_rotl(h ^ _xxh_round(0, struct.unpack_from("<Q", data, p)[0]), 27) * _P1 + _P4) & _M64
        p += 8
    if p + 4 <= n:
        h = (_rotl(h ^ (struct.unpack_from("<I", data, p)[0] * _P1 & _M64), 23) * _P2 + _P3) & _M64
        p += 4
    while p < n:
        h = (_rotl(h ^ (data[p] * _P5 & _M64), 11) * _P1) & _M64
        p += 1
    h ^= h >> 33
    h = h * _P2 & _M64
    h ^= h >> 29
    h = h * _P3 & _M64
    return h ^ (h >> 32)


def raw_frame(data):
    """data as a zstd frame of raw blocks (FORMAT.md "The compressed form", RFC 8878): magic,
    descriptor (content size field, single segment, checksum), the content size, blocks of at most
    128 KiB each behind a 3-byte header (size << 3 | type 0 | last), the low 32 bits of XXH64."""
    n = len(data)
    if n < 256:
        fcs_code, fcs = 0, struct.pack("<B", n)
    elif n < 65536 + 256:
        fcs_code, fcs = 1, struct.pack("<H", n - 256)
    else:
        fcs_code, fcs = 2, struct.pack("<I", n)
    out = [struct.pack("<I", 0xFD2FB528), bytes([fcs_code << 6 | 0x20 | 0x04]), fcs]
    for start in range(0, n, 128 << 10):
        block = data[start:start + (128 << 10)]
        last = start + len(block) == n
        out += [struct.pack("<I", len(block) << 3 | last)[:3], block]
    out.append(struct.pack("<I", xxh64(data) & 0xFFFFFFFF))
    return b"".join(out)


# ---------------------------------------------------------------------------------------------
# Huge sparse devices (the 1 TiB case of tests/bench.py)


def proxmox_cluster_groups(nclusters, workers=16, chunk=16, early=()):
    """Yield a deterministic Proxmox-like emission order of one device's clusters 0..nclusters-1
    as lists of cluster numbers, cheap enough for the 2^24 clusters of 1 TiB.  `workers`
    block-copy workers each take the next `chunk` clusters and advance in lockstep, one cluster
    each in turn (one list per round of workers * chunk clusters; the last, shorter round the
    same way).  The `early` clusters (copied before write: the guest wrote them during the backup)
    come first, as one list, and are left out where they would have been.  archive_order's
    "proxmox" order is the seeded variant of this (random worker counts and interleaving)."""
    span = workers * chunk
    pattern = [w * chunk + i for i in range(chunk) for w in range(workers)]
    early = sorted(early)
    skip = set(early)
    if early:
        yield early
    full = nclusters - nclusters % span
    for g in range(0, nclusters, span):
        if g < full:
            group = [g + p for p in pattern]
        else:
            chunks = [range(s, min(s + chunk, nclusters)) for s in range(g, nclusters, chunk)]
            group = [ch[i] for i in range(chunk) for ch in chunks if i < len(ch)]
        if skip and any(g <= c < g + span for c in skip):
            group = [c for c in group if c not in skip]
        yield group


def write_sparse_archive(dest, ctime, configs, devices, uuid, clusters, order=None, per_extent=58):
    """Write a VMA archive of huge, mostly zero devices without materialising them: only the
    clusters holding data are given, every other cluster is written as a mask-0 entry (the 2^24
    clusters of a 1 TiB device take a few seconds).  The archive is what write_archive writes for
    the same disks, uuid and emission order (per_extent clusters per extent, zero blocks never
    stored, nothing past the device end), without write_archive's seeded options.

    ctime, configs, devices [(dev_id, name, size)] and uuid: the header, as build_header.
    clusters {dev_id: {cluster: bytes}}: the clusters that may hold data (up to 65536 bytes,
    shorter means zero-padded; bytes past the device end are ignored); the others are zero.
    order: [(dev_id, iterable of lists of cluster numbers)], every cluster of every device once,
    in emission order; default: devices in descending dev_id order, each in
    proxmox_cluster_groups order.  dest: path, binary file object or None.  Returns the number of
    bytes written, or the archive bytes when dest is None."""
    if not (isinstance(per_extent, int) and 1 <= per_extent <= SLOTS):
        raise ValueError("per_extent must be 1..59")
    sizes = {int(dev_id): int(size) for dev_id, _name, size in devices}
    for dev_id, data in clusters.items():
        if dev_id not in sizes:
            raise ValueError("clusters of an undeclared device %r" % (dev_id,))
        for c, d in data.items():
            if not (0 <= c < _nclusters(sizes[dev_id]) and len(d) <= CLUSTER):
                raise ValueError("bad cluster %r of device %d" % (c, dev_id))
    if order is None:
        order = [(dev_id, proxmox_cluster_groups(_nclusters(sizes[dev_id])))
                 for dev_id in sorted(sizes, reverse=True)]
    uuid = bytes(uuid)
    out = _Output(dest)
    buf = []                    # output waiting to be written (in pieces of about 8 MiB)
    buffered = [0]
    pending = []                # blockinfo values of the extent being filled
    blocks = []                 # its stored blocks (all belong to its first per_extent entries)
    pack = _pack_extent_header

    def flush(infos, stored):
        buf.append(bytes(pack(uuid, infos, len(stored))))
        buf.extend(stored)
        buffered[0] += EXTENT_HEADER + len(stored) * BLOCK
        if buffered[0] >= (8 << 20):
            out.write(b"".join(buf))
            del buf[:]
            buffered[0] = 0

    try:
        out.write(build_header(ctime, configs, devices, uuid))
        nentries = 0
        for dev_id, groups in order:
            size = sizes[dev_id]
            data = clusters.get(dev_id) or {}
            base = dev_id << 32
            for group in groups:
                nentries += len(group)
                if not data or data.keys().isdisjoint(group):
                    pending.extend([base | c for c in group])
                    while len(pending) >= per_extent:
                        flush(pending[:per_extent], blocks)
                        blocks = []
                        del pending[:per_extent]
                    continue
                for c in group:
                    d = data.get(c)
                    mask = 0
                    if d is not None:
                        mask, stored = _canonical_cluster(d[:size - c * CLUSTER])
                        blocks.extend(stored)
                    pending.append((mask << 48) | base | c)
                    if len(pending) == per_extent:
                        flush(pending, blocks)
                        pending, blocks = [], []
        if pending or not nentries:
            flush(pending, blocks)  # the rest; diskless: one empty extent (like write_archive)
        out.write(b"".join(buf))
    finally:
        out.close()
    return out.result()


# ---------------------------------------------------------------------------------------------
# Strict reader (oracle)


def _load(src):
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src)
    if hasattr(src, "read"):
        return src.read()
    with open(src, "rb") as f:
        return f.read()


class _Header:
    """parse_header() result: magic, version, uuid, ctime, md5, blob_offset, blob_size,
    header_size; blobs {offset in the blob area: payload} (the chain walked like Proxmox);
    devices {dev_id: (name, size)} (those with a size and a valid name blob: what a reader
    sees); dev_info {dev_id: (name pointer, size)} (every slot with a size, whatever its
    pointer); configs [(name, bytes)] (valid pairs in slot order); config_slots
    [(slot, name pointer, data pointer)] (every slot with a non-zero pointer)."""


def _parse_header(data, strict=True):
    """Parse the main header.  strict: raise ValueError like Proxmox's reader."""
    h = _Header()
    n = len(data)
    if n < 4 or data[:4] != MAGIC:
        if strict:
            raise ValueError("not a VMA archive (bad main magic)")
    if n < FIXED_HEADER:
        raise ValueError("truncated main header (%d bytes, need %d)" % (n, FIXED_HEADER))
    (h.magic, h.version, h.uuid, h.ctime, h.md5, h.blob_offset, h.blob_size,
     h.header_size) = _HDR.unpack_from(data, 0)
    if strict:
        if h.header_size <= FIXED_HEADER:
            raise ValueError("bad header size %d" % h.header_size)
        if h.header_size > n:
            raise ValueError("truncated main header (header size %d, file %d bytes)"
                             % (h.header_size, n))
        tmp = bytearray(data[:h.header_size])
        tmp[32:48] = bytes(16)
        if _md5(tmp).digest() != h.md5:
            raise ValueError("wrong header checksum (md5)")
        if h.version != 1:
            raise ValueError("unsupported version %d" % h.version)
        if h.blob_offset + 1 <= FIXED_HEADER:
            raise ValueError("bad blob buffer offset %d" % h.blob_offset)
        if h.blob_offset + h.blob_size > h.header_size:
            raise ValueError("bad blob buffer size %d/%d" % (h.blob_size, h.header_size))
    hs = min(h.header_size, n)
    blobs = {}
    start = h.blob_offset + 1
    end = min(h.blob_offset + h.blob_size, hs)
    while start + 2 <= end:
        ln = data[start] | (data[start + 1] << 8)
        if start + ln + 2 <= end:
            blobs[start - h.blob_offset] = bytes(data[start + 2:start + 2 + ln])
        start += ln + 2
    h.blobs = blobs

    def string(ptr):
        b = blobs.get(ptr)
        if b is None or not b or b[-1] != 0:
            return None
        return b.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")

    h.devices = {}
    h.dev_info = {}
    for dev_id in range(1, 256):
        ptr, _r, size, _r1, _r2 = _DEVINFO.unpack_from(data, 4096 + 32 * dev_id)
        if size == 0:
            continue
        h.dev_info[dev_id] = (ptr, size)
        name = string(ptr)
        if name is None:
            continue
        h.devices[dev_id] = (name, size)
    h.configs = []
    h.config_slots = []
    for i in range(256):
        np_, = struct.unpack_from(">I", data, 2044 + 4 * i)
        dp, = struct.unpack_from(">I", data, 3068 + 4 * i)
        if np_ or dp:
            h.config_slots.append((i, np_, dp))
        if not (np_ and dp):
            continue
        name = string(np_)
        blob = blobs.get(dp)
        if name is None or blob is None:
            if strict:
                raise ValueError("invalid config data pointers (config slot %d)" % i)
            continue
        h.configs.append((name, blob))
    return h


def parse_header(data, strict=False):
    """The main header of data (bytes-like) as a _Header.  strict=False (default): no checks
    besides the length of the fixed part (ValueError when data is shorter than 12288 bytes), so
    corrupted headers can be inspected; strict=True: Proxmox's checks (ValueError)."""
    return _parse_header(data, strict=strict)


def restore(src, allow_missing=False, complete=None, digests=False):
    """Strict reader like Proxmox `vma extract` (plus stricter checks: cluster numbers must be
    < ceil(size/65536), dev_ids must be declared).  Returns (configs, {device name: bytes}); the
    configs leave out vma-tool.digests unless digests (a restore never uses it: FORMAT.md,
    "Proxmox and the blob"), so a VM compares equal to the archive vma-tool writes of it.
    Raises ValueError with a message naming the problem (and the offset where meaningful).
    complete: names of the devices that must have every cluster (default: all), as Proxmox checks
    only the devices it extracts; allow_missing: none must."""
    data = _load(src)
    n = len(data)
    h = _parse_header(data, strict=True)
    devs = {}
    names = set()
    for dev_id, (name, size) in h.devices.items():
        if name in names:
            raise ValueError("duplicate device name %r" % name)
        names.add(name)
        devs[dev_id] = [name, size, bytearray(size), bytearray(_nclusters(size)), 0]
    off = h.header_size
    mv = memoryview(data)
    while off < n:
        if n - off < EXTENT_HEADER:
            raise ValueError("truncated extent header at offset %d (%d bytes)" % (off, n - off))
        eh = bytearray(data[off:off + EXTENT_HEADER])
        magic, res1, bc, euuid, emd5 = _EXT.unpack_from(eh, 0)
        eh[24:40] = bytes(16)
        if _md5(eh).digest() != emd5:
            raise ValueError("wrong extent checksum (md5) at offset %d" % off)
        if euuid != h.uuid:
            raise ValueError("extent uuid differs from the header uuid at offset %d" % off)
        if magic != EXTENT_MAGIC:
            raise ValueError("bad extent magic at offset %d" % off)
        if res1 != 0:
            raise ValueError("reserved extent field is %d at offset %d" % (res1, off))
        if bc > MAX_BLOCKS:
            raise ValueError("block count %d too large at offset %d" % (bc, off))
        dstart = off + EXTENT_HEADER
        if dstart + bc * BLOCK > n:
            raise ValueError("truncated extent at offset %d (need %d bytes, have %d)"
                             % (off, EXTENT_HEADER + bc * BLOCK, n - off))
        used = 0
        for i in range(SLOTS):
            info, = _INFO.unpack_from(eh, 40 + 8 * i)
            dev_id = (info >> 32) & 0xFF
            if dev_id == 0:
                continue
            mask = info >> 48
            cl = info & 0xFFFFFFFF
            d = devs.get(dev_id)
            if d is None:
                raise ValueError("unknown device id %d in extent at offset %d" % (dev_id, off))
            name, size, buf, seen, vmcount = d
            if cl >= len(seen):
                raise ValueError("cluster %d beyond the end of device %s (extent at offset %d)"
                                 % (cl, name, off))
            if seen[cl]:
                raise ValueError("duplicate cluster %d of device %s (extent at offset %d)"
                                 % (cl, name, off))
            if name == "vmstate":
                if cl != vmcount:
                    raise ValueError("vmstate cluster %d out of order (expected %d)" % (cl, vmcount))
                d[4] = vmcount + 1
            seen[cl] = 1
            base = cl * CLUSTER
            if mask == 0xFFFF and base + CLUSTER <= size:
                if used + 16 > bc:
                    raise ValueError("block count %d too small at offset %d" % (bc, off))
                p = dstart + used * BLOCK
                buf[base:base + CLUSTER] = mv[p:p + CLUSTER]
                used += 16
                continue
            for b in range(16):
                if not (mask >> b) & 1:
                    continue
                boff = base + b * BLOCK
                if boff >= size:
                    raise ValueError("block %d of cluster %d beyond the end of device %s "
                                     "(extent at offset %d)" % (b, cl, name, off))
                if used >= bc:
                    raise ValueError("block count %d too small at offset %d" % (bc, off))
                p = dstart + used * BLOCK
                ln = min(BLOCK, size - boff)
                buf[boff:boff + ln] = mv[p:p + ln]
                used += 1
        if used != bc:
            raise ValueError("block count %d but the slots use %d blocks (extent at offset %d)"
                             % (bc, used, off))
        off = dstart + bc * BLOCK
    disks = {}
    for dev_id in sorted(devs):
        name, size, buf, seen, _ = devs[dev_id]
        miss = seen.find(0)
        if miss >= 0 and not allow_missing and (complete is None or name in complete):
            raise ValueError("missing cluster %d of device %s" % (miss, name))
        if size <= BIG_DEVICE:
            disks[name] = bytes(buf)
            del buf[:]
        else:
            disks[name] = buf       # avoid a second copy of a huge device (compares like bytes)
    return [(name, data) for name, data in h.configs if digests or name != DIGESTS_NAME], disks


# ---------------------------------------------------------------------------------------------
# Layout inspection and corruption helpers


class Extent:
    """One extent: offset, block_count, slots [(mask, dev_id, cluster)] (the 59 entries with
    trailing all-zero entries trimmed; dev_id 0 entries before the last used one are kept),
    magic, reserved1, uuid, md5, data_offset, end."""

    def __init__(self, offset, block_count, slots, magic, reserved1, uuid, md5, raw):
        self.offset = offset
        self.block_count = block_count
        self.slots = slots
        self.magic = magic
        self.reserved1 = reserved1
        self.uuid = uuid
        self.md5 = md5
        self.raw = raw
        self.data_offset = offset + EXTENT_HEADER
        self.end = offset + EXTENT_HEADER + block_count * BLOCK

    def used(self):
        """[(slot index, (mask, dev_id, cluster))] of the used slots (dev_id != 0)."""
        return [(i, s) for i, s in enumerate(self.slots) if s[1] != 0]

    def __repr__(self):
        return "Extent(offset=%d, block_count=%d, slots=%d)" % (
            self.offset, self.block_count, len(self.slots))


class Layout:
    """parse_layout() result: header_size, uuid, ctime, version, blob_offset, blob_size,
    configs [(name, bytes)], devices {dev_id: (name, size)}, extents [Extent], end (end of the
    last complete extent), size (file length)."""

    def entries(self):
        """Yield (extent_index, slot_index, mask, dev_id, cluster, data_offset) for every used
        slot (dev_id != 0); data_offset = file offset of the slot's first stored block."""
        for ei, ext in enumerate(self.extents):
            pos = ext.data_offset
            for si, (mask, dev_id, cl) in enumerate(ext.slots):
                if dev_id == 0:
                    continue
                yield ei, si, mask, dev_id, cl, pos
                pos += bin(mask).count("1") * BLOCK

    def locate(self, dev_id, cluster):
        """(extent_index, slot_index, mask, data_offset) of the first entry for that cluster,
        or None."""
        for ei, si, mask, d, c, pos in self.entries():
            if d == dev_id and c == cluster:
                return ei, si, mask, pos
        return None

    def __repr__(self):
        return "Layout(header_size=%d, extents=%d, size=%d)" % (
            self.header_size, len(self.extents), self.size)


def parse_layout(data):
    """Lenient parse (no checksum checks) of an archive's structure."""
    data = _load(data) if not isinstance(data, (bytes, bytearray, memoryview)) else data
    h = _parse_header(data, strict=False)
    lay = Layout()
    lay.header_size = h.header_size
    lay.uuid = h.uuid
    lay.ctime = h.ctime
    lay.version = h.version
    lay.md5 = h.md5
    lay.blob_offset = h.blob_offset
    lay.blob_size = h.blob_size
    lay.configs = h.configs
    lay.devices = h.devices
    lay.size = len(data)
    lay.extents = walk_extents(data, h.header_size, magic=None)
    lay.end = lay.extents[-1].end if lay.extents else h.header_size
    return lay


def header_size(data):
    """The header_size field (offset 56) of data, or None if data is shorter than 60 bytes."""
    return u32(data, 56) if len(data) >= 60 else None


def walk_extents(data, start=None, magic=EXTENT_MAGIC):
    """[Extent] of data from offset start (default: header_size(data); [] if that is None) on,
    one after the other, up to the first one that is truncated (header or data) or, unless magic
    is None, whose magic differs from magic.  Lenient: no checksum, uuid or slot checks."""
    if start is None:
        start = header_size(data)
        if start is None:
            return []
    out = []
    off = start
    n = len(data)
    while off + EXTENT_HEADER <= n:
        raw = bytes(data[off:off + EXTENT_HEADER])
        fields = _EXT_FULL.unpack(raw)
        if magic is not None and fields[0] != magic:
            break
        entries = list(fields[5:])
        while entries and entries[-1] == 0:
            entries.pop()
        slots = [(e >> 48, (e >> 32) & 0xFF, e & 0xFFFFFFFF) for e in entries]
        ext = Extent(off, fields[2], slots, fields[0], fields[1], fields[3], fields[4], raw)
        if ext.end > n:
            break
        out.append(ext)
        off = ext.end
    return out


def decode_extent(data, ext):
    """The used slots (dev_id != 0) of extent ext (an Extent of data) with their stored blocks, in
    slot order: [[mask, reserved, dev_id, cluster, [4096-byte blocks]]] (reserved: blockinfo
    bits 47..40), the form encode_extent takes; None if the masks do not account for exactly
    block_count blocks."""
    pos = ext.data_offset
    out = []
    for info in _EXT_FULL.unpack(ext.raw)[5:]:
        dev_id = (info >> 32) & 0xFF
        if dev_id == 0:
            continue
        mask = info >> 48
        blocks = []
        for b in range(BLOCKS_PER_CLUSTER):
            if mask >> b & 1:
                if pos + BLOCK > ext.end:
                    return None
                blocks.append(bytes(data[pos:pos + BLOCK]))
                pos += BLOCK
        out.append([mask, (info >> 40) & 0xFF, dev_id, info & 0xFFFFFFFF, blocks])
    return out if pos == ext.end else None


def encode_extent(uuid, entries, block_count=None, magic=EXTENT_MAGIC, reserved1=0, fix_md5=True):
    """A whole extent (header + data) as bytes.  entries: up to 59 [mask, reserved, dev_id,
    cluster, blocks] (decode_extent's form; dev_id 0: an unused slot, its blocks are not written);
    the data is the blocks of the used entries in order, whatever the masks say.  block_count:
    default the number of blocks written.  Values are cut to their field widths and nothing is
    checked, so hostile extents can be built; fix_md5=False leaves the checksum zero."""
    infos = []
    blocks = []
    for mask, res, dev_id, cl, blks in entries:
        infos.append(_blockinfo(mask, dev_id, cl, res))
        if dev_id:
            blocks.extend(blks)
    if block_count is None:
        block_count = len(blocks)
    hdr = _pack_extent_header(uuid, infos, block_count, magic, reserved1,
                              None if fix_md5 else bytes(16))
    return bytes(hdr) + b"".join(bytes(b) for b in blocks)


def u32(data, offset):
    """The big-endian 32-bit field at offset."""
    return struct.unpack_from(">I", data, offset)[0]


def put_u32(data, offset, value):
    """Store value (cut to 32 bits) as the big-endian 32-bit field at offset, in place."""
    struct.pack_into(">I", data, offset, value & 0xFFFFFFFF)


def fix_header_md5(data, clamp=True):
    """Recompute the main header MD5 in place, over header_size bytes.  A header_size past the
    end of data: clamp=True hashes the data there is, clamp=False changes nothing (nor does a
    header_size below 48, which would not cover the checksum field).  Returns True if the
    checksum was written (False also for data shorter than 60 bytes)."""
    hs = header_size(data)
    if hs is None or (not clamp and not 48 <= hs <= len(data)):
        return False
    h = bytearray(data[:min(hs, len(data))])
    h[32:48] = bytes(16)
    data[32:48] = _md5(bytes(h)).digest()
    return True


def fix_extent_md5(data, offset):
    """Recompute the MD5 of the extent header at offset, in place; False (nothing changed) if
    data holds less than 512 bytes there."""
    h = bytearray(data[offset:offset + EXTENT_HEADER])
    if len(h) < EXTENT_HEADER:
        return False
    h[24:40] = bytes(16)
    data[offset + 24:offset + 40] = _md5(bytes(h)).digest()
    return True


def _decode_extent_header(raw):
    magic, res1, bc, euuid, emd5 = _EXT.unpack_from(raw, 0)
    slots = []
    sres = []
    for i in range(SLOTS):
        e, = _INFO.unpack_from(raw, 40 + 8 * i)
        slots.append((e >> 48, (e >> 32) & 0xFF, e & 0xFFFFFFFF))
        sres.append((e >> 40) & 0xFF)
    return {"magic": magic, "reserved1": res1, "block_count": bc, "uuid": euuid, "md5": emd5,
            "slots": slots, "slot_reserved": sres}


def _encode_extent_header(d):
    """The 512 header bytes of a _decode_extent_header dict (its md5 stored as it is)."""
    slots = list(d["slots"])
    sres = list(d.get("slot_reserved") or [])
    infos = [_blockinfo(mask, dev_id, cl, sres[i] if i < len(sres) else 0)
             for i, (mask, dev_id, cl) in enumerate(slots)]
    return _pack_extent_header(d["uuid"], infos, d["block_count"], d["magic"], d["reserved1"],
                               d["md5"])


def rewrite_extent_header(data, extent_index, fn, fix_md5=True):
    """Rewrite the header of extent number extent_index (per parse_layout) in the bytearray data.
    fn gets a dict {magic, reserved1, block_count, uuid, md5, slots: 59 (mask, dev_id, cluster),
    slot_reserved: 59 ints}; it may modify it in place (return None), return a dict, or return
    512 raw bytes.  The extent MD5 is recomputed unless fix_md5=False.  Returns the offset."""
    lay = parse_layout(data)
    off = lay.extents[extent_index].offset
    d = _decode_extent_header(bytes(data[off:off + EXTENT_HEADER]))
    res = fn(d)
    if res is None:
        res = d
    if isinstance(res, dict):
        raw = _encode_extent_header(res)
    else:
        raw = bytes(res)
        if len(raw) != EXTENT_HEADER:
            raise ValueError("raw extent header must be 512 bytes")
    data[off:off + EXTENT_HEADER] = raw
    if fix_md5:
        fix_extent_md5(data, off)
    return off


# ---------------------------------------------------------------------------------------------
# Comparison helpers


def _as_contents(x):
    if isinstance(x, VM):
        return x.contents()
    return x


def contents_diff(expected, actual):
    """None if equal, else a short description of the first difference."""
    ec, ed = _as_contents(expected)
    ac, ad = _as_contents(actual)
    if list(ec) != list(ac):
        return "configs differ: expected %r, got %r" % (
            [(n, len(d)) for n, d in ec], [(n, len(d)) for n, d in ac])
    if sorted(ed) != sorted(ad):
        return "device names differ: expected %r, got %r" % (sorted(ed), sorted(ad))
    for name in sorted(ed):
        a, b = ed[name], ad[name]
        if len(a) != len(b):
            return "device %s: size %d expected, got %d" % (name, len(a), len(b))
        if a != b:
            for o in range(0, len(a), CLUSTER):
                if a[o:o + CLUSTER] != b[o:o + CLUSTER]:
                    for p in range(o, min(o + CLUSTER, len(a))):
                        if a[p] != b[p]:
                            return "device %s: first difference at byte %d (cluster %d, block %d)" % (
                                name, p, p // CLUSTER, (p % CLUSTER) // BLOCK)
    return None


def assert_same_content(testcase, archive, vm, allow_missing=False):
    """restore(archive) (bytes/path; or an already restored (configs, disks) tuple) must equal vm."""
    if isinstance(archive, tuple):
        got = archive
    else:
        try:
            got = restore(archive, allow_missing=allow_missing)
        except ValueError as e:
            testcase.fail("restore failed: %s" % e)
    diff = contents_diff(vm, got)
    if diff:
        testcase.fail(diff)


# --- content digests (FORMAT.md, "Content digests"), written from the definition ---

def content_digest(disk, size):
    """(device digest hex, region size, [regional digest hex]) of a disk's bytes."""
    region = 1 << 30
    while region * 256 < size:
        region <<= 1
    sums = [0] * max(1, -(-size // region))
    for c in range(-(-size // CLUSTER)):
        chunk = bytes(disk[c * CLUSTER:min(size, (c + 1) * CLUSTER)])
        if chunk.count(0) == len(chunk):
            continue
        leaf = hashlib.sha256(struct.pack(">Q", c) + chunk).digest()
        sums[c * CLUSTER // region] += int.from_bytes(leaf, "big")
    u256 = lambda n: (n % (1 << 256)).to_bytes(32, "big")
    device = hashlib.sha256(b"vma-tool content" + struct.pack(">Q", size) + u256(sum(sums))).hexdigest()
    regions = [hashlib.sha256(b"vma-tool region" + struct.pack(">QQQ", size, region, r) + u256(s)).hexdigest()[:16]
               for r, s in enumerate(sums)]
    return device, region, regions


def digests_blob(vm):
    """The vma-tool.digests blob of a VM (with regional digests when they fit)."""
    def text(with_regions):
        lines = ["vma-tool content digests 1"]
        for dev_id, i in sorted((d, i) for i, d in enumerate(vm.dev_ids)):
            dev = vm.devices[i]
            device, region, regions = content_digest(vm.disk_data(i), dev.size)
            line = "dev_id=%d size=%d sha256=%s" % (dev_id, dev.size, device)
            if with_regions:
                line += " regions=%d:%s" % (region, ",".join(regions))
            lines.append(line + " name=" + dev.name)
        return ("\n".join(lines) + "\n").encode()
    blob = text(True)
    return blob if len(blob) <= 65535 else text(False)
