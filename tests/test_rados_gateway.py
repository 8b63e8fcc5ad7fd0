"""The S3 gateway on Ceph RADOS as operators run it: several gateways (as several hosts) on
one cluster, kill -9 in a write storm, an OSD restarted under load, the orphan sweep beside
multipart uploads, keys and buckets changed on one gateway and seen on another, and the
refusals at start (the master key). The S3 semantics themselves are the parametrised suite's
(test_s3_boto3 and the others run on both engines)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import botocore.exceptions
import pytest
import urllib3

from conftest import BIN, GatewayProcess, Key, RadosCluster, client, mailstore

MiB = 1 << 20


@pytest.fixture(scope="module")
def cluster(rados_store: RadosCluster) -> RadosCluster:
    return rados_store


@pytest.fixture(scope="module")
def admin(cluster: RadosCluster) -> Key:
    return cluster.create_key("admin")


def gateway(cluster: RadosCluster, tmp_path, *extra: str) -> GatewayProcess:  # type: ignore[no-untyped-def]
    return GatewayProcess(tmp_path / "unused", *extra, engine=cluster.gateway_args())


def data_objects(cluster: RadosCluster) -> set[str]:
    """The data objects of this module's store (its namespace of the data pool)."""
    conn = cluster.connect()
    try:
        io = cluster.ioctx(conn)
        try:
            return {o.key for o in io.list_objects()}
        finally:
            io.close()
    finally:
        conn.shutdown()


def sweep(cluster: RadosCluster) -> dict[str, object]:
    return json.loads(mailstore("rados", "sweep", "--min-age", "0", *cluster.args).stdout)


def deep_check(cluster: RadosCluster, bucket: str) -> dict[str, object]:
    out = mailstore("rados", "check", "--deep", "--bucket", bucket, *cluster.args, check=False)
    return json.loads(out.stdout)


def test_multipart_objects_and_open_uploads_survive_the_sweep(cluster, admin, tmp_path):  # type: ignore[no-untyped-def]
    """Parts are tails named after their upload: the sweep keeps those of an open upload and
    of a completed object, and removes an aborted upload's and overwritten objects'."""
    gw = gateway(cluster, tmp_path)
    try:
        s3 = client(gw.endpoint, admin)
        s3.create_bucket(Bucket="mp-sweep")
        before = {o for o in data_objects(cluster)}
        p1, p2 = os.urandom(5 * MiB + 123), os.urandom(MiB + 7)
        done = s3.create_multipart_upload(Bucket="mp-sweep", Key="done")["UploadId"]
        e1 = s3.upload_part(Bucket="mp-sweep", Key="done", UploadId=done, PartNumber=1, Body=p1)["ETag"]
        e2 = s3.upload_part(Bucket="mp-sweep", Key="done", UploadId=done, PartNumber=2, Body=p2)["ETag"]
        s3.upload_part(Bucket="mp-sweep", Key="done", UploadId=done, PartNumber=3, Body=b"unused")
        s3.complete_multipart_upload(Bucket="mp-sweep", Key="done", UploadId=done, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
        still = s3.create_multipart_upload(Bucket="mp-sweep", Key="open")["UploadId"]
        o1 = s3.upload_part(Bucket="mp-sweep", Key="open", UploadId=still, PartNumber=1, Body=p1)["ETag"]
        gone = s3.create_multipart_upload(Bucket="mp-sweep", Key="gone")["UploadId"]
        s3.upload_part(Bucket="mp-sweep", Key="gone", UploadId=gone, PartNumber=1, Body=p2)
        s3.abort_multipart_upload(Bucket="mp-sweep", Key="gone", UploadId=gone)
        for i in range(3):  # overwrites: the replaced data is removed at once
            s3.put_object(Bucket="mp-sweep", Key="over", Body=os.urandom(6 * MiB if i == 1 else 100))

        added = data_objects(cluster) - before
        assert not any(gone in o for o in added), "an aborted upload leaves no data"
        rep = sweep(cluster)
        assert rep["corrupt"] == []
        assert s3.get_object(Bucket="mp-sweep", Key="done")["Body"].read() == p1 + p2
        assert [p["PartNumber"] for p in s3.list_parts(Bucket="mp-sweep", Key="open", UploadId=still)["Parts"]] == [1]
        o2 = s3.upload_part(Bucket="mp-sweep", Key="open", UploadId=still, PartNumber=2, Body=p2)["ETag"]
        s3.complete_multipart_upload(Bucket="mp-sweep", Key="open", UploadId=still, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": o1}, {"PartNumber": 2, "ETag": o2}]})
        assert s3.get_object(Bucket="mp-sweep", Key="open")["Body"].read() == p1 + p2
        assert deep_check(cluster, "mp-sweep")["result"] == "ok"
        # what remains is exactly the three objects' heads and tails: nothing leaked
        left = data_objects(cluster) - before
        assert sweep(cluster)["removed"] == 0
        for key in ("done", "open", "over"):
            s3.delete_object(Bucket="mp-sweep", Key=key)
        assert data_objects(cluster) - before == set(), f"leaked: {sorted(left)}"
        s3.delete_bucket(Bucket="mp-sweep")
    finally:
        gw.stop()


def test_a_gateway_killed_in_a_write_storm_loses_nothing_acknowledged(cluster, admin, tmp_path):  # type: ignore[no-untyped-def]
    """kill -9 of a gateway while 8 clients write small and large objects, three rounds:
    everything it acknowledged reads back byte for byte through another gateway; the sweep
    then removes only what no entry names, and the deep check is clean."""
    acked: dict[str, str] = {}
    lock = threading.Lock()
    client(gateway_once(cluster, tmp_path), admin).create_bucket(Bucket="storm")
    for round_ in range(3):
        gw = gateway(cluster, tmp_path)
        stop = threading.Event()
        before = len(acked)

        def writer(n: int) -> None:
            c = client(gw.endpoint, admin)  # noqa: B023 - this round's gateway
            i = 0
            while not stop.is_set() and i < 400:  # noqa: B023
                key = f"r{round_}/u{n}/m{i}"  # noqa: B023
                body = os.urandom(7 * MiB if i % 25 == 7 else 200 + i)
                try:
                    c.put_object(Bucket="storm", Key=key, Body=body)
                except Exception:  # noqa: BLE001 - the gateway died under it: not acknowledged
                    return
                with lock:
                    acked[key] = hashlib.md5(body).hexdigest()
                i += 1

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(writer, n) for n in range(8)]
            deadline = time.monotonic() + 60
            while len(acked) - before < 100 and time.monotonic() < deadline:
                time.sleep(0.05)
            gw.kill9()
            stop.set()
            for f in futures:
                f.result()
        assert len(acked) - before >= 100
    other = gateway(cluster, tmp_path)
    try:
        s3 = client(other.endpoint, admin)

        def verify() -> None:
            for key, digest in acked.items():
                assert hashlib.md5(s3.get_object(Bucket="storm", Key=key)["Body"].read()).hexdigest() == digest, key

        verify()
        rep = sweep(cluster)
        assert rep["corrupt"] == []
        verify()
        assert deep_check(cluster, "storm")["result"] == "ok"
        listed = {o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket="storm")
                  for o in p.get("Contents", [])}
        assert set(acked) <= listed and len(listed - set(acked)) <= 3 * 8  # one unacknowledged PUT per client
    finally:
        other.stop()


def gateway_once(cluster: RadosCluster, tmp_path) -> str:  # type: ignore[no-untyped-def]
    """The endpoint of a gateway stopped as soon as this test is done with it."""
    gw = gateway(cluster, tmp_path)
    _started.append(gw)
    return gw.endpoint


_started: list[GatewayProcess] = []


@pytest.fixture(autouse=True)
def _stop_started():  # type: ignore[no-untyped-def]
    yield
    while _started:
        _started.pop().stop()


def test_an_osd_restarted_under_load_through_the_gateway(ceph, cluster, admin, tmp_path):  # type: ignore[no-untyped-def]
    """The only OSD stops and starts again while clients write and read: requests wait for it
    (or fail with a 503 the SDKs retry), none is answered wrongly, nothing acknowledged is lost."""
    gw = gateway(cluster, tmp_path)
    try:
        s3 = client(gw.endpoint, admin)
        s3.create_bucket(Bucket="osd-gw")
        acked: dict[str, bytes] = {}
        errors: list[str] = []
        stop = threading.Event()

        def load(n: int) -> None:
            c = client(gw.endpoint, admin)
            i = 0
            while not stop.is_set():
                key, body = f"w{n}/{i}", os.urandom(300 + i)
                try:
                    c.put_object(Bucket="osd-gw", Key=key, Body=body)
                    acked[key] = body
                    assert c.get_object(Bucket="osd-gw", Key=key)["Body"].read() == body
                except botocore.exceptions.ClientError as exc:
                    errors.append(exc.response["Error"]["Code"])
                i += 1

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(load, n) for n in range(4)]
            time.sleep(2)
            ceph.stop_daemon("osd.0")
            time.sleep(3)
            ceph.start_osd(0)
            ceph.wait_clean()
            time.sleep(2)
            stop.set()
            for f in futures:
                f.result()
        assert set(errors) <= {"ServiceUnavailable", "SlowDown"}, errors
        for key, body in acked.items():
            assert s3.get_object(Bucket="osd-gw", Key=key)["Body"].read() == body
    finally:
        gw.stop()


def test_keys_and_buckets_changed_on_one_gateway_hold_on_another(cluster, admin, tmp_path):  # type: ignore[no-untyped-def]
    """Two gateways (two hosts) on one cluster: a key made through A's admin API signs on B;
    deleted on A, B refuses it within the key cache's 2 s; a bucket deleted on A is gone on B
    at once, and made again on A, B writes into the new one."""
    a, b = gateway(cluster, tmp_path), gateway(cluster, tmp_path)
    try:
        out = mailstore("key", "create", "--endpoint", a.endpoint, "--access-key", admin.access_key,
                        "--secret-key", admin.secret, "--name", "tenant", "--preset", "bucket:tenant-box").stdout
        d = json.loads(out)
        tenant = Key(d["AccessKeyId"], d["SecretAccessKey"])
        client(a.endpoint, admin).create_bucket(Bucket="tenant-box")
        tb = client(b.endpoint, tenant)
        tb.put_object(Bucket="tenant-box", Key="k", Body=b"1")
        with pytest.raises(botocore.exceptions.ClientError) as e:
            tb.list_buckets()  # its policy holds on B too
        assert e.value.response["Error"]["Code"] == "AccessDenied"
        mailstore("key", "delete", "--endpoint", a.endpoint, "--access-key", admin.access_key,
                  "--secret-key", admin.secret, tenant.access_key)
        time.sleep(2.5)
        with pytest.raises(botocore.exceptions.ClientError) as e:
            tb.get_object(Bucket="tenant-box", Key="k")
        assert e.value.response["Error"]["Code"] == "InvalidAccessKeyId"

        sa, sb = client(a.endpoint, admin), client(b.endpoint, admin)
        sb.head_bucket(Bucket="tenant-box")  # B has it cached now
        sa.delete_object(Bucket="tenant-box", Key="k")
        sa.delete_bucket(Bucket="tenant-box")
        with pytest.raises(botocore.exceptions.ClientError) as e:
            sb.head_bucket(Bucket="tenant-box")
        assert e.value.response["Error"]["Code"] in ("404", "NoSuchBucket")
        with pytest.raises(botocore.exceptions.ClientError) as e:
            sb.put_object(Bucket="tenant-box", Key="late", Body=b"x")
        assert e.value.response["Error"]["Code"] == "NoSuchBucket"
        sa.create_bucket(Bucket="tenant-box")
        sb.put_object(Bucket="tenant-box", Key="again", Body=b"2")
        assert sa.get_object(Bucket="tenant-box", Key="again")["Body"].read() == b"2"
        assert [o["Key"] for o in sa.list_objects_v2(Bucket="tenant-box")["Contents"]] == ["again"]
    finally:
        a.stop()
        b.stop()


def test_health_and_metrics_on_rados(cluster, tmp_path):  # type: ignore[no-untyped-def]
    gw = gateway(cluster, tmp_path)
    try:
        http = urllib3.PoolManager()
        r = http.request("GET", f"{gw.endpoint}/health/ready", retries=False)
        body = json.loads(r.data)
        assert r.status == 200 and body["checks"]["engine"] == "ok" and "free_bytes" not in body["checks"]
        m = http.request("GET", f"{gw.endpoint}/metrics", retries=False)
        assert m.status == 200 and b"mailstore_s3_inflight_requests" in m.data
    finally:
        gw.stop()


def test_a_gateway_will_not_start_without_its_master_key(cluster, tmp_path):  # type: ignore[no-untyped-def]
    """Missing, readable by others, or the wrong size: one line naming the file, no traceback,
    and no port opened."""
    open_key = tmp_path / "open.key"
    open_key.write_bytes(secrets.token_bytes(32))
    open_key.chmod(0o644)
    short = tmp_path / "short.key"
    short.write_bytes(b"x" * 16)
    short.chmod(0o600)
    for path, words in ((tmp_path / "missing.key", "No such file"), (open_key, "chmod 600"),
                        (short, "not 32 bytes")):
        args = [a if a != str(cluster.master_key) else str(path) for a in cluster.gateway_args()]
        r = subprocess.run([str(BIN / "mailstore"), "gateway", *args, "--listen", "127.0.0.1:0"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and words in r.stderr and str(path) in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert not r.stdout
    made = tmp_path / "made.key"
    mailstore("rados", "master-key", str(made))
    assert stat.S_IMODE(made.stat().st_mode) == 0o600 and len(made.read_bytes()) == 32
    again = mailstore("rados", "master-key", str(made), check=False)
    assert again.returncode == 2 and "never replaced" in again.stderr


def test_fsck_on_rados_names_damage_and_repairs_what_it_can(cluster, admin, tmp_path):  # type: ignore[no-untyped-def]
    """`mailstore fsck --engine rados` (gateways running): a flipped byte and a lost data object are
    named (exit 1), never served; a lost index entry comes back with --rebuild-index; an orphan
    goes with --sweep."""
    import asyncio

    from gateway.engine.rados import RadosStore

    gw = gateway(cluster, tmp_path)
    try:
        s3 = client(gw.endpoint, admin)
        s3.create_bucket(Bucket="fsck-me")
        for k in ("good", "flipped", "lost", "unindexed"):
            s3.put_object(Bucket="fsck-me", Key=k, Body=k.encode() * 100)
        args = dict(zip(cluster.args[::2], cluster.args[1::2], strict=True))
        store = RadosStore(args["--ceph-conf"], args["--ceph-user"], args["--keyring"],
                           data_pool=args["--data-pool"], index_pool=args["--index-pool"],
                           meta_pool=args["--meta-pool"], namespace=args["--namespace"])
        try:
            b, flipped = asyncio.run(store.locate("fsck-me", "flipped"))
            _, lost = asyncio.run(store.locate("fsck-me", "lost"))
            _, unindexed = asyncio.run(store.locate("fsck-me", "unindexed"))
            raw = bytearray(store.data.read(flipped.oid, 1 << 20, 0))
            raw[-3] ^= 0x20
            store.data.write_full(flipped.oid, bytes(raw))
            store.data.remove_object(lost.oid)
            import rados
            with rados.WriteOpCtx() as op:
                store.index.remove_omap_keys(op, ("kunindexed",))
                store.index.operate_write_op(op, b.shard("unindexed"))
            _, good = asyncio.run(store.locate("fsck-me", "good"))  # an orphan: a copy no entry names
            store.data.write_full(f"{b.id}.pack-{'0' * 24}", store.data.read(good.oid, 1 << 20, 0))
        finally:
            store.close()

        def fsck(*extra: str) -> tuple[int, dict[str, object]]:
            r = mailstore("fsck", "--engine", "rados", *cluster.args, "--bucket", "fsck-me", *extra, check=False)
            assert r.stdout, r.stderr
            return r.returncode, json.loads(r.stdout)

        code, rep = fsck()
        assert code == 1 and rep["problem_count"] == 2, rep
        assert "dangling: fsck-me/lost" in rep["problems"] and any(p.startswith("corrupt:") for p in rep["problems"])
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.get_object(Bucket="fsck-me", Key="flipped")["Body"].read()
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500  # never the flipped bytes
        metrics = urllib3.PoolManager().request("GET", f"{gw.endpoint}/metrics").data.decode()
        errors = next(ln for ln in metrics.splitlines() if ln.startswith("mailstore_engine_checksum_errors_total "))
        assert float(errors.split()[1]) >= 1  # counted, so the dashboard alerts on it
        ops = next(line for line in metrics.splitlines() if line.startswith("mailstore_rados_operations_total "))
        assert float(ops.split()[1]) > 8
        assert [o["Key"] for o in s3.list_objects_v2(Bucket="fsck-me")["Contents"]] == ["flipped", "good", "lost"]
        code, rep = fsck("--rebuild-index", "--sweep", "--min-age", "0")
        assert rep["restored"] == 1 and rep["swept"] >= 1 and code == 1  # the damage stays named
        assert s3.get_object(Bucket="fsck-me", Key="unindexed")["Body"].read() == b"unindexed" * 100
        assert s3.get_object(Bucket="fsck-me", Key="good")["Body"].read() == b"good" * 100
        assert f"{b.id}.{'0' * 24}" not in data_objects(cluster)
    finally:
        gw.stop()


def test_an_upload_cut_short_or_failing_its_digest_leaves_no_tails(cluster, admin, tmp_path):  # type: ignore[no-untyped-def]
    """A 20 MiB PUT whose client hangs up after 13 MiB (three tails staged), and one whose
    Content-MD5 does not match: nothing is stored, and every staged tail is gone again."""
    import socket
    from urllib.parse import urlsplit

    from gateway.s3 import sigv4

    gw = gateway(cluster, tmp_path)
    try:
        s3 = client(gw.endpoint, admin)
        s3.create_bucket(Bucket="cut-short")
        before = data_objects(cluster)
        host = urlsplit(gw.endpoint).netloc
        size = 20 * MiB
        headers = {"Host": host, "Content-Length": str(size)}
        headers.update(sigv4.sign_headers("PUT", "/cut-short/big", [], headers, admin.access_key, admin.secret))
        url = urlsplit(gw.endpoint)
        assert url.hostname is not None and url.port is not None
        with socket.create_connection((url.hostname, url.port)) as sock:
            sock.sendall(("PUT /cut-short/big HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                          + "\r\n").encode())
            chunk = os.urandom(MiB)
            for _ in range(13):
                sock.sendall(chunk)
            deadline = time.monotonic() + 30
            while len(data_objects(cluster) - before) < 3 and time.monotonic() < deadline:
                time.sleep(0.2)  # the tails being staged
            assert len(data_objects(cluster) - before) >= 3
        deadline = time.monotonic() + 30
        while data_objects(cluster) - before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert data_objects(cluster) - before == set(), "the hang-up's staged tails were removed"
        body = os.urandom(9 * MiB)
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.put_object(Bucket="cut-short", Key="bad", Body=body,
                          ContentMD5="1B2M2Y8AsgTpgAmY7PhCfg==")  # the MD5 of nothing
        assert e.value.response["Error"]["Code"] == "BadDigest"
        assert data_objects(cluster) - before == set()
        assert "Contents" not in s3.list_objects_v2(Bucket="cut-short")
    finally:
        gw.stop()


def test_a_completion_that_died_midway_is_finished_by_the_sweep(cluster, admin, tmp_path):  # type: ignore[no-untyped-def]
    """A gateway that dies inside CompleteMultipartUpload leaves the upload "completing". The
    sweep finishes it: before its index swap, records and tails go and the bucket can be
    deleted; after it, the records go and the object stays whole."""
    import asyncio

    from gateway.engine.rados import UPLOADS, RadosStore

    gw = gateway(cluster, tmp_path)
    args = dict(zip(cluster.args[::2], cluster.args[1::2], strict=True))
    store = RadosStore(args["--ceph-conf"], args["--ceph-user"], args["--keyring"], data_pool=args["--data-pool"],
                       index_pool=args["--index-pool"], meta_pool=args["--meta-pool"], namespace=args["--namespace"])
    try:
        s3 = client(gw.endpoint, admin)
        s3.create_bucket(Bucket="died")
        before = data_objects(cluster)
        part = os.urandom(5 * MiB + 1)

        def upload(key: str) -> tuple[str, str]:
            uid = s3.create_multipart_upload(Bucket="died", Key=key)["UploadId"]
            etag = s3.upload_part(Bucket="died", Key=key, UploadId=uid, PartNumber=1, Body=part)["ETag"]
            return uid, etag

        def as_if_dying(uid: str) -> None:  # what _close_upload wrote just before the gateway died
            async def go() -> None:
                b = await store.bucket("died")
                raw = await store.record(f"{UPLOADS}.{b.id}", uid)
                if raw is None:  # completed: its record was dropped; put it back as the crash left it
                    raw = json.dumps({"key": "whole", "meta": {"s": 0, "e": '""', "t": 0.0, "c": "x"},
                                      "initiated": 0.0, "state": "open"})
                    assert await store.swap_record(f"{UPLOADS}.{b.id}", uid, None, raw)
                d = {**json.loads(raw), "state": "completing", "since": time.time() - 10}
                assert await store.swap_record(f"{UPLOADS}.{b.id}", uid, raw, json.dumps(d))
            asyncio.run(go())

        cut, _ = upload("cut")
        as_if_dying(cut)
        whole, etag = upload("whole")
        s3.complete_multipart_upload(Bucket="died", Key="whole", UploadId=whole,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
        as_if_dying(whole)
        assert s3.list_multipart_uploads(Bucket="died").get("Uploads") is None  # neither is open
        rep = sweep(cluster)
        assert rep["corrupt"] == []
        assert s3.get_object(Bucket="died", Key="whole")["Body"].read() == part
        left = data_objects(cluster) - before
        assert left and all(o.split(".")[1] == whole for o in left), left  # only the object's head and tail
        s3.delete_object(Bucket="died", Key="whole")
        assert data_objects(cluster) - before == set()
        s3.delete_bucket(Bucket="died")

        async def records_left() -> list[object]:
            return [await store.record(f"parts.{u}", "00001") for u in (cut, whole)]
        assert asyncio.run(records_left()) == [None, None]
    finally:
        store.close()
        gw.stop()
