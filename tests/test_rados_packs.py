"""Group commit on RADOS (gateway/engine/rados_group.py): small objects written together in
packs, index swaps and reads of one shard batched, on a real Ceph cluster; and the batcher
and the pack format on their own."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest

from gateway.engine import rados_fsck, rados_group, records
from gateway.engine.model import Conditions, CorruptRecord, NoSuchKey, PreconditionFailed
from gateway.engine.rados import RadosStore
from tests.test_rados_engine import data_objects, meta, open_store, pools  # noqa: F401 - a fixture


def mine(store: RadosStore, bid: str) -> set[str]:
    """The data objects of the bucket with id `bid`."""
    return {o for o in data_objects(store) if o.startswith(bid + ".")}


def body_of(i: int) -> bytes:
    return f"From: {i}@example.org\r\n\r\n".encode() + secrets.token_bytes(200 + i)


def test_concurrent_puts_share_packs_and_batched_index_writes(pools) -> None:  # noqa: F811
    store = open_store(pools)
    bodies = {f"u/{i}": body_of(i) for i in range(40)}

    async def go() -> None:
        await store.create_bucket("p-share", "admin", shards=1)
        started = store.ops["started"]
        await asyncio.gather(*(store.put("p-share", k, meta(v), v) for k, v in bodies.items()))
        # 40 PUTs at once: a pack write and an index swap for all of them, not 80 operations
        assert store.ops["started"] - started <= 4
        got = await asyncio.gather(*(store.get("p-share", k) for k in bodies))
        assert [body for _, body in got] == list(bodies.values())
    asyncio.run(go())
    assert len(mine(store, asyncio.run(store.bucket("p-share")).id)) == 1
    store.close()


def test_released_slots_are_zeroed_and_the_last_removes_the_pack(pools) -> None:  # noqa: F811
    store = open_store(pools)
    bodies = {f"u/{i}": body_of(i) for i in range(10)}

    async def go() -> None:
        await store.create_bucket("p-release", "admin")
        await asyncio.gather(*(store.put("p-release", k, meta(v), v) for k, v in bodies.items()))
        bid = (await store.bucket("p-release")).id
        (pack,) = mine(store, bid)
        b, first = await store.locate("p-release", "u/0")
        assert await store.delete("p-release", "u/0")
        assert rados_group.zeroed(store.data.read(pack, first.size, first.at))  # its space freed
        await store.put("p-release", "u/1", meta(b"new"), b"new")  # an overwrite releases too
        assert (await store.get("p-release", "u/1"))[1] == b"new"
        for k in ("u/2", "u/3", "u/4"):
            assert (await store.get("p-release", k))[1] == bodies[k]  # the others stay readable
        assert await store.delete_many("p-release", [f"u/{i}" for i in range(2, 10)]) == [True] * 8
        assert pack not in data_objects(store)  # every slot released: the pack went with the last
        assert len(mine(store, bid)) == 1  # u/1's own
    asyncio.run(go())
    store.close()


def test_a_read_that_meets_a_released_slot_follows_the_index(pools) -> None:  # noqa: F811
    """A GET reads the index, then the slot; an overwrite or a delete in between zeroes the
    slot, which is never an error: the index says what happened."""
    store = open_store(pools)

    async def go() -> None:
        await store.create_bucket("p-race", "admin")
        await asyncio.gather(*(store.put("p-race", f"k{i}", meta(b"v%d" % i), b"v%d" % i) for i in range(3)))
        b, stale = await store.locate("p-race", "k0")
        await store.put("p-race", "k0", meta(b"newer"), b"newer")
        assert (await store.read_record(b, "k0", stale)).body == b"newer"
        b, stale = await store.locate("p-race", "k1")
        await store.delete("p-race", "k1")
        with pytest.raises(NoSuchKey):
            await store.read_record(b, "k1", stale)
        # damage in a live slot is damage: never served, never retried forever
        b, live = await store.locate("p-race", "k2")
        raw = bytearray(store.data.read(live.oid, live.size, live.at))
        raw[-1] ^= 0x01
        store.data.write(live.oid, bytes(raw), live.at)
        with pytest.raises(CorruptRecord):
            await store.get("p-race", "k2")
    asyncio.run(go())
    store.close()


def test_a_batch_with_a_conflict_falls_back_key_by_key(pools) -> None:  # noqa: F811
    store = open_store(pools)

    async def go() -> None:
        await store.create_bucket("p-conflict", "admin", shards=1)
        await store.put("p-conflict", "x", meta(b"first"), b"first")
        results = await asyncio.gather(
            store.put("p-conflict", "x", meta(b"second"), b"second", Conditions(if_none_match_any=True)),
            *(store.put("p-conflict", f"y{i}", meta(b"y"), b"y") for i in range(5)),
            store.put("p-conflict", "dup", meta(b"a"), b"a"), store.put("p-conflict", "dup", meta(b"b"), b"b"),
            return_exceptions=True)
        assert isinstance(results[0], PreconditionFailed) and results[1:] == [None] * 7
        assert (await store.get("p-conflict", "x"))[1] == b"first"
        assert (await store.get("p-conflict", "dup"))[1] in (b"a", b"b")
        page = await store.list_objects("p-conflict", "", "", None, 100)
        assert [e.key for e in page.entries] == ["dup", "x", *(f"y{i}" for i in range(5))]
    asyncio.run(go())
    assert len(mine(store, asyncio.run(store.bucket("p-conflict")).id)) == 2  # the loser's slot and dup's first went
    store.close()


def test_sweep_check_and_rebuild_with_packs(pools) -> None:  # noqa: F811
    store = open_store(pools)
    bodies = {f"m/{i}": body_of(i) for i in range(8)}

    async def fill() -> None:
        await store.create_bucket("p-fsck", "admin", shards=2)
        await asyncio.gather(*(store.put("p-fsck", k, meta(v), v) for k, v in bodies.items()))
        await store.delete("p-fsck", "m/7")
    asyncio.run(fill())
    b = asyncio.run(store.bucket("p-fsck"))
    (pack,) = mine(store, b.id)
    # a gateway killed between its pack write and its index swaps: two slots no entry names,
    # one of them in a pack whose other slot is live
    cut = [("m/cut", records.encode(records.PUT, 0, "p-fsck", "m/cut", records.meta_json(meta(b"c")), None, (), b"c")),
           ("m/live", records.encode(records.PUT, 0, "p-fsck", "m/live", records.meta_json(meta(b"l")), None, (), b"l"))]
    data, slots = rados_group.pack(cut)
    half = f"{b.id}.{rados_group.PACK_NAME}{'1' * 24}"
    orphan = f"{b.id}.{rados_group.PACK_NAME}{'2' * 24}"
    import rados
    for name, payload in ((half, data), (orphan, rados_group.pack(cut[:1])[0])):
        with rados.WriteOpCtx() as op:
            op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
            op.write_full(payload)
            op.execute("refcount", "set", rados_group.refcount_set(rados_group.pack(cut)[1]
                                                                    if name == half else rados_group.pack(cut[:1])[1]))
            store.data.operate_write_op(op, name, mtime=int(time.time()))
    live = slots[1]
    value = f'{{"o":"{half}","a":{live.at},"n":{live.size},"m":{records.meta_json(meta(b"l"))}}}'
    with rados.WriteOpCtx() as op:
        store.index.set_omap(op, ("km/live",), (value.encode(),))
        store.index.operate_write_op(op, b.shard("m/live"))
    assert rados_fsck.sweep(store).removed == []  # young: maybe PUTs in flight
    swept = rados_fsck.sweep(store, min_age=0)
    assert orphan in swept.removed and f"{half}@{slots[0].at}" in swept.removed
    assert rados_group.zeroed(store.data.read(half, slots[0].size, slots[0].at))
    assert asyncio.run(store.get("p-fsck", "m/live"))[1] == b"l"
    assert rados_fsck.check(store, [b], deep=True).corrupt == []
    # the index pool lost: rebuilt from the packs' live slots (m/7 was deleted: its slot is zeroed)
    for shard in b.all_shards():
        store.index.remove_object(shard)
    assert rados_fsck.rebuild(store, b).restored == 8
    page = asyncio.run(store.list_objects("p-fsck", "", "", None, 100))
    assert [e.key for e in page.entries] == sorted([*(f"m/{i}" for i in range(7)), "m/live"])
    assert all(asyncio.run(store.get("p-fsck", f"m/{i}"))[1] == bodies[f"m/{i}"] for i in range(7))
    assert pack in data_objects(store)
    store.close()


# ---------------------------------------------------------------- without a cluster

def test_pack_table_round_trip() -> None:
    items = [("a", b"x" * 10), ("ü/\"key\"", b"y" * 20), ("c", b"")]
    data, slots = rados_group.pack(items)
    end, table = rados_group.read_table(data)
    assert table == slots and [data[s.at:s.at + s.size] for s in slots] == [r for _, r in items]
    assert end == slots[0].at
    assert rados_group.read_table(data[:20]) == (end, [])  # ask again for more
    bad = bytearray(data)
    bad[end - 3] ^= 1
    with pytest.raises(CorruptRecord):
        rados_group.read_table(bytes(bad))
    assert rados_group.is_pack("abc.pack-00") and not rados_group.is_pack("abc.0123") \
        and not rados_group.is_pack("abc.pack-00.t0") and not rados_group.is_pack("abc")


def test_group_commit_batches_what_arrives_meanwhile() -> None:
    flushed: list[list[int]] = []

    async def flush(items: list[int]) -> list[int]:
        flushed.append(items)
        await asyncio.sleep(0.01)
        if 13 in items:
            raise ValueError("thirteen")
        return [i * 2 for i in items]

    async def go() -> None:
        group = rados_group.GroupCommit(flush, lambda batch, item: len(batch) < 4)
        assert await group.submit(1) == 2  # alone: at once
        results = await asyncio.gather(*(group.submit(i) for i in range(10, 20)), return_exceptions=True)
        # all ten queue before the first flush starts: batches as `fits` allows
        assert flushed[1:] == [[10, 11, 12, 13], [14, 15, 16, 17], [18, 19]]
        assert [type(r) for r in results[:4]] == [ValueError] * 4  # a failed flush fails its batch only
        assert results[4:] == [28, 30, 32, 34, 36, 38]
        first = asyncio.ensure_future(group.submit(1))
        await asyncio.sleep(0.001)  # in flight: what comes now waits for the next flush
        later = await asyncio.gather(*(group.submit(i) for i in (2, 3)))
        assert await first == 2 and later == [4, 6] and flushed[-2:] == [[1], [2, 3]]
        waiting = asyncio.ensure_future(group.submit(100))
        cancelled = asyncio.ensure_future(group.submit(101))
        await asyncio.sleep(0)
        cancelled.cancel()
        assert await waiting == 200 and flushed[-1] == [100]  # a cancelled item is not flushed
        assert group.task is None
    asyncio.run(go())
