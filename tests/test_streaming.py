"""Streaming uploads and checksums through real boto3, over HTTP and HTTPS."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import socket
import zlib

import botocore.exceptions
import pytest

from conftest import client, engine_gateway, engine_key, make_tls_cert
from gateway.s3 import sigv4
from gateway.s3.chunked import ChunkSigner


@pytest.fixture(scope="module")
def engine_kind(both_engines: str) -> str:
    """Every test here runs on the local engine and on Ceph RADOS."""
    return both_engines


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory, request, engine_kind):  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("tls")
    cert, key_file = make_tls_cert(base / "tls")
    data = base / "data"
    key = engine_key(engine_kind, data, request)
    gw = engine_gateway(engine_kind, data, request, "--tls-cert", str(cert), "--tls-key", str(key_file))
    assert gw.endpoint.startswith("https://")
    client(gw.endpoint, key, verify=str(cert)).create_bucket(Bucket="tls")
    yield gw, key, str(cert)
    gw.stop()


def capture(s3) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    """What boto3 actually sent, so each test proves the mode it claims to test."""
    sent: list[dict[str, str]] = []
    s3.meta.events.register("before-send.s3", lambda request, **kw: sent.append(
        {k.lower(): (v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items()}))
    return sent


def test_boto3_https_default_streams_aws_chunked_with_trailer(tls_gateway):
    gw, key, cert = tls_gateway
    s3 = client(gw.endpoint, key, verify=cert)
    sent = capture(s3)
    body = os.urandom(300_000)
    s3.put_object(Bucket="tls", Key="streamed", Body=io.BytesIO(body))
    put = next(h for h in sent if h.get("x-amz-decoded-content-length"))
    assert put["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert put["x-amz-trailer"].startswith("x-amz-checksum-")
    got = s3.get_object(Bucket="tls", Key="streamed", ChecksumMode="ENABLED")
    assert got["Body"].read() == body
    assert "ContentEncoding" not in got  # aws-chunked is framing, never stored
    crc = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
    assert got["ChecksumCRC32"] == crc


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "SHA1", "SHA256", "CRC64NVME"])
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_every_checksum_algorithm(tls_gateway, gateway, key, algorithm, scheme):
    if scheme == "https":
        gw, k, cert = tls_gateway
        s3 = client(gw.endpoint, k, verify=cert)
        bucket = "tls"
    else:
        s3 = client(gateway.endpoint, key)
        bucket = f"plain-{algorithm.lower()}"
        s3.create_bucket(Bucket=bucket)
    body = os.urandom(70_000)
    resp = s3.put_object(Bucket=bucket, Key=f"c-{algorithm}", Body=body, ChecksumAlgorithm=algorithm)
    field = f"Checksum{algorithm}"
    assert resp[field]
    head = s3.head_object(Bucket=bucket, Key=f"c-{algorithm}", ChecksumMode="ENABLED")
    assert head[field] == resp[field]
    got = s3.get_object(Bucket=bucket, Key=f"c-{algorithm}", ChecksumMode="ENABLED")
    assert got["Body"].read() == body and got[field] == resp[field]
    ranged = s3.get_object(Bucket=bucket, Key=f"c-{algorithm}", Range="bytes=0-9", ChecksumMode="ENABLED")
    assert field not in ranged  # a checksum of the whole object says nothing about a range


def test_multipart_over_https_with_checksums(tls_gateway, tmp_path):
    gw, key, cert = tls_gateway
    s3 = client(gw.endpoint, key, verify=cert)
    src = tmp_path / "big"
    src.write_bytes(os.urandom(12 * 1024 * 1024 + 3))
    s3.upload_file(str(src), "tls", "mp-https")
    assert s3.get_object(Bucket="tls", Key="mp-https")["Body"].read() == src.read_bytes()


def test_wrong_trailer_checksum_is_bad_digest(tls_gateway):
    """An aws-chunked body whose trailing CRC32 lies: BadDigest, nothing stored."""
    gw, key, cert = tls_gateway
    import ssl
    host, port = "127.0.0.1", gw.port
    body = b"hello trailer"
    framed = (f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n"
              + b"x-amz-checksum-crc32:AAAAAA==\r\n\r\n")
    path = "/tls/lying-trailer"
    h = {"Host": f"{host}:{port}", "Content-Encoding": "aws-chunked", "x-amz-trailer": "x-amz-checksum-crc32",
         "x-amz-decoded-content-length": str(len(body)), "Content-Length": str(len(framed))}
    h.update(sigv4.sign_headers("PUT", path, [], h, key.access_key, key.secret,
                                payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER"))
    ctx = ssl.create_default_context(cafile=cert)
    with socket.create_connection((host, port)) as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(f"PUT {path} HTTP/1.1\r\n".encode() + "".join(f"{k}: {v}\r\n" for k, v in h.items()).encode()
                     + b"\r\n" + framed)
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 400") and b"<Code>BadDigest</Code>" in reply
    s3 = client(gw.endpoint, key, verify=cert)
    with pytest.raises(botocore.exceptions.ClientError):
        s3.head_object(Bucket="tls", Key="lying-trailer")


def _raw_put(endpoint: str, head: dict[str, str], path: str, framed: bytes, chunked_te: bool) -> bytes:
    host, port = endpoint.split("//", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.settimeout(10)
        lines = f"PUT {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items())
        if chunked_te:  # aws-chunked inside HTTP chunked transfer coding, as minio-go sends it
            wire = b"".join(f"{len(framed[i:i + 1000]):x}\r\n".encode() + framed[i:i + 1000] + b"\r\n"
                            for i in range(0, len(framed), 1000)) + b"0\r\n\r\n"
            sock.sendall((lines + "Transfer-Encoding: chunked\r\n\r\n").encode() + wire)
        else:
            sock.sendall((lines + f"Content-Length: {len(framed)}\r\n\r\n").encode() + framed)
        return sock.recv(65536)


@pytest.mark.parametrize("chunked_te", [False, True])
def test_signed_streaming_upload(gateway, key, s3, bucket, chunked_te):
    """STREAMING-AWS4-HMAC-SHA256-PAYLOAD (the chain is checked against AWS's
    published example in test_chunked.py); here it goes through the server."""
    data = os.urandom(200_000)
    path = f"/{bucket}/signed-stream"
    host = gateway.endpoint.split("//", 1)[1]
    amz_date = sigv4.amz_now()
    head = {"Host": host, "Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data))}
    head.update(sigv4.sign_headers("PUT", path, [], head, key.access_key, key.secret,
                                   payload_hash="STREAMING-AWS4-HMAC-SHA256-PAYLOAD", amz_date=amz_date))
    seed = head["Authorization"].rsplit("Signature=", 1)[1]
    signer = ChunkSigner(sigv4.signing_key(key.secret, amz_date[:8], "us-east-1", "s3"), amz_date,
                         f"{amz_date[:8]}/us-east-1/s3/aws4_request", seed)
    framed = b""
    for piece in [data[i:i + 65536] for i in range(0, len(data), 65536)] + [b""]:
        sig = signer._sign("AWS4-HMAC-SHA256-PAYLOAD",
                           sigv4.EMPTY_SHA256 + "\n" + hashlib.sha256(piece).hexdigest())
        signer.previous = sig
        framed += f"{len(piece):x};chunk-signature={sig}\r\n".encode() + piece + b"\r\n"
    reply = _raw_put(gateway.endpoint, head, path, framed, chunked_te)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    assert s3.get_object(Bucket=bucket, Key="signed-stream")["Body"].read() == data
    tampered = framed.replace(data[1000:1010], bytes(10), 1)
    head2 = dict(head)
    reply = _raw_put(gateway.endpoint, head2, path.replace("signed-stream", "tampered"), tampered, chunked_te)
    assert b"<Code>SignatureDoesNotMatch</Code>" in reply


def test_plain_chunked_put_without_content_length(gateway, key, s3, bucket):
    """Dovecot sends Transfer-Encoding: chunked when it does not know the size."""
    data = os.urandom(3 * 1024 * 1024 + 11)
    path = f"/{bucket}/te-chunked"
    head = {"Host": gateway.endpoint.split("//", 1)[1]}
    head.update(sigv4.sign_headers("PUT", path, [], head, key.access_key, key.secret))
    reply = _raw_put(gateway.endpoint, head, path, data, chunked_te=True)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    assert s3.get_object(Bucket=bucket, Key="te-chunked")["Body"].read() == data


def test_boto3_https_when_required(tls_gateway):
    """With checksums only when required, boto3 over HTTPS sends a plain signed body."""
    gw, key, cert = tls_gateway
    s3 = client(gw.endpoint, key, verify=cert, request_checksum_calculation="when_required",
                response_checksum_validation="when_required")
    sent = capture(s3)
    body = os.urandom(123_456)
    s3.put_object(Bucket="tls", Key="when-required", Body=body)
    assert not any(h.get("x-amz-decoded-content-length") for h in sent)
    assert s3.get_object(Bucket="tls", Key="when-required")["Body"].read() == body
    res = s3.delete_objects(Bucket="tls", Delete={"Objects": [{"Key": "when-required"}]})
    assert [d["Key"] for d in res["Deleted"]] == ["when-required"]
