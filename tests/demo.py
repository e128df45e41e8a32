#!/usr/bin/env python3
"""make demo: why optimize matters, in a minute and with nothing but Python.

Writes two backups of the same small VM a day apart (about 1% of the 4 KiB
blocks changed) the way Proxmox writes them -- each with its own random uuid
and its own cluster order -- then optimizes both and shows how much of the
second file a deduplicating backup tool could take from the first.
"""

import hashlib
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import vmafixture  # noqa: E402

TOOL = os.environ.get("VMA_TOOL", os.path.join(os.path.dirname(HERE), "vma-tool"))
DEVICES = [("drive-efidisk0", 540672), ("drive-scsi0", 96 << 20), ("drive-scsi1", 32 << 20)]


ANCHOR = b"\x5a\xa5"          # occurs about once per 64 KiB of random data
MIN_CHUNK = 512 << 10


def chunks(data):
    """Content-defined chunks of a file, as a deduplicating backup tool cuts
    them: a boundary at the first anchor at least MIN_CHUNK bytes after the
    previous one (restic's chunks are 512 KiB to 8 MiB, about 1 MiB on average)."""
    start = 0
    while start < len(data):
        cut = data.find(ANCHOR, start + MIN_CHUNK)
        end = len(data) if cut < 0 else cut + len(ANCHOR)
        yield data[start:end]
        start = end


def read(path):
    with open(path, "rb") as handle:
        return handle.read()


def reusable_share(first, second):
    """Share of the second data's bytes in chunks that the first has too."""
    known = {hashlib.sha256(chunk).digest() for chunk in chunks(first)}
    total = reused = 0
    for chunk in chunks(second):
        total += len(chunk)
        if hashlib.sha256(chunk).digest() in known:
            reused += len(chunk)
    return reused / total


def main():
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vma-tool-demo-") as work:
        monday = vmafixture.make_vm(7, devices=DEVICES, fill=0.6)
        tuesday = vmafixture.mutate_vm(monday, 8, fraction=0.01)
        a = os.path.join(work, "vzdump-qemu-100-monday.vma")
        b = os.path.join(work, "vzdump-qemu-100-tuesday.vma")
        vmafixture.write_archive(monday, a, seed=1)
        vmafixture.write_archive(tuesday, b, seed=2)
        print("Two backups of one VM (%d MiB of disks), a day apart, as Proxmox writes them:"
              % (sum(size for _, size in DEVICES) >> 20))
        for path in (a, b):
            print("  %-32s %6.1f MiB" % (os.path.basename(path), os.path.getsize(path) / 2 ** 20))
        floor = reusable_share(b"".join(monday.disks), b"".join(tuesday.disks))
        before = reusable_share(read(a), read(b))
        for path in (a, b):
            subprocess.run([sys.executable, TOOL, "optimize", "-q", path], check=True)
        after = reusable_share(read(a), read(b))
        subprocess.run([sys.executable, TOOL, "verify", "-q", b], check=True)
        for path, vm in ((a, monday), (b, tuesday)):    # every cluster survived, checked independently
            if vmafixture.contents_diff(vm, vmafixture.restore(path)):
                sys.exit("demo: %s lost data: %s" % (path, vmafixture.contents_diff(vm, vmafixture.restore(path))))
        print("\nShare of Tuesday's file that a deduplicating backup tool (content-defined")
        print("chunks of about 1 MiB, like restic's) can take from Monday's file:")
        print("  as written by Proxmox:     %5.1f %%" % (100 * before))
        print("  after vma-tool optimize:   %5.1f %%" % (100 * after))
        print("  the raw disk images:       %5.1f %%  (the best any archive can do)" % (100 * floor))
        print("\nBoth optimized files pass `vma-tool verify` (Proxmox's checks plus completeness), and an")
        print("independent reader (tests/vmafixture.py) restores every disk from them byte for byte.")
        print("(%.1f s. On your own backups: vma-tool info FILE, vma-tool optimize FILE.)"
              % (time.monotonic() - started))


if __name__ == "__main__":
    main()
