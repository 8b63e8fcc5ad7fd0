"""Server-side encryption (issue 20) through boto3, on the local engine and on Ceph RADOS:
SSE-S3, SSE-C, bucket default encryption, copies between every pair of modes, ranged reads
across chunk boundaries, and what a reader of the raw data files finds."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import botocore.exceptions
import pytest

from runtime import sealing

CHUNK = sealing.CHUNK


@pytest.fixture(scope="module")
def engine_kind(both_engines: str) -> str:
    return both_engines


def code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response["Error"]["Code"])


def status(exc: botocore.exceptions.ClientError) -> int:
    return int(exc.response["ResponseMetadata"]["HTTPStatusCode"])


def ssec(key: bytes, prefix: str = "") -> dict[str, str]:
    """boto3's SSE-C parameters (it sends the key base64-encoded, with its MD5)."""
    return {f"{prefix}SSECustomerAlgorithm": "AES256", f"{prefix}SSECustomerKey": key.decode("latin-1")}


def raw_ssec(key: bytes) -> dict[str, str]:
    return {"x-amz-server-side-encryption-customer-algorithm": "AES256",
            "x-amz-server-side-encryption-customer-key": base64.b64encode(key).decode(),
            "x-amz-server-side-encryption-customer-key-MD5": base64.b64encode(hashlib.md5(key).digest()).decode()}


KEY_A = bytes(range(32))
KEY_B = bytes(range(1, 33))


def marker_body(size: int) -> bytes:
    """A body whose every 64 bytes say what they are, so plaintext is easy to find on disk."""
    line = b"PLAINTEXT-MARKER-mailstore-sse-test-body-that-must-not-be-seen.\n"
    return (line * (size // len(line) + 1))[:size]


SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17, 5 * 1024 * 1024 + 3]


@pytest.mark.parametrize("size", SIZES)
def test_sse_s3_roundtrip_and_ranges(s3, bucket, size):
    body = os.urandom(size)
    put = s3.put_object(Bucket=bucket, Key="k", Body=body, ServerSideEncryption="AES256")
    assert put["ServerSideEncryption"] == "AES256"
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'  # AWS: SSE-S3 ETags are the MD5
    got = s3.get_object(Bucket=bucket, Key="k")
    assert got["ServerSideEncryption"] == "AES256"
    assert got["ContentLength"] == size
    assert got["Body"].read() == body
    head = s3.head_object(Bucket=bucket, Key="k")
    assert head["ServerSideEncryption"] == "AES256" and head["ContentLength"] == size
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [("k", size)]
    if size:
        edges = {0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, size - 1, size // 2}
        for a in sorted(e for e in edges if e < size):
            for b in sorted({a, min(size - 1, a + 1), min(size - 1, a + CHUNK), size - 1}):
                part = s3.get_object(Bucket=bucket, Key="k", Range=f"bytes={a}-{b}")
                assert part["Body"].read() == body[a:b + 1], (a, b)
                assert part["ContentRange"] == f"bytes {a}-{b}/{size}"
        tail = s3.get_object(Bucket=bucket, Key="k", Range="bytes=-5")["Body"].read()
        assert tail == body[-5:]


def test_sse_c_roundtrip_and_refusals(s3, bucket):
    body = os.urandom(3 * CHUNK + 5)
    put = s3.put_object(Bucket=bucket, Key="c", Body=body, **ssec(KEY_A))
    assert put["SSECustomerAlgorithm"] == "AES256"
    assert put["SSECustomerKeyMD5"] == base64.b64encode(hashlib.md5(KEY_A).digest()).decode()
    assert put["ETag"] != f'"{hashlib.md5(body).hexdigest()}"'  # AWS: not the MD5 for SSE-C
    got = s3.get_object(Bucket=bucket, Key="c", **ssec(KEY_A))
    assert got["Body"].read() == body
    assert got["SSECustomerKeyMD5"] == put["SSECustomerKeyMD5"]
    part = s3.get_object(Bucket=bucket, Key="c", Range=f"bytes={CHUNK - 3}-{CHUNK + 3}", **ssec(KEY_A))
    assert part["Body"].read() == body[CHUNK - 3:CHUNK + 4]
    assert s3.head_object(Bucket=bucket, Key="c", **ssec(KEY_A))["ContentLength"] == len(body)
    assert s3.list_objects_v2(Bucket=bucket)["Contents"][0]["ETag"] == put["ETag"]

    with pytest.raises(botocore.exceptions.ClientError) as e:  # no key
        s3.get_object(Bucket=bucket, Key="c")
    assert (status(e.value), code(e.value)) == (400, "InvalidRequest")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.head_object(Bucket=bucket, Key="c")
    assert status(e.value) == 400
    with pytest.raises(botocore.exceptions.ClientError) as e:  # another key
        s3.get_object(Bucket=bucket, Key="c", **ssec(KEY_B))
    assert (status(e.value), code(e.value)) == (403, "AccessDenied")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.head_object(Bucket=bucket, Key="c", **ssec(KEY_B))
    assert status(e.value) == 403


def test_sse_c_header_checks(gateway, s3, bucket, raw):
    s3.put_object(Bucket=bucket, Key="plain", Body=b"x")
    bad_md5 = dict(raw_ssec(KEY_A), **{"x-amz-server-side-encryption-customer-key-MD5":
                                       base64.b64encode(hashlib.md5(KEY_B).digest()).decode()})
    short = dict(raw_ssec(KEY_A), **{"x-amz-server-side-encryption-customer-key": base64.b64encode(b"k" * 16).decode(),
                                     "x-amz-server-side-encryption-customer-key-MD5":
                                     base64.b64encode(hashlib.md5(b"k" * 16).digest()).decode()})
    cases = [
        ("PUT", "x", bad_md5, 400, "InvalidArgument"),
        ("PUT", "x", short, 400, "InvalidArgument"),
        ("PUT", "x", dict(raw_ssec(KEY_A), **{"x-amz-server-side-encryption-customer-algorithm": "AES512"}),
         400, "InvalidEncryptionAlgorithmError"),
        ("PUT", "x", {"x-amz-server-side-encryption-customer-algorithm": "AES256"}, 400, "InvalidArgument"),
        ("PUT", "x", dict(raw_ssec(KEY_A), **{"x-amz-server-side-encryption": "AES256"}), 400, "InvalidArgument"),
        ("PUT", "x", {"x-amz-server-side-encryption": "AES512"}, 400, "InvalidArgument"),
        ("PUT", "x", {"x-amz-server-side-encryption": "aws:kms:dsse"}, 501, "NotImplemented"),
        ("GET", "plain", raw_ssec(KEY_A), 400, "InvalidRequest"),  # not applicable to a plaintext object
        ("GET", "plain", {"x-amz-server-side-encryption": "AES256"}, 400, "InvalidArgument"),
        ("DELETE", "plain", raw_ssec(KEY_A), 400, "InvalidArgument"),
    ]
    for method, key, headers, want_status, want_code in cases:
        st, _, text = raw(method, f"/{bucket}/{key}", headers, b"body" if method == "PUT" else b"")
        assert st == want_status, (headers, text)
        assert f"<Code>{want_code}</Code>" in text, (headers, text)
    assert "x" not in [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


@pytest.mark.parametrize("src_mode", ["plain", "AES256", "SSE-C"])
@pytest.mark.parametrize("dst_mode", ["plain", "AES256", "SSE-C"])
def test_copy_between_modes(s3, bucket, src_mode, dst_mode):
    body = os.urandom(2 * CHUNK + 99)
    modes = {"plain": {}, "AES256": {"ServerSideEncryption": "AES256"}, "SSE-C": ssec(KEY_A)}
    s3.put_object(Bucket=bucket, Key="src", Body=body, **modes[src_mode])
    source_key = ssec(KEY_A, "CopySource") if src_mode == "SSE-C" else {}
    dst = {"plain": {}, "AES256": {"ServerSideEncryption": "AES256"}, "SSE-C": ssec(KEY_B)}[dst_mode]
    out = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"},
                         **source_key, **dst)
    assert out.get("ServerSideEncryption") == ("AES256" if dst_mode == "AES256" else None)
    read_key = ssec(KEY_B) if dst_mode == "SSE-C" else {}
    assert s3.get_object(Bucket=bucket, Key="dst", **read_key)["Body"].read() == body
    if dst_mode == "SSE-C":
        with pytest.raises(botocore.exceptions.ClientError):
            s3.get_object(Bucket=bucket, Key="dst", **ssec(KEY_A))
    if src_mode == "SSE-C":  # the source's key is needed to read it
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.copy_object(Bucket=bucket, Key="dst2", CopySource={"Bucket": bucket, "Key": "src"})
        assert status(e.value) == 400


def test_copy_onto_itself_to_change_encryption(s3, bucket):
    body = b"rotate me" * 1000
    s3.put_object(Bucket=bucket, Key="k", Body=body)
    s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k"}, ServerSideEncryption="AES256")
    assert s3.head_object(Bucket=bucket, Key="k")["ServerSideEncryption"] == "AES256"
    s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k"}, **ssec(KEY_A))
    assert s3.get_object(Bucket=bucket, Key="k", **ssec(KEY_A))["Body"].read() == body


def test_bucket_default_encryption(s3, bucket):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_bucket_encryption(Bucket=bucket)
    assert code(e.value) == "ServerSideEncryptionConfigurationNotFoundError"
    s3.put_object(Bucket=bucket, Key="before", Body=b"before")
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    put = s3.put_object(Bucket=bucket, Key="after", Body=b"after")
    assert put["ServerSideEncryption"] == "AES256"
    assert s3.get_object(Bucket=bucket, Key="after")["Body"].read() == b"after"
    assert "ServerSideEncryption" not in s3.head_object(Bucket=bucket, Key="before")
    # SSE-C on the request wins over the default
    s3.put_object(Bucket=bucket, Key="c", Body=b"c", **ssec(KEY_A))
    assert "ServerSideEncryption" not in s3.head_object(Bucket=bucket, Key="c", **ssec(KEY_A))
    # a multipart upload in the bucket is encrypted too (boto3's managed transfer: 5 MiB parts)
    import io

    from boto3.s3.transfer import TransferConfig
    big = os.urandom(11 * 1024 * 1024 + 5)
    s3.upload_fileobj(io.BytesIO(big), bucket, "mpu", Config=TransferConfig(multipart_threshold=5 << 20,
                                                                           multipart_chunksize=5 << 20))
    head = s3.head_object(Bucket=bucket, Key="mpu")
    assert head["ServerSideEncryption"] == "AES256" and head["ContentLength"] == len(big)
    assert s3.get_object(Bucket=bucket, Key="mpu")["Body"].read() == big
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms:dsse"}}]})
    assert code(e.value) == "NotImplemented"
    s3.delete_bucket_encryption(Bucket=bucket)
    assert "ServerSideEncryption" not in s3.put_object(Bucket=bucket, Key="later", Body=b"x")


MIB5 = 5 * 1024 * 1024


@pytest.mark.parametrize("mode", ["AES256", "SSE-C"])
def test_encrypted_multipart(s3, bucket, mode, raw):
    """Parts numbered 1, 3 and 4 (each sealed as its own stream), one of them copied from an
    encrypted object; ranges across part and chunk boundaries, ?partNumber, ListParts."""
    enc = {"ServerSideEncryption": "AES256"} if mode == "AES256" else ssec(KEY_A)
    per_part = {} if mode == "AES256" else ssec(KEY_A)
    p1, p3, p4 = os.urandom(MIB5 + 3), os.urandom(MIB5 + CHUNK), os.urandom(CHUNK + 1)
    s3.put_object(Bucket=bucket, Key="copysrc", Body=p3, **ssec(KEY_B))
    up = s3.create_multipart_upload(Bucket=bucket, Key="m", **enc)
    if mode == "AES256":
        assert up["ServerSideEncryption"] == "AES256"
    else:
        assert up["SSECustomerAlgorithm"] == "AES256"
        with pytest.raises(botocore.exceptions.ClientError) as e:  # an SSE-C upload's parts need its key
            s3.upload_part(Bucket=bucket, Key="m", UploadId=up["UploadId"], PartNumber=1, Body=p1)
        assert status(e.value) == 400
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.upload_part(Bucket=bucket, Key="m", UploadId=up["UploadId"], PartNumber=1, Body=p1, **ssec(KEY_B))
        assert status(e.value) == 403
    uid = up["UploadId"]
    e1 = s3.upload_part(Bucket=bucket, Key="m", UploadId=uid, PartNumber=1, Body=p1, **per_part)["ETag"]
    e3 = s3.upload_part_copy(Bucket=bucket, Key="m", UploadId=uid, PartNumber=3,
                             CopySource={"Bucket": bucket, "Key": "copysrc"}, **ssec(KEY_B, "CopySource"),
                             **per_part)["CopyPartResult"]["ETag"]
    e4 = s3.upload_part(Bucket=bucket, Key="m", UploadId=uid, PartNumber=4, Body=p4, **per_part)["ETag"]
    listed = s3.list_parts(Bucket=bucket, Key="m", UploadId=uid)["Parts"]
    if mode == "SSE-C":  # AWS also takes the upload's key on ListParts (boto3 sends it unencoded: raw)
        st, _, text = raw("GET", f"/{bucket}/m?uploadId={uid}", raw_ssec(KEY_A))
        assert st == 200 and "<PartNumber>4</PartNumber>" in text, text
    assert [(p["PartNumber"], p["Size"]) for p in listed] == [(1, len(p1)), (3, len(p3)), (4, len(p4))]
    done = s3.complete_multipart_upload(Bucket=bucket, Key="m", UploadId=uid, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": e1}, {"PartNumber": 3, "ETag": e3}, {"PartNumber": 4, "ETag": e4}]})
    assert done["ETag"].endswith('-3"')

    body = p1 + p3 + p4
    assert s3.get_object(Bucket=bucket, Key="m", **per_part)["Body"].read() == body
    b1, b2 = len(p1), len(p1) + len(p3)
    for a, b in [(b1 - 5, b1 + 5), (b1 - 1, b2), (CHUNK - 2, b1 + CHUNK + 2), (b2 - 1, len(body) - 1),
                 (0, len(body) - 1), (b2 + CHUNK - 1, b2 + CHUNK)]:
        got = s3.get_object(Bucket=bucket, Key="m", Range=f"bytes={a}-{b}", **per_part)["Body"].read()
        assert got == body[a:b + 1], (a, b)
    second = s3.get_object(Bucket=bucket, Key="m", PartNumber=2, **per_part)
    assert second["Body"].read() == p3 and second["PartsCount"] == 3
    if mode == "SSE-C":
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.get_object(Bucket=bucket, Key="m")
        assert status(e.value) == 400


def test_plaintext_upload_refuses_part_keys(s3, bucket):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="p")["UploadId"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.upload_part(Bucket=bucket, Key="p", UploadId=uid, PartNumber=1, Body=b"x", **ssec(KEY_A))
    assert (status(e.value), code(e.value)) == (400, "InvalidRequest")


def test_upload_part_copy_from_encrypted_sources(s3, bucket):
    body = os.urandom(5 * 1024 * 1024 + CHUNK + 7)
    s3.put_object(Bucket=bucket, Key="s3src", Body=body, ServerSideEncryption="AES256")
    s3.put_object(Bucket=bucket, Key="csrc", Body=body, **ssec(KEY_A))
    up = s3.create_multipart_upload(Bucket=bucket, Key="joined")["UploadId"]
    p1 = s3.upload_part_copy(Bucket=bucket, Key="joined", UploadId=up, PartNumber=1,
                             CopySource={"Bucket": bucket, "Key": "s3src"})
    p2 = s3.upload_part_copy(Bucket=bucket, Key="joined", UploadId=up, PartNumber=2,
                             CopySource={"Bucket": bucket, "Key": "csrc"}, CopySourceRange=f"bytes={CHUNK - 1}-{CHUNK + 9}",
                             **ssec(KEY_A, "CopySource"))
    s3.complete_multipart_upload(Bucket=bucket, Key="joined", UploadId=up, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": p1["CopyPartResult"]["ETag"]},
        {"PartNumber": 2, "ETag": p2["CopyPartResult"]["ETag"]}]})
    assert s3.get_object(Bucket=bucket, Key="joined")["Body"].read() == body + body[CHUNK - 1:CHUNK + 10]


def test_tagging_keeps_an_encrypted_object_readable(s3, bucket):
    body = os.urandom(CHUNK + 1)
    s3.put_object(Bucket=bucket, Key="t", Body=body, **ssec(KEY_A))
    s3.put_object_tagging(Bucket=bucket, Key="t", Tagging={"TagSet": [{"Key": "a", "Value": "b"}]})
    assert s3.get_object(Bucket=bucket, Key="t", **ssec(KEY_A))["Body"].read() == body
    s3.put_object(Bucket=bucket, Key="u", Body=body, ServerSideEncryption="AES256")
    s3.delete_object_tagging(Bucket=bucket, Key="u")
    assert s3.get_object(Bucket=bucket, Key="u")["Body"].read() == body


def test_checksums_are_of_the_plaintext(s3, bucket):
    body = os.urandom(CHUNK * 2)
    put = s3.put_object(Bucket=bucket, Key="sum", Body=body, ServerSideEncryption="AES256",
                        ChecksumAlgorithm="SHA256")
    assert put["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()
    got = s3.get_object(Bucket=bucket, Key="sum", ChecksumMode="ENABLED")
    assert got["Body"].read() == body and got["ChecksumSHA256"] == put["ChecksumSHA256"]


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_no_plaintext_in_the_data_files(engine_kind, gateway, s3, bucket, rados_dump):
    """What a copied data directory (or a dump of the RADOS pools) holds of encrypted objects:
    no run of their plaintext."""
    small, large = marker_body(4000), marker_body(3 * 1024 * 1024)
    s3.put_object(Bucket=bucket, Key="small", Body=small, ServerSideEncryption="AES256")
    s3.put_object(Bucket=bucket, Key="large", Body=large, ServerSideEncryption="AES256")
    uid = s3.create_multipart_upload(Bucket=bucket, Key="parts", ServerSideEncryption="AES256")["UploadId"]
    etags = [s3.upload_part(Bucket=bucket, Key="parts", UploadId=uid, PartNumber=n, Body=marker_body(MIB5))["ETag"]
             for n in (1, 2)]
    s3.complete_multipart_upload(Bucket=bucket, Key="parts", UploadId=uid, MultipartUpload={"Parts": [
        {"PartNumber": n, "ETag": e} for n, e in zip((1, 2), etags)]})
    s3.put_object(Bucket=bucket, Key="c", Body=small, **ssec(KEY_A))
    s3.put_object(Bucket=bucket, Key="plain-control", Body=b"CONTROL-" + small[:100])
    needle = small[:40]
    blobs = rados_dump() if engine_kind == "rados" else [p.read_bytes() for p in _files(gateway.data_dir)]
    assert any(b"CONTROL-" + needle in b for b in blobs)  # the search does find plaintext that is there
    assert not any(needle in b.replace(b"CONTROL-" + small[:100], b"") for b in blobs)


def test_a_changed_ciphertext_byte_fails_the_read(tmp_path):
    """Someone who can write the data files (and so make records whose checksums hold) changes
    one byte of a sealed body: the read fails; the changed plaintext is never served."""
    import asyncio

    from conftest import GatewayProcess, client, create_key
    from gateway.engine.local import LocalEngine

    data = tmp_path / "data"
    key = create_key(data)
    body = marker_body(2 * CHUNK + 10)
    gw = GatewayProcess(data)
    try:
        s3 = client(gw.endpoint, key)
        s3.create_bucket(Bucket="tamper")
        s3.put_object(Bucket="tamper", Key="flip", Body=body, ServerSideEncryption="AES256")
        s3.put_object(Bucket="tamper", Key="swap", Body=body, ServerSideEncryption="AES256")
    finally:
        gw.stop()
    e = LocalEngine(data)
    try:
        info = e.head("tamper", "flip")
        sealed = bytearray(e.read_inline(info))
        assert info.meta.sealing is not None and len(sealed) == info.meta.sealing.stored
        sealed[CHUNK + 100] ^= 0x01  # inside the second chunk
        other = e.head("tamper", "swap")
        moved = e.read_inline(other)
        swapped = moved[sealing.SEALED_CHUNK:2 * sealing.SEALED_CHUNK] + moved[:sealing.SEALED_CHUNK] \
            + moved[2 * sealing.SEALED_CHUNK:]  # two whole chunks in each other's place

        async def rewrite() -> None:
            await e.put("tamper", "flip", info.meta, bytes(sealed))  # fresh record checksums, same sealing
            await e.put("tamper", "swap", other.meta, swapped)
        asyncio.run(rewrite())
    finally:
        e.close()
    gw = GatewayProcess(data)
    try:
        s3 = client(gw.endpoint, key)
        ok = s3.get_object(Bucket="tamper", Key="flip", Range="bytes=0-100")["Body"].read()
        assert ok == body[:101]  # the first chunk is untouched and still opens
        for k in ("flip", "swap"):
            with pytest.raises(botocore.exceptions.ClientError) as exc:
                s3.get_object(Bucket="tamper", Key=k)
            assert code(exc.value) == "InternalError"
        with pytest.raises(botocore.exceptions.ClientError):
            s3.get_object(Bucket="tamper", Key="flip", Range=f"bytes={CHUNK}-{CHUNK + 200}")
    finally:
        gw.stop()


@pytest.fixture
def raw(gateway, key):
    """A signed request with headers of the test's choosing (botocore signs; no checks of ours)."""
    import botocore.auth
    import botocore.awsrequest
    import botocore.credentials
    import urllib3

    http = urllib3.PoolManager()

    def send(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, dict[str, str], str]:
        headers = dict(headers, **{"x-amz-content-sha256": hashlib.sha256(body).hexdigest()})
        req = botocore.awsrequest.AWSRequest(method=method, url=gateway.endpoint + path, data=body, headers=headers)
        botocore.auth.SigV4Auth(botocore.credentials.Credentials(key.access_key, key.secret), "s3",
                                "us-east-1").add_auth(req)
        resp = http.request(method, req.url, body=body, headers=dict(req.headers.items()), retries=False)
        return resp.status, dict(resp.headers), resp.data.decode("utf-8", "replace")
    return send


@pytest.fixture
def rados_dump(engine_kind, request):
    """Every object of the store's RADOS pools, read with the rados CLI."""
    def dump() -> list[bytes]:
        cluster = request.getfixturevalue("rados_store")
        return cluster.dump_pools()
    return dump


@pytest.fixture
def cli(gateway, key):
    """`mailstore ... --endpoint` (the admin API, on either engine) as the test's operator key."""
    import json
    import subprocess

    from conftest import BIN

    env = dict(os.environ, MAILSTORE_ACCESS_KEY=key.access_key, MAILSTORE_SECRET_KEY=key.secret)

    def run(*args: str) -> list[dict[str, object]]:
        out = subprocess.run([str(BIN / "mailstore"), *args, "--endpoint", gateway.endpoint],
                             capture_output=True, text=True, env=env, check=True).stdout
        return [json.loads(line) for line in out.splitlines()]
    return run


def test_store_key_rotation(engine_kind, s3, bucket, cli):
    """A new store key seals what is written after it; what was sealed before still opens.
    Through the admin API (`mailstore store-key --endpoint`), which works on either engine."""

    s3.put_object(Bucket=bucket, Key="old", Body=b"old body", ServerSideEncryption="AES256")
    before = cli("store-key", "list")
    assert before and before[-1]["Newest"]
    assert all(set(d) == {"KeyId", "Created", "Newest"} for d in before)  # never the key itself
    made = cli("store-key", "rotate")[0]
    after = cli("store-key", "list")
    assert [k["KeyId"] for k in after] == [k["KeyId"] for k in before] + [made["KeyId"]]
    assert after[-1]["Newest"] and not after[0]["Newest"]
    s3.put_object(Bucket=bucket, Key="new", Body=b"new body", ServerSideEncryption="AES256")
    assert s3.get_object(Bucket=bucket, Key="old")["Body"].read() == b"old body"
    assert s3.get_object(Bucket=bucket, Key="new")["Body"].read() == b"new body"


def test_sse_kms(s3, bucket, cli):
    """SSE-KMS with keys of the local key table: named by id, ARN or alias, the aws/s3 default,
    rotation, bucket defaults, multipart and copies to other modes."""
    made = cli("kms", "create", "--description", "mail archive", "--alias", f"archive-{bucket}")[0]
    kid, arn = str(made["KeyId"]), str(made["Arn"])
    assert arn.endswith(f":key/{kid}") and "Key" not in {k.lower() for k in made}
    body = os.urandom(CHUNK + 5)
    for ref in (kid, arn, f"alias/archive-{bucket}"):
        put = s3.put_object(Bucket=bucket, Key="k", Body=body, ServerSideEncryption="aws:kms", SSEKMSKeyId=ref)
        assert (put["ServerSideEncryption"], put["SSEKMSKeyId"]) == ("aws:kms", arn)
        got = s3.get_object(Bucket=bucket, Key="k")
        assert (got["ServerSideEncryption"], got["SSEKMSKeyId"]) == ("aws:kms", arn)
        assert got["Body"].read() == body
    assert s3.head_object(Bucket=bucket, Key="k")["SSEKMSKeyId"] == arn
    default = s3.put_object(Bucket=bucket, Key="d", Body=b"d", ServerSideEncryption="aws:kms")
    aliases = {k["Alias"]: k["Arn"] for k in cli("kms", "list") if "Alias" in k}
    assert default["SSEKMSKeyId"] == aliases["alias/aws/s3"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket=bucket, Key="x", Body=b"x", ServerSideEncryption="aws:kms",
                      SSEKMSKeyId="00000000-0000-0000-0000-000000000000")
    assert (status(e.value), code(e.value)) == (400, "KMS.NotFoundException")
    assert cli("kms", "rotate", kid)[0]["Version"] == 2
    s3.put_object(Bucket=bucket, Key="after", Body=b"after rotation", ServerSideEncryption="aws:kms",
                  SSEKMSKeyId=kid)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == body  # wrapped with version 1
    assert s3.get_object(Bucket=bucket, Key="after")["Body"].read() == b"after rotation"
    s3.copy_object(Bucket=bucket, Key="c", CopySource={"Bucket": bucket, "Key": "k"}, **ssec(KEY_A))
    assert s3.get_object(Bucket=bucket, Key="c", **ssec(KEY_A))["Body"].read() == body
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": kid}}]})
    rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": kid}
    uid = s3.create_multipart_upload(Bucket=bucket, Key="m")
    assert uid["SSEKMSKeyId"] == arn
    p1, p2 = os.urandom(MIB5), os.urandom(CHUNK * 2 + 1)
    etags = [s3.upload_part(Bucket=bucket, Key="m", UploadId=uid["UploadId"], PartNumber=n, Body=b)["ETag"]
             for n, b in ((1, p1), (2, p2))]
    done = s3.complete_multipart_upload(Bucket=bucket, Key="m", UploadId=uid["UploadId"], MultipartUpload={
        "Parts": [{"PartNumber": n, "ETag": e} for n, e in zip((1, 2), etags)]})
    assert done["ServerSideEncryption"] == "aws:kms"
    assert s3.get_object(Bucket=bucket, Key="m", Range=f"bytes={MIB5 - 2}-{MIB5 + 2}")["Body"].read() \
        == (p1 + p2)[MIB5 - 2:MIB5 + 3]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
            {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "nope"}}]})
    assert code(e.value) == "KMS.NotFoundException"
    with pytest.raises(botocore.exceptions.ClientError) as e:  # a key id without aws:kms
        s3.put_object(Bucket=bucket, Key="y", Body=b"y", ServerSideEncryption="AES256", SSEKMSKeyId=kid)
    assert status(e.value) == 400


def test_sse_kms_encryption_context(s3, bucket, cli):
    """An encryption context is bound to the data key, echoed as given (canonical JSON), kept
    through multipart and copies; a malformed one, or one without aws:kms, is refused."""
    kid = str(cli("kms", "create")[0]["KeyId"])
    ctx = base64.b64encode(json.dumps({"tenant": "acme", "purpose": "mail"}).encode()).decode()
    put = s3.put_object(Bucket=bucket, Key="c", Body=b"with context", ServerSideEncryption="aws:kms",
                        SSEKMSKeyId=kid, SSEKMSEncryptionContext=ctx)
    assert json.loads(base64.b64decode(put["SSEKMSEncryptionContext"])) == {"purpose": "mail", "tenant": "acme"}
    assert s3.get_object(Bucket=bucket, Key="c")["Body"].read() == b"with context"
    up = s3.create_multipart_upload(Bucket=bucket, Key="m", ServerSideEncryption="aws:kms", SSEKMSKeyId=kid,
                                    SSEKMSEncryptionContext=ctx)
    part = s3.upload_part(Bucket=bucket, Key="m", UploadId=up["UploadId"], PartNumber=1, Body=b"part")
    s3.complete_multipart_upload(Bucket=bucket, Key="m", UploadId=up["UploadId"],
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    assert s3.get_object(Bucket=bucket, Key="m")["Body"].read() == b"part"
    other = base64.b64encode(b'{"tenant":"other"}').decode()
    copied = s3.copy_object(Bucket=bucket, Key="c2", CopySource={"Bucket": bucket, "Key": "c"},
                            ServerSideEncryption="aws:kms", SSEKMSKeyId=kid, SSEKMSEncryptionContext=other)
    assert json.loads(base64.b64decode(copied["SSEKMSEncryptionContext"])) == {"tenant": "other"}
    assert s3.get_object(Bucket=bucket, Key="c2")["Body"].read() == b"with context"
    cli("kms", "rotate", kid)
    cli("rewrap")
    assert s3.get_object(Bucket=bucket, Key="c")["Body"].read() == b"with context"  # the context still binds
    for bad, extra in ((base64.b64encode(b"[1]").decode(), {"ServerSideEncryption": "aws:kms"}),
                       ("not base64!", {"ServerSideEncryption": "aws:kms"}),
                       (ctx, {"ServerSideEncryption": "AES256"})):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.put_object(Bucket=bucket, Key="bad", Body=b"x", SSEKMSEncryptionContext=bad, **extra)
        assert (status(e.value), code(e.value)) == (400, "InvalidArgument")


def test_rewrap_after_rotation(s3, bucket, cli):
    """After rotating the store key and a KMS key, `mailstore rewrap` wraps every older data key
    under the newest (in pages), leaving bodies, ETags and dates as they were; SSE-C and
    plaintext objects are left alone."""
    kid = str(cli("kms", "create")[0]["KeyId"])
    bodies = {f"s3-{i}": os.urandom(100 + i) for i in range(3)}
    for k, b in bodies.items():
        s3.put_object(Bucket=bucket, Key=k, Body=b, ServerSideEncryption="AES256")
    big = os.urandom(2 * 1024 * 1024)  # out of line on the local engine
    s3.put_object(Bucket=bucket, Key="kms-big", Body=big, ServerSideEncryption="aws:kms", SSEKMSKeyId=kid)
    s3.put_object(Bucket=bucket, Key="plain", Body=b"plain")
    s3.put_object(Bucket=bucket, Key="ssec", Body=b"ssec", **ssec(KEY_A))
    before = {k: s3.head_object(Bucket=bucket, Key=k, **(ssec(KEY_A) if k == "ssec" else {}))
              for k in [*bodies, "kms-big", "plain", "ssec"]}
    s3.create_bucket(Bucket=f"{bucket}-v")  # noncurrent versions are rewrapped too
    s3.put_bucket_versioning(Bucket=f"{bucket}-v", VersioningConfiguration={"Status": "Enabled"})
    old = [s3.put_object(Bucket=f"{bucket}-v", Key="v", Body=b"v%d" % i, ServerSideEncryption="AES256")["VersionId"]
           for i in range(2)]
    cli("rewrap")  # whatever earlier tests left under older keys
    cli("store-key", "rotate")
    cli("kms", "rotate", kid)
    done = cli("rewrap", "--page-size", "2")[0]  # several pages, some ending mid-bucket
    expected = checked = 0  # every SSE-S3 object of the store, and the objects of the rotated KMS key
    for b in s3.list_buckets()["Buckets"]:
        for o in s3.list_objects_v2(Bucket=b["Name"]).get("Contents", []):
            checked += 1
            try:
                h = s3.head_object(Bucket=b["Name"], Key=o["Key"])
            except botocore.exceptions.ClientError:
                continue  # SSE-C: not the store's to rewrap
            if h.get("ServerSideEncryption") == "AES256" or h.get("SSEKMSKeyId", "").endswith(kid):
                expected += 1
    expected += 1  # the noncurrent version
    assert done["Rewrapped"] == expected >= 5 and done["Checked"] == checked + 1
    assert s3.get_object(Bucket=f"{bucket}-v", Key="v", VersionId=old[0])["Body"].read() == b"v0"
    assert cli("rewrap")[0]["Rewrapped"] == 0
    for k, b in [*bodies.items(), ("kms-big", big), ("plain", b"plain"), ("ssec", b"ssec")]:
        extra = ssec(KEY_A) if k == "ssec" else {}
        got = s3.get_object(Bucket=bucket, Key=k, **extra)
        assert got["Body"].read() == b
        assert (got["ETag"], got["LastModified"]) == (before[k]["ETag"], before[k]["LastModified"])


def test_bucket_policy_can_require_encryption(s3, bucket):
    """AWS's documented policy that refuses unencrypted uploads (User Guide, "Requiring server-side
    encryption"): StringNotEquals on the header, and Null for a request without it."""
    import json
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "DenyIncorrectEncryptionHeader", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
         "Resource": f"arn:aws:s3:::{bucket}/*",
         "Condition": {"StringNotEquals": {"s3:x-amz-server-side-encryption": "AES256"}}},
        {"Sid": "DenyUnEncryptedObjectUploads", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
         "Resource": f"arn:aws:s3:::{bucket}/*",
         "Condition": {"Null": {"s3:x-amz-server-side-encryption": "true"}}}]}
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    for extra in ({}, {"ServerSideEncryption": "aws:kms"}, ssec(KEY_A)):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.put_object(Bucket=bucket, Key="x", Body=b"x", **extra)
        assert (status(e.value), code(e.value)) == (403, "AccessDenied"), extra
    s3.put_object(Bucket=bucket, Key="x", Body=b"x", ServerSideEncryption="AES256")
    assert s3.get_object(Bucket=bucket, Key="x")["Body"].read() == b"x"


def test_encrypted_objects_survive_an_index_rebuild(tmp_path):
    """The data files are the truth: with the index removed and rebuilt from them, every
    encrypted object (SSE-S3, SSE-KMS, SSE-C, multipart) still opens, and the store keys with it."""
    from conftest import GatewayProcess, client, create_key, mailstore

    data = tmp_path / "data"
    key = create_key(data)
    bodies = {"s3": os.urandom(CHUNK + 3), "c": os.urandom(100), "mp": os.urandom(MIB5 + CHUNK)}
    gw = GatewayProcess(data)
    try:
        s3 = client(gw.endpoint, key)
        s3.create_bucket(Bucket="rebuild")
        s3.put_object(Bucket="rebuild", Key="s3", Body=bodies["s3"], ServerSideEncryption="AES256")
        s3.put_object(Bucket="rebuild", Key="kms", Body=bodies["s3"], ServerSideEncryption="aws:kms")
        s3.put_object(Bucket="rebuild", Key="c", Body=bodies["c"], **ssec(KEY_A))
        uid = s3.create_multipart_upload(Bucket="rebuild", Key="mp", ServerSideEncryption="AES256")["UploadId"]
        parts = [s3.upload_part(Bucket="rebuild", Key="mp", UploadId=uid, PartNumber=n, Body=b)["ETag"]
                 for n, b in ((1, bodies["mp"][:MIB5]), (2, bodies["mp"][MIB5:]))]
        s3.complete_multipart_upload(Bucket="rebuild", Key="mp", UploadId=uid, MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": e} for n, e in zip((1, 2), parts)]})
    finally:
        gw.stop()
    for f in data.glob("index.db*"):
        f.unlink()
    mailstore("fsck", "--data-dir", str(data), "--rebuild-index", "--quiet")
    assert mailstore("fsck", "--data-dir", str(data), "--quiet").returncode == 0
    gw = GatewayProcess(data)
    try:
        s3 = client(gw.endpoint, key)
        assert s3.get_object(Bucket="rebuild", Key="s3")["Body"].read() == bodies["s3"]
        assert s3.get_object(Bucket="rebuild", Key="kms")["Body"].read() == bodies["s3"]
        assert s3.get_object(Bucket="rebuild", Key="c", **ssec(KEY_A))["Body"].read() == bodies["c"]
        got = s3.get_object(Bucket="rebuild", Key="mp", Range=f"bytes={MIB5 - 3}-{MIB5 + 3}")["Body"].read()
        assert got == bodies["mp"][MIB5 - 3:MIB5 + 4]
        assert s3.head_object(Bucket="rebuild", Key="mp")["ServerSideEncryption"] == "AES256"
    finally:
        gw.stop()
    # fsck checks the keys too: with another master key, nothing sealed could be opened
    (data / "master.key").write_bytes(os.urandom(32))
    res = mailstore("fsck", "--data-dir", str(data), "--quiet", check=False)
    assert res.returncode == 1
    assert "does not open with master.key" in res.stdout and "rebuild/s3: sealed under sse-key/" in res.stdout


def test_no_customer_key_in_any_log(gateway, s3, bucket, raw):
    """SSE-C keys are secrets: never in the gateway's log or access log, even in errors."""
    secret = bytes(range(60, 92))  # below 128: boto3 sends a str key as UTF-8
    s3.put_object(Bucket=bucket, Key="logged", Body=b"x", **ssec(secret))
    s3.get_object(Bucket=bucket, Key="logged", **ssec(secret))["Body"].read()
    with pytest.raises(botocore.exceptions.ClientError):
        s3.get_object(Bucket=bucket, Key="logged", **ssec(KEY_B))
    bad = dict(raw_ssec(secret), **{"x-amz-server-side-encryption-customer-key-MD5": "AAAA"})
    assert raw("PUT", f"/{bucket}/bad", bad, b"x")[0] == 400
    gateway.log.flush()
    text = open(gateway.log.name).read()
    for form in (base64.b64encode(secret).decode(), secret.hex(), base64.b64encode(KEY_B).decode()):
        assert form not in text
