"""Access control through boto3, with both gateways of a pair: a policy matrix.

Keys: an administrator; "dovecot" (preset bucket:mail); "backup" (read-only:*);
"tenant" (prefix:mail/t1/); "custom" (an explicit Deny beating an Allow).
Each (key, action, resource) is tried through one gateway or the other, and
must be allowed or AccessDenied exactly as the policy says.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import botocore.exceptions
import pytest
import urllib3

from conftest import BIN, GatewayProcess, Key, client, create_key, mailstore

CUSTOM_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": ["arn:aws:s3:::mail", "arn:aws:s3:::mail/*"]},
        {"Effect": "Deny", "Action": ["s3:DeleteObject"], "Resource": "arn:aws:s3:::mail/t1/*"},
        {"Effect": "Deny", "Action": ["s3:PutObjectTagging"], "Resource": "arn:aws:s3:::mail/t2/*"},
    ],
}


def key_from(out: str) -> Key:
    d = json.loads(out)
    return Key(d["AccessKeyId"], d["SecretAccessKey"])


@pytest.fixture(scope="module", params=["local", "rados"])
def pair(tmp_path_factory, request):  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("acl")
    data = base / "data"
    policy_file = base / "custom.json"
    policy_file.write_text(json.dumps(CUSTOM_POLICY))
    limits = (("dovecot", ["--preset", "bucket:mail"]), ("backup", ["--preset", "read-only:*"]),
              ("tenant", ["--preset", "prefix:mail/t1/"]), ("custom", ["--policy", str(policy_file)]))
    if request.param == "rados":
        cluster = request.getfixturevalue("rados_store")
        keys = {"admin": cluster.create_key("admin")}
        for name, args in limits:
            keys[name] = key_from(mailstore("rados", "key-create", name, *args, *cluster.args,
                                            "--master-key", str(cluster.master_key)).stdout)
        a, b = (GatewayProcess(data, engine=cluster.gateway_args()) for _ in range(2))
    else:
        keys = {"admin": create_key(data, "admin")}
        for name, args in limits:
            keys[name] = key_from(mailstore("key", "create", "--data-dir", str(data), "--name", name, *args).stdout)
        a, b = GatewayProcess(data), GatewayProcess(data)
    s3 = client(a.endpoint, keys["admin"])
    for bucket in ("mail", "other"):
        s3.create_bucket(Bucket=bucket)
    for k in ("t1/a", "t2/a", "top"):
        s3.put_object(Bucket="mail", Key=k, Body=b"seed")
    s3.put_object(Bucket="other", Key="x", Body=b"seed")
    yield {"a": a, "b": b, "keys": keys, "data": data, "engine": request.param,
           "store": request.getfixturevalue("rados_store") if request.param == "rados" else None}
    a.stop()
    b.stop()


def _admin_get(pair, path: str):  # type: ignore[no-untyped-def]
    """A GET of the admin API with the operator's key, signed by the test's own SigV4."""
    from test_bad_input import request, signed
    gw = pair["b"]
    r = request(gw, "GET", path, headers=signed(gw, pair["keys"]["admin"], "GET", path))
    assert r.status == 200, r.data
    return json.loads(r.data)


def attempt(fn) -> str:  # type: ignore[no-untyped-def]
    try:
        fn()
        return "ok"
    except botocore.exceptions.ClientError as exc:
        return exc.response["Error"]["Code"]


# (key, operation, bucket, key or prefix, expected)
MATRIX = [
    # GetObject
    ("dovecot", "get", "mail", "t1/a", "ok"), ("dovecot", "get", "other", "x", "AccessDenied"),
    ("backup", "get", "mail", "t2/a", "ok"), ("backup", "get", "other", "x", "ok"),
    ("tenant", "get", "mail", "t1/a", "ok"), ("tenant", "get", "mail", "t2/a", "AccessDenied"),
    ("tenant", "get", "mail", "top", "AccessDenied"),
    # HeadObject (s3:GetObject)
    ("tenant", "head", "mail", "t1/a", "ok"), ("tenant", "head", "mail", "t2/a", "AccessDenied"),
    # PutObject
    ("dovecot", "put", "mail", "new/1", "ok"), ("dovecot", "put", "other", "new/1", "AccessDenied"),
    ("backup", "put", "mail", "new/2", "AccessDenied"),
    ("tenant", "put", "mail", "t1/new", "ok"), ("tenant", "put", "mail", "t2/new", "AccessDenied"),
    ("custom", "put", "mail", "t1/c", "ok"),
    # PutObject with x-amz-tagging also needs s3:PutObjectTagging (API Reference, PutObject)
    ("custom", "put-tagged", "mail", "t1/tagged", "ok"), ("custom", "put", "mail", "t2/untagged", "ok"),
    ("custom", "put-tagged", "mail", "t2/tagged", "AccessDenied"),
    ("tenant", "put-tagged", "mail", "t1/tagged", "ok"), ("dovecot", "put-tagged", "mail", "new/tagged", "ok"),
    # DeleteObject
    ("dovecot", "delete", "mail", "new/1", "ok"), ("backup", "delete", "mail", "t2/a", "AccessDenied"),
    ("tenant", "delete", "mail", "t1/new", "ok"), ("tenant", "delete", "mail", "t2/a", "AccessDenied"),
    ("custom", "delete", "mail", "t1/c", "AccessDenied"),  # explicit Deny wins over s3:*
    # ListBucket, with s3:prefix conditions
    ("dovecot", "list", "mail", "", "ok"), ("dovecot", "list", "other", "", "AccessDenied"),
    ("backup", "list", "other", "", "ok"),
    ("tenant", "list", "mail", "t1/", "ok"), ("tenant", "list", "mail", "t2/", "AccessDenied"),
    ("tenant", "list", "mail", "", "AccessDenied"),
    # CopyObject: read on the source, write on the destination
    ("tenant", "copy", "mail", "t1/a>t1/copy", "ok"), ("tenant", "copy", "mail", "t2/a>t1/copy2", "AccessDenied"),
    ("tenant", "copy", "mail", "t1/a>t2/copy", "AccessDenied"),
    ("backup", "copy", "mail", "t1/a>t1/copy3", "AccessDenied"),
    # Multipart
    ("tenant", "multipart", "mail", "t1/mp", "ok"), ("tenant", "multipart", "mail", "t2/mp", "AccessDenied"),
    ("backup", "multipart", "mail", "t1/mp2", "AccessDenied"),
    # Bucket and service level
    ("dovecot", "create-bucket", "newbucket", "", "AccessDenied"),
    ("admin", "create-bucket", "newbucket", "", "ok"),
    ("dovecot", "list-buckets", "", "", "AccessDenied"), ("backup", "list-buckets", "", "", "ok"),
    ("dovecot", "head-bucket", "mail", "", "ok"), ("tenant", "head-bucket", "mail", "", "AccessDenied"),
]


def run_case(s3, op: str, bucket: str, arg: str):  # type: ignore[no-untyped-def]
    if op == "get":
        return lambda: s3.get_object(Bucket=bucket, Key=arg)["Body"].read()
    if op == "head":
        def ho() -> None:
            try:
                s3.head_object(Bucket=bucket, Key=arg)
            except botocore.exceptions.ClientError as exc:  # HEAD has no body: map 403 back
                if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 403:
                    exc.response["Error"]["Code"] = "AccessDenied"
                raise
        return ho
    if op == "put":
        return lambda: s3.put_object(Bucket=bucket, Key=arg, Body=b"x")
    if op == "put-tagged":
        return lambda: s3.put_object(Bucket=bucket, Key=arg, Body=b"x", Tagging="retention=long")
    if op == "delete":
        return lambda: s3.delete_object(Bucket=bucket, Key=arg)
    if op == "list":
        return lambda: s3.list_objects_v2(Bucket=bucket, Prefix=arg) if arg else s3.list_objects_v2(Bucket=bucket)
    if op == "copy":
        src, dst = arg.split(">")
        return lambda: s3.copy_object(Bucket=bucket, Key=dst, CopySource={"Bucket": bucket, "Key": src})
    if op == "multipart":
        def mp() -> None:
            uid = s3.create_multipart_upload(Bucket=bucket, Key=arg)["UploadId"]
            e = s3.upload_part(Bucket=bucket, Key=arg, UploadId=uid, PartNumber=1, Body=b"p")["ETag"]
            s3.complete_multipart_upload(Bucket=bucket, Key=arg, UploadId=uid,
                                         MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e}]})
        return mp
    if op == "create-bucket":
        return lambda: s3.create_bucket(Bucket=bucket)
    if op == "list-buckets":
        return lambda: s3.list_buckets()
    if op == "head-bucket":
        def hb() -> None:
            try:
                s3.head_bucket(Bucket=bucket)
            except botocore.exceptions.ClientError as exc:  # HEAD has no body: map 403 back
                if exc.response["ResponseMetadata"]["HTTPStatusCode"] == 403:
                    exc.response["Error"]["Code"] = "AccessDenied"
                raise
        return hb
    raise AssertionError(op)


@pytest.mark.parametrize("i", range(len(MATRIX)), ids=[f"{m[0]}-{m[1]}-{m[3] or m[2]}" for m in MATRIX])
def test_policy_matrix(pair, i):
    who, op, bucket, arg, expected = MATRIX[i]
    gw = pair["a"] if i % 2 == 0 else pair["b"]  # alternate gateways of the pair
    s3 = client(gw.endpoint, pair["keys"][who])
    assert attempt(run_case(s3, op, bucket, arg)) == expected


def test_delete_objects_is_checked_per_key(pair):
    admin = client(pair["a"].endpoint, pair["keys"]["admin"])
    for k in ("t1/d1", "t2/d2"):
        admin.put_object(Bucket="mail", Key=k, Body=b"x")
    tenant = client(pair["b"].endpoint, pair["keys"]["tenant"])
    res = tenant.delete_objects(Bucket="mail", Delete={"Objects": [{"Key": "t1/d1"}, {"Key": "t2/d2"}]})
    assert [d["Key"] for d in res["Deleted"]] == ["t1/d1"]
    assert [(e["Key"], e["Code"]) for e in res["Errors"]] == [("t2/d2", "AccessDenied")]
    assert admin.get_object(Bucket="mail", Key="t2/d2")["Body"].read() == b"x"


def test_presigned_urls_carry_the_signers_limits(pair):
    tenant = client(pair["a"].endpoint, pair["keys"]["tenant"], signature_version="s3v4")
    ok = tenant.generate_presigned_url("get_object", Params={"Bucket": "mail", "Key": "t1/a"})
    denied = tenant.generate_presigned_url("get_object", Params={"Bucket": "mail", "Key": "t2/a"})
    http = urllib3.PoolManager()
    assert http.request("GET", ok, retries=False).status == 200
    r = http.request("GET", denied, retries=False)
    assert r.status == 403 and b"<Code>AccessDenied</Code>" in r.data


def test_secrets_are_encrypted_at_rest(pair):
    if pair["engine"] == "rados":  # every record of the metadata pool
        cluster = pair["store"]
        conn = cluster.connect()
        try:
            io = cluster.ioctx(conn, "--meta-pool")
            raw = b""
            for o in io.list_objects():
                with rados_read_op() as op:
                    it, _ = io.get_omap_vals(op, "", "", 100_000)
                    io.operate_read_op(op, o.key)
                    raw += b"".join(k.encode() + v for k, v in it)
            io.close()
        finally:
            conn.shutdown()
        assert b"secret_enc" in raw  # the keys were read
        master = cluster.master_key
    else:
        raw = b"".join(p.read_bytes() for p in (pair["data"] / "segments").glob("*.seg"))
        raw += (pair["data"] / "index.db").read_bytes()
        master = pair["data"] / "master.key"
    for k in pair["keys"].values():
        assert k.secret.encode() not in raw
    assert master.stat().st_mode & 0o777 == 0o600


def rados_read_op():  # type: ignore[no-untyped-def]
    import rados

    return rados.ReadOpCtx()


def operator_cli(pair):  # type: ignore[no-untyped-def]
    """(environment, --endpoint arguments, run) for the mailstore CLI with the operator's key,
    through gateway B."""
    env = {**os.environ, "MAILSTORE_ACCESS_KEY": pair["keys"]["admin"].access_key,
           "MAILSTORE_SECRET_KEY": pair["keys"]["admin"].secret}

    def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "mailstore"), *args], capture_output=True, text=True, env=env,
                              check=check, timeout=60)
    return env, ["--endpoint", pair["b"].endpoint], cli


def test_admin_api_and_cli_over_http(pair):
    env, ep, cli = operator_cli(pair)

    listed = [json.loads(line) for line in cli("key", "list", *ep).stdout.splitlines()]
    assert {k["Name"] for k in listed} >= {"admin", "dovecot", "backup", "tenant", "custom"}
    assert all("SecretAccessKey" not in k for k in listed)
    new = key_from(cli("key", "create", *ep, "--name", "t2", "--preset", "prefix:mail/t2/").stdout)
    s3 = client(pair["a"].endpoint, new)  # made through B, used through A at once
    s3.put_object(Bucket="mail", Key="t2/by-new", Body=b"x")
    assert attempt(lambda: s3.put_object(Bucket="mail", Key="t1/by-new", Body=b"x")) == "AccessDenied"
    cli("key", "set-policy", *ep, new.access_key, "--preset", "read-only:mail")
    import time
    time.sleep(2.5)  # other gateways re-read a key within KEY_CACHE_SECONDS
    assert attempt(lambda: s3.put_object(Bucket="mail", Key="t2/again", Body=b"x")) == "AccessDenied"
    assert attempt(lambda: s3.get_object(Bucket="mail", Key="t2/by-new")) == "ok"
    usage = json.loads(cli("usage", *ep, "--bucket", "mail").stdout)["buckets"]["mail"]
    assert usage["objects"] >= 3 and usage["prefixes"]["t2/"]["objects"] >= 1
    assert usage["bytes"] == sum(p["bytes"] for p in usage["prefixes"].values())
    cli("key", "delete", *ep, new.access_key)
    time.sleep(2.5)
    assert attempt(lambda: s3.get_object(Bucket="mail", Key="t2/by-new")) == "InvalidAccessKeyId"
    # a non-admin key gets 403 from the admin API
    env_tenant = {**env, "MAILSTORE_ACCESS_KEY": pair["keys"]["tenant"].access_key,
                  "MAILSTORE_SECRET_KEY": pair["keys"]["tenant"].secret}
    res = subprocess.run([str(BIN / "mailstore"), "key", "list", *ep], capture_output=True, text=True,
                         env=env_tenant, timeout=60)
    assert res.returncode == 2 and "AccessDenied" in res.stderr
    bad = subprocess.run([str(BIN / "mailstore"), "key", "create", *ep, "--name", "x", "--policy",
                          str(Path(__file__))], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "not JSON" in bad.stderr


def test_accounts_own_their_buckets(pair):
    """Issue 17, accounts: an account's keys see and use only its buckets (ListBuckets, every
    object and bucket operation, a copy's source); another's is AccessDenied whatever the key's
    policy, and its name is BucketAlreadyExists. The operator's administrator manages accounts
    and keys but owns none of theirs. Made through one gateway, used through the other."""
    env, ep, cli = operator_cli(pair)

    alpha = json.loads(cli("account", "create", *ep, "alpha").stdout)
    beta = json.loads(cli("account", "create", *ep, "beta").stdout)
    assert len(alpha["CanonicalId"]) == 64 and alpha["CanonicalId"] != beta["CanonicalId"]
    assert cli("account", "create", *ep, "alpha", check=False).returncode == 2  # exists
    names = [json.loads(line)["Name"] for line in cli("account", "list", *ep).stdout.splitlines()]
    assert names[0] == "operator" and {"alpha", "beta"} <= set(names)
    a_admin = key_from(cli("key", "create", *ep, "--name", "a-admin", "--account", "alpha").stdout)
    b_admin = key_from(cli("key", "create", *ep, "--name", "b-admin", "--account", "beta").stdout)
    a_reader = key_from(cli("key", "create", *ep, "--name", "a-reader", "--account", "alpha",
                            "--preset", "read-only:*").stdout)
    assert cli("key", "create", *ep, "--name", "x", "--account", "nobody", check=False).returncode == 2
    a, b, reader = (client(pair["a"].endpoint, k) for k in (a_admin, b_admin, a_reader))
    operator = client(pair["a"].endpoint, pair["keys"]["admin"])

    a.create_bucket(Bucket="alpha-mail")
    a.put_object(Bucket="alpha-mail", Key="m1", Body=b"alpha's mail")
    b.create_bucket(Bucket="beta-mail")
    listed = a.list_buckets()
    assert [x["Name"] for x in listed["Buckets"]] == ["alpha-mail"]
    assert listed["Owner"] == {"ID": alpha["CanonicalId"], "DisplayName": "alpha"}
    assert a.get_bucket_acl(Bucket="alpha-mail")["Owner"]["ID"] == alpha["CanonicalId"]
    assert [x["Name"] for x in b.list_buckets()["Buckets"]] == ["beta-mail"]
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    cli_env.update(AWS_ACCESS_KEY_ID=a_admin.access_key, AWS_SECRET_ACCESS_KEY=a_admin.secret,
                   AWS_DEFAULT_REGION="us-east-1", AWS_CONFIG_FILE="/nonexistent", HOME="/nonexistent")
    aws = subprocess.run(["/usr/bin/aws", "--endpoint-url", pair["a"].endpoint, "--output", "json", "s3api",
                          "list-buckets"], capture_output=True, text=True, env=cli_env, timeout=120, check=True)
    listed_cli = json.loads(aws.stdout)  # Debian's AWS CLI, as account alpha
    assert [x["Name"] for x in listed_cli["Buckets"]] == ["alpha-mail"] and listed_cli["Owner"]["DisplayName"] == "alpha"
    assert "alpha-mail" not in [x["Name"] for x in operator.list_buckets()["Buckets"]]
    for who in (b, operator):  # another account, administrator or not
        for call in (lambda s: s.get_object(Bucket="alpha-mail", Key="m1"),
                     lambda s: s.head_object(Bucket="alpha-mail", Key="m1"),
                     lambda s: s.put_object(Bucket="alpha-mail", Key="m2", Body=b"x"),
                     lambda s: s.delete_object(Bucket="alpha-mail", Key="m1"),
                     lambda s: s.list_objects_v2(Bucket="alpha-mail"),
                     lambda s: s.delete_bucket(Bucket="alpha-mail"),
                     lambda s: s.create_multipart_upload(Bucket="alpha-mail", Key="mp"),
                     lambda s: s.get_bucket_acl(Bucket="alpha-mail")):
            assert attempt(lambda: call(who)) in ("AccessDenied", "403")  # noqa: B023 (HEAD: no body)
    assert attempt(lambda: b.copy_object(Bucket="beta-mail", Key="stolen",
                                         CopySource={"Bucket": "alpha-mail", "Key": "m1"})) == "AccessDenied"
    assert attempt(lambda: b.create_bucket(Bucket="alpha-mail")) == "BucketAlreadyExists"
    assert attempt(lambda: a.get_object(Bucket="mail", Key="top")) == "AccessDenied"  # the operator's
    # within alpha, a key's policy still limits it
    assert reader.get_object(Bucket="alpha-mail", Key="m1")["Body"].read() == b"alpha's mail"
    assert attempt(lambda: reader.put_object(Bucket="alpha-mail", Key="m3", Body=b"x")) == "AccessDenied"
    # the admin API is the operator's: an account's administrator gets 403
    env_a = {**env, "MAILSTORE_ACCESS_KEY": a_admin.access_key, "MAILSTORE_SECRET_KEY": a_admin.secret}
    res = subprocess.run([str(BIN / "mailstore"), "account", "list", *ep], capture_output=True, text=True,
                         env=env_a, timeout=60)
    assert res.returncode == 2 and "AccessDenied" in res.stderr
    buckets = {x["Name"]: x["Owner"] for x in _admin_get(pair, "/_admin/buckets")}
    assert buckets["alpha-mail"] == "alpha" and buckets["mail"] == "operator"
    # an account with keys or buckets stays
    res = cli("account", "delete", *ep, "alpha", check=False)
    assert res.returncode == 2 and "AccountNotEmpty" in res.stderr
    a.delete_object(Bucket="alpha-mail", Key="m1")
    a.delete_bucket(Bucket="alpha-mail")
    for k in (a_admin, a_reader):
        cli("key", "delete", *ep, k.access_key)
    cli("account", "delete", *ep, "alpha")
    assert "alpha" not in [json.loads(line)["Name"] for line in cli("account", "list", *ep).stdout.splitlines()]
    b.delete_bucket(Bucket="beta-mail")


def test_bucket_made_again_by_another_account_is_theirs_at_once_on_every_gateway(pair):
    """Gateways keep what they know of a bucket's owner between requests (local engine: until the
    system namespace's generation moves; RADOS: the engine refuses an owner that changed). A
    bucket deleted by its owner and made again by another account, through gateway B, is the new
    owner's at once through gateway A too, whose cache held the old owner a moment before: the
    old owner gets nothing (on RADOS the first request, decided on the cached owner, answers
    NoSuchBucket; the next are decided on the new one)."""
    env, ep, cli = operator_cli(pair)
    made = {}
    for name in ("epsilon", "zeta"):
        cli("account", "create", *ep, name)
        made[name] = key_from(cli("key", "create", *ep, "--name", f"{name}-gen", "--account", name).stdout)
    g_a, d_a = (client(pair["a"].endpoint, made[n]) for n in ("epsilon", "zeta"))
    g_b, d_b = (client(pair["b"].endpoint, made[n]) for n in ("epsilon", "zeta"))
    g_b.create_bucket(Bucket="passed-on")
    g_b.put_object(Bucket="passed-on", Key="k", Body=b"gamma's")
    for _ in range(3):  # warm gateway A's cache with gamma as the owner
        assert g_a.get_object(Bucket="passed-on", Key="k")["Body"].read() == b"gamma's"
        assert attempt(lambda: d_a.head_object(Bucket="passed-on", Key="k")) in ("AccessDenied", "403")
    g_b.delete_object(Bucket="passed-on", Key="k")
    g_b.delete_bucket(Bucket="passed-on")
    d_b.create_bucket(Bucket="passed-on")
    d_b.put_object(Bucket="passed-on", Key="k", Body=b"delta's")
    assert attempt(lambda: g_a.get_object(Bucket="passed-on", Key="k")) in ("AccessDenied", "NoSuchBucket")
    assert attempt(lambda: g_a.get_object(Bucket="passed-on", Key="k")) == "AccessDenied"
    assert attempt(lambda: g_a.put_object(Bucket="passed-on", Key="k", Body=b"x")) == "AccessDenied"
    assert attempt(lambda: g_a.list_objects_v2(Bucket="passed-on")) == "AccessDenied"
    assert d_a.get_object(Bucket="passed-on", Key="k")["Body"].read() == b"delta's"
    d_a.delete_object(Bucket="passed-on", Key="k")
    d_a.delete_bucket(Bucket="passed-on")
    assert attempt(lambda: g_a.head_bucket(Bucket="passed-on")) in ("404", "NoSuchBucket")


def test_bucket_policies_grant_across_accounts(pair):
    """Issue 17, bucket policies (API Reference, PutBucketPolicy; IAM User Guide, "Policy
    evaluation logic"): another account reaches a bucket only when the bucket policy names it
    and its own key allows it; an explicit Deny in either wins; anonymous requests only what
    the policy grants "*"; the policy is the owner's alone to read and change; a bucket made
    again starts without one. Canned ACLs other than private are refused."""
    _, ep, run = operator_cli(pair)

    def cli(*args: str) -> str:
        return run(*args).stdout

    cli("account", "create", *ep, "gamma")
    delta = json.loads(cli("account", "create", *ep, "delta"))
    g_key = key_from(cli("key", "create", *ep, "--name", "g", "--account", "gamma"))
    d_key = key_from(cli("key", "create", *ep, "--name", "d", "--account", "delta"))
    d_narrow = key_from(cli("key", "create", *ep, "--name", "d-narrow", "--account", "delta",
                            "--preset", "bucket:delta-own"))
    g, d, narrow = (client(pair["a"].endpoint, k) for k in (g_key, d_key, d_narrow))
    g_b = client(pair["b"].endpoint, g_key)
    d_b = client(pair["b"].endpoint, d_key)
    g.create_bucket(Bucket="gamma-share")
    for k in ("pub/x", "priv/y", "anon/z"):
        g.put_object(Bucket="gamma-share", Key=k, Body=k.encode())
    assert attempt(lambda: d.get_object(Bucket="gamma-share", Key="pub/x")) == "AccessDenied"
    assert attempt(lambda: g.get_bucket_policy(Bucket="gamma-share")) == "NoSuchBucketPolicy"
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::delta:root"}, "Action": "s3:GetObject",
         "Resource": "arn:aws:s3:::gamma-share/pub/*"},
        {"Effect": "Allow", "Principal": {"CanonicalUser": delta["CanonicalId"]}, "Action": "s3:ListBucket",
         "Resource": "arn:aws:s3:::gamma-share", "Condition": {"StringLike": {"s3:prefix": "pub/*"}}},
        {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::gamma-share/anon/*",
         "Condition": {"IpAddress": {"aws:SourceIp": "127.0.0.0/8"}}},
        {"Effect": "Deny", "Principal": "*", "Action": "s3:DeleteObject", "Resource": "arn:aws:s3:::gamma-share/*"}]}
    g.put_bucket_policy(Bucket="gamma-share", Policy=json.dumps(policy))
    assert json.loads(g.get_bucket_policy(Bucket="gamma-share")["Policy"]) == policy
    assert d.get_object(Bucket="gamma-share", Key="pub/x")["Body"].read() == b"pub/x"  # same gateway: at once
    assert attempt(lambda: d.get_object(Bucket="gamma-share", Key="priv/y")) == "AccessDenied"
    assert [o["Key"] for o in d.list_objects_v2(Bucket="gamma-share", Prefix="pub/")["Contents"]] == ["pub/x"]
    assert attempt(lambda: d.list_objects_v2(Bucket="gamma-share")) == "AccessDenied"
    assert attempt(lambda: d.put_object(Bucket="gamma-share", Key="pub/new", Body=b"x")) == "AccessDenied"
    assert attempt(lambda: narrow.get_object(Bucket="gamma-share", Key="pub/x")) == "AccessDenied"  # its own key: no
    assert attempt(lambda: d.get_bucket_policy(Bucket="gamma-share")) == "AccessDenied"  # the owner's alone
    assert attempt(lambda: d.delete_bucket_policy(Bucket="gamma-share")) == "AccessDenied"
    assert attempt(lambda: g.delete_object(Bucket="gamma-share", Key="priv/y")) == "AccessDenied"  # Deny wins
    http = urllib3.PoolManager()
    r = http.request("GET", f"{pair['a'].endpoint}/gamma-share/anon/z", retries=False)
    assert r.status == 200 and r.data == b"anon/z"  # anonymous, from 127.0.0.1
    assert http.request("GET", f"{pair['a'].endpoint}/gamma-share/pub/x", retries=False).status == 403
    assert http.request("PUT", f"{pair['a'].endpoint}/gamma-share/anon/w", body=b"x", retries=False).status == 403
    assert http.request("GET", f"{pair['a'].endpoint}/", retries=False).status == 403  # no ListBuckets
    # through the other gateway, within its 2 s cache
    import time
    time.sleep(2.5)
    assert d_b.get_object(Bucket="gamma-share", Key="pub/x")["Body"].read() == b"pub/x"
    # malformed: a resource outside the bucket, a principal that is not one
    for bad in ({**policy, "Statement": [{**policy["Statement"][0], "Resource": "arn:aws:s3:::other/*"}]},
                {**policy, "Statement": [{**policy["Statement"][0], "Principal": ["x"]}]}):
        assert attempt(lambda: g.put_bucket_policy(Bucket="gamma-share",  # noqa: B023
                                                   Policy=json.dumps(bad))) == "MalformedPolicy"
    g_b.delete_bucket_policy(Bucket="gamma-share")
    time.sleep(2.5)
    assert attempt(lambda: d.get_object(Bucket="gamma-share", Key="pub/x")) == "AccessDenied"
    # made again: no policy carried over (the Deny on DeleteObject lifted first)
    g.delete_objects(Bucket="gamma-share", Delete={"Objects": [{"Key": k} for k in ("pub/x", "priv/y", "anon/z")]})
    g.put_bucket_policy(Bucket="gamma-share", Policy=json.dumps(policy))
    g.delete_bucket(Bucket="gamma-share")
    g.create_bucket(Bucket="gamma-share")
    assert attempt(lambda: g.get_bucket_policy(Bucket="gamma-share")) == "NoSuchBucketPolicy"
    # canned ACLs: what is true anyway passes, a grant is refused
    g.put_object(Bucket="gamma-share", Key="acl", Body=b"x", ACL="private")
    assert attempt(lambda: g.put_object(Bucket="gamma-share", Key="acl", Body=b"x",
                                        ACL="public-read")) == "AccessControlListNotSupported"
    assert attempt(lambda: g.create_bucket(Bucket="gamma-public", ACL="public-read")) == \
        "InvalidBucketAclWithObjectOwnership"
    g.put_bucket_acl(Bucket="gamma-share", ACL="private")
    owner = g.get_bucket_acl(Bucket="gamma-share")["Owner"]
    g.put_object_acl(Bucket="gamma-share", Key="acl", AccessControlPolicy={
        "Owner": owner, "Grants": [{"Grantee": {"Type": "CanonicalUser", "ID": owner["ID"]},
                                    "Permission": "FULL_CONTROL"}]})
    assert attempt(lambda: g.put_bucket_acl(Bucket="gamma-share", AccessControlPolicy={
        "Owner": owner, "Grants": [{"Grantee": {"Type": "Group", "URI": "http://acs.amazonaws.com/groups/global/AllUsers"},
                                    "Permission": "READ"}]})) == "AccessControlListNotSupported"
