"""Bad input gets its exact S3 error, and the server goes on serving others.

Raw HTTP here: real SDKs refuse to send most of these requests.
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import time
from urllib.parse import urlparse

import botocore.exceptions
import pytest
import urllib3

from conftest import client
from gateway.s3 import sigv4


@pytest.fixture(scope="module")
def engine_kind(both_engines: str) -> str:
    """Every test here runs on the local engine and on Ceph RADOS."""
    return both_engines


def _hostport(endpoint: str) -> tuple[str, int]:
    u = urlparse(endpoint)
    return u.hostname or "127.0.0.1", u.port or 80


def signed(gateway, key, method: str, path: str, *, query=(), body: bytes = b"", headers=None,
           payload_hash: str | None = None, secret: str | None = None, amz_date: str | None = None):
    host = "%s:%d" % _hostport(gateway.endpoint)
    h = {"Host": host, **(headers or {})}
    ph = payload_hash if payload_hash is not None else hashlib.sha256(body).hexdigest()
    h.update(sigv4.sign_headers(method, path, list(query), h, key.access_key, secret or key.secret,
                                payload_hash=ph, amz_date=amz_date))
    return h


def request(gateway, method, path, *, query=(), body=b"", headers=None):
    qs = sigv4.canonical_query(list(query))
    url = gateway.endpoint + path + (f"?{qs}" if qs else "")
    return urllib3.PoolManager().request(method, url, body=body or None, headers=headers, retries=False)


def error_code(resp) -> str:
    m = re.search(rb"<Code>([^<]+)</Code>", resp.data)
    return m.group(1).decode() if m else ""


def test_malformed_xml_delete(gateway, key, s3, bucket):
    body = b"<Delete><Object><Key>a</Key></Object"
    h = signed(gateway, key, "POST", f"/{bucket}", query=[("delete", "")], body=body,
               headers={"Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode()})
    r = request(gateway, "POST", f"/{bucket}", query=[("delete", "")], body=body, headers=h)
    assert r.status == 400 and error_code(r) == "MalformedXML"
    assert b"<RequestId>" in r.data and r.headers["x-amz-request-id"]


def test_entity_in_xml_refused(gateway, key, bucket):
    body = b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x "y">]><Delete><Object><Key>&x;</Key></Object></Delete>'
    h = signed(gateway, key, "POST", f"/{bucket}", query=[("delete", "")], body=body,
               headers={"Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode()})
    r = request(gateway, "POST", f"/{bucket}", query=[("delete", "")], body=body, headers=h)
    assert r.status == 400 and error_code(r) == "MalformedXML"


def test_wrong_content_md5(gateway, key, s3, bucket):
    body = b"some mail"
    h = signed(gateway, key, "PUT", f"/{bucket}/md5", body=body,
               headers={"Content-MD5": base64.b64encode(hashlib.md5(b"other").digest()).decode()})
    r = request(gateway, "PUT", f"/{bucket}/md5", body=body, headers=h)
    assert r.status == 400 and error_code(r) == "BadDigest"
    h = signed(gateway, key, "PUT", f"/{bucket}/md5", body=body, headers={"Content-MD5": "not base64!"})
    r = request(gateway, "PUT", f"/{bucket}/md5", body=body, headers=h)
    assert r.status == 400 and error_code(r) == "InvalidDigest"
    with pytest.raises(botocore.exceptions.ClientError):
        s3.head_object(Bucket=bucket, Key="md5")  # nothing was stored


def test_wrong_payload_sha256(gateway, key, s3, bucket):
    h = signed(gateway, key, "PUT", f"/{bucket}/sha", body=b"abc", payload_hash=hashlib.sha256(b"xyz").hexdigest())
    r = request(gateway, "PUT", f"/{bucket}/sha", body=b"abc", headers=h)
    assert r.status == 400 and error_code(r) == "XAmzContentSHA256Mismatch"


def test_wrong_checksum_header(gateway, key, s3, bucket):
    h = signed(gateway, key, "PUT", f"/{bucket}/crc", body=b"abc",
               headers={"x-amz-checksum-crc32": base64.b64encode(b"\0\0\0\0").decode()})
    r = request(gateway, "PUT", f"/{bucket}/crc", body=b"abc", headers=h)
    assert r.status == 400 and error_code(r) == "BadDigest"


def test_bad_signature_and_unknown_key(gateway, key, bucket):
    h = signed(gateway, key, "GET", f"/{bucket}", secret="wrong-secret")
    r = request(gateway, "GET", f"/{bucket}", headers=h)
    assert r.status == 403 and error_code(r) == "SignatureDoesNotMatch"
    other = type(key)("MSNOSUCHKEY000000000", "x")
    h = signed(gateway, other, "GET", f"/{bucket}")
    r = request(gateway, "GET", f"/{bucket}", headers=h)
    assert r.status == 403 and error_code(r) == "InvalidAccessKeyId"


def test_anonymous_denied(gateway, bucket):
    r = request(gateway, "GET", f"/{bucket}")
    assert r.status == 403 and error_code(r) == "AccessDenied"
    r = request(gateway, "GET", "/")
    assert r.status == 403 and error_code(r) == "AccessDenied"


def test_clock_skew(gateway, key, bucket):
    old = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 3600))
    h = signed(gateway, key, "GET", f"/{bucket}", amz_date=old)
    r = request(gateway, "GET", f"/{bucket}", headers=h)
    assert r.status == 403 and error_code(r) == "RequestTimeTooSkewed"


def test_expired_presigned_url(gateway, key, bucket):
    s3v4 = client(gateway.endpoint, key, signature_version="s3v4")
    s3v4.put_object(Bucket=bucket, Key="exp", Body=b"x")
    host = "%s:%d" % _hostport(gateway.endpoint)
    past = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 120))
    qs = sigv4.presign_query("GET", f"/{bucket}/exp", host, key.access_key, key.secret, expires=60, amz_date=past)
    r = urllib3.PoolManager().request("GET", f"{gateway.endpoint}/{bucket}/exp?{qs}", retries=False)
    assert r.status == 403 and error_code(r) == "AccessDenied" and b"expired" in r.data
    qs = sigv4.presign_query("GET", f"/{bucket}/exp", host, key.access_key, key.secret, expires=60)
    r = urllib3.PoolManager().request("GET", f"{gateway.endpoint}/{bucket}/exp?{qs}", retries=False)
    assert r.status == 200 and r.data == b"x"
    tampered = qs.replace("X-Amz-Expires=60", "X-Amz-Expires=600")
    r = urllib3.PoolManager().request("GET", f"{gateway.endpoint}/{bucket}/exp?{tampered}", retries=False)
    assert r.status == 403 and error_code(r) == "SignatureDoesNotMatch"


def test_unknown_bucket_and_key(s3, bucket):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket="no-such-bucket-here", Key="k")
    assert e.value.response["Error"]["Code"] == "NoSuchBucket"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=bucket, Key="no/such/key")
    assert e.value.response["Error"]["Code"] == "NoSuchKey"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket="no-such-bucket-here", Key="k", Body=b"x")
    assert e.value.response["Error"]["Code"] == "NoSuchBucket"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.list_objects_v2(Bucket="no-such-bucket-here")
    assert e.value.response["Error"]["Code"] == "NoSuchBucket"


def test_truncated_body_then_server_still_serves(gateway, key, s3, bucket):
    """A client that promises 1000 bytes, sends 10 and hangs up stores nothing."""
    host, port = _hostport(gateway.endpoint)
    h = signed(gateway, key, "PUT", f"/{bucket}/trunc", payload_hash=sigv4.UNSIGNED_PAYLOAD)
    head = f"PUT /{bucket}/trunc HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
    head += "Content-Length: 1000\r\n\r\n"
    with socket.create_connection((host, port)) as sock:
        sock.sendall(head.encode() + b"x" * 10)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        try:
            while sock.recv(65536):
                pass
        except (ConnectionResetError, socket.timeout):
            pass
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.head_object(Bucket=bucket, Key="trunc")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    s3.put_object(Bucket=bucket, Key="after", Body=b"still serving")
    assert s3.get_object(Bucket=bucket, Key="after")["Body"].read() == b"still serving"


def test_expect_100_continue_only_after_auth(gateway, key, bucket):
    """A bad signature with Expect: 100-continue gets a final 403, never a 100."""
    host, port = _hostport(gateway.endpoint)
    h = signed(gateway, key, "PUT", f"/{bucket}/exp100", payload_hash=sigv4.UNSIGNED_PAYLOAD, secret="bad")
    head = (f"PUT /{bucket}/exp100 HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
            + "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    with socket.create_connection((host, port)) as sock:
        sock.settimeout(10)
        sock.sendall(head.encode())
        first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 403"), first[:80]
    h = signed(gateway, key, "PUT", f"/{bucket}/exp100", payload_hash=sigv4.UNSIGNED_PAYLOAD)
    head = (f"PUT /{bucket}/exp100 HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
            + "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    with socket.create_connection((host, port)) as sock:
        sock.settimeout(10)
        sock.sendall(head.encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"hello")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")


def test_unsupported_subresource_is_not_implemented(gateway, key, bucket):
    h = signed(gateway, key, "GET", f"/{bucket}", query=[("cors", "")])
    r = request(gateway, "GET", f"/{bucket}", query=[("cors", "")], headers=h)
    assert r.status == 501 and error_code(r) == "NotImplemented"


def test_metadata_too_large(s3, bucket):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket=bucket, Key="meta", Body=b"x", Metadata={"big": "v" * 3000})
    assert e.value.response["Error"]["Code"] == "MetadataTooLarge"


def test_key_too_long(s3, bucket):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket=bucket, Key="k" * 1025, Body=b"x")
    assert e.value.response["Error"]["Code"] == "KeyTooLongError"
