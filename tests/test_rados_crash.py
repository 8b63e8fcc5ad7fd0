"""The RADOS store under failure (issue 16), on a real cluster: a writer killed -9 in the
middle of a PUT storm, several rounds (every acknowledged object reads back identical; the
orphans it leaves are swept, and then every data object is named by an entry), and an OSD
stopped and started again under load (requests stall, nothing acknowledged is lost, and the
same connection goes on without a restart)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

from conftest import ROOT
from gateway.engine import rados_fsck
from gateway.engine.model import EngineUnavailable, ObjectMeta
from test_rados_engine import open_store, pools  # noqa: F401 - the module's pools fixture

WRITER = r"""
import asyncio, sys
from gateway.engine.model import ObjectMeta
from gateway.engine.rados import RadosStore
conf, user, keyring, data, index, meta, bucket = sys.argv[1:8]  # the keyring is a file: no secret here
store = RadosStore(conf, user, keyring, data_pool=data, index_pool=index, meta_pool=meta)

async def main():
    gate = asyncio.Semaphore(24)

    async def one(i):
        async with gate:
            body = (b"message %d " % i) * 300
            await store.put(bucket, f"k/{i}", ObjectMeta(len(body), '"%d"' % i, 0.0), body)
            print(i, flush=True)  # acknowledged

    await asyncio.gather(*(one(i) for i in range(1_000_000)))

asyncio.run(main())
"""


def body_of(i: int) -> bytes:
    return (b"message %d " % i) * 300


def test_a_writer_killed_during_a_put_storm_loses_nothing_acknowledged(pools) -> None:  # noqa: F811
    ceph, user, keyring, names = pools
    store = open_store(pools)
    for round_ in range(3):
        bucket = f"crash-{round_}"
        asyncio.run(store.create_bucket(bucket, "admin", shards=4))
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(ceph.conf), user, keyring, names["data_pool"],
                                 names["index_pool"], names["meta_pool"], bucket],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        acked: list[int] = []
        deadline = time.monotonic() + 60
        while len(acked) < 200 + 100 * round_ and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(int(line))
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate(timeout=30)
        acked += [int(x) for x in rest.split()]  # printed before the kill
        assert len(acked) >= 200, err[-2000:]

        async def read_back(bucket: str = bucket, acked: list[int] = acked) -> None:
            got = await asyncio.gather(*(store.get(bucket, f"k/{i}") for i in acked))
            assert all(body == body_of(i) for i, (_, body) in zip(acked, got, strict=True))
        asyncio.run(read_back())
    swept = rados_fsck.sweep(store, min_age=0)
    named = set()
    for b in rados_fsck.buckets(store):
        named |= {e.oid for _, e in rados_fsck._entries(store, b)}
    left = {o.key for o in store.data.list_objects()}
    crash_ids = {asyncio.run(store.bucket(f"crash-{r}")).id for r in range(3)}
    mine = {o for o in left if o.split(".", 1)[0] in crash_ids}
    assert mine <= named  # after the sweep, every data object of these buckets is named by an entry
    assert not any(o.split(".", 1)[0] in crash_ids for o in swept.corrupt)
    store.close()


def test_an_osd_restarted_under_load(pools) -> None:  # noqa: F811
    ceph = pools[0]
    store = open_store(pools)

    async def go() -> None:
        await store.create_bucket("osd-restart", "admin", shards=4)
        acked: list[int] = []
        errors: list[BaseException] = []
        stop = asyncio.Event()

        async def writer(n: int) -> None:
            i = n
            while not stop.is_set():
                body = b"restart %d" % i
                try:
                    await store.put("osd-restart", f"r/{i}", ObjectMeta(len(body), '"x"', 0.0), body)
                    acked.append(i)
                except EngineUnavailable as exc:  # allowed: a 503, retried by the client
                    errors.append(exc)
                i += 8

        tasks = [asyncio.create_task(writer(n)) for n in range(8)]
        await asyncio.sleep(2)
        assert acked
        await asyncio.to_thread(ceph.stop_daemon, "osd.0")  # it serves until it has shut down
        before = len(acked)
        await asyncio.sleep(3)  # requests stall meanwhile
        during = len(acked)
        await asyncio.to_thread(ceph.start_osd, 0)
        deadline = time.monotonic() + 120
        while len(acked) < during + 100 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*tasks)
        assert len(acked) >= during + 100  # service came back on the same connection
        assert during - before < 50  # with the only OSD down, (almost) nothing completes
        got = await asyncio.gather(*(store.get("osd-restart", f"r/{i}") for i in acked))
        assert all(body == b"restart %d" % i for i, (_, body) in zip(acked, got, strict=True))
        assert all(isinstance(e, EngineUnavailable) for e in errors)
    asyncio.run(go())
    ceph.wait_clean(180)
    store.close()
