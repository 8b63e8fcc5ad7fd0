"""fscache benchmark: a hot set of mail objects read through the cache vs through the gateway.

    python -m bench.cache [--objects 400] [--ops 4000] [--sizes 4096,65536]

Starts a gateway on 127.0.0.1, writes the hot set through an fscache: stack
(so it is cached), then GETs random keys of it (1) through the plain S3
client and (2) through the cache.  Latency is measured with one client at a
time (what a hit costs); throughput and latency under load with 32 concurrent
readers (where queueing dominates).  Prints ops/s, p50/p99 and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from cache import FsCache, S3Client, open_fs

from .s3 import BIN, new_key


async def measure(fs, keys: list[str], ops: int, concurrency: int) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    rng = random.Random(7)
    todo = [rng.choice(keys) for _ in range(ops)]
    lat: list[float] = []
    it = iter(todo)

    async def worker() -> None:
        for k in it:
            t = time.perf_counter()
            await fs.get(k)
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ops / (time.perf_counter() - t0), lat


def pct(lat: list[float], p: float) -> float:
    s = sorted(lat)
    return s[min(len(s) - 1, int(len(s) * p))] * 1000


async def run(endpoint: str, key: dict[str, str], work: Path, sizes: list[int], n: int, ops: int) -> list[tuple]:  # type: ignore[type-arg]
    hostport = endpoint.split("//", 1)[1]
    url = f"s3:http://{key['AccessKeyId']}:{quote(key['SecretAccessKey'], safe='')}@{hostport}/?bucket=mail&region=us-east-1"
    rows = []
    for size in sizes:
        cached = open_fs(f"fscache:1G:{work / f'cache{size}'}:{url}")
        plain = open_fs(url)
        assert isinstance(cached, FsCache) and isinstance(plain, S3Client)
        keys = [f"{h:08x}/user{i % 50}@example.com/mailboxes/{'0' * 32}/{i:032x}" for i, h in
                ((i, random.Random(i).getrandbits(32)) for i in range(n))]
        body = os.urandom(size)
        sem = asyncio.Semaphore(32)

        async def put(k: str) -> None:
            async with sem:
                await cached.put(k, body)
        await asyncio.gather(*(put(k) for k in keys))
        for name, fs in (("gateway", plain), ("fscache hit", cached)):
            await measure(fs, keys, min(ops, 500), 8)  # warm connections and pages
            _, lat1 = await measure(fs, keys, ops // 4, 1)
            rate, lat32 = await measure(fs, keys, ops, 32)
            rows.append((f"{size // 1024}KiB", name, rate, pct(lat1, 0.5), pct(lat1, 0.99),
                         pct(lat32, 0.5), pct(lat32, 0.99)))
        stats = await cached.stats()
        assert stats["misses"] == 0, stats
        await cached.close()
        await plain.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=400)
    ap.add_argument("--ops", type=int, default=4000)
    ap.add_argument("--sizes", default="4096,65536")
    args = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    work = Path(tempfile.mkdtemp(prefix="mailstore-cachebench-"))
    data = work / "data"
    key = new_key(data, "b")
    subprocess.run([str(BIN / "mailstore"), "bucket", "create", "--data-dir", str(data), "mail"], check=True)
    proc = subprocess.Popen([str(BIN / "mailstore"), "gateway", "--data-dir", str(data), "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    endpoint = json.loads(proc.stdout.readline())["endpoint"]
    try:
        rows = asyncio.run(run(endpoint, key, work, [int(s) for s in args.sizes.split(",")], args.objects, args.ops))
    finally:
        proc.send_signal(signal.SIGINT)  # SIGTERM would drain first
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'size':<7}{'path':<13}{'ops/s (32)':>11}{'p50 ms (1)':>11}{'p99 ms (1)':>11}"
          f"{'p50 ms (32)':>12}{'p99 ms (32)':>12}{'speed-up':>10}")
    base = {r[0]: r[2] for r in rows if r[1] == "gateway"}
    for r in rows:
        up = f"{r[2] / base[r[0]]:.1f}x" if r[1] != "gateway" else ""
        print(f"{r[0]:<7}{r[1]:<13}{r[2]:>11.0f}{r[3]:>11.3f}{r[4]:>11.3f}{r[5]:>12.2f}{r[6]:>12.2f}{up:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
