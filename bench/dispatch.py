"""The gateway's own CPU per request, in process: no sockets, no client, no peer.

    python -m bench.dispatch [--requests 4000] [--repeats 5]

Builds the gateway exactly as `mailstore gateway` does (local engine in a temporary
directory, an administrator key), then hands the dispatcher pre-signed aiohttp requests
one after another and reads the process's CPU time around them: HEAD and GET of a 4 KiB
object, and ListObjectsV2 of 100 keys. What it measures is everything of ours between
aiohttp's parser and its socket write (routing, SigV4, the permission check, the engine
lookup, the response object, the access log line when `--access-log FILE` asks for it), which
is what a change to that path moves. The socket-level
rates against SeaweedFS are bench/s3.py's; this one is steady enough (about ±1 us) to
compare two commits run one after the other: `PYTHONPATH=<other checkout> python -m bench.dispatch`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway import sse
from gateway.accounts import owner_field
from gateway.app import build_server
from gateway.config import GatewayConfig
from gateway.engine.api import ThreadRunner
from gateway.engine.model import ObjectMeta
from gateway.s3 import sigv4
from gateway.server import open_engine
from runtime import logs
from runtime.sealing import seal

from .s3 import new_key

BODY = b"x" * 4096
BIN = Path(sys.executable).parent


class Transport:
    """What a request asks of its connection (aiohttp's default mock costs more than our code)."""

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False


def signed(method: str, path: str, query: list[tuple[str, str]], key: tuple[str, str]) -> web.BaseRequest:
    headers = {"Host": "127.0.0.1:8000"}
    headers.update(sigv4.sign_headers(method, path, query, headers, key[0], key[1]))
    qs = sigv4.canonical_query(query)
    return make_mocked_request(method, path + ("?" + qs if qs else ""), headers=headers, transport=Transport())


async def measure(handle: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
                  make: Callable[[], web.BaseRequest], n: int, repeats: int) -> tuple[float, float, int]:
    """(min, median) CPU microseconds per request over `repeats` runs of `n`, and the last status."""
    runs = []
    status = 0
    for _ in range(repeats):
        requests = [make() for _ in range(n)]
        c = time.process_time()
        for r in requests:
            status = (await handle(r)).status
        runs.append((time.process_time() - c) / n * 1e6)
    runs.sort()
    return runs[0], runs[len(runs) // 2], status


async def run(requests: int, repeats: int) -> None:
    data = Path(tempfile.mkdtemp(prefix="mailstore-dispatch-")) / "data"
    made = new_key(data)
    key = (made["AccessKeyId"], made["SecretAccessKey"])
    config = GatewayConfig(data, compaction=False)
    threads = ThreadRunner()
    engine = open_engine(config, threads)
    try:
        server, gw = build_server(config, engine, threads)
        await gw.engine.create_bucket("bench", owner_field(""))
        etag = f'"{hashlib.md5(BODY).hexdigest()}"'
        for i in range(150):
            await gw.engine.put("bench", f"p/{i:04d}", ObjectMeta(len(BODY), etag, time.time()), BODY)
        data_key, sealing = await gw.encryption.new(sse.Wanted(sse.SSE_S3))  # as PutObject with SSE-S3 seals
        sealed = seal(data_key, BODY)
        await gw.engine.put("bench", "sse/0001", ObjectMeta(len(BODY), etag, time.time(),
                                                            sealing=dataclasses.replace(sealing, stored=len(sealed))),
                            sealed)
        listing = [("list-type", "2"), ("max-keys", "100"), ("prefix", "p/")]
        cases: list[tuple[str, Callable[[], web.BaseRequest], int]] = [
            ("HEAD", lambda: signed("HEAD", "/bench/p/0001", [], key), requests),
            ("GET", lambda: signed("GET", "/bench/p/0001", [], key), requests),
            ("HEAD sse", lambda: signed("HEAD", "/bench/sse/0001", [], key), requests),
            ("GET sse", lambda: signed("GET", "/bench/sse/0001", [], key), requests),
            ("LIST 100", lambda: signed("GET", "/bench", listing, key), max(1, requests // 4)),
        ]
        print(f"{'request':10s} {'status':>6s} {'min us':>8s} {'median us':>10s}   (CPU per request, in process)")
        for name, make, n in cases:
            low, median, status = await measure(server.request_handler, make, n, repeats)
            print(f"{name:10s} {status:6d} {low:8.1f} {median:10.1f}")
    finally:
        engine.close()
        threads.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=4000, help="requests per run (LIST: a quarter)")
    ap.add_argument("--repeats", type=int, default=5, help="runs per request type; min and median reported")
    ap.add_argument("--access-log", type=Path, help="write the S3 access log to this file (default: none)")
    args = ap.parse_args()
    if args.access_log:
        logs.setup("gateway", "info,gateway=warning", "text", args.access_log)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(args.requests, args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
