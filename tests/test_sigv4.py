"""SigV4 against AWS's published S3 examples ("Signature Calculations for the
Authorization Header: Transferring Payload in a Single Chunk" and "Query String
Authentication"), plus canonicalization rules."""

from datetime import datetime, timezone

import pytest

from gateway.s3 import sigv4
from gateway.s3.errors import S3Error

AKID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def test_aws_example_get_object_header_auth():
    headers = {
        "host": ["examplebucket.s3.amazonaws.com"],
        "range": ["bytes=0-9"],
        "x-amz-content-sha256": [sigv4.EMPTY_SHA256],
        "x-amz-date": ["20130524T000000Z"],
    }
    authz = ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
             "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,"
             "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    req = sigv4.parse_authorization_header(authz, "20130524T000000Z", sigv4.EMPTY_SHA256)
    expected = sigv4.expected_signature(req, SECRET, "GET", "/test.txt", [], headers)
    assert expected == req.signature
    sigv4.verify_signature(req, expected)


def test_aws_example_put_object_header_auth():
    body_hash = "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"  # "Welcome to Amazon S3."
    headers = {
        "date": ["Fri, 24 May 2013 00:00:00 GMT"],
        "host": ["examplebucket.s3.amazonaws.com"],
        "x-amz-content-sha256": [body_hash],
        "x-amz-date": ["20130524T000000Z"],
        "x-amz-storage-class": ["REDUCED_REDUNDANCY"],
    }
    authz = ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
             "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,"
             "Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")
    req = sigv4.parse_authorization_header(authz, "20130524T000000Z", body_hash)
    assert sigv4.expected_signature(req, SECRET, "PUT", "/test%24file.text", [], headers) == req.signature


def test_aws_example_presigned_url():
    q = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": "AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request",
        "X-Amz-Date": "20130524T000000Z",
        "X-Amz-Expires": "86400",
        "X-Amz-SignedHeaders": "host",
        "X-Amz-Signature": "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404",
    }
    req = sigv4.parse_presigned_query(q)
    exp = sigv4.expected_signature(req, SECRET, "GET", "/test.txt", list(q.items()),
                                   {"host": ["examplebucket.s3.amazonaws.com"]})
    assert exp == q["X-Amz-Signature"]
    sigv4.check_time(req, datetime(2013, 5, 24, 12, tzinfo=timezone.utc))
    with pytest.raises(S3Error) as e:
        sigv4.check_time(req, datetime(2013, 5, 26, tzinfo=timezone.utc))
    assert e.value.code == "AccessDenied" and "expired" in e.value.message


def test_sign_then_verify_roundtrip_with_odd_key():
    path = "/mail/" + sigv4.uri_encode("ab12cd34/user@example.com/mailboxes/x y+z", keep_slash=True)
    hdrs = sigv4.sign_headers("PUT", path, [("uploads", "")], {"Host": "127.0.0.1:9000"}, AKID, SECRET)
    req = sigv4.parse_authorization_header(hdrs["Authorization"], hdrs["x-amz-date"], hdrs["x-amz-content-sha256"])
    all_h = {"host": ["127.0.0.1:9000"], "x-amz-date": [hdrs["x-amz-date"]],
             "x-amz-content-sha256": [hdrs["x-amz-content-sha256"]]}
    assert sigv4.expected_signature(req, SECRET, "PUT", path, [("uploads", "")], all_h) == req.signature


def test_canonical_uri_reencodes_wire_form():
    # A client that leaves '@' or '!' raw, or encodes '~', signs the same canonical form.
    assert sigv4.canonical_uri("/b/a@b!c~d") == "/b/a%40b%21c~d"
    assert sigv4.canonical_uri("/b/a%7Eb%20c") == "/b/a~b%20c"
    assert sigv4.canonical_uri("/b/a+b") == "/b/a%2Bb"  # '+' in a path is a plus


def test_skew_and_bad_credentials():
    req = sigv4.parse_authorization_header(
        f"AWS4-HMAC-SHA256 Credential={AKID}/20130524/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00",
        "20130524T000000Z", sigv4.UNSIGNED_PAYLOAD)
    with pytest.raises(S3Error) as e:
        sigv4.check_time(req, datetime(2013, 5, 24, 0, 16, tzinfo=timezone.utc))
    assert e.value.code == "RequestTimeTooSkewed"
    with pytest.raises(S3Error) as e:
        sigv4.parse_authorization_header(
            f"AWS4-HMAC-SHA256 Credential={AKID}/20130524/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=00",
            "20130524T000000Z", sigv4.UNSIGNED_PAYLOAD)
    assert e.value.code == "AuthorizationHeaderMalformed"
    with pytest.raises(S3Error) as e:
        sigv4.parse_presigned_query({"X-Amz-Algorithm": "AWS4-HMAC-SHA256", "X-Amz-Credential": f"{AKID}/20130524/us-east-1/s3/aws4_request",
                                     "X-Amz-Date": "20130524T000000Z", "X-Amz-Expires": "604801",
                                     "X-Amz-SignedHeaders": "host", "X-Amz-Signature": "00"})
    assert e.value.code == "AuthorizationQueryParametersError"


def test_sigv2_aws_documented_examples():
    """AWS S3 Developer Guide, "Signing and Authenticating REST Requests" examples."""
    from gateway.s3 import sigv2

    get = sigv2.string_to_sign("GET", {}, "Tue, 27 Mar 2007 19:36:42 +0000",
                               sigv2.canonical_resource("/photos/puppy.jpg", "johnsmith", []))
    assert sigv2.sign(SECRET, get) == "bWq2s1WEIj+Ydj0vQ697zp+IXMU="
    put = sigv2.string_to_sign("PUT", {"content-type": ["image/jpeg"]}, "Tue, 27 Mar 2007 21:15:45 +0000",
                               sigv2.canonical_resource("/johnsmith/photos/puppy.jpg", None, []))
    assert sigv2.sign(SECRET, put) == "MyyxeRY7whkBe+bq8fHCL/2kKUg="
    presigned = sigv2.string_to_sign("GET", {}, "1175139620",
                                     sigv2.canonical_resource("/photos/puppy.jpg", "johnsmith", []))
    assert sigv2.sign(SECRET, presigned) == "NpgCjnDzrM+WFzoENXmpNDUsSn8="


def test_sigv2_canonical_parts():
    from gateway.s3 import sigv2

    assert sigv2.canonical_amz_headers({"x-amz-meta-b": ["2"], "x-amz-date": ["d"], "x-amz-meta-a": ["1", " x  y "]}) \
        == "x-amz-date:d\nx-amz-meta-a:1,x y\nx-amz-meta-b:2\n"
    assert sigv2.canonical_resource("/b/k", None, [("uploadId", "u1"), ("partNumber", "3"), ("foo", "bar")]) \
        == "/b/k?partNumber=3&uploadId=u1"
    assert sigv2.canonical_resource("/b", None, [("delete", "")]) == "/b?delete"
