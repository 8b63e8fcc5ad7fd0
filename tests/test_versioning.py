"""Bucket versioning (issue 20) through boto3, on the local engine and on Ceph RADOS: version
ids, overwrites, delete markers, deletes of versions (and what becomes current), the null
version of a suspended bucket, copies and multipart uploads, ListObjectVersions paged against
a model, and large (out-of-line) versions whose data must outlive their overwrite."""

from __future__ import annotations

import hashlib
import os
import random

import botocore.exceptions
import pytest


@pytest.fixture(scope="module")
def engine_kind(both_engines: str) -> str:
    return both_engines


def err(exc: botocore.exceptions.ClientError) -> tuple[int, str]:
    return int(exc.response["ResponseMetadata"]["HTTPStatusCode"]), str(exc.response["Error"]["Code"])


def enable(s3, bucket: str, status: str = "Enabled") -> None:  # type: ignore[no-untyped-def]
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": status})


def versions(s3, bucket: str, **kw: object) -> list[tuple[str, str, bool, bool]]:  # type: ignore[no-untyped-def]
    """(key, version id, latest, delete marker) of every version, merged as S3 orders them: by
    key, newest first (boto3 hands versions and markers over apart; writes here are milliseconds
    apart, which LastModified shows)."""
    got = s3.list_object_versions(Bucket=bucket, **kw)
    rows = [(v["Key"], v["VersionId"], v["IsLatest"], False, v["LastModified"]) for v in got.get("Versions", [])]
    rows += [(m["Key"], m["VersionId"], m["IsLatest"], True, m["LastModified"]) for m in got.get("DeleteMarkers", [])]
    return [r[:4] for r in sorted(rows, key=lambda r: (r[0].encode(), -r[4].timestamp()))]


def test_status_starts_unversioned_and_changes(s3, bucket):
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)
    enable(s3, bucket)
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    enable(s3, bucket, "Suspended")
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Suspended"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Off"})
    assert err(e.value) == (400, "MalformedXML")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled", "MFADelete": "Enabled"})
    assert err(e.value)[0] == 501


def test_unversioned_bucket_has_only_the_null_version(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"one")
    assert s3.get_object(Bucket=bucket, Key="k", VersionId="null")["Body"].read() == b"one"
    assert versions(s3, bucket) == [("k", "null", True, False)]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=bucket, Key="k", VersionId="0" * 32)
    assert err(e.value) == (404, "NoSuchVersion")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=bucket, Key="k", VersionId="not-a-version")
    assert err(e.value) == (400, "InvalidArgument")


@pytest.mark.parametrize("size", [5, 5 * 1024 * 1024 + 1])  # inline, and out of line on both engines
def test_overwrite_keeps_every_version(s3, bucket, size):
    enable(s3, bucket)
    bodies = [os.urandom(size) for _ in range(3)]
    ids = [s3.put_object(Bucket=bucket, Key="k", Body=b)["VersionId"] for b in bodies]
    assert len(set(ids)) == 3 and "null" not in ids
    got = s3.get_object(Bucket=bucket, Key="k")
    assert got["VersionId"] == ids[-1] and got["Body"].read() == bodies[-1]
    for vid, body in zip(ids, bodies, strict=True):
        one = s3.get_object(Bucket=bucket, Key="k", VersionId=vid)
        assert one["VersionId"] == vid and one["Body"].read() == body
        assert one["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
        assert s3.head_object(Bucket=bucket, Key="k", VersionId=vid)["ContentLength"] == size
        part = s3.get_object(Bucket=bucket, Key="k", VersionId=vid, Range="bytes=1-3")["Body"].read()
        assert part == body[1:4]
    assert versions(s3, bucket) == [("k", ids[2], True, False), ("k", ids[1], False, False),
                                    ("k", ids[0], False, False)]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["k"]


def test_delete_marker_hides_and_its_delete_restores(s3, bucket):
    enable(s3, bucket)
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=b"one")["VersionId"]
    gone = s3.delete_object(Bucket=bucket, Key="k")
    assert gone["DeleteMarker"] is True
    marker = gone["VersionId"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=bucket, Key="k")
    assert err(e.value) == (404, "NoSuchKey")
    assert e.value.response["ResponseMetadata"]["HTTPHeaders"]["x-amz-delete-marker"] == "true"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.head_object(Bucket=bucket, Key="k")
    assert err(e.value)[0] == 404
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=bucket, Key="k", VersionId=marker)
    assert err(e.value) == (405, "MethodNotAllowed")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    assert versions(s3, bucket) == [("k", marker, True, True), ("k", v1, False, False)]
    assert s3.get_object(Bucket=bucket, Key="k", VersionId=v1)["Body"].read() == b"one"
    # a second delete adds a second marker
    marker2 = s3.delete_object(Bucket=bucket, Key="k")["VersionId"]
    undone = s3.delete_object(Bucket=bucket, Key="k", VersionId=marker2)
    assert undone["DeleteMarker"] is True and undone["VersionId"] == marker2
    with pytest.raises(botocore.exceptions.ClientError):
        s3.get_object(Bucket=bucket, Key="k")  # the older marker is the newest version now
    s3.delete_object(Bucket=bucket, Key="k", VersionId=marker)
    got = s3.get_object(Bucket=bucket, Key="k")
    assert got["Body"].read() == b"one" and got["VersionId"] == v1
    assert versions(s3, bucket) == [("k", v1, True, False)]


def test_deleting_the_current_version_makes_the_previous_current(s3, bucket):
    enable(s3, bucket)
    big = os.urandom(5 * 1024 * 1024 + 7)
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=big)["VersionId"]
    v2 = s3.put_object(Bucket=bucket, Key="k", Body=b"two")["VersionId"]
    assert s3.delete_object(Bucket=bucket, Key="k", VersionId=v2)["VersionId"] == v2
    got = s3.get_object(Bucket=bucket, Key="k")
    assert got["VersionId"] == v1 and got["Body"].read() == big
    s3.delete_object(Bucket=bucket, Key="k", VersionId=v1)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=bucket, Key="k")
    assert err(e.value) == (404, "NoSuchKey")
    assert versions(s3, bucket) == []
    # deleting a version that is not there: 204, as AWS answers
    s3.delete_object(Bucket=bucket, Key="k", VersionId="0" * 32)


def test_deleting_a_noncurrent_version_leaves_the_current_alone(s3, bucket):
    enable(s3, bucket)
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=b"one")["VersionId"]
    v2 = s3.put_object(Bucket=bucket, Key="k", Body=b"two")["VersionId"]
    s3.delete_object(Bucket=bucket, Key="k", VersionId=v1)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"two"
    assert versions(s3, bucket) == [("k", v2, True, False)]


def test_suspended_writes_the_null_version(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"before")  # made unversioned: the null version
    enable(s3, bucket)
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=b"one")["VersionId"]
    assert s3.get_object(Bucket=bucket, Key="k", VersionId="null")["Body"].read() == b"before"
    enable(s3, bucket, "Suspended")
    put = s3.put_object(Bucket=bucket, Key="k", Body=b"null-1")
    assert put.get("VersionId") in (None, "null")
    s3.put_object(Bucket=bucket, Key="k", Body=b"null-2")  # replaces the null version: no new one
    listed = versions(s3, bucket)
    assert listed == [("k", "null", True, False), ("k", v1, False, False)]
    assert s3.get_object(Bucket=bucket, Key="k", VersionId="null")["Body"].read() == b"null-2"
    gone = s3.delete_object(Bucket=bucket, Key="k")
    assert gone["DeleteMarker"] is True and gone["VersionId"] == "null"
    assert versions(s3, bucket) == [("k", "null", True, True), ("k", v1, False, False)]
    s3.delete_object(Bucket=bucket, Key="k", VersionId="null")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"one"


def test_copy_from_a_version_and_multipart_make_versions(s3, bucket):
    enable(s3, bucket)
    v1 = s3.put_object(Bucket=bucket, Key="src", Body=b"first")["VersionId"]
    s3.put_object(Bucket=bucket, Key="src", Body=b"second")
    copied = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src", "VersionId": v1})
    assert copied["CopySourceVersionId"] == v1 and copied["VersionId"]
    assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == b"first"
    # a copy of a version onto its own key restores it as a new version
    again = s3.copy_object(Bucket=bucket, Key="src", CopySource={"Bucket": bucket, "Key": "src", "VersionId": v1})
    assert s3.get_object(Bucket=bucket, Key="src")["Body"].read() == b"first"
    assert len([v for v in versions(s3, bucket) if v[0] == "src"]) == 3
    up = s3.create_multipart_upload(Bucket=bucket, Key="src")
    part = s3.upload_part_copy(Bucket=bucket, Key="src", UploadId=up["UploadId"], PartNumber=1,
                               CopySource={"Bucket": bucket, "Key": "src", "VersionId": again["VersionId"]})
    done = s3.complete_multipart_upload(Bucket=bucket, Key="src", UploadId=up["UploadId"], MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": part["CopyPartResult"]["ETag"]}]})
    assert done["VersionId"] and done["VersionId"] != again["VersionId"]
    assert s3.get_object(Bucket=bucket, Key="src", VersionId=done["VersionId"])["Body"].read() == b"first"
    assert len([v for v in versions(s3, bucket) if v[0] == "src"]) == 4


def test_sealed_versions_open(s3, bucket):
    enable(s3, bucket)
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=b"secret one", ServerSideEncryption="AES256")["VersionId"]
    s3.put_object(Bucket=bucket, Key="k", Body=b"secret two", ServerSideEncryption="AES256")
    got = s3.get_object(Bucket=bucket, Key="k", VersionId=v1)
    assert got["Body"].read() == b"secret one" and got["ServerSideEncryption"] == "AES256"


def test_delete_objects_with_versions(s3, bucket):
    enable(s3, bucket)
    a1 = s3.put_object(Bucket=bucket, Key="a", Body=b"1")["VersionId"]
    a2 = s3.put_object(Bucket=bucket, Key="a", Body=b"2")["VersionId"]
    s3.put_object(Bucket=bucket, Key="b", Body=b"1")
    out = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "a", "VersionId": a1}, {"Key": "b"}]})
    deleted = {(d["Key"], d.get("VersionId"), d.get("DeleteMarker", False)) for d in out["Deleted"]}
    assert ("a", a1, False) in deleted and ("b", None, True) in deleted
    assert not out.get("Errors")
    assert [v[:2] for v in versions(s3, bucket) if v[0] == "a"] == [("a", a2)]
    with pytest.raises(botocore.exceptions.ClientError):
        s3.get_object(Bucket=bucket, Key="b")


def test_a_bucket_with_versions_is_not_empty(s3, bucket):
    enable(s3, bucket)
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=b"1")["VersionId"]
    marker = s3.delete_object(Bucket=bucket, Key="k")["VersionId"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.delete_bucket(Bucket=bucket)
    assert err(e.value) == (409, "BucketNotEmpty")
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "k", "VersionId": v1},
                                                         {"Key": "k", "VersionId": marker}]})
    s3.delete_bucket(Bucket=bucket)
    s3.create_bucket(Bucket=bucket)  # (the fixture removes it)
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)  # a new bucket starts unversioned


def test_list_object_versions_pages_as_the_model_says(s3, bucket):
    """Random writes and deletes, then every page size with and without a delimiter: the pages
    joined are the model's listing, in S3's order, with IsLatest and markers right."""
    enable(s3, bucket)
    rng = random.Random(20)
    model: dict[str, list[tuple[str, bool]]] = {}  # key -> [(version id, marker)], newest first
    names = ["a", "a/b", "a/c/d", "ab", "b", "c/x", "c/y"]
    for _ in range(40):
        k = rng.choice(names)
        if rng.random() < 0.25:
            model.setdefault(k, []).insert(0, (s3.delete_object(Bucket=bucket, Key=k)["VersionId"], True))
        else:
            model.setdefault(k, []).insert(0, (s3.put_object(Bucket=bucket, Key=k, Body=k.encode())["VersionId"],
                                               False))
    expected = [(k, vid, i == 0, dm) for k in sorted(model) for i, (vid, dm) in enumerate(model[k])]
    for page in (1, 2, 3, 7, 1000):
        seen: list[tuple[str, str, bool, bool]] = []
        kw: dict[str, object] = {"MaxKeys": page}
        while True:
            got = s3.list_object_versions(Bucket=bucket, **kw)
            rows = [(v["Key"], v["VersionId"], v["IsLatest"], False) for v in got.get("Versions", [])]
            rows += [(m["Key"], m["VersionId"], m["IsLatest"], True) for m in got.get("DeleteMarkers", [])]
            assert len(rows) <= page
            order = {(k, vid): n for n, (k, vid, _, _) in enumerate(expected)}
            seen += sorted(rows, key=lambda r: order[(r[0], r[1])])
            if not got["IsTruncated"]:
                break
            kw = {"MaxKeys": page, "KeyMarker": got["NextKeyMarker"], "VersionIdMarker": got["NextVersionIdMarker"]}
        assert seen == expected, page
    for page in (1, 2, 1000):
        keys: list[str] = []
        prefixes: list[str] = []
        kw = {"MaxKeys": page, "Delimiter": "/"}
        while True:
            got = s3.list_object_versions(Bucket=bucket, **kw)
            keys += sorted({v["Key"] for v in got.get("Versions", []) + got.get("DeleteMarkers", [])})
            prefixes += [p["Prefix"] for p in got.get("CommonPrefixes", [])]
            if not got["IsTruncated"]:
                break
            kw = {"MaxKeys": page, "Delimiter": "/", "KeyMarker": got["NextKeyMarker"]}
            if "NextVersionIdMarker" in got:
                kw["VersionIdMarker"] = got["NextVersionIdMarker"]
        assert prefixes == ["a/", "c/"], page
        assert sorted(set(keys)) == sorted(k for k in model if "/" not in k), page
    only = versions(s3, bucket, Prefix="a/")
    assert {r[0] for r in only} == {k for k in model if k.startswith("a/")}
