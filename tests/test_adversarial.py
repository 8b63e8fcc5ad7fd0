"""The gateway tried as an attacker would: requests altered after signing, odd bytes and numbers.

Each test is the attack as it was seen (issue 12) and asserts AWS's answer;
afterwards the gateway still serves, and nothing was stored that should not be.
Raw sockets: real SDKs refuse to send most of these.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import urllib.request
from urllib.parse import urlparse

import botocore.exceptions
import pytest

from conftest import create_key
from gateway.s3 import sigv4


def _addr(gateway) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    u = urlparse(gateway.endpoint)
    return u.hostname or "127.0.0.1", u.port or 80


def exchange(gateway, raw: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:  # type: ignore[no-untyped-def]
    """Send raw bytes, read one response (status, lower-case headers, body)."""
    with socket.create_connection(_addr(gateway), timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed without an answer: {data!r}")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        want = int(headers.get("content-length", "0"))
        while len(body) < want:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return status, headers, body


def code_of(body: bytes) -> str:
    m = re.search(rb"<Code>([^<]+)</Code>", body)
    return m.group(1).decode() if m else ""


def build(gateway, key, method: str, path: str, *, query=(), headers=None, body: bytes = b"",  # type: ignore[no-untyped-def]
          unsigned: bytes = b"", payload_hash: str | None = None, raw_path: str | None = None) -> bytes:
    """A SigV4 header-signed request; `unsigned` raw header lines are added after signing."""
    host = "%s:%d" % _addr(gateway)
    h = {"Host": host, **(headers or {})}
    ph = payload_hash or hashlib.sha256(body).hexdigest()
    h.update(sigv4.sign_headers(method, path, list(query), h, key.access_key, key.secret, payload_hash=ph))
    qs = sigv4.canonical_query(list(query))
    target = (raw_path or path) + (f"?{qs}" if qs else "")
    lines = [f"{method} {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in h.items()]
    lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join(lines).encode() + b"\r\n" + unsigned + b"\r\n" + body


def presigned(gateway, key, method: str, path: str, expires: int = 600) -> str:  # type: ignore[no-untyped-def]
    host = "%s:%d" % _addr(gateway)
    return path + "?" + sigv4.presign_query(method, path, host, key.access_key, key.secret, expires=expires)


def plain(gateway, target: str, method: str, *, lines: bytes = b"", body: bytes = b"") -> bytes:  # type: ignore[no-untyped-def]
    host = "%s:%d" % _addr(gateway)
    return (f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n".encode()
            + lines + b"\r\n" + body)


@pytest.fixture(scope="module")
def secret_bucket(s3) -> str:  # type: ignore[no-untyped-def]
    s3.create_bucket(Bucket="otherbucket")
    s3.put_object(Bucket="otherbucket", Key="secret", Body=b"the secret")
    return "otherbucket"


# ------------------------------------------------------------------ 4: unsigned x-amz-* headers

def test_unsigned_copy_source_on_a_presigned_put_is_refused(gateway, key, s3, bucket, secret_bucket):
    target = presigned(gateway, key, "PUT", f"/{bucket}/stolen")
    status, _, body = exchange(gateway, plain(gateway, target, "PUT",
                                              lines=b"x-amz-copy-source: /otherbucket/secret\r\n"))
    assert status == 403 and code_of(body) == "AccessDenied"
    assert b"not signed" in body and b"<HeadersNotSigned>x-amz-copy-source</HeadersNotSigned>" in body
    with pytest.raises(botocore.exceptions.ClientError):
        s3.head_object(Bucket=bucket, Key="stolen")


def test_unsigned_headers_added_to_a_header_signed_put_are_refused(gateway, key, s3, bucket, secret_bucket):
    for extra in (b"x-amz-copy-source: /otherbucket/secret\r\n", b"x-amz-meta-evil: 1\r\n",
                  b"X-Amz-Acl: public-read\r\n"):
        status, _, body = exchange(gateway, build(gateway, key, "PUT", f"/{bucket}/mitm", body=b"mail",
                                                  unsigned=extra))
        assert status == 403 and code_of(body) == "AccessDenied", extra
    with pytest.raises(botocore.exceptions.ClientError):
        s3.head_object(Bucket=bucket, Key="mitm")
    # Signed, the same metadata is stored (the check is about the signature, not the header).
    status, _, _ = exchange(gateway, build(gateway, key, "PUT", f"/{bucket}/mitm", body=b"mail",
                                           headers={"x-amz-meta-fine": "1"}))
    assert status == 200
    assert s3.head_object(Bucket=bucket, Key="mitm")["Metadata"] == {"fine": "1"}


def test_sigv2_signs_every_amz_header(gateway, key, bucket):
    import base64
    import hmac
    from email.utils import formatdate

    date = formatdate(usegmt=True)
    sts = f"PUT\n\n\n{date}\n/{bucket}/v2"
    sig = base64.b64encode(hmac.new(key.secret.encode(), sts.encode(), hashlib.sha1).digest()).decode()
    lines = f"Date: {date}\r\nAuthorization: AWS {key.access_key}:{sig}\r\n".encode()
    ok = exchange(gateway, plain(gateway, f"/{bucket}/v2", "PUT", lines=lines, body=b"x"))
    assert ok[0] == 200
    added = lines + b"x-amz-copy-source: /otherbucket/secret\r\n"
    status, _, body = exchange(gateway, plain(gateway, f"/{bucket}/v2", "PUT", lines=added, body=b"x"))
    assert status == 403 and code_of(body) == "SignatureDoesNotMatch"


# ------------------------------------------------------------------ 5: admin bodies

def test_admin_body_swapped_after_signing_is_refused(gateway, data_dir):
    admin = create_key(data_dir, "adv-admin")
    signed_body = json.dumps({"name": "reader", "preset": "read-only:mail"}).encode()
    evil = json.dumps({"name": "reader", "admin": True}).encode()
    host = "%s:%d" % _addr(gateway)
    h = {"Host": host, "Content-Type": "application/json"}
    h.update(sigv4.sign_headers("POST", "/_admin/keys", [], h, admin.access_key, admin.secret,
                                payload_hash=hashlib.sha256(signed_body).hexdigest()))
    req = urllib.request.Request(gateway.endpoint + "/_admin/keys", data=evil, method="POST", headers=h)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400 and code_of(err.value.read()) == "XAmzContentSHA256Mismatch"
    # An unsigned payload cannot carry admin changes either.
    h = {"Host": host, "Content-Type": "application/json"}
    h.update(sigv4.sign_headers("POST", "/_admin/keys", [], h, admin.access_key, admin.secret))
    req = urllib.request.Request(gateway.endpoint + "/_admin/keys", data=evil, method="POST", headers=h)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 403
    listed = urllib.request.Request(gateway.endpoint + "/_admin/keys", headers={
        "Host": host, **sigv4.sign_headers("GET", "/_admin/keys", [], {"Host": host}, admin.access_key,
                                           admin.secret)})
    names = [k["Name"] for k in json.loads(urllib.request.urlopen(listed, timeout=10).read())]
    assert "reader" not in names


# ------------------------------------------------------------------ 6: repeated auth inputs

def test_duplicated_auth_parameters_are_refused(gateway, key, bucket, s3):
    s3.put_object(Bucket=bucket, Key="dup", Body=b"x")
    target = presigned(gateway, key, "GET", f"/{bucket}/dup")
    assert exchange(gateway, plain(gateway, target, "GET"))[0] == 200
    status, _, body = exchange(gateway, plain(gateway, target + "&X-Amz-Signature=" + "0" * 64, "GET"))
    assert status == 400 and code_of(body) == "InvalidArgument"
    status, _, body = exchange(gateway, plain(gateway, target.replace("X-Amz-Expires", "X-Amz-Expires=1&X-Amz-Expires"),
                                              "GET"))
    assert status == 400
    twice = build(gateway, key, "GET", f"/{bucket}/dup", unsigned=b"Authorization: AWS4-HMAC-SHA256 x\r\n")
    status, _, body = exchange(gateway, twice)
    assert status == 400 and code_of(body) == "InvalidArgument"


# ------------------------------------------------------------------ 7: numbers

UNICODE_NUMBERS = ["\u00b2", "\u0663", "1_0", " 7", "+7", "-1", "0x10", "9" * 5000]


@pytest.mark.parametrize("value", UNICODE_NUMBERS, ids=["sup2", "arabic3", "underscore", "space", "plus",
                                                         "minus", "hex", "5000digits"])
def test_numbers_are_strict_ascii(gateway, key, s3, bucket, value):
    s3.put_object(Bucket=bucket, Key="n", Body=b"0123456789")
    enc = value.encode()
    from urllib.parse import quote
    q = quote(value, safe="")
    # X-Amz-Expires, anonymous, before any key is looked up
    target = (f"/{bucket}/n?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20260101%2Fus-east-1%2Fs3"
              f"%2Faws4_request&X-Amz-Date=20260101T000000Z&X-Amz-Expires={q}&X-Amz-SignedHeaders=host"
              f"&X-Amz-Signature={'0' * 64}")
    status, _, _ = exchange(gateway, plain(gateway, target, "GET"))
    assert 400 <= status < 500
    # SigV2 Expires
    status, _, _ = exchange(gateway, plain(gateway, f"/{bucket}/n?AWSAccessKeyId={key.access_key}&Expires={q}"
                                                    f"&Signature=abc", "GET"))
    assert 400 <= status < 500
    # Range: ignored when not a number (RFC 9110), 416 when past the end
    if value.isascii() and len(value) < 100:
        rng = f"bytes={value}-".encode()
        status, _, _ = exchange(gateway, build(gateway, key, "GET", f"/{bucket}/n", unsigned=b"Range: " + rng + b"\r\n"))
        assert status in (200, 206, 416)
    elif len(value) > 100:
        status, _, body = exchange(gateway, build(gateway, key, "GET", f"/{bucket}/n",
                                                  headers={"Range": f"bytes={value}-"}))
        assert status == 416 and code_of(body) == "InvalidRange"
    else:
        status, _, _ = exchange(gateway, build(gateway, key, "GET", f"/{bucket}/n",
                                               headers={"Range": f"bytes={value}-"}))
        assert status in (200, 400)
    # partNumber, max-parts, max-uploads, part-number-marker
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    try:
        for q_ in ([("partNumber", value), ("uploadId", up)],):
            status, _, body = exchange(gateway, build(gateway, key, "PUT", f"/{bucket}/mp", query=q_, body=b"x"))
            assert status == 400 and code_of(body) == "InvalidArgument"
        for q_ in ([("uploadId", up), ("max-parts", value)], [("uploadId", up), ("part-number-marker", value)]):
            status, _, body = exchange(gateway, build(gateway, key, "GET", f"/{bucket}/mp", query=q_))
            assert status == 400 and code_of(body) == "InvalidArgument", q_
        status, _, body = exchange(gateway, build(gateway, key, "GET", f"/{bucket}",
                                                  query=[("uploads", ""), ("max-uploads", value)]))
        assert status == 400 and code_of(body) == "InvalidArgument"
        status, _, body = exchange(gateway, build(gateway, key, "GET", f"/{bucket}", query=[("max-keys", value)]))
        assert (status, code_of(body)) == (400, "InvalidArgument") or (value == "-1" and status == 400)
        xml_body = (f"<CompleteMultipartUpload><Part><PartNumber>{value}</PartNumber><ETag>x</ETag></Part>"
                    "</CompleteMultipartUpload>").encode()
        status, _, body = exchange(gateway, build(gateway, key, "POST", f"/{bucket}/mp", query=[("uploadId", up)],
                                                  body=xml_body))
        assert 400 <= status < 500
    finally:
        s3.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=up)
    # x-amz-decoded-content-length of an aws-chunked upload
    status, _, body = exchange(gateway, build(gateway, key, "PUT", f"/{bucket}/chunked", body=b"0\r\n\r\n",
                                              payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                                              headers={"Content-Encoding": "aws-chunked",
                                                       "x-amz-decoded-content-length": value}))
    assert 400 <= status < 500, enc


@pytest.mark.parametrize("size", [b"0x3e8", b"3_e8", b"+3e8", b" ", b"\xb2"])
def test_aws_chunked_sizes_are_strict_hex(gateway, key, bucket, size):
    body = size + b"\r\n" + b"a" * 1000 + b"\r\n0\r\n\r\n"
    status, _, resp = exchange(gateway, build(gateway, key, "PUT", f"/{bucket}/hex", body=body,
                                              payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER",
                                              headers={"Content-Encoding": "aws-chunked",
                                                       "x-amz-decoded-content-length": "1000"}))
    assert status == 400, resp


# ------------------------------------------------------------------ 8-10: bytes that are not text

def test_non_utf8_header_byte_is_400_not_500(gateway, key, bucket):
    raw = build(gateway, key, "GET", f"/{bucket}/x", headers={"x-amz-meta-a": "b"})
    raw = raw.replace(b"x-amz-meta-a: b", b"x-amz-meta-a: \xe9")
    status, _, body = exchange(gateway, raw)
    assert status == 400 and code_of(body) == "InvalidArgument"


@pytest.mark.parametrize("evil", ["a\r\nSet-Cookie: x=1", "a\nb", "a\x00b", "a\x07b"])
def test_response_overrides_with_control_characters_are_400(gateway, key, s3, bucket, evil):
    s3.put_object(Bucket=bucket, Key="ov", Body=b"x")
    for param in ("response-content-type", "response-content-disposition", "response-cache-control"):
        status, headers, body = exchange(gateway, build(gateway, key, "GET", f"/{bucket}/ov", query=[(param, evil)]))
        assert status == 400 and code_of(body) == "InvalidArgument"
        assert "set-cookie" not in headers


def test_keys_that_are_not_utf8_are_refused_everywhere(gateway, key, s3, bucket):
    s3.put_object(Bucket=bucket, Key="bad\ufffd", Body=b"original")
    for method, body in (("PUT", b"evil"), ("GET", b""), ("HEAD", b""), ("DELETE", b"")):
        for raw_key in ("bad%FE", "bad%FF", "bad%C3"):
            status, _, resp = exchange(gateway, build(gateway, key, method, f"/{bucket}/{raw_key}", body=body))
            assert status == 400, (method, raw_key)
            if method != "HEAD":
                assert code_of(resp) == "InvalidURI"
    assert s3.get_object(Bucket=bucket, Key="bad\ufffd")["Body"].read() == b"original"
    status, _, resp = exchange(gateway, build(gateway, key, "GET", f"/{bucket}", query=[("prefix", "x")],
                                              raw_path=f"/{bucket}") .replace(b"prefix=x", b"prefix=%FE"))
    assert status in (400, 403)


# ------------------------------------------------------------------ 12, 13

def test_malformed_requests_and_hangups_log_one_line_each(gateway, key, s3, bucket):
    s3.put_object(Bucket=bucket, Key="big", Body=b"z" * 3_000_000)
    for bad in (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", b"\x16\x03\x01\x00\xa5\x01\x00\r\n\r\n",
                b"GET /" + b"a" * 100 + b" HTTP/9.9\r\n\r\n"):
        with socket.create_connection(_addr(gateway), timeout=5) as s:
            s.sendall(bad)
            try:
                s.recv(4096)
            except OSError:
                pass
    for _ in range(3):  # hang up in the middle of a streamed GET
        with socket.create_connection(_addr(gateway), timeout=5) as s:
            s.sendall(build(gateway, key, "GET", f"/{bucket}/big"))
            s.recv(1000)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    assert s3.get_object(Bucket=bucket, Key="n" if False else "big")["ContentLength"] == 3_000_000
    gateway.log.flush()
    text = open(gateway.log.name).read()
    assert "Traceback" not in text, text[-3000:]
    assert " ERROR " not in text, text[-3000:]


@pytest.mark.parametrize("header,want", [
    ("x-amz-server-side-encryption: aws:kms:dsse", (501, "NotImplemented")),
    ("x-amz-server-side-encryption-aws-kms-key-id: k", (400, "InvalidArgument")),  # without aws:kms
    ("x-amz-server-side-encryption-context: e30=", (400, "InvalidArgument")),  # empty, and without aws:kms
    ("x-amz-server-side-encryption: AES128", (400, "InvalidArgument")),
    ("x-amz-server-side-encryption-customer-algorithm: AES256", (400, "InvalidArgument")),  # no key with it
])
def test_encryption_requests_are_refused_not_faked(gateway, key, s3, bucket, header, want):
    """Encryption that is asked for and cannot be given is refused: nothing is stored in plaintext
    (SSE-S3 and SSE-C themselves: test_sse.py)."""
    name, _, value = header.partition(": ")
    status, _, body = exchange(gateway, build(gateway, key, "PUT", f"/{bucket}/enc", body=b"secret mail",
                                              headers={name: value}))
    assert (status, code_of(body)) == want
    with pytest.raises(botocore.exceptions.ClientError):
        s3.head_object(Bucket=bucket, Key="enc")
