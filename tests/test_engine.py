"""The local engine on its own: compaction, rebuild, checksums, recovery."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import botocore.exceptions
import pytest

from conftest import GatewayProcess, client, create_key, mailstore
from gateway import fsck
from gateway.compact import Compactor
from gateway.engine.local import LocalEngine
from gateway.engine.model import CorruptRecord, NoSuchKey, ObjectMeta


def meta(body: bytes) -> ObjectMeta:
    return ObjectMeta(len(body), '"e"', time.time())


def state(engine: LocalEngine, bucket: str) -> dict[str, bytes]:
    page = engine.list_objects(bucket, "", "", None, 100_000)
    return {e.key: engine.read_inline(engine.head(bucket, e.key)) for e in page.entries}


@pytest.fixture
def engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    e = LocalEngine(tmp_path / "d")
    e.committer.SEGMENT_LIMIT = 64 * 1024  # type: ignore[union-attr]  # many small segments
    yield e
    e.close()


def churn(engine: LocalEngine) -> dict[str, bytes]:
    """Overwrites and deletes, so most bytes on disk are garbage."""
    async def go() -> dict[str, bytes]:
        await engine.create_bucket("b", "t")
        expect: dict[str, bytes] = {}
        for rnd in range(6):
            puts = []
            for i in range(150):
                body = os.urandom(300 + i)
                expect[f"k{i:03d}"] = body
                puts.append(engine.put("b", f"k{i:03d}", meta(body), body))
            await asyncio.gather(*puts)
            for i in range(rnd, 150, 7):
                await engine.delete("b", f"k{i:03d}")
                expect.pop(f"k{i:03d}", None)
        return expect
    return asyncio.run(go())


def test_compaction_reclaims_space_and_keeps_data(engine):
    expect = churn(engine)
    before = engine.index.stats()
    assert before["dead_bytes"] > before["live_bytes"]
    stats = Compactor(engine, dead_ratio=0.3).run_once()
    after = engine.index.stats()
    assert stats["segments_compacted"] > 0 and stats["bytes_reclaimed"] > 0
    assert after["segment_bytes"] < before["segment_bytes"]
    assert state(engine, "b") == expect
    rep = fsck.verify(engine.data.root)
    assert rep.ok, rep.problems


def test_rebuild_after_compaction_does_not_resurrect(engine):
    expect = churn(engine)
    Compactor(engine, dead_ratio=0.3).run_once()
    # Deleting the last versions again and compacting twice exercises the prev-chain rule.
    asyncio.run(engine.delete("b", "k001"))
    expect.pop("k001", None)
    Compactor(engine, dead_ratio=0.0).run_once()
    root = engine.data.root
    engine.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(root / "index.db") + suffix).unlink(missing_ok=True)
    rep = fsck.rebuild(root)
    assert rep.ok, rep.problems
    e2 = LocalEngine(root)
    try:
        assert state(e2, "b") == expect
        assert fsck.verify(root).ok
    finally:
        e2.close()


def test_corrupt_inline_record_is_an_error_not_bytes(engine):
    async def go() -> None:
        await engine.create_bucket("b", "t")
        await engine.put("b", "victim", meta(b"A" * 1000), b"A" * 1000)
    asyncio.run(go())
    info = engine.head("b", "victim")
    path = engine.data.segment_path(info.location.segment)
    with open(path, "r+b") as f:
        f.seek(info.location.offset + info.location.length - 10)
        f.write(b"B")
    engine._readers()[1].forget(info.location.segment)
    with pytest.raises(CorruptRecord):
        engine.read_inline(info)
    assert engine.metrics["checksum_errors"] == 1
    assert not fsck.verify(engine.data.root).ok


def test_corruption_through_http_and_fsck_exit_status(tmp_path):
    data = tmp_path / "data"
    key = create_key(data)
    gw = GatewayProcess(data)
    try:
        s3 = client(gw.endpoint, key)
        s3.create_bucket(Bucket="corrupt")
        s3.put_object(Bucket="corrupt", Key="small", Body=b"S" * 5000)
        s3.put_object(Bucket="corrupt", Key="big", Body=b"L" * (3 << 20))
    finally:
        gw.stop()
    e = LocalEngine(data, writer=False)
    small, big = e.head("corrupt", "small"), e.head("corrupt", "big")
    e.close()
    with open(data / "segments" / f"{small.location.segment:010d}.seg", "r+b") as f:
        f.seek(small.location.offset + small.location.length - 1)
        f.write(b"X")
    blob = data / "blobs" / big.blobs[0].blob_id[:2] / f"{big.blobs[0].blob_id}.blob"
    with open(blob, "r+b") as f:
        f.seek((2 << 20) + 5)  # third 1 MiB block
        f.write(b"X")
    res = mailstore("fsck", "--data-dir", str(data), "--quiet", check=False)
    assert res.returncode == 1 and json.loads(res.stdout)["problem_count"] == 2
    gw = GatewayProcess(data)
    try:
        _read_corrupt_objects(client(gw.endpoint, key))
    finally:
        gw.stop()


def _read_corrupt_objects(s3) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        s3.get_object(Bucket="corrupt", Key="small")
    assert exc.value.response["Error"]["Code"] == "InternalError"
    # The blob streams verified blocks: the first two are fine, the third stops the stream.
    assert s3.get_object(Bucket="corrupt", Key="big", Range="bytes=0-1048575")["Body"].read() == b"L" * (1 << 20)
    with pytest.raises(Exception):
        body = s3.get_object(Bucket="corrupt", Key="big")["Body"].read()
        assert body != b"L" * (3 << 20)
        raise AssertionError("served corrupt or truncated bytes as a success")
    s3.put_object(Bucket="corrupt", Key="fine", Body=b"ok")  # the server goes on
    assert s3.get_object(Bucket="corrupt", Key="fine")["Body"].read() == b"ok"


def test_recovery_cuts_uncommitted_tail(tmp_path):
    root = tmp_path / "d"
    e = LocalEngine(root)
    asyncio.run(e.create_bucket("b", "t"))
    asyncio.run(e.put("b", "k", meta(b"v"), b"v"))
    seg = e.committer._segment  # type: ignore[union-attr]
    assert seg is not None
    # Simulate a crash mid-batch: garbage past the committed end, writer gone.
    os.pwrite(seg.fd, b"\x93garbage-half-record", seg.size)
    seg_id, committed = seg.id, seg.size
    e.committer._thread = None  # type: ignore[union-attr]
    seg.close()  # drop the flock like a dead process would
    e.committer = None
    e.close()
    e2 = LocalEngine(root)
    try:
        assert e2.data.segment_path(seg_id).stat().st_size == committed
        assert e2.read_inline(e2.head("b", "k")) == b"v"
        with pytest.raises(NoSuchKey):
            e2.head("b", "nope")
    finally:
        e2.close()
    assert fsck.verify(root).ok


def reference_listing(keys: list[str], prefix: str, delimiter: str, marker: str | None, max_keys: int):
    """S3 listing semantics, the slow obvious way: for checking the index's seeks."""
    out: list[tuple[str, bool]] = []  # (key or common prefix, is_prefix)
    for k in sorted(keys, key=lambda s: s.encode()):
        if not k.startswith(prefix):
            continue
        item, is_prefix = k, False
        if delimiter:
            i = k.find(delimiter, len(prefix))
            if i >= 0:
                item, is_prefix = k[: i + len(delimiter)], True
        if out and out[-1] == (item, is_prefix):
            continue
        if marker is not None and item.encode() <= marker.encode():
            continue
        out.append((item, is_prefix))
    return out[:max_keys], len(out) > max_keys


def test_list_page_matches_reference_model(tmp_path):
    import random

    rng = random.Random(1234)
    parts = ["a", "b", "ab", "é", "x/y", "z", "~", "mail", "Ü"]
    keys = sorted({"/".join(rng.choice(parts) for _ in range(rng.randint(1, 4))) + rng.choice(["", "/", "-1"])
                   for _ in range(600)})
    e = LocalEngine(tmp_path / "d")
    try:
        async def fill() -> None:
            await e.create_bucket("b", "t")
            await asyncio.gather(*(e.put("b", k, meta(b"v"), b"v") for k in keys))
        asyncio.run(fill())
        for _ in range(300):
            prefix = rng.choice(["", "a", "a/", "ab/", "x/", "é/", "mail/b", "q"])
            delimiter = rng.choice(["", "/", "/", "b"])
            marker = rng.choice([None, None, rng.choice(keys), "a/", "ab/", "x"])
            max_keys = rng.choice([1, 2, 3, 7, 50, 1000])
            page = e.list_objects("b", prefix, delimiter, marker, max_keys)
            got = sorted([(x.key, False) for x in page.entries] + [(p, True) for p in page.prefixes],
                         key=lambda t: t[0].encode())
            want, more = reference_listing(keys, prefix, delimiter, marker, max_keys)
            assert got == want, (prefix, delimiter, marker, max_keys)
            assert page.truncated == more, (prefix, delimiter, marker, max_keys)
        # Paging with NextMarker visits every item exactly once.
        for prefix, delimiter in (("", "/"), ("a/", "/"), ("", ""), ("", "b")):
            seen, marker = [], None
            while True:
                page = e.list_objects("b", prefix, delimiter, marker, 3)
                seen += [x.key for x in page.entries] + page.prefixes
                if not page.truncated:
                    break
                marker = page.next_marker
            want, _ = reference_listing(keys, prefix, delimiter, None, 10**9)
            assert sorted(seen, key=str.encode) == [w for w, _ in want]
    finally:
        e.close()
