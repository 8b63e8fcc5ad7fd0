"""The RADOS store (gateway/engine/rados.py) on a real Ceph cluster (runtime/ceph.py): the
layout, the checksums, atomic conditional writes between two gateways, sharded listing
against a model of S3's rules."""

from __future__ import annotations

import asyncio
import os
import random
import secrets

import pytest

from gateway.engine.model import (
    BucketAlreadyExists,
    BucketNotEmpty,
    Conditions,
    CorruptRecord,
    EngineUnavailable,
    NoSuchBucket,
    NoSuchKey,
    ObjectMeta,
    PreconditionFailed,
)
from gateway.engine.rados import RadosStore


@pytest.fixture(scope="module")
def pools(ceph):  # type: ignore[no-untyped-def]
    """Three pools and a cephx user limited to them, as an operator would set them up."""
    tag = secrets.token_hex(3)
    names = {"data_pool": f"t{tag}-data", "index_pool": f"t{tag}-index", "meta_pool": f"t{tag}-meta"}
    for pool in names.values():
        ceph.create_pool(pool)
    keyring = ceph.create_user(f"client.gw{tag}", list(names.values()))
    return ceph, f"client.gw{tag}", str(keyring), names


def open_store(pools) -> RadosStore:  # type: ignore[no-untyped-def]
    ceph, user, keyring, names = pools
    return RadosStore(str(ceph.conf), user, keyring, **names)


def meta(body: bytes, **user: str) -> ObjectMeta:
    import hashlib
    return ObjectMeta(len(body), f'"{hashlib.md5(body).hexdigest()}"', 1_700_000_000.0, "message/rfc822", {}, user)


def data_objects(store: RadosStore) -> set[str]:
    return {o.key for o in store.data.list_objects()}


def test_buckets(pools) -> None:  # type: ignore[no-untyped-def]
    store = open_store(pools)

    async def go() -> None:
        await store.create_bucket("b-one", "admin", shards=4)
        with pytest.raises(BucketAlreadyExists):
            await store.create_bucket("b-one", "other")
        assert "b-one" in {b.name for b in await store.list_buckets()}
        other = open_store(pools)  # another gateway sees it at once
        assert (await other.bucket("b-one")).shards == 4
        await store.put("b-one", "k", meta(b"x"), b"x")
        with pytest.raises(BucketNotEmpty):
            await store.delete_bucket("b-one")
        assert await store.delete("b-one", "k")
        await store.delete_bucket("b-one")
        with pytest.raises(NoSuchBucket):
            await store.head("b-one", "k")
        other.close()
    asyncio.run(go())
    store.close()


def test_objects_round_trip_and_overwrites_leave_nothing_behind(pools) -> None:  # type: ignore[no-untyped-def]
    store = open_store(pools)

    async def go() -> None:
        await store.create_bucket("b-objects", "admin")
        before = data_objects(store)
        body = b"From: a@example.org\r\nSubject: hi\r\n\r\n" + secrets.token_bytes(40_000)
        await store.put("b-objects", "user/mail/1", meta(body, guid="g1"), body)
        got_meta, got = await store.get("b-objects", "user/mail/1")
        assert got == body and got_meta.user == {"guid": "g1"} and got_meta.size == len(body)
        assert (await store.head("b-objects", "user/mail/1")).etag == got_meta.etag
        await store.put("b-objects", "user/mail/1", meta(b"v2"), b"v2")  # an overwrite
        assert (await store.get("b-objects", "user/mail/1"))[1] == b"v2"
        assert len(data_objects(store) - before) == 1  # the replaced data object is gone
        assert await store.delete("b-objects", "user/mail/1")
        assert not await store.delete("b-objects", "user/mail/1")
        assert data_objects(store) == before
        with pytest.raises(NoSuchKey):
            await store.get("b-objects", "user/mail/1")
    asyncio.run(go())
    store.close()


def test_a_corrupted_data_object_is_never_served(pools) -> None:  # type: ignore[no-untyped-def]
    store = open_store(pools)

    async def go() -> None:
        await store.create_bucket("b-corrupt", "admin")
        before = data_objects(store)
        await store.put("b-corrupt", "k", meta(b"hello world"), b"hello world")
        (oid,) = data_objects(store) - before
        raw = bytearray(store.data.read(oid, 1 << 20))
        raw[-3] ^= 0x01  # one bit of the body
        store.data.write_full(oid, bytes(raw))
        with pytest.raises(CorruptRecord):
            await store.get("b-corrupt", "k")
    asyncio.run(go())
    store.close()


def test_conditional_writes(pools) -> None:  # type: ignore[no-untyped-def]
    store = open_store(pools)

    async def go() -> None:
        await store.create_bucket("b-cond", "admin")
        before = data_objects(store)
        await store.put("b-cond", "k", meta(b"1"), b"1", Conditions(if_none_match_any=True))
        with pytest.raises(PreconditionFailed):
            await store.put("b-cond", "k", meta(b"2"), b"2", Conditions(if_none_match_any=True))
        with pytest.raises(NoSuchKey):  # AWS: If-Match on a missing key is 404
            await store.put("b-cond", "missing", meta(b"2"), b"2", Conditions(if_match='"x"'))
        with pytest.raises(PreconditionFailed):
            await store.put("b-cond", "k", meta(b"2"), b"2", Conditions(if_match='"not-it"'))
        etag = (await store.head("b-cond", "k")).etag
        await store.put("b-cond", "k", meta(b"2"), b"2", Conditions(if_match=etag))
        assert (await store.get("b-cond", "k"))[1] == b"2"
        with pytest.raises(PreconditionFailed):
            await store.delete("b-cond", "k", Conditions(if_match=etag))  # the old ETag
        assert len(data_objects(store) - before) == 1  # no loser's data left behind
    asyncio.run(go())
    store.close()


def test_concurrent_conditional_puts_through_two_gateways_have_one_winner(pools) -> None:  # type: ignore[no-untyped-def]
    a, b = open_store(pools), open_store(pools)

    async def go() -> None:
        await a.create_bucket("b-race", "admin")
        before = data_objects(a)
        for round_ in range(20):
            key = f"race/{round_}"

            async def attempt(store: RadosStore, body: bytes) -> bool:
                try:
                    await store.put("b-race", key, meta(body), body, Conditions(if_none_match_any=True))
                    return True
                except PreconditionFailed:
                    return False

            won = await asyncio.gather(*(attempt(s, f"{n}".encode()) for n, s in enumerate([a, b, a, b])))
            assert sum(won) == 1, won
            assert (await b.get("b-race", key))[1] == str(won.index(True)).encode()
        assert len(data_objects(a) - before) == 20  # exactly the winners' data
    asyncio.run(go())
    a.close()
    b.close()


def model_page(keys: list[str], prefix: str, delimiter: str, marker: str | None, max_keys: int):  # type: ignore[no-untyped-def]
    """S3's ListObjects rules over a sorted key list (UTF-8 order): the reference."""
    entries, prefixes, last = [], [], None
    for k in sorted(keys, key=lambda k: k.encode()):
        if not k.startswith(prefix) or (marker is not None and k.encode() <= marker.encode()):
            continue
        cp = None
        if delimiter:
            i = k.find(delimiter, len(prefix))
            if i >= 0:
                cp = k[: i + len(delimiter)]
                if (prefixes and prefixes[-1] == cp) or (marker is not None and cp.encode() <= marker.encode()):
                    continue
        if len(entries) + len(prefixes) >= max_keys:
            return entries, prefixes, True, last
        if cp is not None:
            prefixes.append(cp)
            last = cp
        else:
            entries.append(k)
            last = k
    return entries, prefixes, False, None


@pytest.mark.parametrize("depth", [0, 2])
def test_listing_merges_the_shards_as_s3_lists(pools, depth) -> None:  # type: ignore[no-untyped-def]
    """Shards chosen by the whole key (0), or by the first two path components (2, mail: a
    LIST under `<a>/<b>/` asks one shard, counted)."""
    store = open_store(pools)
    rng = random.Random(7)
    keys = sorted({f"{rng.choice(['a', 'b', 'ü', 'user1'])}/{rng.choice(['cur', 'new', 'x'])}/"
                   f"{rng.randint(0, 60)}" for _ in range(150)} | {"top1", "top2", "a/", "zz/é"})

    async def go() -> None:
        bucket = f"b-list-{depth}"
        await store.create_bucket(bucket, "admin", shards=5, depth=depth)
        await asyncio.gather(*(store.put(bucket, k, meta(b"."), b".") for k in keys))
        asked: list[str] = []
        real = store._omap_page

        async def counted(io, oid, after, prefix, limit):  # type: ignore[no-untyped-def]
            asked.append(oid)
            return await real(io, oid, after, prefix, limit)

        store._omap_page = counted  # type: ignore[method-assign]
        await store.list_objects(bucket, "user1/cur/", "/", None, 100)
        assert len(set(asked)) == (1 if depth == 2 else 5)
        for prefix, delimiter, max_keys in [("", "", 1000), ("", "/", 1000), ("a/", "/", 1000), ("", "", 7),
                                            ("", "/", 2), ("user1/", "", 5), ("user1/c", "/", 3),
                                            ("nothing", "/", 10), ("", "x/", 4), ("", "", 40), ("", "", 150),
                                            ("user1/", "/", 1), ("user1/cur/", "/", 3), ("a/x/", "", 2),
                                            ("ü/new/", "/", 1000)]:
            marker: str | None = None
            while True:  # page through as a client does
                page = await store.list_objects(bucket, prefix, delimiter, marker, max_keys)
                want = model_page(keys, prefix, delimiter, marker, max_keys)
                got = ([e.key for e in page.entries], page.prefixes, page.truncated, page.next_marker)
                assert got == want, (prefix, delimiter, marker, max_keys)
                if not page.truncated:
                    break
                marker = page.next_marker
    asyncio.run(go())
    store.close()


def test_sweep_check_and_rebuild(pools) -> None:  # type: ignore[no-untyped-def]
    """A PUT cut between its two writes leaves an orphan (never a dangling entry): the sweep
    removes it once old enough and keeps every named object; the check finds an entry whose
    data went missing; a lost index is rebuilt from the data objects alone."""
    import rados

    from gateway.engine import records, rados_fsck
    store = open_store(pools)

    async def fill() -> None:
        await store.create_bucket("b-fsck", "admin", shards=3)
        for i in range(12):
            await store.put("b-fsck", f"m/{i}", meta(f"body {i}".encode()), f"body {i}".encode())
        await store.put("b-fsck", "m/0", meta(b"newer"), b"newer")
    asyncio.run(fill())
    b = asyncio.run(store.bucket("b-fsck"))
    # A gateway killed after its data write: the object exists, no entry names it.
    orphan = f"{b.id}.cut-short"
    store.data.write_full(orphan, records.encode(records.PUT, 0, "b-fsck", "m/cut", records.meta_json(meta(b"c")),
                                                None, (), b"c"))
    young = rados_fsck.sweep(store)  # an hour by default: it may be a PUT in flight
    assert young.removed == [] and young.too_young >= 13
    assert b.name in {x.name for x in rados_fsck.buckets(store)}
    swept = rados_fsck.sweep(store, min_age=0)  # every other test's objects stay
    assert swept.removed == [orphan]
    assert asyncio.run(store.list_objects("b-fsck", "", "", None, 100)).entries.__len__() == 12
    assert rados_fsck.check(store, [b], deep=True).dangling == []
    # Data lost under an entry (an operator removed it by hand): the check names it.
    victim = rados_fsck._named(store, b, "m/3")
    assert victim is not None
    store.data.remove_object(victim.oid)
    assert rados_fsck.check(store, [b]).dangling == [("b-fsck", "m/3")]
    with pytest.raises(EngineUnavailable):  # a bounded retry, then a 503, never a hang
        asyncio.run(store.get("b-fsck", "m/3"))
    # The index pool lost: rebuilt from the data, the newest version of m/0 wins.
    for n in range(b.shards):
        store.index.remove_object(f"{b.id}.{n}")
    report = rados_fsck.rebuild(store, b)
    assert report.restored == 11  # m/3's data is gone
    page = asyncio.run(store.list_objects("b-fsck", "", "", None, 100))
    assert [e.key for e in page.entries] == sorted(f"m/{i}" for i in range(12) if i != 3)
    assert asyncio.run(store.get("b-fsck", "m/0"))[1] == b"newer"
    assert rados_fsck.check(store, [b], deep=True).corrupt == []
    with pytest.raises(rados.ObjectNotFound):
        store.data.stat(orphan)
    store.close()


def test_large_objects_are_striped_into_tails(pools) -> None:  # type: ignore[no-untyped-def]
    """A body over 4 MiB: tails first, then the head that lists them; read back whole and
    verified block by block; a flipped bit in a tail is never served; an overwrite and a
    delete take the tails along; tails of a PUT cut short are swept."""
    from gateway.engine import rados_fsck
    from gateway.engine.rados import STRIPE
    store = open_store(pools)
    body = secrets.token_bytes(2 * STRIPE + 12345)

    async def go() -> None:
        await store.create_bucket("b-big", "admin")
        before = data_objects(store)
        await store.put("b-big", "big", meta(body), body)
        made = data_objects(store) - before
        assert len(made) == 4 and sum(o.rsplit(".", 1)[-1].startswith("t") for o in made) == 3
        assert (await store.get("b-big", "big"))[1] == body
        assert rados_fsck.check(store, [await store.bucket("b-big")], deep=True).corrupt == []
        tail = sorted(o for o in made if o.endswith(".t1"))[0]
        raw = bytearray(store.data.read(tail, STRIPE))
        raw[100] ^= 0x80
        store.data.write_full(tail, bytes(raw))
        with pytest.raises(CorruptRecord):
            await store.get("b-big", "big")
        await store.put("b-big", "big", meta(b"small"), b"small")  # the overwrite takes the tails along
        assert len(data_objects(store) - before) == 1
        assert await store.delete("b-big", "big")
        assert data_objects(store) == before
        b = await store.bucket("b-big")
        store.data.write_full(f"{b.id}.cut.t0", b"a tail whose head was never written")
        assert f"{b.id}.cut.t0" in rados_fsck.sweep(store, min_age=0).removed
    asyncio.run(go())
    store.close()


def test_shared_records_change_by_compare_and_swap(pools) -> None:  # type: ignore[no-untyped-def]
    """Access keys and the like, seen by every gateway at once; two gateways creating the same
    record: one wins; a stale update is refused."""
    a, b = open_store(pools), open_store(pools)

    async def go() -> None:
        assert await a.record("keys", "AK1") is None
        won = await asyncio.gather(a.swap_record("keys", "AK1", None, '{"s":"one"}'),
                                   b.swap_record("keys", "AK1", None, '{"s":"two"}'))
        assert sorted(won) == [False, True]
        current = await b.record("keys", "AK1")
        assert current in ('{"s":"one"}', '{"s":"two"}')
        assert await a.swap_record("keys", "AK1", current, '{"s":"three"}')
        assert not await b.swap_record("keys", "AK1", current, None)  # stale: refused
        await a.swap_record("keys", "AK2", None, "{}")
        assert [k for k, _ in await b.records("keys")] == ["AK1", "AK2"]
        assert await b.swap_record("keys", "AK1", '{"s":"three"}', None)
        assert await a.record("keys", "AK1") is None
    asyncio.run(go())
    a.close()
    b.close()


def test_the_rados_cli(pools) -> None:  # type: ignore[no-untyped-def]
    """`mailstore rados`: bucket-create and -list, check (exit 1 naming what is wrong), sweep
    and rebuild, against the cluster, named by its conf, user and keyring file."""
    import json
    import subprocess

    from conftest import BIN
    ceph, user, keyring, names = pools
    common = ["--ceph-conf", str(ceph.conf), "--ceph-user", user, "--keyring", keyring,
              "--data-pool", names["data_pool"], "--index-pool", names["index_pool"], "--meta-pool", names["meta_pool"]]

    def cli(*args: str) -> tuple[int, object]:
        done = subprocess.run([str(BIN / "mailstore"), "rados", *args, *common], capture_output=True, text=True,
                              timeout=120)
        return done.returncode, json.loads(done.stdout) if done.stdout.strip() else done.stderr

    rc, out = cli("bucket-create", "b-cli", "--shards", "2")
    assert rc == 0 and out["shards"] == 2, out  # type: ignore[index]
    assert "b-cli" in [b["bucket"] for b in cli("bucket-list")[1]]  # type: ignore[union-attr]
    store = open_store(pools)
    for i in range(5):
        asyncio.run(store.put("b-cli", f"k{i}", meta(b"v"), b"v"))
    assert cli("check", "--bucket", "b-cli", "--deep")[0] == 0
    b = asyncio.run(store.bucket("b-cli"))
    from gateway.engine import rados_fsck
    store.data.remove_object(rados_fsck._named(store, b, "k2").oid)  # type: ignore[union-attr]
    rc, out = cli("check", "--bucket", "b-cli")
    assert rc == 1 and out["dangling"] == [["b-cli", "k2"]], out  # type: ignore[index]
    store.data.write_full(f"{b.id}.orphan", b"not even a record")
    rc, out = cli("sweep", "--min-age", "0")
    assert out["corrupt"] == [f"{b.id}.orphan"], out  # type: ignore[index]  # reported, never removed silently
    assert rc == 1
    store.data.remove_object(f"{b.id}.orphan")
    for n in range(b.shards):
        store.index.remove_object(f"{b.id}.{n}")
    rc, out = cli("rebuild", "--bucket", "b-cli")
    assert rc == 0 and out["restored"] == 4, out  # type: ignore[index]
    assert cli("check", "--bucket", "b-cli")[0] == 0
    assert cli("check", "--bucket", "nope")[0] == 1
    for wrong in (["--ceph-conf", "/nonexistent/ceph.conf"], ["--data-pool", "no-such-pool"],
                  ["--keyring", "/nonexistent/keyring"]):  # a careless operator: a precise error, no traceback
        args = list(common)
        args[args.index(wrong[0]) + 1] = wrong[1]
        done = subprocess.run([str(BIN / "mailstore"), "rados", "bucket-list", *args], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.startswith("mailstore: RADOS"), done.stderr
        assert "Traceback" not in done.stderr
    for bad in (["bucket-create", "b-zero", "--shards", "0"], ["reshard", "b-cli", "--shards", "-3"],
                ["bucket-create", "b-neg", "--shard-depth", "-1"]):
        done = subprocess.run([str(BIN / "mailstore"), "rados", *bad, *common], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2 and "a whole number of at least" in done.stderr, done.stderr
    rc, out = cli("reshard", "b-cli", "--shards", "4", "--shard-depth", "1")
    assert rc == 0 and (out["shards"], out["depth"]) == (4, 1), out  # type: ignore[index]
    rc, out = cli("check", "--bucket", "b-cli", "--deep")
    assert rc == 0 and out["entries"] == 4, out  # type: ignore[index]
    store.close()


def test_a_put_racing_a_bucket_delete_is_refused_not_lost(pools) -> None:  # type: ignore[no-untyped-def]
    """Gateway B's PUT lands between gateway A's emptiness check of a shard and the bucket's
    removal: it must be refused (NoSuchBucket), never acknowledged and then deleted with the
    bucket. A delete that finds the bucket not empty opens its shards again."""
    import zlib
    a, b = open_store(pools), open_store(pools)
    key = next(f"sneaky{i}" for i in range(100) if zlib.crc32(f"sneaky{i}".encode()) % 2 == 0)  # shard 0

    async def go() -> None:
        await a.create_bucket("b-del-race", "admin", shards=2)
        await b.bucket("b-del-race")  # B knows the bucket (cached), as a busy gateway would
        real = a._omap_page
        raced: list[str] = []

        async def check_then_put(io, oid, after, prefix, limit):  # type: ignore[no-untyped-def]
            got = await real(io, oid, after, prefix, limit)
            if io is a.index and oid.endswith(".0") and not raced:  # shard 0 was just found empty
                try:
                    await b.put("b-del-race", key, meta(b"s"), b"s")
                    raced.append("acknowledged")
                except NoSuchBucket:
                    raced.append("refused")
            return got

        a._omap_page = check_then_put  # type: ignore[method-assign]
        await a.delete_bucket("b-del-race")
        a._omap_page = real  # type: ignore[method-assign]
        assert raced == ["refused"]
        with pytest.raises(NoSuchBucket):
            await b.head("b-del-race", key)
        await a.create_bucket("b-del-busy", "admin", shards=2)
        await a.put("b-del-busy", "k", meta(b"k"), b"k")
        with pytest.raises(BucketNotEmpty):
            await a.delete_bucket("b-del-busy")
        await b.put("b-del-busy", "after", meta(b"y"), b"y")  # open again
        assert [e.key for e in (await b.list_objects("b-del-busy", "", "", None, 10)).entries] == ["after", "k"]
        await a.create_bucket("b-del-twice", "admin", shards=2)  # two deletes at once: one does it
        results = await asyncio.gather(a.delete_bucket("b-del-twice"), b.delete_bucket("b-del-twice"),
                                       return_exceptions=True)
        assert sorted(type(r).__name__ for r in results) in (["EngineUnavailable", "NoneType"],
                                                             ["NoSuchBucket", "NoneType"]), results
        assert "b-del-twice" not in {x.name for x in await a.list_buckets()}
    asyncio.run(go())
    a.close()
    b.close()


def test_a_bucket_made_again_elsewhere_and_a_large_header(pools) -> None:  # type: ignore[no-untyped-def]
    """Gateway B has the bucket cached when gateway A deletes it and makes it again (a new id):
    B's next requests find the new one, not NoSuchBucket. A record whose header is larger than
    a GET's first read comes back whole (a second read)."""
    a, b = open_store(pools), open_store(pools)

    async def go() -> None:
        await a.create_bucket("b-again", "admin", shards=2)
        await b.put("b-again", "old", meta(b"1"), b"1")  # B caches the bucket
        assert await a.delete("b-again", "old")
        await a.delete_bucket("b-again")
        await a.create_bucket("b-again", "admin", shards=3)
        await b.put("b-again", "new", meta(b"2"), b"2")
        assert (await b.get("b-again", "new"))[1] == b"2"
        assert [e.key for e in (await b.list_objects("b-again", "", "", None, 10)).entries] == ["new"]
        assert (await b.bucket("b-again")).shards == 3
        big = meta(b"body", **{f"h{i}": "v" * 1000 for i in range(30)})  # a 30 KB header
        await a.put("b-again", "big-header", big, b"body")
        got_meta, got = await b.get("b-again", "big-header")
        assert got == b"body" and got_meta.user == big.user
    asyncio.run(go())
    a.close()
    b.close()


def test_reshard(pools) -> None:  # type: ignore[no-untyped-def]
    """A bucket's index moved from 2 shards by whole key to 5 by depth 2: every object and the
    listing as before; while it moves, another gateway's PUT answers 503 (EngineUnavailable)
    and its GET goes on; afterwards, that gateway (holding the old index) writes to the new one."""
    a, b = open_store(pools), open_store(pools)
    keys = [f"h{i % 3}/user{i % 4}/cur/{i}" for i in range(60)]

    async def go() -> None:
        await a.create_bucket("b-reshard", "admin", shards=2)
        await asyncio.gather(*(a.put("b-reshard", k, meta(k.encode()), k.encode()) for k in keys))
        await b.head("b-reshard", keys[0])  # B holds the old index
        real = a._write
        during: list[str] = []

        async def write_then_race(io, oid, build):  # type: ignore[no-untyped-def]
            rv = await real(io, oid, build)
            if io is a.index and oid == f"{old_id}.1" and not during:  # both old shards marked now
                try:
                    await b.put("b-reshard", "late", meta(b"l"), b"l")
                    during.append("put went through")
                except EngineUnavailable:
                    during.append("put refused")
                during.append((await b.get("b-reshard", keys[5]))[1].decode())
            return rv

        old_id = (await a.bucket("b-reshard")).id
        a._write = write_then_race  # type: ignore[method-assign]
        new = await a.reshard("b-reshard", 5, depth=2)
        a._write = real  # type: ignore[method-assign]
        assert during == ["put refused", keys[5]], during
        assert (new.shards, new.depth) == (5, 2)
        page = await b.list_objects("b-reshard", "", "", None, 1000)
        assert [e.key for e in page.entries] == sorted(keys, key=lambda k: k.encode())
        assert (await b.list_objects("b-reshard", "h1/user1/", "/", None, 100)).prefixes == ["h1/user1/cur/"]
        await b.put("b-reshard", "late", meta(b"l"), b"l")  # through the new index
        for k in keys:
            assert (await b.get("b-reshard", k))[1] == k.encode()
        assert (await b.bucket("b-reshard")).shards == 5
    asyncio.run(go())
    a.close()
    b.close()


def test_requests_cancelled_in_flight(pools) -> None:  # type: ignore[no-untyped-def]
    """Requests cancelled while librados still works on them (a client that hung up): the
    operations are released only when librados is done with them, so nothing is freed under
    it, and the store goes on serving."""
    store = open_store(pools)

    async def go() -> None:
        await store.create_bucket("b-cancel", "admin", shards=4)
        for round_ in range(5):
            tasks = [asyncio.create_task(store.put("b-cancel", f"c{round_}/{i}", meta(b"x" * 5000), b"x" * 5000))
                     for i in range(60)]
            tasks += [asyncio.create_task(store.list_objects("b-cancel", "", "", None, 50)) for _ in range(20)]
            await asyncio.sleep(0.005 * round_)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(1)  # the completions of what was cancelled arrive and release
        await store.put("b-cancel", "after", meta(b"ok"), b"ok")
        assert (await store.get("b-cancel", "after"))[1] == b"ok"
    asyncio.run(go())
    store.close()


def test_delete_many_batches_per_shard_and_falls_back_when_an_entry_changes(pools) -> None:  # type: ignore[no-untyped-def]
    """DeleteObjects: keys present, absent and named twice; the index operations counted on the
    OSD are per shard, not per key; a key overwritten by another gateway between the batch's
    read and its swap sends that batch back to one delete per key, and nothing is left over."""
    ceph = pools[0]
    a, b = open_store(pools), open_store(pools)

    async def go() -> None:
        await a.create_bucket("b-many", "admin", shards=4)
        keys = [f"m/{i:04d}" for i in range(300)]
        for k in keys:
            await a.put("b-many", k, meta(k.encode()), k.encode())
        before = data_objects(a)
        ops0 = sum(ceph.osd_ops().values())
        got = await a.delete_many("b-many", [*keys[:200], "absent", keys[0]])
        ops = sum(ceph.osd_ops().values()) - ops0
        assert got == [True] * 200 + [False, True]
        assert ops < 200 + 2 * 4 + 20, ops  # one per data object, about two per shard
        assert len(before - data_objects(a)) == 200
        # another gateway overwrites one key between the batch's read and its swap
        real_write = a._write
        raced: list[str] = []
        target = (await a.bucket("b-many")).shard(keys[250])

        async def write(io, oid, build):  # type: ignore[no-untyped-def]
            if io is a.index and oid == target and not raced:  # that key's batch, after its read
                raced.append(oid)
                await b.put("b-many", keys[250], meta(b"new"), b"new")
            return await real_write(io, oid, build)

        a._write = write  # type: ignore[method-assign]
        assert await a.delete_many("b-many", keys[200:]) == [True] * 100
        a._write = real_write  # type: ignore[method-assign]
        assert raced
        page = await a.list_objects("b-many", "", "", None, 1000)
        assert page.entries == [] and not {o for o in data_objects(a) if o.startswith((await a.bucket("b-many")).id)}
        await a.delete_bucket("b-many")

    try:
        asyncio.run(go())
    finally:
        a.close()
        b.close()


def test_a_staged_put_whose_tail_was_swept_is_refused(pools) -> None:  # type: ignore[no-untyped-def]
    """A body staged as tails (a long upload) whose first tail a sweep removed meanwhile: the
    PUT is refused (503) and names nothing, instead of acknowledging an object it cannot serve."""
    store = open_store(pools)

    async def go() -> None:
        b = await store.create_bucket("b-staged", "admin", shards=2)
        head = store.new_oid(b)
        body = os.urandom(9 << 20)
        tails = tuple([await store.write_tail(f"{head}.t{n}", body[i:i + (4 << 20)])
                       for n, i in enumerate(range(0, len(body), 4 << 20))])
        store.data.remove_object(tails[0].blob_id)  # the sweep's doing
        with pytest.raises(EngineUnavailable, match="is gone"):
            await store.put("b-staged", "long", meta(body), b"", head=head, tails=tails)
        with pytest.raises(NoSuchKey):
            await store.head("b-staged", "long")
        assert head not in data_objects(store)
        await store.delete_bucket("b-staged")

    try:
        asyncio.run(go())
    finally:
        store.close()
