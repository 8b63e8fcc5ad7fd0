"""Listing with millions of keys: how long S3 listings take as the bucket grows.

    python -m bench.listing --keys 1000000

Fills a bucket through the engine (1000 users x 5 mailboxes x N messages, in
Dovecot obox's key layout <md5(user)[:8]>/<user>/mailboxes/<guid>/<oid>), then
starts a gateway on it and times the listings Dovecot and operators make,
through HTTP with a SigV4 client:

- the top level with delimiter "/" (a rolled-up page of 1000 hash prefixes),
- one user's mailboxes (prefix + delimiter),
- one mailbox (a prefix of a few hundred keys),
- pages deep inside the keyspace (marker / start-after),
- a page of a whole-bucket scan without delimiter.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.engine.commit import Txn, Write
from gateway.engine.local import LocalEngine
from gateway.engine.model import ObjectMeta
from gateway.engine.local_api import run_on
from gateway.keys import KeyStore

from .s3 import BIN, build, read_response

USERS = 1000
BOXES = 5


def user_keys(u: int, per_box: int) -> list[str]:
    user = f"user{u:04d}@example.com"
    h = hashlib.md5(user.encode()).hexdigest()[:8]
    keys = []
    for b in range(BOXES):
        guid = hashlib.md5(f"{user}/{b}".encode()).hexdigest()
        for m in range(per_box):
            keys.append(f"{h}/{user}/mailboxes/{guid}/{hashlib.md5(f'{user}/{b}/{m}'.encode()).hexdigest()}")
    return keys


def fill(root: Path, per_box: int) -> tuple[str, str]:
    engine = LocalEngine(root)
    try:
        key = run_on(engine, lambda g: KeyStore(g).create("bench"))
        engine.run_sync(engine.create_bucket_txn("mail", key.access_key))
        meta = ObjectMeta(64, '"00000000000000000000000000000000"', time.time())
        t0 = time.perf_counter()
        for u in range(USERS):
            engine.run_sync(Txn([Write("mail", k, meta, b"x" * 64) for k in user_keys(u, per_box)]))
            if u % 100 == 99:
                n = (u + 1) * BOXES * per_box
                print(f"  filled {n:,} keys ({n / (time.perf_counter() - t0):,.0f}/s)", file=sys.stderr)
        return key.access_key, key.secret
    finally:
        engine.close()


async def timed(endpoint: str, key: tuple[str, str], query: list[tuple[str, str]], n: int) -> list[float]:
    host, port = endpoint.split("//", 1)[1].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    out = []
    try:
        for _ in range(n):
            req = build("GET", endpoint, "/mail", query, b"", key)
            t = time.perf_counter()
            writer.write(req)
            status = await read_response(reader, False)
            out.append((time.perf_counter() - t) * 1000)
            assert status == 200, status
    finally:
        writer.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    per_box = max(1, args.keys // (USERS * BOXES))
    total = USERS * BOXES * per_box
    work = Path(tempfile.mkdtemp(prefix="mailstore-listing-"))
    print(f"filling {total:,} keys into {work}", file=sys.stderr)
    t0 = time.perf_counter()
    key = fill(work / "data", per_box)
    print(f"filled in {time.perf_counter() - t0:.0f} s; index {(work / 'data' / 'index.db').stat().st_size / 1e6:.0f} MB")
    proc = subprocess.Popen([str(BIN / "mailstore"), "gateway", "--data-dir", str(work / "data"), "--listen",
                             "127.0.0.1:0", "--no-compaction"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    endpoint = json.loads(proc.stdout.readline())["endpoint"]
    u = USERS // 2
    some = user_keys(u, per_box)
    user_prefix = some[0].rsplit("/mailboxes/", 1)[0] + "/mailboxes/"
    box_prefix = some[0].rsplit("/", 1)[0] + "/"
    cases = [
        ("top level, delimiter '/', 1000 prefixes", [("delimiter", "/")]),
        ("one user's mailboxes (prefix+delimiter)", [("prefix", user_prefix), ("delimiter", "/")]),
        (f"one mailbox ({per_box} keys)", [("prefix", box_prefix)]),
        ("V1 page at a deep marker", [("marker", some[len(some) // 2]), ("max-keys", "1000")]),
        ("V2 page at a deep start-after", [("list-type", "2"), ("start-after", some[-1])]),
        ("whole-bucket scan, first page", [("max-keys", "1000")]),
        ("top level from a rolled-up marker", [("delimiter", "/"), ("marker", some[0].split("/", 1)[0] + "/")]),
    ]
    try:
        print(f"\n{'listing (' + format(total, ',') + ' keys)':<48}{'p50 ms':>9}{'max ms':>9}")
        for name, query in cases:
            ms = asyncio.run(timed(endpoint, key, query, args.repeat))
            print(f"{name:<48}{statistics.median(ms):>9.2f}{max(ms):>9.2f}")
    finally:
        proc.send_signal(signal.SIGINT)  # SIGTERM would drain first
        proc.wait()
        subprocess.run(["rm", "-rf", str(work)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
