"""RADOS benchmark: our RADOS store vs Ceph RGW on the same throw-away cluster, in one run.

    python -m bench.rados [--ops 2000] [--size 4096] [--concurrency 32] [--rounds 3]

One private cluster (runtime/ceph.py: one monitor, one manager, one BlueStore OSD on a
sparse file, loopback). On it, Ceph's radosgw (beast frontend) with its own pools, and
our layout (gateway/engine/rados.py) with its data, index and metadata pools. For each
of PUT, GET, HEAD and LIST (100 keys under a prefix) it prints ops/s, p50/p99 and the
RADOS operations the OSD executed per request (its op_r/op_w/op_rw counters), the two
taking turns --rounds times (medians). Our bucket is made as for mail (16 index shards,
chosen by the first two path components, as `<hash>/<user>/` in obox's layout), so a LIST
under `tag/nn/` asks one shard; RGW's asks all of its 11.

Until the gateway's handlers run on the RADOS engine, "ours" is the store driven
directly from asyncio (no HTTP, no SigV4), while RGW is driven over S3 by the same
pre-signed raw HTTP client as bench.s3: its rates flatter ours. The RADOS operations per
request compare like with like.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gateway.engine.model import ObjectMeta
from gateway.engine.rados import RadosStore
from runtime.ceph import PrivateCeph

from .s3 import BUCKET, Result, drive, ensure_bucket, free_port, phase_requests

OPS = ("PUT", "GET", "HEAD", "LIST")


async def drive_store(store: RadosStore, op: str, n: int, size: int, concurrency: int, tag: str) -> Result:
    body = os.urandom(size)
    meta = ObjectMeta(size, f'"{hashlib.md5(body).hexdigest()}"', time.time(), "message/rfc822")
    it = iter(range(n))
    lat: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        for i in it:
            key = f"{tag}/{i % 64:02x}/obj{i:07d}"
            t = time.perf_counter()
            try:
                if op == "PUT":
                    await store.put(BUCKET, key, meta, body)
                elif op == "GET":
                    await store.get(BUCKET, key)
                elif op == "HEAD":
                    await store.head(BUCKET, key)
                else:
                    await store.list_objects(BUCKET, f"{tag}/{i % 64:02x}/", "", None, 100)
            except Exception:  # noqa: BLE001 - counted, as bench.s3 counts non-2xx
                errors += 1
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(len(lat), errors, time.perf_counter() - t0, lat)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cluster = PrivateCeph(Path(tempfile.mkdtemp(prefix="mailstore-radosbench-")))
    rows: dict[tuple[str, str], list[tuple[float, float, float, float, int]]] = {}
    try:
        cluster.start()
        pools = {"data_pool": "ms-data", "index_pool": "ms-index", "meta_pool": "ms-meta"}
        for pool in pools.values():
            cluster.create_pool(pool, pg_num=32)
        keyring = cluster.create_user("client.bench", list(pools.values()))
        store = RadosStore(str(cluster.conf), "client.bench", str(keyring), **pools)
        rgw_port = free_port()
        rgw_key = cluster.start_rgw(rgw_port)
        endpoint = f"http://127.0.0.1:{rgw_port}"
        asyncio.run(ensure_bucket(endpoint, rgw_key, 60))
        asyncio.run(store.create_bucket(BUCKET, "bench", depth=2))  # as for mail: a LIST under a/b/ asks one shard
        cluster.wait_clean()
        for r in range(args.rounds):
            for op in OPS:
                tag = f"r{r}"
                for name in ("ours", "rgw"):
                    before = cluster.osd_ops()
                    if name == "ours":
                        res = asyncio.run(drive_store(store, op, args.ops, args.size, args.concurrency, tag))
                    else:
                        reqs = phase_requests(op, endpoint, args.size, args.ops, rgw_key, tag)
                        res = asyncio.run(drive(endpoint, reqs, args.concurrency, op == "HEAD"))
                    after = cluster.osd_ops()
                    rados_ops = sum(after.values()) - sum(before.values())
                    rows.setdefault((op, name), []).append(
                        (res.rate, res.pct(0.5), res.pct(0.99), rados_ops / max(res.ops, 1), res.errors))
        store.close()
    finally:
        cluster.remove()
    print(f"{args.size} B objects, {args.concurrency} concurrent, {args.ops} ops a phase, median of {args.rounds}")
    print(f"{'op':<6}{'server':<7}{'ops/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'RADOS ops/req':>15}{'errors':>8}")
    for (op, name), rs in rows.items():
        rate = statistics.median(x[0] for x in rs)
        print(f"{op:<6}{name:<7}{rate:>9.0f}{statistics.median(x[1] for x in rs):>9.1f}"
              f"{statistics.median(x[2] for x in rs):>9.1f}{statistics.median(x[3] for x in rs):>15.2f}"
              f"{sum(x[4] for x in rs):>8}")
    for op in OPS:
        ours, theirs = rows.get((op, "ours")), rows.get((op, "rgw"))
        if ours and theirs:
            print(f"{op}: ours / rgw {statistics.median(x[0] for x in ours) / statistics.median(x[0] for x in theirs):.2f}x"
                  f" ops/s (store level vs S3), RADOS ops per request "
                  f"{statistics.median(x[3] for x in ours):.2f} vs {statistics.median(x[3] for x in theirs):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
