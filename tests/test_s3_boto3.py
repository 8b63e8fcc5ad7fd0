"""Every S3 operation of the spine through boto3 (current release, default checksums)."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import botocore.exceptions
import pytest
import urllib3
from urllib.parse import unquote

from conftest import client

SIZES = [0, 1, 4096, 100 * 1024, 20 * 1024 * 1024]


@pytest.fixture(scope="module")
def engine_kind(both_engines: str) -> str:
    """Every test here runs on the local engine and on Ceph RADOS."""
    return both_engines


def code(exc: botocore.exceptions.ClientError) -> str:
    return exc.response["Error"]["Code"]


def status(exc: botocore.exceptions.ClientError) -> int:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"]


@pytest.mark.parametrize("size", SIZES)
def test_put_get_head_roundtrip(s3, bucket, size):
    body = os.urandom(size)
    key = f"ab12cd34/user@example.com/mailboxes/{'0' * 32}/obj-{size}"
    meta = {"dovecot-guid": "a" * 32, "dovecot-size": str(size), "dovecot-username": "user@example.com"}
    put = s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=meta, ContentType="message/rfc822",
                        CacheControl="no-cache", ContentDisposition="inline")
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    got = s3.get_object(Bucket=bucket, Key=key)
    assert got["Body"].read() == body
    assert got["Metadata"] == meta
    assert got["ContentType"] == "message/rfc822"
    assert got["CacheControl"] == "no-cache" and got["ContentDisposition"] == "inline"
    assert got["ETag"] == put["ETag"]
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == size and head["Metadata"] == meta and head["ETag"] == put["ETag"]


def test_ranges(s3, bucket):
    small = os.urandom(5000)
    big = os.urandom(3 * 1024 * 1024 + 17)
    s3.put_object(Bucket=bucket, Key="small", Body=small)
    s3.put_object(Bucket=bucket, Key="big", Body=big)
    for key, body in (("small", small), ("big", big)):
        n = len(body)
        for spec, want in (("bytes=0-9", body[:10]), ("bytes=10-", body[10:]), ("bytes=-7", body[-7:]),
                           (f"bytes={n - 3}-{n + 100}", body[n - 3:]),
                           (f"bytes={n // 3}-{2 * n // 3}", body[n // 3:2 * n // 3 + 1])):
            got = s3.get_object(Bucket=bucket, Key=key, Range=spec)
            assert got["Body"].read() == want, (key, spec)
            assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
            assert got["ContentRange"].endswith(f"/{n}")
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={n}-")
        assert code(e.value) == "InvalidRange" and status(e.value) == 416


def test_conditional_get(s3, bucket):
    put = s3.put_object(Bucket=bucket, Key="c", Body=b"x")
    etag = put["ETag"]
    assert s3.get_object(Bucket=bucket, Key="c", IfMatch=etag)["Body"].read() == b"x"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=bucket, Key="c", IfMatch='"0000"')
    assert code(e.value) == "PreconditionFailed" and status(e.value) == 412
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=bucket, Key="c", IfNoneMatch=etag)
    assert status(e.value) == 304
    future = datetime.now(timezone.utc) + timedelta(days=1)
    past = datetime.now(timezone.utc) - timedelta(days=1)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=bucket, Key="c", IfModifiedSince=future)
    assert status(e.value) == 304
    assert s3.get_object(Bucket=bucket, Key="c", IfModifiedSince=past)["Body"].read() == b"x"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=bucket, Key="c", IfUnmodifiedSince=past)
    assert status(e.value) == 412
    # If-Match true wins over If-Unmodified-Since false (RFC 9110 §13.2.2, as S3 does)
    assert s3.get_object(Bucket=bucket, Key="c", IfMatch=etag, IfUnmodifiedSince=past)["Body"].read() == b"x"


def test_response_overrides(s3, bucket):
    s3.put_object(Bucket=bucket, Key="o", Body=b"abc", ContentType="text/plain")
    got = s3.get_object(Bucket=bucket, Key="o", ResponseContentType="application/x-test",
                        ResponseContentDisposition="attachment; filename=o.txt",
                        ResponseCacheControl="max-age=5")
    assert got["ContentType"] == "application/x-test"
    assert got["ContentDisposition"] == "attachment; filename=o.txt"
    assert got["CacheControl"] == "max-age=5"


def test_conditional_put(s3, bucket):
    s3.put_object(Bucket=bucket, Key="once", Body=b"1", IfNoneMatch="*")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket=bucket, Key="once", Body=b"2", IfNoneMatch="*")
    assert code(e.value) == "PreconditionFailed" and status(e.value) == 412
    etag = s3.head_object(Bucket=bucket, Key="once")["ETag"]
    s3.put_object(Bucket=bucket, Key="once", Body=b"3", IfMatch=etag)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket=bucket, Key="once", Body=b"4", IfMatch=etag)
    assert code(e.value) == "PreconditionFailed"
    assert s3.get_object(Bucket=bucket, Key="once")["Body"].read() == b"3"


def test_concurrent_if_none_match_has_one_winner(s3, bucket):
    def put(i: int) -> bool:
        try:
            s3.put_object(Bucket=bucket, Key="race", Body=str(i).encode(), IfNoneMatch="*")
            return True
        except botocore.exceptions.ClientError as exc:
            assert code(exc) == "PreconditionFailed"
            return False

    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(put, range(16)))
    assert sum(wins) == 1


def test_overwrite_and_delete(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"one")
    s3.put_object(Bucket=bucket, Key="k", Body=b"two")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"two"
    assert s3.delete_object(Bucket=bucket, Key="k")["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.delete_object(Bucket=bucket, Key="k")["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.head_object(Bucket=bucket, Key="k")
    assert status(e.value) == 404


def test_delete_objects(s3, bucket):
    keys = [f"d/{i:04d}" for i in range(1000)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=b"x"), keys))
    res = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys]})
    assert sorted(d["Key"] for d in res["Deleted"]) == keys
    assert s3.list_objects_v2(Bucket=bucket, Prefix="d/")["KeyCount"] == 0
    s3.put_object(Bucket=bucket, Key="q", Body=b"x")
    res = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "q"}, {"Key": "missing"}], "Quiet": True})
    assert not res.get("Deleted") and not res.get("Errors")


def test_copy_object(s3, bucket):
    body = os.urandom(10000)
    s3.put_object(Bucket=bucket, Key="src", Body=body, Metadata={"a": "1"}, ContentType="text/x-a")
    r = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert r["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    got = s3.get_object(Bucket=bucket, Key="dst")
    assert got["Body"].read() == body and got["Metadata"] == {"a": "1"} and got["ContentType"] == "text/x-a"
    s3.copy_object(Bucket=bucket, Key="dst2", CopySource=f"{bucket}/src", MetadataDirective="REPLACE",
                   Metadata={"b": "2"}, ContentType="text/x-b")
    got = s3.head_object(Bucket=bucket, Key="dst2")
    assert got["Metadata"] == {"b": "2"} and got["ContentType"] == "text/x-b"
    # onto itself: only with REPLACE
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="src", CopySource={"Bucket": bucket, "Key": "src"})
    assert code(e.value) == "InvalidRequest"
    s3.copy_object(Bucket=bucket, Key="src", CopySource={"Bucket": bucket, "Key": "src"},
                   MetadataDirective="REPLACE", Metadata={"c": "3"})
    assert s3.head_object(Bucket=bucket, Key="src")["Metadata"] == {"c": "3"}
    etag = s3.head_object(Bucket=bucket, Key="src")["ETag"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="x", CopySource={"Bucket": bucket, "Key": "src"},
                       CopySourceIfNoneMatch=etag)
    assert code(e.value) == "PreconditionFailed"
    s3.copy_object(Bucket=bucket, Key="x", CopySource={"Bucket": bucket, "Key": "src"}, CopySourceIfMatch=etag)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="x", CopySource={"Bucket": bucket, "Key": "nope"})
    assert code(e.value) == "NoSuchKey"


def test_copy_large_object(s3, bucket):
    body = os.urandom(3 * 1024 * 1024)
    s3.put_object(Bucket=bucket, Key="bigsrc", Body=body)
    s3.copy_object(Bucket=bucket, Key="bigdst", CopySource={"Bucket": bucket, "Key": "bigsrc"})
    s3.delete_object(Bucket=bucket, Key="bigsrc")  # the copy owns its own bytes
    assert s3.get_object(Bucket=bucket, Key="bigdst")["Body"].read() == body


def test_multipart_three_parts(s3, bucket):
    parts = [os.urandom(5 * 1024 * 1024), os.urandom(5 * 1024 * 1024), os.urandom(123457)]
    mpu = s3.create_multipart_upload(Bucket=bucket, Key="mp", ContentType="application/x-bundle",
                                     Metadata={"dovecot-fname": "bundle"})
    uid = mpu["UploadId"]
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]] == [uid]
    etags = []
    for i, p in enumerate(parts, 1):
        etags.append(s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=i, Body=p)["ETag"])
    listed = s3.list_parts(Bucket=bucket, Key="mp", UploadId=uid)["Parts"]
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in listed] == \
        [(i, len(p), e) for i, (p, e) in enumerate(zip(parts, etags), 1)]
    done = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": i, "ETag": e} for i, e in enumerate(etags, 1)]})
    digest = hashlib.md5(b"".join(bytes.fromhex(e.strip('"')) for e in etags)).hexdigest()
    assert done["ETag"] == f'"{digest}-3"'
    got = s3.get_object(Bucket=bucket, Key="mp")
    assert got["Body"].read() == b"".join(parts)
    assert got["Metadata"] == {"dovecot-fname": "bundle"} and got["ContentType"] == "application/x-bundle"
    r = s3.get_object(Bucket=bucket, Key="mp", Range="bytes=5242870-5242889")["Body"].read()
    assert r == b"".join(parts)[5242870:5242890]
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.list_parts(Bucket=bucket, Key="mp", UploadId=uid)
    assert code(e.value) == "NoSuchUpload"


def test_multipart_errors_and_abort(s3, bucket):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="m2")["UploadId"]
    e1 = s3.upload_part(Bucket=bucket, Key="m2", UploadId=uid, PartNumber=1, Body=b"small")["ETag"]
    e2 = s3.upload_part(Bucket=bucket, Key="m2", UploadId=uid, PartNumber=2, Body=b"tail")["ETag"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="m2", UploadId=uid, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    assert code(e.value) == "EntityTooSmall"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="m2", UploadId=uid, MultipartUpload={
            "Parts": [{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}]})
    assert code(e.value) == "InvalidPartOrder"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="m2", UploadId=uid, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": '"00000000000000000000000000000000"'}]})
    assert code(e.value) == "InvalidPart"
    # a single small part is a valid (last) part
    s3.complete_multipart_upload(Bucket=bucket, Key="m2", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": e1}]})
    assert s3.get_object(Bucket=bucket, Key="m2")["Body"].read() == b"small"
    uid = s3.create_multipart_upload(Bucket=bucket, Key="m3")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="m3", UploadId=uid, PartNumber=1, Body=b"abc")
    s3.abort_multipart_upload(Bucket=bucket, Key="m3", UploadId=uid)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.upload_part(Bucket=bucket, Key="m3", UploadId=uid, PartNumber=2, Body=b"x")
    assert code(e.value) == "NoSuchUpload"


def test_upload_part_copy(s3, bucket):
    src = os.urandom(6 * 1024 * 1024)
    s3.put_object(Bucket=bucket, Key="psrc", Body=src)
    uid = s3.create_multipart_upload(Bucket=bucket, Key="pc")["UploadId"]
    p1 = s3.upload_part_copy(Bucket=bucket, Key="pc", UploadId=uid, PartNumber=1,
                             CopySource={"Bucket": bucket, "Key": "psrc"}, CopySourceRange="bytes=0-5242879")
    p2 = s3.upload_part_copy(Bucket=bucket, Key="pc", UploadId=uid, PartNumber=2,
                             CopySource={"Bucket": bucket, "Key": "psrc"}, CopySourceRange="bytes=5242880-6291455")
    s3.complete_multipart_upload(Bucket=bucket, Key="pc", UploadId=uid, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": p1["CopyPartResult"]["ETag"]},
        {"PartNumber": 2, "ETag": p2["CopyPartResult"]["ETag"]}]})
    assert s3.get_object(Bucket=bucket, Key="pc")["Body"].read() == src


def test_upload_file_and_download_file_managed_transfer(s3, bucket, tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(20 * 1024 * 1024 + 5))
    s3.upload_file(str(src), bucket, "managed")  # boto3 switches to multipart at 8 MiB
    dst = tmp_path / "out.bin"
    s3.download_file(bucket, "managed", str(dst))
    assert dst.read_bytes() == src.read_bytes()
    assert s3.head_object(Bucket=bucket, Key="managed")["ETag"].endswith('-3"')


def test_listing_pagination_prefix_delimiter(s3, bucket):
    keys = sorted([f"user{u}/mailboxes/box{b}/msg{m:03d}" for u in range(3) for b in range(4) for m in range(200)]
                  + ["top1", "top2", "user1/idx/bundle.1", "z é ü/ä"])
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=b"m"), keys))
    # V2, all pages
    seen = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 333}):
        seen += [o["Key"] for o in page["Contents"]]
        assert page["KeyCount"] == len(page["Contents"])
    assert seen == keys
    # V1 marker paging
    seen = []
    for page in s3.get_paginator("list_objects").paginate(Bucket=bucket, PaginationConfig={"PageSize": 500}):
        seen += [o["Key"] for o in page["Contents"]]
    assert seen == keys
    # delimiter at top level
    r = s3.list_objects(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["user0/", "user1/", "user2/", "z é ü/"]
    assert [o["Key"] for o in r["Contents"]] == ["top1", "top2"]
    # prefix + delimiter, paged one entry at a time across prefixes
    got_prefixes, got_keys = [], []
    for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix="user1/", Delimiter="/", PaginationConfig={"PageSize": 1}):
        got_prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        got_keys += [o["Key"] for o in page.get("Contents", [])]
    assert got_prefixes == ["user1/idx/", "user1/mailboxes/"] and got_keys == []
    r = s3.list_objects(Bucket=bucket, Prefix="user2/mailboxes/", Delimiter="/")
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == [f"user2/mailboxes/box{b}/" for b in range(4)]
    # V1 paging with a delimiter uses NextMarker
    seen_p = []
    for page in s3.get_paginator("list_objects").paginate(Bucket=bucket, Prefix="user0/mailboxes/",
                                                        Delimiter="/", PaginationConfig={"PageSize": 2}):
        seen_p += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    assert seen_p == [f"user0/mailboxes/box{b}/" for b in range(4)]
    # start-after, max-keys, url encoding
    r = s3.list_objects_v2(Bucket=bucket, StartAfter="user2/mailboxes/box3/msg197", MaxKeys=5)
    assert [o["Key"] for o in r["Contents"]] == ["user2/mailboxes/box3/msg198", "user2/mailboxes/box3/msg199", "z é ü/ä"]
    r = s3.list_objects(Bucket=bucket, Prefix="z", EncodingType="url")
    # Asked for explicitly, botocore leaves the url encoding to the caller: RFC 3986, as AWS
    assert [o["Key"] for o in r["Contents"]] == ["z%20%C3%A9%20%C3%BC/%C3%A4"]
    assert unquote(r["Contents"][0]["Key"]) == "z é ü/ä"
    r = s3.list_objects_v2(Bucket=bucket, Prefix="nothing/")
    assert r["KeyCount"] == 0 and "Contents" not in r
    r = s3.list_objects_v2(Bucket=bucket, Prefix="user0/", MaxKeys=0)
    assert r["KeyCount"] == 0
    r = s3.list_objects_v2(Bucket=bucket, Prefix="top", FetchOwner=True)
    assert all("Owner" in o for o in r["Contents"])


def test_list_object_versions(s3, bucket):
    for k in ("a", "b/c", "b/d"):
        s3.put_object(Bucket=bucket, Key=k, Body=b"v")
    r = s3.list_object_versions(Bucket=bucket, Delimiter="/")
    assert [(v["Key"], v["VersionId"], v["IsLatest"]) for v in r["Versions"]] == [("a", "null", True)]
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["b/"]


def test_buckets(s3):
    name = f"lifecycle-{os.getpid()}"
    s3.create_bucket(Bucket=name)
    assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.head_bucket(Bucket=name)
    assert s3.get_bucket_location(Bucket=name)["LocationConstraint"] is None
    s3.create_bucket(Bucket=name)  # AWS, CreateBucket: yours already, in us-east-1: 200
    s3.put_object(Bucket=name, Key="x", Body=b"1")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.delete_bucket(Bucket=name)
    assert code(e.value) == "BucketNotEmpty" and status(e.value) == 409
    s3.delete_object(Bucket=name, Key="x")
    s3.delete_bucket(Bucket=name)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.head_bucket(Bucket=name)
    assert status(e.value) == 404
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.create_bucket(Bucket="Bad_Name")
    assert code(e.value) == "InvalidBucketName"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.create_bucket(Bucket="elsewhere", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    assert code(e.value) == "InvalidLocationConstraint"


def test_presigned_urls(gateway, key, bucket):
    # boto3 presigns with SigV2 unless told otherwise; SigV2 arrives with the compatibility issue.
    s3 = client(gateway.endpoint, key, signature_version="s3v4")
    s3.put_object(Bucket=bucket, Key="p", Body=b"presigned body")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "p"}, ExpiresIn=60)
    http = urllib3.PoolManager()
    r = http.request("GET", url)
    assert r.status == 200 and r.data == b"presigned body"
    url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "pp"}, ExpiresIn=60)
    assert http.request("PUT", url, body=b"via presigned put").status == 200
    assert s3.get_object(Bucket=bucket, Key="pp")["Body"].read() == b"via presigned put"


def test_virtual_host_style(gateway, key, bucket):
    """Bucket in the Host header ("<bucket>.s3.localhost", the default base domain).

    glibc does not resolve *.localhost names here, so the connection is aimed at
    127.0.0.1 after signing while the signed Host header stays as boto3 made it.
    """
    vh = client(gateway.endpoint.replace("127.0.0.1", "s3.localhost"), key,
                s3={"addressing_style": "virtual"})

    def to_loopback(request, **kwargs):  # type: ignore[no-untyped-def]
        parts = urllib3.util.parse_url(request.url)
        request.headers["Host"] = f"{parts.host}:{parts.port}"
        request.url = request.url.replace(f"//{parts.host}:", "//127.0.0.1:", 1)

    vh.meta.events.register("before-send.s3", to_loopback)
    vh.put_object(Bucket=bucket, Key="vh/key", Body=b"virtual")
    assert vh.get_object(Bucket=bucket, Key="vh/key")["Body"].read() == b"virtual"
    assert [o["Key"] for o in vh.list_objects_v2(Bucket=bucket, Prefix="vh/")["Contents"]] == ["vh/key"]


def test_checksums_when_required_and_default(gateway, key, bucket):
    plain = client(gateway.endpoint, key, request_checksum_calculation="when_required",
                   response_checksum_validation="when_required")
    plain.put_object(Bucket=bucket, Key="wr", Body=b"when required")
    assert plain.get_object(Bucket=bucket, Key="wr")["Body"].read() == b"when required"
    # Default boto3 sends x-amz-checksum-crc32; it is verified, stored and returned.
    s3d = client(gateway.endpoint, key)
    s3d.put_object(Bucket=bucket, Key="crc", Body=b"checked")
    got = s3d.get_object(Bucket=bucket, Key="crc", ChecksumMode="ENABLED")
    assert got["Body"].read() == b"checked" and got["ChecksumCRC32"]


def test_the_engine_is_the_one_asked_for(gateway, engine_kind, s3, bucket, request):
    """The parametrised suite really runs on RADOS: the gateway says so, and the bytes are in
    the cluster's data pool (not in a data directory)."""
    assert gateway.engine == engine_kind
    body = os.urandom(3000)
    s3.put_object(Bucket=bucket, Key="where/am/i", Body=body)
    if engine_kind == "rados":
        cluster = request.getfixturevalue("rados_store")
        conn = cluster.connect()
        try:
            io = cluster.ioctx(conn)
            found = [o.key for o in io.list_objects() if body in io.read(o.key, 1 << 20)]
            io.close()
        finally:
            conn.shutdown()
        assert len(found) == 1
        assert not any(body in p.read_bytes() for p in gateway.data_dir.rglob("*") if p.is_file())
    else:
        assert any(body in p.read_bytes() for p in (gateway.data_dir / "segments").iterdir())


def test_keys_with_nul_are_refused_before_anything_is_stored(gateway, s3, bucket):
    """NUL cannot be listed (XML 1.0) nor indexed on RADOS: 400 InvalidURI, on both engines."""
    r = urllib3.PoolManager().request("GET", f"{gateway.endpoint}/{bucket}/a%00b", retries=False)
    assert r.status in (400, 403)  # unsigned: refused either way; signed below
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket=bucket, Key="a\x00b", Body=b"x")
    assert code(e.value) == "InvalidURI" and status(e.value) == 400
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
