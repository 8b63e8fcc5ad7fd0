"""Object Lock (issue 20) through boto3, on the local engine and on Ceph RADOS: a bucket made
with Object Lock, COMPLIANCE and GOVERNANCE retention and legal holds, refused to the admin key,
to a key without s3:BypassGovernanceRetention, to lifecycle and to `mailstore bucket delete`;
retention extended but never shortened; the bucket's default retention."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta

import botocore.exceptions
import pytest

from conftest import BIN, Key, client, mailstore


@pytest.fixture(scope="module")
def engine_kind(both_engines: str) -> str:
    return both_engines


def err(exc: botocore.exceptions.ClientError) -> tuple[int, str]:
    return int(exc.response["ResponseMetadata"]["HTTPStatusCode"]), str(exc.response["Error"]["Code"])


def refused(call, *args, **kw) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call(*args, **kw)
    return err(e.value)


def later(days: float = 1) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


@pytest.fixture
def locked(s3):  # type: ignore[no-untyped-def]
    """A bucket made with Object Lock. Its versions stay behind (they cannot be deleted)."""
    name = f"lock{os.getpid()}-{time.monotonic_ns() % 10**9}"
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def test_a_locked_bucket_is_versioned_for_good(s3, locked, bucket):
    assert s3.get_bucket_versioning(Bucket=locked)["Status"] == "Enabled"
    conf = s3.get_object_lock_configuration(Bucket=locked)["ObjectLockConfiguration"]
    assert conf["ObjectLockEnabled"] == "Enabled" and "Rule" not in conf
    assert refused(s3.put_bucket_versioning, Bucket=locked,
                   VersioningConfiguration={"Status": "Suspended"}) == (409, "InvalidBucketState")
    # a bucket without it: no configuration, lock headers refused, Object Lock only after versioning
    assert refused(s3.get_object_lock_configuration, Bucket=bucket) == (404, "ObjectLockConfigurationNotFoundError")
    assert refused(s3.put_object, Bucket=bucket, Key="k", Body=b"x", ObjectLockMode="GOVERNANCE",
                   ObjectLockRetainUntilDate=later()) == (400, "InvalidRequest")
    config = {"ObjectLockEnabled": "Enabled"}
    assert refused(s3.put_object_lock_configuration, Bucket=bucket,
                   ObjectLockConfiguration=config) == (409, "InvalidBucketState")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration=config)
    assert s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]["ObjectLockEnabled"] == "Enabled"


def test_compliance_holds_against_the_admin_key(s3, locked):
    until = later()
    put = s3.put_object(Bucket=locked, Key="k", Body=b"kept", ObjectLockMode="COMPLIANCE",
                        ObjectLockRetainUntilDate=until)
    vid = put["VersionId"]
    head = s3.head_object(Bucket=locked, Key="k")
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert abs((head["ObjectLockRetainUntilDate"] - until).total_seconds()) < 1
    assert s3.get_object_retention(Bucket=locked, Key="k")["Retention"]["Mode"] == "COMPLIANCE"
    # the admin key, with and without the bypass: 403
    assert refused(s3.delete_object, Bucket=locked, Key="k", VersionId=vid) == (403, "AccessDenied")
    assert refused(s3.delete_object, Bucket=locked, Key="k", VersionId=vid,
                   BypassGovernanceRetention=True) == (403, "AccessDenied")
    out = s3.delete_objects(Bucket=locked, Delete={"Objects": [{"Key": "k", "VersionId": vid}]},
                            BypassGovernanceRetention=True)
    assert [e["Code"] for e in out["Errors"]] == ["AccessDenied"]
    # shortened or weakened: refused; extended: taken
    assert refused(s3.put_object_retention, Bucket=locked, Key="k", VersionId=vid,
                   Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until - timedelta(hours=1)})[0] == 403
    assert refused(s3.put_object_retention, Bucket=locked, Key="k", VersionId=vid, BypassGovernanceRetention=True,
                   Retention={"Mode": "GOVERNANCE", "RetainUntilDate": later(2)})[0] == 403
    s3.put_object_retention(Bucket=locked, Key="k", VersionId=vid,
                            Retention={"Mode": "COMPLIANCE", "RetainUntilDate": later(2)})
    # a plain DELETE adds a delete marker; the locked version stays readable
    marker = s3.delete_object(Bucket=locked, Key="k")
    assert marker["DeleteMarker"] is True
    assert s3.get_object(Bucket=locked, Key="k", VersionId=vid)["Body"].read() == b"kept"
    # the retention survived its metadata being rewritten, on a noncurrent version
    ret = s3.get_object_retention(Bucket=locked, Key="k", VersionId=vid)["Retention"]
    assert ret["Mode"] == "COMPLIANCE" and ret["RetainUntilDate"] > later(1.5)
    # an admin command cannot take the bucket either
    assert refused(s3.delete_bucket, Bucket=locked) == (409, "BucketNotEmpty")


def test_governance_gives_way_to_the_bypass_only(s3, locked, gateway, key, engine_kind):
    vid = s3.put_object(Bucket=locked, Key="g", Body=b"g", ObjectLockMode="GOVERNANCE",
                        ObjectLockRetainUntilDate=later())["VersionId"]
    assert refused(s3.delete_object, Bucket=locked, Key="g", VersionId=vid) == (403, "AccessDenied")
    # a key whose policy lacks s3:BypassGovernanceRetention: the bypass is not its to ask
    env = dict(os.environ, MAILSTORE_ACCESS_KEY=key.access_key, MAILSTORE_SECRET_KEY=key.secret)
    import subprocess
    made = subprocess.run([str(BIN / "mailstore"), "key", "create", "--endpoint", gateway.endpoint, "--name", "rw",
                           "--preset", f"bucket:{locked}"], capture_output=True, text=True, env=env, check=True)
    d = json.loads(made.stdout)
    limited = client(gateway.endpoint, Key(d["AccessKeyId"], d["SecretAccessKey"]))
    assert refused(limited.delete_object, Bucket=locked, Key="g", VersionId=vid,
                   BypassGovernanceRetention=True)[0] == 403
    assert refused(limited.put_object_retention, Bucket=locked, Key="g", VersionId=vid,
                   Retention={"Mode": "GOVERNANCE", "RetainUntilDate": later(2)})[0] == 403  # no s3:PutObjectRetention
    # shortening needs the bypass; the admin key may give it
    assert refused(s3.put_object_retention, Bucket=locked, Key="g", VersionId=vid,
                   Retention={"Mode": "GOVERNANCE", "RetainUntilDate": later(0.5)})[0] == 403
    s3.put_object_retention(Bucket=locked, Key="g", VersionId=vid, BypassGovernanceRetention=True,
                            Retention={"Mode": "GOVERNANCE", "RetainUntilDate": later(0.5)})
    s3.delete_object(Bucket=locked, Key="g", VersionId=vid, BypassGovernanceRetention=True)
    assert refused(s3.head_object, Bucket=locked, Key="g")[0] == 404


def test_legal_hold_and_expiry(s3, locked):
    vid = s3.put_object(Bucket=locked, Key="h", Body=b"h", ObjectLockLegalHoldStatus="ON")["VersionId"]
    assert s3.get_object_legal_hold(Bucket=locked, Key="h")["LegalHold"]["Status"] == "ON"
    assert s3.head_object(Bucket=locked, Key="h")["ObjectLockLegalHoldStatus"] == "ON"
    assert refused(s3.delete_object, Bucket=locked, Key="h", VersionId=vid,
                   BypassGovernanceRetention=True) == (403, "AccessDenied")
    s3.put_object_legal_hold(Bucket=locked, Key="h", VersionId=vid, LegalHold={"Status": "OFF"})
    s3.delete_object(Bucket=locked, Key="h", VersionId=vid)
    # a retention whose date has passed holds nothing
    short = s3.put_object(Bucket=locked, Key="s", Body=b"s", ObjectLockMode="COMPLIANCE",
                          ObjectLockRetainUntilDate=datetime.now(UTC) + timedelta(seconds=2))["VersionId"]
    assert refused(s3.delete_object, Bucket=locked, Key="s", VersionId=short)[0] == 403
    time.sleep(2.5)
    s3.delete_object(Bucket=locked, Key="s", VersionId=short)


def test_default_retention_and_multipart(s3, locked):
    s3.put_object_lock_configuration(Bucket=locked, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}})
    rule = s3.get_object_lock_configuration(Bucket=locked)["ObjectLockConfiguration"]["Rule"]
    assert rule["DefaultRetention"] == {"Mode": "GOVERNANCE", "Days": 1}
    vid = s3.put_object(Bucket=locked, Key="d", Body=b"d")["VersionId"]
    head = s3.head_object(Bucket=locked, Key="d", VersionId=vid)
    assert head["ObjectLockMode"] == "GOVERNANCE" and head["ObjectLockRetainUntilDate"] > later(0.9)
    up = s3.create_multipart_upload(Bucket=locked, Key="m", ObjectLockMode="COMPLIANCE",
                                    ObjectLockRetainUntilDate=later(3))
    part = s3.upload_part(Bucket=locked, Key="m", UploadId=up["UploadId"], PartNumber=1, Body=b"part")
    done = s3.complete_multipart_upload(Bucket=locked, Key="m", UploadId=up["UploadId"], MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    head = s3.head_object(Bucket=locked, Key="m", VersionId=done["VersionId"])
    assert head["ObjectLockMode"] == "COMPLIANCE" and head["ObjectLockRetainUntilDate"] > later(2.9)
    assert refused(s3.delete_object, Bucket=locked, Key="m", VersionId=done["VersionId"],
                   BypassGovernanceRetention=True)[0] == 403


def test_lifecycle_skips_locked_versions(s3, locked, gateway, key):
    from test_lifecycle import DAY, run_at
    vid = s3.put_object(Bucket=locked, Key="l/k", Body=b"old", ObjectLockMode="COMPLIANCE",
                        ObjectLockRetainUntilDate=later(30))["VersionId"]
    s3.put_object(Bucket=locked, Key="l/k", Body=b"new")
    s3.put_bucket_lifecycle_configuration(Bucket=locked, LifecycleConfiguration={"Rules": [
        {"ID": "h", "Status": "Enabled", "Filter": {"Prefix": "l/"},
         "NoncurrentVersionExpiration": {"NoncurrentDays": 1}}]})
    run_at(gateway.endpoint, key, time.time() + 3 * DAY)
    assert s3.get_object(Bucket=locked, Key="l/k", VersionId=vid)["Body"].read() == b"old"


def test_the_admin_cli_cannot_delete_a_locked_bucket(s3, locked, engine_kind, data_dir):
    s3.put_object(Bucket=locked, Key="c", Body=b"c", ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=later())
    s3.delete_object(Bucket=locked, Key="c")
    if engine_kind == "local":
        out = mailstore("bucket", "delete", "--data-dir", str(data_dir), locked, check=False)
        assert out.returncode != 0 and "BucketNotEmpty" in out.stderr
    assert refused(s3.delete_bucket, Bucket=locked) == (409, "BucketNotEmpty")
    assert [v["Key"] for v in s3.list_object_versions(Bucket=locked).get("Versions", [])] == ["c"]
