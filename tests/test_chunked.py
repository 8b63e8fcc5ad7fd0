"""aws-chunked decoding against AWS's published streaming example, plus framing errors."""

from __future__ import annotations

import pytest

from gateway.s3 import sigv4
from gateway.s3.chunked import AwsChunkedDecoder, ChunkSigner
from gateway.s3.errors import S3Error

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
SIGS = ["ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
        "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
        "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"]


def example_body() -> bytes:
    return (f"10000;chunk-signature={SIGS[0]}\r\n".encode() + b"a" * 65536 + b"\r\n"
            + f"400;chunk-signature={SIGS[1]}\r\n".encode() + b"a" * 1024 + b"\r\n"
            + f"0;chunk-signature={SIGS[2]}\r\n\r\n".encode())


def signer() -> ChunkSigner:
    return ChunkSigner(sigv4.signing_key(SECRET, "20130524", "us-east-1", "s3"), "20130524T000000Z",
                       "20130524/us-east-1/s3/aws4_request", SEED)


def test_seed_signature_of_aws_example():
    headers = {
        "content-encoding": ["aws-chunked"], "content-length": ["66824"],
        "host": ["s3.amazonaws.com"], "x-amz-content-sha256": ["STREAMING-AWS4-HMAC-SHA256-PAYLOAD"],
        "x-amz-date": ["20130524T000000Z"], "x-amz-decoded-content-length": ["66560"],
        "x-amz-storage-class": ["REDUCED_REDUNDANCY"],
    }
    authz = ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
             "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
             f"x-amz-decoded-content-length;x-amz-storage-class,Signature={SEED}")
    req = sigv4.parse_authorization_header(authz, "20130524T000000Z", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
    assert sigv4.expected_signature(req, SECRET, "PUT", "/examplebucket/chunkObject.txt", [], headers) == SEED
    assert len(example_body()) == 66824


@pytest.mark.parametrize("step", [1, 7, 4096, 70000])
def test_aws_example_chunks_verify_in_any_feed_size(step):
    body = example_body()
    dec = AwsChunkedDecoder(signer=signer())
    out = b""
    for i in range(0, len(body), step):
        out += b"".join(dec.feed(body[i:i + step]))
    dec.finish()
    assert out == b"a" * 66560


def test_tampered_chunk_is_rejected_before_release():
    body = bytearray(example_body())
    body[100] = ord("b")
    dec = AwsChunkedDecoder(signer=signer())
    with pytest.raises(S3Error) as e:
        dec.feed(bytes(body))
    assert e.value.code == "SignatureDoesNotMatch"


def test_reordered_chunks_are_rejected():
    b = example_body()
    first_end = b.index(b"\r\n400;")
    swapped = b[first_end + 2:b.index(b"0;chunk")] + b[:first_end + 2] + b[b.index(b"0;chunk"):]
    with pytest.raises(S3Error) as e:
        AwsChunkedDecoder(signer=signer()).feed(swapped)
    assert e.value.code == "SignatureDoesNotMatch"


def test_unsigned_with_trailer():
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n"
    dec = AwsChunkedDecoder(expect_trailer=True)
    assert b"".join(dec.feed(body)) == b"hello world"
    dec.finish()
    assert dec.trailers == {"x-amz-checksum-crc32": "DUoRhQ=="}


def test_signed_trailer_roundtrip():
    s = signer()
    key = s.key
    data = b"x" * 10
    # Sign like a client: chain from the seed through the data chunk, the final chunk, the trailer.
    client = ChunkSigner(key, s.amz_date, s.scope, SEED)
    c1 = client._sign("AWS4-HMAC-SHA256-PAYLOAD", sigv4.EMPTY_SHA256 + "\n" + __import__("hashlib").sha256(data).hexdigest())
    client.previous = c1
    c0 = client._sign("AWS4-HMAC-SHA256-PAYLOAD", sigv4.EMPTY_SHA256 + "\n" + sigv4.EMPTY_SHA256)
    client.previous = c0
    trailer = b"x-amz-checksum-crc32c:sOO8/Q==\n"
    ts = client._sign("AWS4-HMAC-SHA256-TRAILER", __import__("hashlib").sha256(trailer).hexdigest())
    body = (f"a;chunk-signature={c1}\r\n".encode() + data + b"\r\n" + f"0;chunk-signature={c0}\r\n".encode()
            + b"x-amz-checksum-crc32c:sOO8/Q==\r\n" + f"x-amz-trailer-signature:{ts}\r\n\r\n".encode())
    dec = AwsChunkedDecoder(signer=signer(), expect_trailer=True)
    assert b"".join(dec.feed(body)) == data
    dec.finish()
    bad = body.replace(b"sOO8/Q==", b"AAAAAA==")
    with pytest.raises(S3Error) as e:
        AwsChunkedDecoder(signer=signer(), expect_trailer=True).feed(bad)
    assert e.value.code == "SignatureDoesNotMatch"


@pytest.mark.parametrize("body,code", [
    (b"zz\r\nhello\r\n", "InvalidRequest"),
    (b"5\r\nhelloXX0\r\n\r\n", "InvalidRequest"),
    (b"f" * 5000, "InvalidRequest"),
    (b"2000000\r\n", "InvalidRequest"),
])
def test_malformed_framing(body, code):
    with pytest.raises(S3Error) as e:
        AwsChunkedDecoder().feed(body)
    assert e.value.code == code


def test_truncated_stream():
    dec = AwsChunkedDecoder()
    dec.feed(b"5\r\nhel")
    with pytest.raises(S3Error) as e:
        dec.finish()
    assert e.value.code == "IncompleteBody"
