"""The mail side's S3 client: CPU per request with our HTTP/1.1 client and with aiohttp's.

    python -m bench.s3client [--requests 2000] [--size 8192] [--rounds 3]

The shim (LMTP, IMAP, import, `mailstore fs`) reaches the store through
cache/s3client.py. This starts one gateway, then runs the same S3Client (signing,
retries, typed errors) over two transports in turn: cache/http1.py (what ships)
and an aiohttp ClientSession set up as the client was before (keep-alive
connector, 64 connections). For PUT, GET, HEAD and DELETE of `--size` byte
objects, one request at a time, it prints the client process's CPU per request
(user + system, `time.process_time`), the median of `--rounds`, and the ratio.
The gateway's CPU is the same for both and not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp
import uvloop
from multidict import CIMultiDictProxy
from yarl import URL

from cache.http1 import Http1Pool, Response
from cache.s3client import S3Client
from cache.url import parse

from .s3 import BUCKET, ensure_bucket, start_gateway


class AiohttpPool(Http1Pool):
    """The same interface over aiohttp, as S3Client used it before cache/http1.py."""

    def __init__(self, endpoint: str) -> None:
        super().__init__("", 0)
        self.endpoint = endpoint
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30),
                                             auto_decompress=False)

    async def request(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        async with self.session.request(method, URL(self.endpoint + target, encoded=True), data=body or None,
                                        headers=headers, allow_redirects=False,
                                        skip_auto_headers=("Content-Type",)) as resp:
            data = await resp.read()
            return Response(resp.status, CIMultiDictProxy(resp.headers.copy()), data)

    def close(self) -> None:
        asyncio.ensure_future(self.session.close())


async def phase(client: S3Client, op: str, n: int, body: bytes, tag: str) -> float:
    t = time.process_time()
    for i in range(n):
        key = f"bench/{tag}/{i % 500}"
        if op == "PUT":
            await client.put(key, body)
        elif op == "GET":
            await client.get(key)
        elif op == "HEAD":
            await client.stat(key)
        else:
            await client.delete(key)
    return (time.process_time() - t) / n * 1e6


async def run(endpoint: str, access: str, secret: str, n: int, size: int, rounds: int) -> None:
    host = endpoint.split("//", 1)[1]
    url = parse(f"s3:http://{access}:{quote(secret, safe='')}@{host}/?bucket={BUCKET}")
    body = b"m" * size
    ours, theirs = S3Client(url), S3Client(url)
    theirs._pool = AiohttpPool(endpoint)  # noqa: SLF001 - the transport is what is compared
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for op in ("PUT", "GET", "HEAD", "DELETE"):
            for name, client in (("http1", ours), ("aiohttp", theirs)):
                results.setdefault((op, name), []).append(await phase(client, op, n, body, name))
            for name, client in (("http1", ours), ("aiohttp", theirs)):
                if op == "DELETE":
                    await phase(client, "PUT", 500, body, name)  # the next round's GETs find them
    await ours.close()
    await theirs.close()
    print(f"\nS3 client CPU per request, {size} B objects, one at a time, median of {rounds} rounds")
    print(f"{'op':8}{'http1 us':>10}{'aiohttp us':>12}{'aiohttp/http1':>15}")
    for op in ("PUT", "GET", "HEAD", "DELETE"):
        a = statistics.median(results[(op, "http1")])
        b = statistics.median(results[(op, "aiohttp")])
        print(f"{op:8}{a:10.0f}{b:12.0f}{b / a:14.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-s3client-"))
    server, (access, secret) = start_gateway(work)
    try:
        asyncio.run(ensure_bucket(server.endpoint, (access, secret), 30))
        uvloop.run(run(server.endpoint, access, secret, args.requests, args.size, args.rounds))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
