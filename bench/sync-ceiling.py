#!/usr/bin/env python3
"""The disk's ceiling for durable small-file writes: what no server that syncs before answering can exceed here.

    bench/sync-ceiling.py [--workers 64] [--seconds 5] [--dir DIR]

Each of WORKERS workers repeatedly does what Handoff's local blob store does for one 4 KiB upload, minus everything
else (HTTP, hashing, SQLite): create a temporary file, write 4 KiB, fdatasync it, rename it into a shard directory,
fsync that directory. The workers run concurrently, as 64 wrk connections do, so the filesystem can merge their
journal commits. Each worker is a process of its own: Python threads would share one interpreter lock, and on a fast
host the interpreter, not the disk, would then set the figure (as it did here once: 5.8k/s with and without syncs).
Prints files per second without any sync (what nginx and dufs do), then with the syncs. The directory defaults to a
fresh one under the system's temporary directory (the same filesystem `bench/run.sh` uses), and is removed at the end.
"""

import argparse
import os
import shutil
import tempfile
import multiprocessing
import time

BODY = os.urandom(4096)


def worker(root: str, index: int, deadline: float, sync: bool, counts) -> None:
    tmp = os.path.join(root, "tmp")
    shard = os.path.join(root, "blobs", f"{index % 256:02x}")
    os.makedirs(shard, exist_ok=True)
    n = 0
    while time.monotonic() < deadline:
        part = os.path.join(tmp, f"{index}-{n}.part")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, BODY)
            if sync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        os.rename(part, os.path.join(shard, f"{index}-{n}"))
        if sync:
            dfd = os.open(shard, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        n += 1
    counts[index] = n


def run(workers: int, seconds: float, base: str, sync: bool) -> float:
    root = tempfile.mkdtemp(prefix="handoff-sync-ceiling-", dir=base)
    try:
        os.makedirs(os.path.join(root, "tmp"))
        counts = multiprocessing.Array("q", workers, lock=False)
        deadline = time.monotonic() + seconds
        pool = [multiprocessing.Process(target=worker, args=(root, i, deadline, sync, counts)) for i in range(workers)]
        started = time.monotonic()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return sum(counts) / (time.monotonic() - started)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", "--threads", dest="workers", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args()
    # Unsynced first: on a filesystem without a journal, a burst of syncs and deletions slows every later file
    # operation for a while, and the unsynced figure is the one that would suffer.
    plain = run(args.workers, args.seconds, args.dir, sync=False)
    print(f"unsynced 4 KiB files/s (write, rename), {args.workers} processes: {plain:,.0f}")
    durable = run(args.workers, args.seconds, args.dir, sync=True)
    print(f"durable 4 KiB files/s (write, fdatasync, rename, fsync dir), {args.workers} processes: {durable:,.0f}")


if __name__ == "__main__":
    main()
