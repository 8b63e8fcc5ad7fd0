"""Two gateway processes on one data directory: read-after-write and
list-after-write across them, both ways, for puts and deletes."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import botocore.exceptions
import pytest

from conftest import GatewayProcess, client, create_key, engine_gateway, engine_key, mailstore


@pytest.fixture(scope="module", params=["local", "rados"])
def pair(tmp_path_factory, request):  # type: ignore[no-untyped-def]
    """Two gateways on one store: one data directory, or (as two hosts would) one Ceph cluster."""
    data = tmp_path_factory.mktemp("pair") / "data"
    key = engine_key(request.param, data, request)
    a, b = engine_gateway(request.param, data, request), engine_gateway(request.param, data, request)
    yield client(a.endpoint, key), client(b.endpoint, key)
    a.stop()
    b.stop()


def test_bucket_and_key_visible_to_both(pair):
    a, b = pair
    a.create_bucket(Bucket="shared")
    b.head_bucket(Bucket="shared")
    assert "shared" in [x["Name"] for x in b.list_buckets()["Buckets"]]


@pytest.mark.parametrize("direction", ["a->b", "b->a"])
def test_read_and_list_after_write(pair, direction):
    w, r = pair if direction == "a->b" else pair[::-1]
    for i in range(200):
        key = f"{direction}/msg{i:04d}"
        body = os.urandom(64 + i * 37)
        w.put_object(Bucket="shared", Key=key, Body=body, Metadata={"n": str(i)})
        got = r.get_object(Bucket="shared", Key=key)  # at once, no retry, no sleep
        assert got["Body"].read() == body and got["Metadata"] == {"n": str(i)}
        assert r.head_object(Bucket="shared", Key=key)["ContentLength"] == len(body)
        listed = r.list_objects(Bucket="shared", Prefix=key)["Contents"]
        assert [o["Key"] for o in listed] == [key]
    for i in range(0, 200, 3):
        key = f"{direction}/msg{i:04d}"
        w.delete_object(Bucket="shared", Key=key)
        with pytest.raises(botocore.exceptions.ClientError) as e:
            r.get_object(Bucket="shared", Key=key)
        assert e.value.response["Error"]["Code"] == "NoSuchKey"
        assert not r.list_objects_v2(Bucket="shared", Prefix=key).get("Contents")


def test_concurrent_writers_on_both(pair):
    a, b = pair

    def put(args):  # type: ignore[no-untyped-def]
        i, cl = args
        cl.put_object(Bucket="shared", Key=f"mix/{i:05d}", Body=str(i).encode())

    jobs = [(i, a if i % 2 else b) for i in range(600)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, jobs))
    for cl in pair:
        keys = [o["Key"] for p in cl.get_paginator("list_objects_v2").paginate(Bucket="shared", Prefix="mix/")
                for o in p.get("Contents", [])]
        assert keys == [f"mix/{i:05d}" for i in range(600)]
    assert b.get_object(Bucket="shared", Key="mix/00301")["Body"].read() == b"301"


def test_concurrent_conditional_puts_through_both_have_one_winner(pair):
    """If-None-Match: * on one key through both gateways at once, 20 rounds: exactly one
    201/200 per round, every other 412, and the object is the winner's."""
    a, b = pair
    for round_ in range(20):
        key = f"race/{round_}"
        bodies = {i: f"{round_}-{i}".encode() for i in range(8)}

        def put(i: int) -> int:
            cl = a if i % 2 else b
            try:
                cl.put_object(Bucket="shared", Key=key, Body=bodies[i], IfNoneMatch="*")
                return i
            except botocore.exceptions.ClientError as exc:
                assert exc.response["Error"]["Code"] in ("PreconditionFailed", "ConditionalRequestConflict")
                return -1

        with ThreadPoolExecutor(8) as pool:
            winners = [i for i in pool.map(put, range(8)) if i >= 0]
        assert len(winners) == 1, winners
        for cl in pair:
            assert cl.get_object(Bucket="shared", Key=key)["Body"].read() == bodies[winners[0]]


def test_workers_share_one_socket_and_die_with_parent(tmp_path):
    """`--workers 2`: one endpoint, consistent across workers; kill -9 of the parent ends all."""
    import socket
    import time

    data = tmp_path / "data"
    key = create_key(data)
    gw = GatewayProcess(data, "--workers", "2")
    try:
        s3 = client(gw.endpoint, key)
        s3.create_bucket(Bucket="workers")
        with ThreadPoolExecutor(8) as pool:  # many connections land on both workers
            list(pool.map(lambda i: s3.put_object(Bucket="workers", Key=f"w/{i:03d}", Body=str(i).encode()),
                          range(200)))
        for i in range(0, 200, 7):  # any worker reads what any worker wrote
            fresh = client(gw.endpoint, key)
            assert fresh.get_object(Bucket="workers", Key=f"w/{i:03d}")["Body"].read() == str(i).encode()
        assert s3.list_objects_v2(Bucket="workers", Prefix="w/")["KeyCount"] == 200
    finally:
        gw.kill9()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", gw.port), timeout=1).close()
        except OSError:
            break  # nobody listens any more: the workers died with their parent
        time.sleep(0.2)
    else:
        pytest.fail("workers still accept connections after the parent was killed")
    res = mailstore("fsck", "--data-dir", str(data), "--quiet", check=False)
    assert res.returncode == 0, res.stdout
