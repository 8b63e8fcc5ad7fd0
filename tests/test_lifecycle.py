"""Bucket lifecycle (issue 20): configurations through boto3 as AWS checks them, and passes of
the worker at a test clock (the admin API's `now`), on both engines and with two gateways."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import botocore.exceptions
import pytest

from conftest import BIN, GatewayProcess, client, create_key

DAY = 86400


@pytest.fixture(scope="module")
def engine_kind(both_engines: str) -> str:
    return both_engines


def code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response["Error"]["Code"])


def run_at(endpoint: str, key, when: float) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """One lifecycle pass as at `when`: `mailstore lifecycle run --endpoint --now`."""
    env = dict(os.environ, MAILSTORE_ACCESS_KEY=key.access_key, MAILSTORE_SECRET_KEY=key.secret)
    out = subprocess.run([str(BIN / "mailstore"), "lifecycle", "run", "--endpoint", endpoint, "--now",
                          time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_configuration_is_checked_kept_and_removed(s3, bucket):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_bucket_lifecycle_configuration(Bucket=bucket)
    assert code(e.value) == "NoSuchLifecycleConfiguration"
    rules = [
        {"ID": "old-mail", "Status": "Enabled", "Filter": {"Prefix": "old/"}, "Expiration": {"Days": 30}},
        {"ID": "uploads", "Status": "Enabled", "Filter": {"Prefix": ""},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}},
        {"ID": "tagged", "Status": "Disabled",
         "Filter": {"And": {"Prefix": "t/", "Tags": [{"Key": "tmp", "Value": "1"}], "ObjectSizeGreaterThan": 10}},
         "Expiration": {"Date": "2030-01-01T00:00:00Z"}},
    ]
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
    got = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert [r["ID"] for r in got] == ["old-mail", "uploads", "tagged"]
    assert got[0]["Expiration"] == {"Days": 30} and got[2]["Status"] == "Disabled"
    bad = [
        ([{"ID": "a", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 1}},
          {"ID": "a", "Status": "Enabled", "Filter": {"Prefix": "x"}, "Expiration": {"Days": 1}}], "InvalidArgument"),
        ([{"ID": "z", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 0}}], "InvalidArgument"),
        ([{"ID": "d", "Status": "Enabled", "Filter": {"Prefix": ""},
           "Expiration": {"Date": "2030-01-01T12:00:00Z"}}], "InvalidArgument"),
        ([{"ID": "t", "Status": "Enabled", "Filter": {"Prefix": ""},
           "Transitions": [{"Days": 30, "StorageClass": "GLACIER"}]}], "NotImplemented"),
    ]
    for rule_set, want in bad:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rule_set})
        assert code(e.value) == want, rule_set
    assert [r["ID"] for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]] == \
        ["old-mail", "uploads", "tagged"]  # a refused configuration changes nothing
    s3.delete_bucket_lifecycle(Bucket=bucket)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_bucket_lifecycle_configuration(Bucket=bucket)
    assert code(e.value) == "NoSuchLifecycleConfiguration"


def test_a_pass_expires_what_the_rules_say(gateway, key, s3, bucket):
    for k in ("old/a", "old/b", "keep/c", "t/big", "t/small", "t/untagged"):
        body = b"x" * (100 if k != "t/small" else 5)
        extra = {"Tagging": "tmp=1"} if k in ("t/big", "t/small") else {}
        s3.put_object(Bucket=bucket, Key=k, Body=body, **extra)
    upload = s3.create_multipart_upload(Bucket=bucket, Key="big-upload")["UploadId"]
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "old", "Status": "Enabled", "Filter": {"Prefix": "old/"}, "Expiration": {"Days": 1}},
        {"ID": "tmp", "Status": "Enabled",
         "Filter": {"And": {"Prefix": "t/", "Tags": [{"Key": "tmp", "Value": "1"}], "ObjectSizeGreaterThan": 10}},
         "Expiration": {"Days": 2}},
        {"ID": "keep", "Status": "Disabled", "Filter": {"Prefix": "keep/"}, "Expiration": {"Days": 1}},
        {"ID": "mpu", "Status": "Enabled", "Filter": {"Prefix": ""},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 3}}]})
    now = time.time()
    # x-amz-expiration: when and by which rule (the earliest), on HEAD, GET and PUT
    head = s3.head_object(Bucket=bucket, Key="old/a")
    midnight = (int(head["LastModified"].timestamp() + DAY) // DAY + 1) * DAY
    assert head["Expiration"] == \
        f'expiry-date="{time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(midnight))}", rule-id="old"'
    assert s3.get_object(Bucket=bucket, Key="t/big")["Expiration"].endswith('rule-id="tmp"')
    assert "Expiration" not in s3.head_object(Bucket=bucket, Key="keep/c")  # a disabled rule
    assert "Expiration" not in s3.head_object(Bucket=bucket, Key="t/small")  # too small for the rule
    assert 'rule-id="old"' in s3.put_object(Bucket=bucket, Key="old/z", Body=b"z")["Expiration"]
    s3.delete_object(Bucket=bucket, Key="old/z")

    def keys() -> list[str]:
        return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))

    assert run_at(gateway.endpoint, key, now)["Expired"] == 0  # nothing is due yet
    first = run_at(gateway.endpoint, key, now + 1 * DAY + DAY)  # past the next midnight after one day
    assert keys() == ["keep/c", "t/big", "t/small", "t/untagged"] and first["Errors"] == []
    run_at(gateway.endpoint, key, now + 3 * DAY)
    assert keys() == ["keep/c", "t/small", "t/untagged"]  # tagged and over 10 bytes
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads")  # 3 days after its initiation: not yet
    done = run_at(gateway.endpoint, key, now + 4 * DAY + DAY)
    assert done["AbortedUploads"] >= 1 and not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    with pytest.raises(botocore.exceptions.ClientError):
        s3.list_parts(Bucket=bucket, Key="big-upload", UploadId=upload)
    s3.put_object(Bucket=bucket, Key="old/new", Body=b"fresh")  # written after the pass: a day to live
    run_at(gateway.endpoint, key, time.time())
    assert "old/new" in keys()


def test_two_gateways_one_pass_at_a_time(tmp_path):
    """Two gateways on one data directory: passes started on both at once expire every object
    once, and a pass that finds the lease held says so (409) rather than run beside it."""
    data = tmp_path / "data"
    key = create_key(data)
    a, b = GatewayProcess(data), GatewayProcess(data)
    try:
        s3 = client(a.endpoint, key)
        s3.create_bucket(Bucket="life")
        for i in range(300):
            s3.put_object(Bucket="life", Key=f"x/{i:03d}", Body=b"x")
        s3.put_bucket_lifecycle_configuration(Bucket="life", LifecycleConfiguration={"Rules": [
            {"ID": "all", "Status": "Enabled", "Filter": {"Prefix": "x/"}, "Expiration": {"Days": 1}}]})
        env = dict(os.environ, MAILSTORE_ACCESS_KEY=key.access_key, MAILSTORE_SECRET_KEY=key.secret)
        later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3 * DAY))

        def run(g: GatewayProcess) -> subprocess.CompletedProcess[str]:
            return subprocess.run([str(BIN / "mailstore"), "lifecycle", "run", "--endpoint", g.endpoint, "--now",
                                   later], capture_output=True, text=True, env=env)
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(run, [a, b, a, b]))
        expired = 0
        for r in results:
            if r.returncode == 0:
                expired += json.loads(r.stdout)["Expired"]
            else:
                assert "another gateway" in r.stderr, r.stderr
        assert expired == 300 and any(r.returncode == 0 for r in results)
        assert not s3.list_objects_v2(Bucket="life").get("Contents")
        metrics = "".join(urllib.request.urlopen(g.endpoint + "/metrics").read().decode() for g in (a, b))
        assert "mailstore_lifecycle_expired_total" in metrics
    finally:
        a.stop()
        b.stop()


def test_versioned_bucket_expiry_noncurrent_and_lone_markers(gateway, key, s3, bucket):
    """In a versioned bucket an expiration adds a delete marker and keeps the object; noncurrent
    versions go NoncurrentDays after they stopped being current (the NewerNoncurrentVersions
    newest ones stay); a delete marker left alone is removed."""
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    ids = [s3.put_object(Bucket=bucket, Key="h/k", Body=str(i).encode())["VersionId"] for i in range(4)]
    old = s3.put_object(Bucket=bucket, Key="e/old", Body=b"expire me")["VersionId"]
    lone = s3.put_object(Bucket=bucket, Key="m/lone", Body=b"x")["VersionId"]
    s3.delete_object(Bucket=bucket, Key="m/lone")
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "expire", "Status": "Enabled", "Filter": {"Prefix": "e/"}, "Expiration": {"Days": 1}},
        {"ID": "history", "Status": "Enabled", "Filter": {"Prefix": "h/"},
         "NoncurrentVersionExpiration": {"NoncurrentDays": 2, "NewerNoncurrentVersions": 1}},
        {"ID": "markers", "Status": "Enabled", "Filter": {"Prefix": "m/"},
         "Expiration": {"ExpiredObjectDeleteMarker": True},
         "NoncurrentVersionExpiration": {"NoncurrentDays": 1}}]})
    got = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert got[2]["Expiration"] == {"ExpiredObjectDeleteMarker": True}

    def listed(prefix: str) -> list[tuple[str, bool]]:
        v = s3.list_object_versions(Bucket=bucket, Prefix=prefix)
        return sorted([(x["VersionId"], False) for x in v.get("Versions", [])]
                      + [(x["VersionId"], True) for x in v.get("DeleteMarkers", [])])

    now = time.time()
    run_at(gateway.endpoint, key, now)
    assert len(listed("h/")) == 4 and len(listed("m/")) == 2  # nothing due yet
    run_at(gateway.endpoint, key, now + 2 * DAY)
    with pytest.raises(botocore.exceptions.ClientError):
        s3.get_object(Bucket=bucket, Key="e/old")  # expired: a delete marker is current ...
    assert s3.get_object(Bucket=bucket, Key="e/old", VersionId=old)["Body"].read() == b"expire me"  # ... and it stays
    # m/lone's object has been noncurrent for a day: deleted; its marker is then alone
    assert lone not in [v for v, _ in listed("m/")]
    run_at(gateway.endpoint, key, now + 2 * DAY)
    assert listed("m/") == []
    run_at(gateway.endpoint, key, now + 4 * DAY)
    left = [v for v, _ in listed("h/")]
    assert sorted(left) == sorted([ids[3], ids[2]])  # the current one and the newest noncurrent one
    assert s3.get_object(Bucket=bucket, Key="h/k")["Body"].read() == b"3"
