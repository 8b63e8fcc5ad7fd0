"""Flat as the store grows: S3 rates at 10 thousand, 100 thousand and 1 million objects.

    python -m bench.scale [--levels 10000,100000,1000000] [--ops 3000] [--rounds 3]

One gateway process (`mailstore gateway`, as bench/s3.py starts it) serves the
whole run. Between measurements this process fills the store up to the next
level through the engine itself (a second process on the same engine, as the
HAProxy pair is): 4 KiB objects in Dovecot obox's key layout
<md5(user)[:8]>/<user>/mailboxes/<guid>/<oid>, 1000 users x 5 mailboxes,
2000 objects per group commit. At each level it measures, over HTTP with the
same pre-signed keep-alive loader as bench/s3.py (32 connections):

- PUT of new 4 KiB objects,
- GET and HEAD of objects picked at random from the whole store (not the
  ones just written, which would be hot in every cache),
- LIST (ListObjectsV2, max-keys 100) starting after a random key, so every
  page has 100 keys wherever it lands.

and prints ops/s, p50/p99, the gateway's CPU per request, its RSS (and the
private, anonymous part of it: the rest is the memory-mapped index), and the
index's and data files' size; the last table is each rate at the largest
level as a fraction of the rate at the smallest. The machine is shared and
noisy: rounds alternate nothing here, so run it twice before reading a 10 %
difference.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from gateway.engine.commit import Txn, Write
from gateway.engine.local import LocalEngine
from gateway.engine.model import ObjectMeta

from .s3 import BUCKET, Result, Server, build, drive, ensure_bucket, start_gateway

USERS = 1000
BOXES = 5
BODY = os.urandom(4096)
ETAG = f'"{hashlib.md5(BODY).hexdigest()}"'
BATCH = 2000


def key_of(i: int) -> str:
    """The i-th object's key: users round-robin, so every level spreads over every user."""
    user = f"user{i % USERS:04d}@example.com"
    box = hashlib.md5(f"{user}/{(i // USERS) % BOXES}".encode()).hexdigest()
    return f"{hashlib.md5(user.encode()).hexdigest()[:8]}/{user}/mailboxes/{box}/{hashlib.md5(str(i).encode()).hexdigest()}"


def fill(engine: LocalEngine, have: int, want: int) -> float:
    """Objects have..want-1 into the bucket; returns objects per second."""
    t0 = time.perf_counter()
    meta = ObjectMeta(len(BODY), ETAG, time.time())
    for lo in range(have, want, BATCH):
        engine.run_sync(Txn([Write(BUCKET, key_of(i), meta, BODY) for i in range(lo, min(want, lo + BATCH))]))
    return (want - have) / (time.perf_counter() - t0)


def requests(op: str, endpoint: str, stored: int, n: int, key: tuple[str, str], tag: str) -> list[bytes]:
    pick = random.Random(f"{op}{stored}{tag}")
    out = []
    for i in range(n):
        if op == "PUT":
            out.append(build("PUT", endpoint, f"/{BUCKET}/new/{tag}/{i:07d}", [], BODY, key))
        elif op in ("GET", "HEAD"):
            out.append(build(op, endpoint, f"/{BUCKET}/{key_of(pick.randrange(stored))}", [], b"", key))
        else:
            query = [("list-type", "2"), ("max-keys", "100"), ("start-after", key_of(pick.randrange(stored)))]
            out.append(build("GET", endpoint, f"/{BUCKET}", query, b"", key))
    return out


def size_mb(*paths: Path) -> float:
    return sum(p.stat().st_size for p in paths if p.exists()) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="10000,100000,1000000", help="store sizes to measure at (objects)")
    ap.add_argument("--ops", type=int, default=3000, help="requests per phase (bounded by time too)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per phase; the median is reported")
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    levels = sorted(int(x) for x in args.levels.split(","))
    work = Path(tempfile.mkdtemp(prefix="mailstore-scale-", dir=os.environ.get("BENCH_DIR")))
    server: Server | None = None
    rows: dict[int, dict[str, dict[str, float]]] = {}
    sizes: dict[int, tuple[float, float, float, float]] = {}
    try:
        server, key = start_gateway(work)
        asyncio.run(ensure_bucket(server.endpoint, key, 10))
        data = server.workdir
        engine = LocalEngine(data)
        stored = 0
        try:
            for level in levels:
                rate = fill(engine, stored, level)
                print(f"filled to {level:,} objects ({rate:,.0f}/s)", file=sys.stderr)
                stored = level
                for op in ("PUT", "GET", "HEAD", "LIST"):
                    runs = []
                    for rnd in range(args.rounds):
                        reqs = requests(op, server.endpoint, stored, args.ops, key, f"{level}r{rnd}")
                        cpu = server.cpu_seconds()
                        res: Result = asyncio.run(drive(server.endpoint, reqs, args.concurrency, op == "HEAD"))
                        cpu = server.cpu_seconds() - cpu
                        runs.append({"ops_s": res.rate, "p50_ms": res.pct(0.5), "p99_ms": res.pct(0.99),
                                     "cpu_us": cpu / res.ops * 1e6 if res.ops else 0.0, "errors": res.errors})
                    med = sorted(runs, key=lambda r: r["ops_s"])[len(runs) // 2]
                    rows.setdefault(level, {})[op] = dict(med, errors=sum(r["errors"] for r in runs))
                segments = [p for p in (data / "segments").glob("*") if p.is_file()]
                sizes[level] = (server.rss_mb(), server.rss_mb("RssAnon"), size_mb(data / "index.db", data / "index.db-wal"), size_mb(*segments))
        finally:
            engine.close()
    finally:
        if server is not None:
            server.stop()
    print(f"\n{'objects':>10} {'op':<6}{'ops/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/op':>10}{'errors':>8}")
    for level, by in rows.items():
        for op, r in by.items():
            print(f"{level:>10,} {op:<6}{r['ops_s']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                  f"{r['cpu_us']:>10.0f}{r['errors']:>8}")
    print(f"\n{'objects':>10}{'gateway RSS MB':>16}{'of it anon':>12}{'index MB':>10}{'data MB':>10}"
          f"{'index B/object':>16}")
    for level, (rss, anon, index, seg) in sizes.items():
        print(f"{level:>10,}{rss:>16.0f}{anon:>12.0f}{index:>10.0f}{seg:>10.0f}{index * 1e6 / level:>16.0f}")
    lo, hi = levels[0], levels[-1]
    print(f"\nrate at {hi:,} as a fraction of the rate at {lo:,}:")
    for op in ("PUT", "GET", "HEAD", "LIST"):
        print(f"  {op:<5}{rows[hi][op]['ops_s'] / rows[lo][op]['ops_s']:6.2f}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
