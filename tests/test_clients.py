"""Real S3 clients against a running gateway: boto3 (SigV2 too), the AWS CLI v2
from Debian, s3cmd (V4 and --signature-v2), rclone, and minio-py."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess

import botocore.exceptions
import pytest
import urllib3

from conftest import client


@pytest.fixture(scope="module")
def engine_kind(both_engines: str) -> str:
    """Every test here runs on the local engine and on Ceph RADOS."""
    return both_engines

AWS = "/usr/bin/aws"  # Debian's AWS CLI v2 (a pip-installed v1 may shadow `aws` on PATH)


def run(cmd: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, **kw)
    assert res.returncode == 0, f"{cmd[:3]} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return res


# ------------------------------------------------------------------ boto3 / SigV2

def test_boto3_signature_v2(gateway, key, bucket):
    s3 = client(gateway.endpoint, key, signature_version="s3")
    body = os.urandom(50_000)
    s3.put_object(Bucket=bucket, Key="v2/a b+c@d", Body=body, Metadata={"dovecot-guid": "x" * 32},
                  ContentType="message/rfc822")
    got = s3.get_object(Bucket=bucket, Key="v2/a b+c@d")
    assert got["Body"].read() == body and got["Metadata"] == {"dovecot-guid": "x" * 32}
    assert [o["Key"] for o in s3.list_objects(Bucket=bucket, Prefix="v2/")["Contents"]] == ["v2/a b+c@d"]
    s3.copy_object(Bucket=bucket, Key="v2/copy", CopySource={"Bucket": bucket, "Key": "v2/a b+c@d"},
                   MetadataDirective="REPLACE", Metadata={"dovecot-guid": "y" * 32})
    assert s3.head_object(Bucket=bucket, Key="v2/copy")["Metadata"] == {"dovecot-guid": "y" * 32}
    uid = s3.create_multipart_upload(Bucket=bucket, Key="v2/mp")["UploadId"]
    e = s3.upload_part(Bucket=bucket, Key="v2/mp", UploadId=uid, PartNumber=1, Body=b"part")["ETag"]
    s3.complete_multipart_upload(Bucket=bucket, Key="v2/mp", UploadId=uid,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e}]})
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "v2/mp"}, {"Key": "v2/copy"}]})
    assert s3.list_objects(Bucket=bucket, Prefix="v2/")["Contents"][0]["Key"] == "v2/a b+c@d"
    bad = client(gateway.endpoint, type(key)(key.access_key, "wrong"), signature_version="s3")
    with pytest.raises(botocore.exceptions.ClientError) as exc:
        bad.get_object(Bucket=bucket, Key="v2/a b+c@d")
    assert exc.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_boto3_presigned_v2_default(gateway, key, bucket):
    s3 = client(gateway.endpoint, key)
    s3.put_object(Bucket=bucket, Key="pre/v2", Body=b"v2 presigned")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "pre/v2"}, ExpiresIn=60)
    assert "Signature=" in url and "AWSAccessKeyId=" in url  # boto3's default presigning is V2
    r = urllib3.PoolManager().request("GET", url, retries=False)
    assert r.status == 200 and r.data == b"v2 presigned"
    expired = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "pre/v2"}, ExpiresIn=-5)
    r = urllib3.PoolManager().request("GET", expired, retries=False)
    assert r.status == 403 and b"expired" in r.data


# ------------------------------------------------------------------ AWS CLI v2

@pytest.fixture
def aws_env(key, tmp_path):  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=key.access_key, AWS_SECRET_ACCESS_KEY=key.secret,
               AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), HOME=str(tmp_path))
    return env


def test_aws_cli_s3_commands(gateway, bucket, aws_env, tmp_path):
    ep = ["--endpoint-url", gateway.endpoint]
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    files = {"a.txt": os.urandom(1000), "sub/b.bin": os.urandom(20 * 1024 * 1024 + 7), "sub/c": b""}
    for name, data in files.items():
        (src / name).write_bytes(data)
    run([AWS, *ep, "s3", "cp", str(src / "a.txt"), f"s3://{bucket}/cli/a.txt"], aws_env)
    run([AWS, *ep, "s3", "cp", str(src / "sub/b.bin"), f"s3://{bucket}/cli/b.bin"], aws_env)  # multipart
    run([AWS, *ep, "s3", "cp", f"s3://{bucket}/cli/b.bin", str(tmp_path / "b.out")], aws_env)
    assert (tmp_path / "b.out").read_bytes() == files["sub/b.bin"]
    listing = run([AWS, *ep, "s3", "ls", f"s3://{bucket}/cli/"], aws_env).stdout
    assert "a.txt" in listing and "b.bin" in listing
    run([AWS, *ep, "s3", "sync", str(src), f"s3://{bucket}/synced/"], aws_env)
    run([AWS, *ep, "s3", "sync", f"s3://{bucket}/synced/", str(tmp_path / "back")], aws_env)
    for name, data in files.items():
        assert (tmp_path / "back" / name).read_bytes() == data
    again = run([AWS, *ep, "s3", "sync", str(src), f"s3://{bucket}/synced/"], aws_env).stdout
    assert "upload:" not in again  # nothing changed: sync compares sizes and times and uploads nothing
    run([AWS, *ep, "s3", "rm", "--recursive", f"s3://{bucket}/synced/"], aws_env)
    assert "synced" not in run([AWS, *ep, "s3", "ls", f"s3://{bucket}/"], aws_env).stdout


def test_aws_cli_s3api_answers_as_aws(gateway, bucket, aws_env, tmp_path):
    """Issue 17 through Debian's AWS CLI (2.9, s3api): a bucket goes with its pending uploads,
    RFC 3986 listing encoding, GET by part number, your own bucket made again, Content-Encoding
    as sent, GetObjectAttributes, tagging, a bucket policy and the owner's ACL."""
    ep = ["--endpoint-url", gateway.endpoint, "--output", "json"]

    def api(*args: str, check: bool = True) -> dict[str, object]:
        res = subprocess.run([AWS, *ep, "s3api", *args], capture_output=True, text=True, timeout=300, env=aws_env)
        if check:
            assert res.returncode == 0, res.stderr[-2000:]
        else:
            assert res.returncode != 0
            return {"error": res.stderr}
        return json.loads(res.stdout) if res.stdout.strip() else {}

    gone = f"{bucket}-gone"
    api("create-bucket", "--bucket", gone)
    api("create-bucket", "--bucket", gone)  # yours already, us-east-1: 200
    api("create-multipart-upload", "--bucket", gone, "--key", "pending")
    api("delete-bucket", "--bucket", gone)  # its pending upload goes with it
    assert "404" in str(api("head-bucket", "--bucket", gone, check=False)["error"])
    body = tmp_path / "body"
    body.write_bytes(b"x" * 100)
    api("put-object", "--bucket", bucket, "--key", "cli exact/a b", "--body", str(body),
        "--content-encoding", "deflate, gzip", "--tagging", "team=mail")
    listed = api("list-objects-v2", "--bucket", bucket, "--prefix", "cli exact/", "--encoding-type", "url")
    assert [o["Key"] for o in listed["Contents"]] == ["cli%20exact/a%20b"]  # type: ignore[index]
    head = api("head-object", "--bucket", bucket, "--key", "cli exact/a b")
    assert head["ContentEncoding"] == "deflate, gzip"
    assert api("get-object-tagging", "--bucket", bucket, "--key", "cli exact/a b")["TagSet"] == [
        {"Key": "team", "Value": "mail"}]
    api("put-object-tagging", "--bucket", bucket, "--key", "cli exact/a b", "--tagging",
        '{"TagSet": [{"Key": "k", "Value": "v"}]}')
    attrs = api("get-object-attributes", "--bucket", bucket, "--key", "cli exact/a b",
                "--object-attributes", "ETag", "ObjectSize", "StorageClass")
    assert attrs["ObjectSize"] == 100 and attrs["StorageClass"] == "STANDARD"
    got = api("get-object", "--bucket", bucket, "--key", "cli exact/a b", "--part-number", "1", str(tmp_path / "p1"))
    assert got["ContentLength"] == 100 and (tmp_path / "p1").read_bytes() == b"x" * 100
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:DeleteObject",
                                                      "Resource": f"arn:aws:s3:::{bucket}/cli exact/*"}]}
    api("put-bucket-policy", "--bucket", bucket, "--policy", json.dumps(policy))
    assert json.loads(api("get-bucket-policy", "--bucket", bucket)["Policy"]) == policy  # type: ignore[arg-type]
    assert "AccessDenied" in str(api("delete-object", "--bucket", bucket, "--key", "cli exact/a b",
                                     check=False)["error"])  # an explicit Deny beats the administrator
    api("delete-bucket-policy", "--bucket", bucket)
    api("delete-object", "--bucket", bucket, "--key", "cli exact/a b")
    # a checksum through GetObjectAttributes (Debian's CLI 2.9 predates conditional writes: boto3 tests them)
    api("put-object", "--bucket", bucket, "--key", "cli-once", "--body", str(body), "--checksum-algorithm", "SHA256")
    sums = api("get-object-attributes", "--bucket", bucket, "--key", "cli-once", "--object-attributes", "Checksum")
    assert sums["Checksum"]["ChecksumSHA256"] == base64.b64encode(  # type: ignore[index]
        hashlib.sha256(b"x" * 100).digest()).decode()
    owner = api("get-bucket-acl", "--bucket", bucket)["Owner"]
    assert len(owner["ID"]) == 64  # type: ignore[index]  # the account's canonical id
    assert "AccessControlListNotSupported" in str(api("put-object", "--bucket", bucket, "--key", "acl", "--acl",
                                                      "public-read", check=False)["error"])


def test_aws_cli_s3api_multipart_and_copy(gateway, bucket, aws_env, tmp_path):
    ep = ["--endpoint-url", gateway.endpoint, "--output", "json"]
    part = tmp_path / "part"
    part.write_bytes(os.urandom(5 * 1024 * 1024))
    tail = tmp_path / "tail"
    tail.write_bytes(b"the end")
    uid = json.loads(run([AWS, *ep, "s3api", "create-multipart-upload", "--bucket", bucket, "--key", "api/mp"],
                         aws_env).stdout)["UploadId"]
    etags = []
    for n, f in ((1, part), (2, tail)):
        out = run([AWS, *ep, "s3api", "upload-part", "--bucket", bucket, "--key", "api/mp", "--upload-id", uid,
                   "--part-number", str(n), "--body", str(f)], aws_env).stdout
        etags.append(json.loads(out)["ETag"])
    listed = json.loads(run([AWS, *ep, "s3api", "list-parts", "--bucket", bucket, "--key", "api/mp",
                             "--upload-id", uid], aws_env).stdout)
    assert [p["PartNumber"] for p in listed["Parts"]] == [1, 2]
    (tmp_path / "mpu.json").write_text(json.dumps(
        {"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]}))
    run([AWS, *ep, "s3api", "complete-multipart-upload", "--bucket", bucket, "--key", "api/mp", "--upload-id", uid,
         "--multipart-upload", f"file://{tmp_path / 'mpu.json'}"], aws_env)
    run([AWS, *ep, "s3api", "copy-object", "--bucket", bucket, "--key", "api/copy", "--copy-source",
         f"{bucket}/api/mp", "--metadata-directive", "REPLACE", "--metadata", "dovecot-fname=x"], aws_env)
    head = json.loads(run([AWS, *ep, "s3api", "head-object", "--bucket", bucket, "--key", "api/copy"],
                          aws_env).stdout)
    assert head["ContentLength"] == part.stat().st_size + 7 and head["Metadata"] == {"dovecot-fname": "x"}
    run([AWS, *ep, "s3api", "get-object", "--bucket", bucket, "--key", "api/copy", str(tmp_path / "got")], aws_env)
    assert (tmp_path / "got").read_bytes() == part.read_bytes() + b"the end"


# ------------------------------------------------------------------ s3cmd

@pytest.mark.parametrize("v2", [False, True], ids=["sigv4", "sigv2"])
def test_s3cmd(gateway, key, bucket, tmp_path, v2):
    hostport = gateway.endpoint.split("//", 1)[1]
    cfg = tmp_path / "s3cfg"
    cfg.write_text(f"[default]\naccess_key = {key.access_key}\nsecret_key = {key.secret}\nhost_base = {hostport}\n"
                   f"host_bucket = {hostport}\nuse_https = False\nbucket_location = us-east-1\n"
                   f"signature_v2 = {v2}\n")
    s3cmd = ["s3cmd", "-c", str(cfg)] + (["--signature-v2"] if v2 else [])
    tag = "v2" if v2 else "v4"
    data = tmp_path / "mail.eml"
    data.write_bytes(os.urandom(30_000))
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(17 * 1024 * 1024))  # s3cmd uploads multipart from 15 MiB
    run([*s3cmd, "put", str(data), f"s3://{bucket}/s3cmd-{tag}/mail.eml"])
    run([*s3cmd, "put", str(big), f"s3://{bucket}/s3cmd-{tag}/big.bin"])
    run([*s3cmd, "get", f"s3://{bucket}/s3cmd-{tag}/big.bin", str(tmp_path / "big.out")])
    assert (tmp_path / "big.out").read_bytes() == big.read_bytes()
    ls = run([*s3cmd, "ls", f"s3://{bucket}/s3cmd-{tag}/"]).stdout
    assert "mail.eml" in ls and "big.bin" in ls
    info = run([*s3cmd, "info", f"s3://{bucket}/s3cmd-{tag}/mail.eml"]).stdout
    assert "30000" in info
    sync_dir = tmp_path / "dir"
    sync_dir.mkdir()
    (sync_dir / "x").write_bytes(b"xx")
    run([*s3cmd, "sync", str(sync_dir) + "/", f"s3://{bucket}/s3cmd-{tag}/dir/"])
    run([*s3cmd, "del", "--recursive", "--force", f"s3://{bucket}/s3cmd-{tag}/"])
    assert run([*s3cmd, "ls", f"s3://{bucket}/s3cmd-{tag}/"]).stdout.strip() == ""
    run([*s3cmd, "mb", f"s3://s3cmd-{tag}-made"])
    run([*s3cmd, "rb", f"s3://s3cmd-{tag}-made"])


# ------------------------------------------------------------------ rclone

def test_rclone(gateway, key, bucket, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # else LoadCustomCABundleError
    env.update(RCLONE_CONFIG_MS_TYPE="s3", RCLONE_CONFIG_MS_PROVIDER="Other",
               RCLONE_CONFIG_MS_ACCESS_KEY_ID=key.access_key, RCLONE_CONFIG_MS_SECRET_ACCESS_KEY=key.secret,
               RCLONE_CONFIG_MS_ENDPOINT=gateway.endpoint, RCLONE_CONFIG_MS_REGION="us-east-1",
               RCLONE_CONFIG_MS_FORCE_PATH_STYLE="true", RCLONE_CONFIG=str(tmp_path / "rclone.conf"))
    src = tmp_path / "maildir"
    for i in range(40):
        d = src / f"box{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"m{i}.eml").write_bytes(os.urandom(500 + i * 100))
    (src / "large.bin").write_bytes(os.urandom(12 * 1024 * 1024))
    remote = f"ms:{bucket}/rclone"
    run(["rclone", "copy", str(src), remote, "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M"], env)
    run(["rclone", "check", str(src), remote], env)  # sizes and MD5 hashes
    (src / "box0" / "m0.eml").unlink()
    (src / "box1" / "new.eml").write_bytes(b"new mail")
    run(["rclone", "sync", str(src), remote], env)
    run(["rclone", "check", str(src), remote], env)
    listed = set(run(["rclone", "lsf", "-R", "--files-only", remote], env).stdout.split())
    assert "box1/new.eml" in listed and "box0/m0.eml" not in listed
    run(["rclone", "copy", remote, str(tmp_path / "back")], env)
    run(["rclone", "check", str(src), str(tmp_path / "back")], env)
    run(["rclone", "delete", remote], env)
    assert run(["rclone", "lsf", "-R", remote], env).stdout.strip() == ""


# ------------------------------------------------------------------ minio-py

def test_minio_py(gateway, key, tmp_path):
    import io

    from minio import Minio
    from minio.commonconfig import REPLACE, CopySource

    mc = Minio(gateway.endpoint.split("//", 1)[1], access_key=key.access_key, secret_key=key.secret,
               secure=False, region="us-east-1")
    mc.make_bucket("minio-py")
    assert mc.bucket_exists("minio-py")
    data = os.urandom(100_000)
    mc.put_object("minio-py", "a/obj", io.BytesIO(data), len(data), metadata={"x-amz-meta-dovecot-guid": "g"})
    assert mc.get_object("minio-py", "a/obj").read() == data
    st = mc.stat_object("minio-py", "a/obj")
    assert st.size == len(data) and st.metadata["x-amz-meta-dovecot-guid"] == "g"
    mc.copy_object("minio-py", "a/copy", CopySource("minio-py", "a/obj"), metadata={"x-amz-meta-k": "v"},
                   metadata_directive=REPLACE)
    big = tmp_path / "big"
    big.write_bytes(os.urandom(11 * 1024 * 1024))
    mc.fput_object("minio-py", "a/big", str(big), part_size=5 * 1024 * 1024)  # multipart
    mc.fget_object("minio-py", "a/big", str(tmp_path / "big.out"))
    assert (tmp_path / "big.out").read_bytes() == big.read_bytes()
    assert sorted(o.object_name for o in mc.list_objects("minio-py", prefix="a/", recursive=True)) == \
        ["a/big", "a/copy", "a/obj"]
    errors = list(mc.remove_objects("minio-py", [__import__("minio.deleteobjects").deleteobjects.DeleteObject(n)
                                                 for n in ("a/big", "a/copy", "a/obj")]))
    assert not errors
    mc.remove_bucket("minio-py")
