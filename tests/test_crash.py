"""Crash safety: a PUT storm, kill -9 at a random moment, restart.

Every acknowledged object reads back byte-identical; an unacknowledged one is
either absent or whole (never half-visible); `mailstore fsck` passes.
Repeated several times per run on the same data directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time

import aiohttp

from conftest import GatewayProcess, client, create_key, mailstore
from gateway.s3 import sigv4

ROUNDS = 4
WRITERS = 24


def body_for(name: str) -> bytes:
    """Deterministic content so the checker can recognise a whole object."""
    size = int(hashlib.md5(name.encode()).hexdigest()[:4], 16) % 90_000 + 100
    if name.endswith("big"):
        size = 1_500_000 + size  # goes to a blob file
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // 32 + 1))[:size]


async def storm(endpoint: str, key, round_no: int, stop_after: float) -> tuple[set[str], set[str]]:
    """PUT as fast as WRITERS connections can until the gateway dies; returns (acked, attempted)."""
    acked: set[str] = set()
    attempted: set[str] = set()
    host = endpoint.split("//", 1)[1]
    deadline = time.monotonic() + stop_after + 30

    async def writer(w: int, session: aiohttp.ClientSession) -> None:
        n = 0
        while time.monotonic() < deadline:
            name = f"r{round_no}/w{w}/o{n}" + ("big" if n % 17 == 5 else "")
            n += 1
            body = body_for(name)
            path = f"/crash/{name}"
            hdrs = {"Host": host}
            hdrs.update(sigv4.sign_headers("PUT", path, [], hdrs, key.access_key, key.secret))
            attempted.add(name)
            try:
                async with session.put(endpoint + path, data=body, headers=hdrs) as resp:
                    await resp.read()
                    if resp.status == 200:
                        acked.add(name)
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
                return

    conn = aiohttp.TCPConnector(limit=WRITERS, force_close=False)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=20)) as session:
        await asyncio.gather(*(writer(w, session) for w in range(WRITERS)))
    return acked, attempted


def test_kill9_during_put_storm(tmp_path):
    data = tmp_path / "data"
    key = create_key(data)
    gw = GatewayProcess(data)
    client(gw.endpoint, key).create_bucket(Bucket="crash")
    gw.stop()
    rng = random.Random(os.getpid())
    all_acked: set[str] = set()
    for round_no in range(ROUNDS):
        gw = GatewayProcess(data)
        delay = rng.uniform(0.3, 1.5)

        async def run() -> tuple[set[str], set[str]]:
            task = asyncio.create_task(storm(gw.endpoint, key, round_no, delay))
            await asyncio.sleep(delay)
            gw.kill9()
            return await task

        acked, attempted = asyncio.run(run())
        assert acked, "the storm acknowledged nothing before the kill"
        all_acked |= acked
        # Restart: recovery runs with no manual step, then check from a fresh gateway.
        gw = GatewayProcess(data)
        s3 = client(gw.endpoint, key)
        for name in sorted(all_acked):
            got = s3.get_object(Bucket="crash", Key=name)["Body"].read()
            assert got == body_for(name), f"acknowledged {name} came back different"
        listed = {o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket="crash")
                  for o in p.get("Contents", [])}
        assert all_acked <= listed
        for name in listed - all_acked:  # unacknowledged but committed: must be whole
            assert s3.get_object(Bucket="crash", Key=name)["Body"].read() == body_for(name)
        gw.stop()
        res = mailstore("fsck", "--data-dir", str(data), "--quiet", check=False)
        report = json.loads(res.stdout)
        assert res.returncode == 0 and report["result"] == "ok", report
    assert len(all_acked) > 100
