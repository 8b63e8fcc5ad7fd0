"""S3 answers as AWS documents them (issue 17), for the wrong answers a public S3 conformance
suite found, on both engines. Each test names the AWS page it follows."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from email.header import decode_header, make_header

import botocore.exceptions
import pytest
import urllib3

from conftest import client, engine_key
from test_bad_input import error_code, request, signed
from test_s3_boto3 import code, status

MIB = 1 << 20


@pytest.fixture(scope="module")
def engine_kind(both_engines: str) -> str:
    return both_engines


def fails(call, *args, **kwargs) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call(*args, **kwargs)
    return status(e.value), code(e.value)


def put(gateway, key, path: str):  # type: ignore[no-untyped-def]
    return request(gateway, "PUT", path, headers=signed(gateway, key, "PUT", path))


def upload(s3, bucket: str, key: str, parts: list[bytes]) -> tuple[str, list[dict[str, object]]]:  # type: ignore[no-untyped-def]
    uid = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done = [{"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=n,
                                                      Body=body)["ETag"]}
            for n, body in enumerate(parts, 1)]
    return uid, done


# ---------------------------------------------------------------- 1. DeleteBucket

def test_a_bucket_goes_with_its_pending_uploads(s3):
    """API Reference, DeleteBucket: "All objects (including all object versions and delete
    markers) in the bucket must be deleted before the bucket itself can be deleted" - objects,
    not multipart uploads in progress, which go with the bucket."""
    name = f"pending-{os.getpid()}"
    s3.create_bucket(Bucket=name)
    uid, _ = upload(s3, name, "half", [b"x" * 100])
    s3.create_multipart_upload(Bucket=name, Key="other")
    s3.delete_bucket(Bucket=name)
    assert fails(s3.head_bucket, Bucket=name)[0] == 404
    s3.create_bucket(Bucket=name)  # made again: nothing of the old uploads shows
    assert s3.list_multipart_uploads(Bucket=name).get("Uploads", []) == []
    assert fails(s3.list_parts, Bucket=name, Key="half", UploadId=uid) == (404, "NoSuchUpload")
    s3.put_object(Bucket=name, Key="obj", Body=b"1")
    assert fails(s3.delete_bucket, Bucket=name) == (409, "BucketNotEmpty")  # objects still keep it
    s3.delete_object(Bucket=name, Key="obj")
    s3.delete_bucket(Bucket=name)


# ---------------------------------------------------------------- 2. conditional writes

def test_conditional_puts(s3, bucket):
    """User Guide, "How to prevent object overwrites with conditional writes"; API Reference,
    PutObject: If-Match ("*" or an ETag) writes only over an existing object, 404 NoSuchKey
    when there is none, 412 on another ETag; If-None-Match "*" only where there is none."""
    assert fails(s3.put_object, Bucket=bucket, Key="c", Body=b"0", IfMatch="*") == (404, "NoSuchKey")
    assert fails(s3.put_object, Bucket=bucket, Key="c", Body=b"0", IfMatch='"abc"') == (404, "NoSuchKey")
    first = s3.put_object(Bucket=bucket, Key="c", Body=b"1", IfNoneMatch="*")["ETag"]
    assert fails(s3.put_object, Bucket=bucket, Key="c", Body=b"2", IfNoneMatch="*") == (412, "PreconditionFailed")
    second = s3.put_object(Bucket=bucket, Key="c", Body=b"2", IfMatch="*")["ETag"]  # exists: written
    assert fails(s3.put_object, Bucket=bucket, Key="c", Body=b"3", IfMatch=first) == (412, "PreconditionFailed")
    s3.put_object(Bucket=bucket, Key="c", Body=b"3", IfMatch=second)
    assert s3.get_object(Bucket=bucket, Key="c")["Body"].read() == b"3"


def test_if_none_match_with_an_etag(s3, bucket):
    """If-None-Match with ETags (as the conformance suite sends it): written unless the current
    object has one of them."""
    etag = s3.put_object(Bucket=bucket, Key="n", Body=b"1")["ETag"]
    assert fails(s3.put_object, Bucket=bucket, Key="n", Body=b"2", IfNoneMatch=etag) == (412, "PreconditionFailed")
    s3.put_object(Bucket=bucket, Key="n", Body=b"2", IfNoneMatch='"0123456789abcdef0123456789abcdef"')
    s3.put_object(Bucket=bucket, Key="new", Body=b"1", IfNoneMatch=etag)  # absent: written
    assert s3.get_object(Bucket=bucket, Key="n")["Body"].read() == b"2"


def test_conditional_complete_multipart_upload(s3, bucket):
    """API Reference, CompleteMultipartUpload: If-None-Match and If-Match on the object it makes."""
    s3.put_object(Bucket=bucket, Key="mp", Body=b"there")
    uid, parts = upload(s3, bucket, "mp", [b"a" * 10])
    assert fails(s3.complete_multipart_upload, Bucket=bucket, Key="mp", UploadId=uid, IfNoneMatch="*",
                 MultipartUpload={"Parts": parts}) == (412, "PreconditionFailed")
    assert fails(s3.complete_multipart_upload, Bucket=bucket, Key="mp", UploadId=uid, IfMatch='"0000"',
                 MultipartUpload={"Parts": parts}) == (412, "PreconditionFailed")
    etag = s3.head_object(Bucket=bucket, Key="mp")["ETag"]
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid, IfMatch=etag,
                                 MultipartUpload={"Parts": parts})
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == b"a" * 10
    uid, parts = upload(s3, bucket, "mp-new", [b"b" * 10])
    assert fails(s3.complete_multipart_upload, Bucket=bucket, Key="mp-new", UploadId=uid, IfMatch="*",
                 MultipartUpload={"Parts": parts}) == (404, "NoSuchKey")
    s3.complete_multipart_upload(Bucket=bucket, Key="mp-new", UploadId=uid, IfNoneMatch="*",
                                 MultipartUpload={"Parts": parts})


def test_conditional_deletes(gateway, key, s3, bucket):
    """API Reference, DeleteObject: If-Match, x-amz-if-match-size and
    x-amz-if-match-last-modified-time; a condition that fails is 412 and deletes nothing."""
    etag = s3.put_object(Bucket=bucket, Key="d", Body=b"12345")["ETag"]
    assert fails(s3.delete_object, Bucket=bucket, Key="d", IfMatch='"0000"') == (412, "PreconditionFailed")
    assert fails(s3.delete_object, Bucket=bucket, Key="gone", IfMatch=etag) == (404, "NoSuchKey")
    for headers in ({"x-amz-if-match-size": "4"},
                    {"x-amz-if-match-last-modified-time": "Thu, 01 Jan 2015 00:00:00 GMT"}):
        r = request(gateway, "DELETE", f"/{bucket}/d", headers=signed(gateway, key, "DELETE", f"/{bucket}/d",
                                                                       headers=headers))
        assert (r.status, error_code(r)) == (412, "PreconditionFailed")
    head = s3.head_object(Bucket=bucket, Key="d")
    when = head["LastModified"].strftime("%a, %d %b %Y %H:%M:%S GMT")
    headers = {"x-amz-if-match-size": "5", "x-amz-if-match-last-modified-time": when, "If-Match": etag}
    r = request(gateway, "DELETE", f"/{bucket}/d", headers=signed(gateway, key, "DELETE", f"/{bucket}/d",
                                                                   headers=headers))
    assert r.status == 204
    assert fails(s3.head_object, Bucket=bucket, Key="d")[0] == 404


def test_delete_objects_with_conditions(s3, bucket):
    """API Reference, DeleteObjects: an Object's ETag, Size and LastModifiedTime are conditions
    on that key alone; one that fails is that key's PreconditionFailed."""
    tags = {k: s3.put_object(Bucket=bucket, Key=k, Body=k.encode())["ETag"] for k in ("a", "bb", "ccc", "dddd")}
    mtime = s3.head_object(Bucket=bucket, Key="dddd")["LastModified"]
    got = s3.delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": "a", "ETag": tags["a"]}, {"Key": "bb", "ETag": tags["a"]}, {"Key": "ccc", "Size": 2},
        {"Key": "dddd", "Size": 4, "LastModifiedTime": mtime}]})
    assert sorted(d["Key"] for d in got["Deleted"]) == ["a", "dddd"]
    assert sorted((e["Key"], e["Code"]) for e in got["Errors"]) == [("bb", "PreconditionFailed"),
                                                                    ("ccc", "PreconditionFailed")]
    left = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert left == ["bb", "ccc"]


def test_one_of_two_concurrent_conditional_writes_wins(s3, bucket):
    def put(i: int) -> bool:
        try:
            s3.put_object(Bucket=bucket, Key="race", Body=str(i).encode(), IfNoneMatch="*")
            return True
        except botocore.exceptions.ClientError as exc:
            assert code(exc) in ("PreconditionFailed", "ConditionalRequestConflict")
            return False
    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(put, range(8))) == 1


# ---------------------------------------------------------------- 3. listings

def test_url_encoded_listings_follow_rfc_3986(gateway, key, s3, bucket):
    """API Reference, ListObjectsV2: EncodingType=url encodes Key, Prefix, Delimiter, StartAfter
    and CommonPrefixes; a space is %20 (RFC 3986), never "+"."""
    for k in ("a b/c+d", "a b/e f", "a b/x", "plain"):
        s3.put_object(Bucket=bucket, Key=k, Body=b"1")
    r = s3.list_objects_v2(Bucket=bucket, Prefix="a b/", Delimiter=" ", StartAfter="a b/c", EncodingType="url")
    assert [o["Key"] for o in r["Contents"]] == ["a%20b/c%2Bd", "a%20b/x"]
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["a%20b/e%20"]
    assert (r["Prefix"], r["Delimiter"], r["StartAfter"]) == ("a%20b/", "%20", "a%20b/c")
    # botocore asks ListObjects (V1) for url encoding unasked and decodes all but Prefix
    r = s3.list_objects(Bucket=bucket, Prefix="a b/", Delimiter="/")
    assert r["Prefix"] == "a b/" and [o["Key"] for o in r["Contents"]] == ["a b/c+d", "a b/e f", "a b/x"]


def test_an_empty_delimiter_is_not_echoed(gateway, key, bucket):
    raw = signed(gateway, key, "GET", f"/{bucket}", query=[("delimiter", ""), ("list-type", "2")])
    r = request(gateway, "GET", f"/{bucket}", query=[("delimiter", ""), ("list-type", "2")], headers=raw)
    assert r.status == 200 and b"<Delimiter" not in r.data


def test_list_buckets_pages_and_prefixes(gateway, key, s3):
    """API Reference, ListBuckets: max-buckets, continuation-token, prefix and bucket-region."""
    stem = f"lb{os.getpid()}-"
    names = [f"{stem}{i}" for i in range(5)]
    for n in names:
        s3.create_bucket(Bucket=n)
    seen: list[str] = []
    token = None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        page = s3.list_buckets(Prefix=stem, MaxBuckets=2, **kw)
        assert page["Prefix"] == stem and len(page["Buckets"]) <= 2
        assert all(b["BucketRegion"] == "us-east-1" for b in page["Buckets"])
        seen += [b["Name"] for b in page["Buckets"]]
        token = page.get("ContinuationToken")
        if not token:
            break
    assert seen == names
    assert s3.list_buckets(Prefix=stem, BucketRegion="eu-west-1")["Buckets"] == []
    r = request(gateway, "GET", "/", query=[("max-buckets", "0")],
                headers=signed(gateway, key, "GET", "/", query=[("max-buckets", "0")]))
    assert (r.status, error_code(r)) == (400, "InvalidArgument")
    for n in names:
        s3.delete_bucket(Bucket=n)


# ---------------------------------------------------------------- 4. multipart

def test_a_repeated_complete_answers_the_same(s3, bucket):
    """API Reference, CompleteMultipartUpload: a retried completion gets the first one's result."""
    uid, parts = upload(s3, bucket, "again", [b"x" * (5 * MIB), b"y" * 10])
    first = s3.complete_multipart_upload(Bucket=bucket, Key="again", UploadId=uid, MultipartUpload={"Parts": parts})
    second = s3.complete_multipart_upload(Bucket=bucket, Key="again", UploadId=uid, MultipartUpload={"Parts": parts})
    assert second["ETag"] == first["ETag"] and second["Key"] == "again"
    s3.put_object(Bucket=bucket, Key="again", Body=b"overwritten")  # no longer that completion's object
    assert fails(s3.complete_multipart_upload, Bucket=bucket, Key="again", UploadId=uid,
                 MultipartUpload={"Parts": parts}) == (404, "NoSuchUpload")


def test_a_part_named_twice_is_one_part(s3, bucket):
    uid, parts = upload(s3, bucket, "dup", [b"x" * (5 * MIB), b"tail"])
    s3.complete_multipart_upload(Bucket=bucket, Key="dup", UploadId=uid,
                                 MultipartUpload={"Parts": [parts[0], parts[0], parts[1]]})
    assert s3.head_object(Bucket=bucket, Key="dup")["ContentLength"] == 5 * MIB + 4
    uid, parts = upload(s3, bucket, "order", [b"x" * (5 * MIB), b"tail"])
    assert fails(s3.complete_multipart_upload, Bucket=bucket, Key="order", UploadId=uid,
                 MultipartUpload={"Parts": [parts[1], parts[0]]}) == (400, "InvalidPartOrder")


def test_upload_part_copy_past_the_end_is_an_invalid_range(s3, bucket):
    """API Reference, UploadPartCopy: x-amz-copy-source-range must lie within the source."""
    s3.put_object(Bucket=bucket, Key="src", Body=b"0123456789")
    uid = s3.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]
    src = {"Bucket": bucket, "Key": "src"}
    assert fails(s3.upload_part_copy, Bucket=bucket, Key="dst", UploadId=uid, PartNumber=1, CopySource=src,
                 CopySourceRange="bytes=0-21") == (416, "InvalidRange")
    assert fails(s3.upload_part_copy, Bucket=bucket, Key="dst", UploadId=uid, PartNumber=1, CopySource=src,
                 CopySourceRange="bytes=5-2")[1] == "InvalidArgument"
    part = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=1, CopySource=src,
                               CopySourceRange="bytes=2-5")
    s3.complete_multipart_upload(Bucket=bucket, Key="dst", UploadId=uid, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": part["CopyPartResult"]["ETag"]}]})
    assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == b"2345"


def test_get_and_head_by_part_number(s3, bucket):
    """API Reference, GetObject/HeadObject: partNumber reads that part (206, x-amz-mp-parts-count);
    an object not uploaded in parts is its own part 1."""
    bodies = [os.urandom(5 * MIB), os.urandom(5 * MIB), b"last part"]
    uid, parts = upload(s3, bucket, "parts", bodies)
    etag = s3.complete_multipart_upload(Bucket=bucket, Key="parts", UploadId=uid,
                                        MultipartUpload={"Parts": parts})["ETag"]
    for n, body in enumerate(bodies, 1):
        got = s3.get_object(Bucket=bucket, Key="parts", PartNumber=n)
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206 and got["PartsCount"] == 3
        assert got["ETag"] == etag and got["Body"].read() == body
        head = s3.head_object(Bucket=bucket, Key="parts", PartNumber=n)
        assert head["ContentLength"] == len(body) and head["PartsCount"] == 3
    assert "PartsCount" not in s3.head_object(Bucket=bucket, Key="parts")
    assert fails(s3.get_object, Bucket=bucket, Key="parts", PartNumber=4) == (400, "InvalidPart")
    assert fails(s3.get_object, Bucket=bucket, Key="parts", PartNumber=1, Range="bytes=0-1")[1] == "InvalidRequest"
    s3.put_object(Bucket=bucket, Key="single", Body=b"body")
    assert s3.get_object(Bucket=bucket, Key="single", PartNumber=1)["Body"].read() == b"body"
    assert fails(s3.get_object, Bucket=bucket, Key="single", PartNumber=2) == (400, "InvalidPart")


def test_get_object_attributes(s3, bucket):
    """API Reference, GetObjectAttributes: ETag (unquoted), Checksum, ObjectParts (paged),
    StorageClass and ObjectSize, as asked; no body."""
    body = b"attributes"
    s3.put_object(Bucket=bucket, Key="one", Body=body, ChecksumAlgorithm="SHA256")
    got = s3.get_object_attributes(Bucket=bucket, Key="one",
                                   ObjectAttributes=["ETag", "Checksum", "StorageClass", "ObjectSize"])
    assert got["ETag"] == hashlib.md5(body).hexdigest() and got["ObjectSize"] == len(body)
    assert got["StorageClass"] == "STANDARD"
    assert got["Checksum"]["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()
    assert "ObjectParts" not in got and "LastModified" in got
    sizes = [5 * MIB, 5 * MIB, 123]
    uid, parts = upload(s3, bucket, "parts", [os.urandom(n) for n in sizes])
    s3.complete_multipart_upload(Bucket=bucket, Key="parts", UploadId=uid, MultipartUpload={"Parts": parts})
    first = s3.get_object_attributes(Bucket=bucket, Key="parts", ObjectAttributes=["ObjectParts"], MaxParts=2)
    op = first["ObjectParts"]
    assert op["TotalPartsCount"] == 3 and op["IsTruncated"] and op["NextPartNumberMarker"] == 2
    assert [(p["PartNumber"], p["Size"]) for p in op["Parts"]] == [(1, sizes[0]), (2, sizes[1])]
    rest = s3.get_object_attributes(Bucket=bucket, Key="parts", ObjectAttributes=["ObjectParts"],
                                    PartNumberMarker=2)["ObjectParts"]
    assert [(p["PartNumber"], p["Size"]) for p in rest["Parts"]] == [(3, 123)] and not rest["IsTruncated"]
    assert fails(s3.get_object_attributes, Bucket=bucket, Key="missing", ObjectAttributes=["ETag"])[0] == 404


def test_multipart_checksums_composite_and_full_object(s3, bucket):
    """User Guide, "Checking object integrity": a multipart upload made with a checksum algorithm
    checks every part's, and the object's is COMPOSITE (the checksum of the parts' checksums,
    "-N") or FULL_OBJECT (the CRC of the whole body, the parts' CRCs combined)."""
    bodies = [os.urandom(5 * MIB), os.urandom(1234)]
    uid = s3.create_multipart_upload(Bucket=bucket, Key="comp", ChecksumAlgorithm="SHA256")["UploadId"]
    parts = []
    for n, body in enumerate(bodies, 1):
        got = s3.upload_part(Bucket=bucket, Key="comp", UploadId=uid, PartNumber=n, Body=body,
                             ChecksumAlgorithm="SHA256")
        assert got["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()
        parts.append({"PartNumber": n, "ETag": got["ETag"], "ChecksumSHA256": got["ChecksumSHA256"]})
    bad = [dict(parts[0], ChecksumSHA256=base64.b64encode(b"0" * 32).decode()), parts[1]]
    assert fails(s3.complete_multipart_upload, Bucket=bucket, Key="comp", UploadId=uid,
                 MultipartUpload={"Parts": bad}) == (400, "InvalidPart")
    done = s3.complete_multipart_upload(Bucket=bucket, Key="comp", UploadId=uid, MultipartUpload={"Parts": parts})
    want = base64.b64encode(hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in bodies)).digest()).decode()
    assert done["ChecksumSHA256"] == f"{want}-2" and done["ChecksumType"] == "COMPOSITE"
    head = s3.head_object(Bucket=bucket, Key="comp", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == f"{want}-2" and head["ChecksumType"] == "COMPOSITE"

    uid = s3.create_multipart_upload(Bucket=bucket, Key="full", ChecksumAlgorithm="CRC32",
                                     ChecksumType="FULL_OBJECT")["UploadId"]
    parts = []
    for n, body in enumerate(bodies, 1):
        got = s3.upload_part(Bucket=bucket, Key="full", UploadId=uid, PartNumber=n, Body=body,
                             ChecksumAlgorithm="CRC32")
        parts.append({"PartNumber": n, "ETag": got["ETag"], "ChecksumCRC32": got["ChecksumCRC32"]})
    done = s3.complete_multipart_upload(Bucket=bucket, Key="full", UploadId=uid, MultipartUpload={"Parts": parts})
    whole = b"".join(bodies)
    assert done["ChecksumCRC32"] == base64.b64encode(zlib.crc32(whole).to_bytes(4, "big")).decode()
    assert done["ChecksumType"] == "FULL_OBJECT"
    got = s3.get_object(Bucket=bucket, Key="full", ChecksumMode="ENABLED")  # botocore checks the body
    assert got["Body"].read() == whole and got["ChecksumCRC32"] == done["ChecksumCRC32"]
    attrs = s3.get_object_attributes(Bucket=bucket, Key="full", ObjectAttributes=["Checksum"])
    assert attrs["Checksum"] == {"ChecksumCRC32": done["ChecksumCRC32"], "ChecksumType": "FULL_OBJECT"}

    # UploadPartCopy into an upload with a checksum algorithm: the part's computed on the bytes copied
    uid = s3.create_multipart_upload(Bucket=bucket, Key="by-copy", ChecksumAlgorithm="CRC32")["UploadId"]
    part = s3.upload_part_copy(Bucket=bucket, Key="by-copy", UploadId=uid, PartNumber=1,
                               CopySource={"Bucket": bucket, "Key": "full"}, CopySourceRange="bytes=0-99")
    crc = base64.b64encode(zlib.crc32(whole[:100]).to_bytes(4, "big")).decode()
    assert part["CopyPartResult"]["ChecksumCRC32"] == crc
    done = s3.complete_multipart_upload(Bucket=bucket, Key="by-copy", UploadId=uid, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": part["CopyPartResult"]["ETag"], "ChecksumCRC32": crc}]})
    assert done["ChecksumCRC32"].endswith("-1")
    # CopyObject with a checksum algorithm: the copy's own, on its bytes (a 10 MiB source: streamed)
    copied = s3.copy_object(Bucket=bucket, Key="full-copy", CopySource={"Bucket": bucket, "Key": "full"},
                            ChecksumAlgorithm="SHA256")["CopyObjectResult"]
    assert copied["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(whole).digest()).decode()
    head = s3.head_object(Bucket=bucket, Key="full-copy", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == copied["ChecksumSHA256"]
    s3.put_object(Bucket=bucket, Key="small", Body=b"small body")
    small = s3.copy_object(Bucket=bucket, Key="small-copy", CopySource={"Bucket": bucket, "Key": "small"},
                           ChecksumAlgorithm="CRC32")["CopyObjectResult"]
    assert small["ChecksumCRC32"] == base64.b64encode(zlib.crc32(b"small body").to_bytes(4, "big")).decode()

    uid = s3.create_multipart_upload(Bucket=bucket, Key="strict", ChecksumAlgorithm="SHA1")["UploadId"]
    assert fails(s3.upload_part, Bucket=bucket, Key="strict", UploadId=uid, PartNumber=1, Body=b"x",
                 ChecksumAlgorithm="CRC32")[1] == "InvalidRequest"  # not the upload's algorithm
    assert fails(s3.create_multipart_upload, Bucket=bucket, Key="x", ChecksumAlgorithm="SHA256",
                 ChecksumType="FULL_OBJECT")[1] == "InvalidRequest"


def test_object_and_bucket_tagging(s3, bucket):
    """API Reference, PutObjectTagging / GetObjectTagging / DeleteObjectTagging, x-amz-tagging on
    PutObject, CreateMultipartUpload and CopyObject (x-amz-tagging-directive), and the bucket's."""
    etag = s3.put_object(Bucket=bucket, Key="t", Body=b"tagged", Tagging="team=mail&year=2026")["ETag"]
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == [{"Key": "team", "Value": "mail"},
                                                                      {"Key": "year", "Value": "2026"}]
    assert s3.head_object(Bucket=bucket, Key="t")["ResponseMetadata"]["HTTPHeaders"]["x-amz-tagging-count"] == "2"
    s3.put_object_tagging(Bucket=bucket, Key="t", Tagging={"TagSet": [{"Key": "k", "Value": "v é"}]})
    got = s3.get_object(Bucket=bucket, Key="t")
    assert got["Body"].read() == b"tagged" and got["ETag"] == etag and got["TagCount"] == 1
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == [{"Key": "k", "Value": "v é"}]
    s3.copy_object(Bucket=bucket, Key="copied", CopySource={"Bucket": bucket, "Key": "t"})
    assert s3.get_object_tagging(Bucket=bucket, Key="copied")["TagSet"] == [{"Key": "k", "Value": "v é"}]
    s3.copy_object(Bucket=bucket, Key="retagged", CopySource={"Bucket": bucket, "Key": "t"},
                   TaggingDirective="REPLACE", Tagging="a=b")
    assert s3.get_object_tagging(Bucket=bucket, Key="retagged")["TagSet"] == [{"Key": "a", "Value": "b"}]
    s3.delete_object_tagging(Bucket=bucket, Key="t")
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == []
    assert "TagCount" not in s3.get_object(Bucket=bucket, Key="t")
    too_many = {"TagSet": [{"Key": f"k{i}", "Value": "v"} for i in range(11)]}
    assert fails(s3.put_object_tagging, Bucket=bucket, Key="t", Tagging=too_many)[0] == 400
    for bad in ([{"Key": "aws:x", "Value": "v"}], [{"Key": "a", "Value": "1"}, {"Key": "a", "Value": "2"}],
                [{"Key": "k" * 129, "Value": "v"}]):
        assert fails(s3.put_object_tagging, Bucket=bucket, Key="t", Tagging={"TagSet": bad}) == (400, "InvalidTag")
    assert fails(s3.get_object_tagging, Bucket=bucket, Key="missing")[0] == 404
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp", Tagging="from=upload")["UploadId"]
    part = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=b"x")
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    assert s3.get_object_tagging(Bucket=bucket, Key="mp")["TagSet"] == [{"Key": "from", "Value": "upload"}]
    # the bucket's
    assert fails(s3.get_bucket_tagging, Bucket=bucket) == (404, "NoSuchTagSet")
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": "cost", "Value": "mail"}]})
    assert s3.get_bucket_tagging(Bucket=bucket)["TagSet"] == [{"Key": "cost", "Value": "mail"}]
    s3.delete_bucket_tagging(Bucket=bucket)
    assert fails(s3.get_bucket_tagging, Bucket=bucket) == (404, "NoSuchTagSet")


# ---------------------------------------------------------------- 5. CreateBucket

def test_create_bucket_ownership_and_names(gateway, key, s3, engine_kind, data_dir, request):
    """API Reference, CreateBucket: your own bucket again is 200 in us-east-1. User Guide,
    "General purpose bucket naming rules"."""
    name = f"owned-{os.getpid()}"
    s3.create_bucket(Bucket=name)
    s3.create_bucket(Bucket=name)
    # another key of the same account: the account owns the bucket (another account's key gets
    # 409 BucketAlreadyExists: test_access.py::test_accounts_own_their_buckets)
    client(gateway.endpoint, engine_key(engine_kind, data_dir, request)).create_bucket(Bucket=name)
    s3.delete_bucket(Bucket=name)
    for bad in ("foo.-bar", "foo-.bar", "-foo", "foo-", "fo", "a" * 64, "foo..bar", "Foo", "foo_bar",
                "192.168.5.4", "xn--foo", "sthree-foo", "amzn-s3-demo-foo", "foo-s3alias", "foo--ol-s3",
                "foo.mrap", "foo--x-s3", "foo--table-s3"):
        # raw: botocore takes some of these for other kinds of bucket and signs them otherwise
        r = put(gateway, key, f"/{bad}")
        assert (r.status, error_code(r)) == (400, "InvalidBucketName"), bad
    for good in ("123", "a.b-c", "1.2.3", f"x{'a' * 62}"):
        s3.create_bucket(Bucket=good)
        s3.delete_bucket(Bucket=good)


# ---------------------------------------------------------------- 6. headers and keys

def test_content_encoding_comes_back_as_sent(s3, bucket):
    s3.put_object(Bucket=bucket, Key="enc", Body=b"x", ContentEncoding="deflate, gzip")
    assert s3.head_object(Bucket=bucket, Key="enc")["ContentEncoding"] == "deflate, gzip"


def test_non_ascii_metadata_round_trips(gateway, key, s3, bucket):
    """User Guide, "Working with object metadata": non-ASCII values are stored RFC 2047-decoded
    and returned RFC 2047-encoded, so one sent encoded comes back exactly as sent."""
    encoded = "=?UTF-8?B?" + base64.b64encode("Grüße, 東京".encode()).decode() + "?="
    s3.put_object(Bucket=bucket, Key="m", Body=b"x", Metadata={"note": encoded, "plain": "ascii"})
    got = s3.head_object(Bucket=bucket, Key="m")["Metadata"]
    assert got == {"note": encoded, "plain": "ascii"}
    # raw UTF-8 bytes in the header (what curl or a Go SDK sends): the same text, encoded
    h = signed(gateway, key, "PUT", f"/{bucket}/raw", headers={"x-amz-meta-note": "Grüße"})
    h["x-amz-meta-note"] = "Grüße".encode()  # signed as text, sent as its UTF-8 bytes
    assert request(gateway, "PUT", f"/{bucket}/raw", headers=h).status == 200
    value = s3.head_object(Bucket=bucket, Key="raw")["Metadata"]["note"]
    assert str(make_header(decode_header(value))) == "Grüße"
    # Latin-1 bytes, which is what botocore sends for "é": they are not UTF-8, so the
    # signature (computed over the text's UTF-8) cannot hold; a precise 400, never a 500
    h = signed(gateway, key, "PUT", f"/{bucket}/latin", headers={"x-amz-meta-note": "é"})
    h["x-amz-meta-note"] = "é".encode("latin-1")
    r = request(gateway, "PUT", f"/{bucket}/latin", headers=h)
    assert (r.status, error_code(r)) == (400, "InvalidArgument")


def test_a_key_that_is_not_utf8_is_a_bad_request(gateway, bucket):
    """Found wrong before any signature is checked: the path itself cannot name a key."""
    for method in ("GET", "HEAD", "PUT", "DELETE"):
        r = urllib3.PoolManager().request(method, f"{gateway.endpoint}/{bucket}/bad%FFkey", retries=False)
        assert r.status == 400, method
        if method != "HEAD":
            assert error_code(r) == "InvalidURI"


# ---------------------------------------------------------------- 7. CORS preflight

def test_options_preflight(gateway, bucket):
    """API Reference, "OPTIONS object" (CORS preflight): no Origin is 400; a request no CORS
    rule allows is 403."""
    http = urllib3.PoolManager()
    r = http.request("OPTIONS", f"{gateway.endpoint}/{bucket}/k", retries=False)
    assert r.status == 400 and error_code(r) == "BadRequest"
    r = http.request("OPTIONS", f"{gateway.endpoint}/{bucket}/k", retries=False,
                     headers={"Origin": "https://example.org"})
    assert r.status == 400
    r = http.request("OPTIONS", f"{gateway.endpoint}/{bucket}/k", retries=False,
                     headers={"Origin": "https://example.org", "Access-Control-Request-Method": "GET"})
    assert r.status == 403 and error_code(r) == "AccessForbidden"


def test_last_modified_condition_accepts_iso_times(s3, bucket):
    s3.put_object(Bucket=bucket, Key="t", Body=b"1")
    mtime = s3.head_object(Bucket=bucket, Key="t")["LastModified"]
    assert mtime.tzinfo is not None and mtime <= datetime.now(timezone.utc)
    got = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "t", "LastModifiedTime": mtime}]})
    assert [d["Key"] for d in got.get("Deleted", [])] == ["t"]
