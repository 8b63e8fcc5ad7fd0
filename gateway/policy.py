"""Access policies in the AWS IAM JSON grammar operators already know.

    {"Version": "2012-10-17",
     "Statement": [{"Effect": "Allow",
                    "Action": ["s3:GetObject", "s3:ListBucket"],
                    "Resource": ["arn:aws:s3:::mail", "arn:aws:s3:::mail/tenant1/*"],
                    "Condition": {"StringLike": {"s3:prefix": ["tenant1/*"]}}}]}

Evaluation follows IAM: an explicit Deny wins, then an explicit Allow, and
with neither the answer is deny (deny by default).  Action names match
case-insensitively, resources case-sensitively; `*` and `?` are wildcards.
A condition on a key the request does not have does not match.

`required` maps each S3 operation to the (action, resource) pairs it needs,
after AWS's "Actions, resources, and condition keys for Amazon S3".
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

ARN_PREFIX = "arn:aws:s3:::"
CONDITION_OPERATORS = {"StringEquals", "StringNotEquals", "StringLike", "StringNotLike",
                       "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase", "IpAddress", "NotIpAddress", "Bool",
                       "Null"}
# The request's SSE headers (gateway/sse.py), as AWS names them; present only when sent.
SSE_CONDITION_KEYS = ("s3:x-amz-server-side-encryption", "s3:x-amz-server-side-encryption-aws-kms-key-id",
                      "s3:x-amz-server-side-encryption-customer-algorithm")
CONDITION_KEYS = {"s3:prefix", "s3:delimiter", "s3:max-keys", "aws:username", "aws:SourceIp",
                  "aws:SecureTransport", *SSE_CONDITION_KEYS}
ANYONE = "*"  # a bucket policy's Principal "*": every account, and anonymous requests


class PolicyError(ValueError):
    """The policy document is not valid; the message says where."""


@lru_cache(maxsize=4096)
def _pattern(glob: str, ignore_case: bool) -> re.Pattern[str]:
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.compile(rx, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def _as_list(value: object, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise PolicyError(f"{where} must be a string or a non-empty list of strings")


@dataclass(frozen=True, slots=True)
class Condition:
    operator: str
    key: str
    values: tuple[str, ...]

    def matches(self, context: Mapping[str, str]) -> bool:
        """As IAM evaluates it: Null asks whether the key is absent; a key the request does not
        have matches no positive operator and every negated one (StringNotEquals, NotIpAddress...),
        so "deny unless the header says AES256" denies a request without the header."""
        if self.operator == "Null":
            return (self.key not in context) == (self.values[0].lower() == "true")
        if self.key not in context:
            return "Not" in self.operator
        actual = context[self.key]
        op = self.operator
        if op.endswith("IpAddress"):
            try:
                address = ipaddress.ip_address(actual)
                hit = any(address in ipaddress.ip_network(v, strict=False) for v in self.values)
            except ValueError:
                return False
            return not hit if op.startswith("Not") else hit
        if op == "Bool":
            return actual.lower() in (v.lower() for v in self.values)
        if op.startswith(("StringEquals", "StringNotEquals")):
            fold = op.endswith("IgnoreCase")
            hit = any((v.lower() == actual.lower()) if fold else v == actual for v in self.values)
        else:
            hit = any(_pattern(v, False).fullmatch(actual) for v in self.values)
        return not hit if "Not" in op else hit


@dataclass(frozen=True, slots=True)
class Statement:
    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    conditions: tuple[Condition, ...] = ()
    principals: tuple[str, ...] | None = None  # a bucket policy's: ANYONE, or accounts

    def applies(self, action: str, resource: str, context: Mapping[str, str],
                who: frozenset[str] = frozenset()) -> bool:
        if self.principals is not None and ANYONE not in self.principals and who.isdisjoint(self.principals):
            return False
        return (any(_pattern(a, True).fullmatch(action) for a in self.actions)
                and any(_pattern(r, False).fullmatch(resource) for r in self.resources)
                and all(c.matches(context) for c in self.conditions))


@dataclass(frozen=True, slots=True)
class Policy:
    statements: tuple[Statement, ...]
    text: str  # the document as given, to show back

    @classmethod
    def parse(cls, text: str, *, bucket: str | None = None) -> Policy:
        """An identity policy (a key's), or with `bucket` that bucket's policy: every statement
        names its Principal, and every resource lies within the bucket."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PolicyError(f"not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise PolicyError("a policy is a JSON object")
        unknown = set(doc) - {"Version", "Id", "Statement"}
        if unknown:
            raise PolicyError(f"unknown policy elements: {sorted(unknown)}")
        if doc.get("Version", "2012-10-17") != "2012-10-17":
            raise PolicyError('Version must be "2012-10-17"')
        raw = doc.get("Statement")
        if isinstance(raw, dict):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            raise PolicyError("Statement must be an object or a non-empty list")
        out = []
        for i, st in enumerate(raw):
            where = f"Statement[{i}]"
            if not isinstance(st, dict):
                raise PolicyError(f"{where} must be an object")
            unknown = set(st) - {"Sid", "Effect", "Action", "Resource", "Condition"} - (
                {"Principal"} if bucket is not None else set())
            if unknown:
                raise PolicyError(f"{where}: unsupported elements {sorted(unknown)}")
            principals = _principals(st.get("Principal"), where) if bucket is not None else None
            effect = st.get("Effect")
            if effect not in ("Allow", "Deny"):
                raise PolicyError(f'{where}.Effect must be "Allow" or "Deny"')
            actions = _as_list(st.get("Action"), f"{where}.Action")
            for a in actions:
                if a != "*" and not a.lower().startswith("s3:"):
                    raise PolicyError(f"{where}.Action {a!r}: only s3:* actions exist here")
            resources = _as_list(st.get("Resource"), f"{where}.Resource")
            for r in resources:
                if r != "*" and not r.startswith(ARN_PREFIX):
                    raise PolicyError(f"{where}.Resource {r!r} must be \"*\" or start with {ARN_PREFIX}")
                if bucket is not None and r not in (arn(bucket), ) and not r.startswith(arn(bucket) + "/"):
                    raise PolicyError(f"{where}.Resource {r!r}: a bucket policy covers only {arn(bucket)} "
                                      "and its objects")
            conditions = []
            for op, pairs in (st.get("Condition") or {}).items():
                if op not in CONDITION_OPERATORS:
                    raise PolicyError(f"{where}.Condition: unsupported operator {op}")
                if not isinstance(pairs, dict):
                    raise PolicyError(f"{where}.Condition.{op} must map condition keys to values")
                for k, v in pairs.items():
                    if k not in CONDITION_KEYS:
                        raise PolicyError(f"{where}.Condition.{op}: unsupported key {k}")
                    conditions.append(Condition(op, k, _as_list(v, f"{where}.Condition.{op}.{k}")))
            out.append(Statement(effect, actions, resources, tuple(conditions), principals))
        return cls(tuple(out), text)

    def decide(self, action: str, resource: str, context: Mapping[str, str] | None = None,
               who: frozenset[str] = frozenset()) -> str | None:
        """"Deny" (an explicit deny, which always wins), "Allow", or None (nothing says)."""
        ctx = context or {}
        allowed = False
        for st in self.statements:
            if st.applies(action, resource, ctx, who):
                if st.effect == "Deny":
                    return "Deny"
                allowed = True
        return "Allow" if allowed else None

    def allows(self, action: str, resource: str, context: Mapping[str, str] | None = None) -> bool:
        return self.decide(action, resource, context) == "Allow"


def _principals(value: object, where: str) -> tuple[str, ...]:
    """A bucket policy statement's Principal: "*", {"AWS": ...} or {"CanonicalUser": ...}; an
    account as its name, its canonical id, or arn:aws:iam::ACCOUNT:root."""
    if value == ANYONE:
        return (ANYONE,)
    if not isinstance(value, dict) or not value or set(value) - {"AWS", "CanonicalUser"}:
        raise PolicyError(f'{where}.Principal must be "*" or {{"AWS": ...}} / {{"CanonicalUser": ...}}')
    out = []
    for kind, names in value.items():
        for name in _as_list(names, f"{where}.Principal.{kind}"):
            m = re.fullmatch(r"arn:aws:iam::([^:]+):root", name)
            out.append(m.group(1) if m else name)
    return tuple(out)


# ------------------------------------------------------------------ what each operation needs

def arn(bucket: str | None, key: str | None = None) -> str:
    if bucket is None:
        return "*"
    return ARN_PREFIX + bucket + ("/" + key if key is not None else "")


_BUCKET_ACTIONS = {
    "HeadBucket": "s3:ListBucket",
    "ListObjects": "s3:ListBucket",
    "ListObjectsV2": "s3:ListBucket",
    "ListObjectVersions": "s3:ListBucketVersions",
    "ListMultipartUploads": "s3:ListBucketMultipartUploads",
    "GetBucketLocation": "s3:GetBucketLocation",
    "GetBucketVersioning": "s3:GetBucketVersioning",
    "GetObjectLockConfiguration": "s3:GetBucketObjectLockConfiguration",
    "PutObjectLockConfiguration": "s3:PutBucketObjectLockConfiguration",
    "PutBucketVersioning": "s3:PutBucketVersioning",
    "GetBucketAcl": "s3:GetBucketAcl",
    "CreateBucket": "s3:CreateBucket",
    "DeleteBucket": "s3:DeleteBucket",
    "GetBucketPolicy": "s3:GetBucketPolicy",
    "PutBucketPolicy": "s3:PutBucketPolicy",
    "DeleteBucketPolicy": "s3:DeleteBucketPolicy",
    "PutBucketAcl": "s3:PutBucketAcl",
    "GetBucketTagging": "s3:GetBucketTagging",
    "PutBucketTagging": "s3:PutBucketTagging",
    "DeleteBucketTagging": "s3:PutBucketTagging",  # AWS: deleting needs the put permission
    "GetBucketEncryption": "s3:GetEncryptionConfiguration",
    "PutBucketEncryption": "s3:PutEncryptionConfiguration",
    "DeleteBucketEncryption": "s3:PutEncryptionConfiguration",  # AWS: as for tagging
    "GetBucketLifecycleConfiguration": "s3:GetLifecycleConfiguration",
    "PutBucketLifecycleConfiguration": "s3:PutLifecycleConfiguration",
    "DeleteBucketLifecycle": "s3:PutLifecycleConfiguration",
}
_OBJECT_ACTIONS = {
    "GetObject": "s3:GetObject",
    "HeadObject": "s3:GetObject",
    "GetObjectAcl": "s3:GetObjectAcl",
    "PutObjectAcl": "s3:PutObjectAcl",
    "GetObjectTagging": "s3:GetObjectTagging",
    "PutObjectTagging": "s3:PutObjectTagging",
    "DeleteObjectTagging": "s3:DeleteObjectTagging",
    "PutObject": "s3:PutObject",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "ListParts": "s3:ListMultipartUploadParts",
    "DeleteObject": "s3:DeleteObject",
    "GetObjectRetention": "s3:GetObjectRetention",
    "PutObjectRetention": "s3:PutObjectRetention",
    "GetObjectLegalHold": "s3:GetObjectLegalHold",
    "PutObjectLegalHold": "s3:PutObjectLegalHold",
}
_VERSION_ACTIONS = {  # the same operations on a version named by ?versionId
    "GetObject": "s3:GetObjectVersion",
    "HeadObject": "s3:GetObjectVersion",
    "GetObjectAcl": "s3:GetObjectVersionAcl",
    "GetObjectTagging": "s3:GetObjectVersionTagging",
    "PutObjectTagging": "s3:PutObjectVersionTagging",
    "DeleteObjectTagging": "s3:DeleteObjectVersionTagging",
    "DeleteObject": "s3:DeleteObjectVersion",
    "GetObjectAttributes": "s3:GetObjectVersionAttributes",
}


def required(op: str, bucket: str | None, key: str | None, query: Mapping[str, str],
             copy_source: tuple[str, str, str | None] | None,
             sets: frozenset[str] = frozenset()) -> list[tuple[str, str, dict[str, str]]]:
    """(action, resource ARN, condition context) triples the operation needs; `sets`: the
    headers of the request that set more than the object (app.SETTING_HEADERS): its tags
    (x-amz-tagging), which AWS also requires s3:PutObjectTagging for, and its Object Lock
    retention and legal hold (s3:PutObjectRetention, s3:PutObjectLegalHold).

    DeleteObjects is checked per key by its handler (a denied key is an error
    entry in the result, as AWS answers), so it needs nothing up front.
    """
    if op == "ListBuckets":
        return [("s3:ListAllMyBuckets", "*", {})]
    if op == "DeleteObjects":
        return []
    if op in _BUCKET_ACTIONS:
        ctx = {}
        if op.startswith("List"):
            ctx = {"s3:prefix": query.get("prefix", ""), "s3:max-keys": query.get("max-keys", "1000")}
            if "delimiter" in query:
                ctx["s3:delimiter"] = query["delimiter"]
        return [(_BUCKET_ACTIONS[op], arn(bucket), ctx)]
    versioned = "versionId" in query and op in _VERSION_ACTIONS
    if op == "GetObjectAttributes":  # AWS: both
        return [("s3:GetObjectVersion" if versioned else "s3:GetObject", arn(bucket, key), {}),
                (_VERSION_ACTIONS[op] if versioned else "s3:GetObjectAttributes", arn(bucket, key), {})]
    action = _VERSION_ACTIONS[op] if versioned else _OBJECT_ACTIONS[op]
    needs: list[tuple[str, str, dict[str, str]]] = [(action, arn(bucket, key), {})]
    if copy_source is not None and op in ("PutObject", "UploadPart"):
        needs.append(("s3:GetObject" if copy_source[2] is None else "s3:GetObjectVersion",
                      arn(copy_source[0], copy_source[1]), {}))
    if op in ("PutObject", "CreateMultipartUpload"):
        if "x-amz-tagging" in sets:
            needs.append(("s3:PutObjectTagging", arn(bucket, key), {}))
        if "x-amz-object-lock-mode" in sets or "x-amz-object-lock-retain-until-date" in sets:
            needs.append(("s3:PutObjectRetention", arn(bucket, key), {}))
        if "x-amz-object-lock-legal-hold" in sets:
            needs.append(("s3:PutObjectLegalHold", arn(bucket, key), {}))
    return needs


PRESETS_HELP = """\
bucket:NAME             read, write, delete and list everything in one bucket (Dovecot, the mail shim)
read-only:NAME          read and list one bucket, or every bucket with NAME '*' (backups)
prefix:BUCKET/PREFIX    read, write, delete and list under one prefix of a bucket (one tenant)"""

_RW = ["s3:GetObject", "s3:GetObjectAttributes", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
       "s3:ListMultipartUploadParts", "s3:GetObjectTagging", "s3:PutObjectTagging", "s3:DeleteObjectTagging",
       "s3:GetObjectVersion"]  # not s3:DeleteObjectVersion: removing history is for a policy to grant
_LIST = ["s3:ListBucket", "s3:ListBucketMultipartUploads", "s3:GetBucketLocation", "s3:ListBucketVersions"]


def preset(spec: str) -> Policy:
    """The policy of a typical setup, by name (see PRESETS_HELP)."""
    kind, _, arg = spec.partition(":")
    if not arg:
        raise PolicyError(f"preset {spec!r}: expected KIND:ARGUMENT")
    doc: dict[str, list[dict[str, object]]]  # an IAM policy document, as JSON
    if kind == "bucket":
        doc = {"Statement": [{"Effect": "Allow", "Action": _RW, "Resource": [arn(arg, "*")]},
                             {"Effect": "Allow", "Action": _LIST, "Resource": [arn(arg)]}]}
    elif kind == "read-only":
        b = "*" if arg == "*" else arg
        doc = {"Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectAttributes",
                                                            "s3:GetObjectTagging"],
                              "Resource": [arn(b, "*")]},
                             {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation",
                                                            "s3:ListAllMyBuckets"],
                              "Resource": [arn(b), "*"] if b == "*" else [arn(b)]}]}
    elif kind == "prefix":
        bucket, slash, prefix = arg.partition("/")
        if not slash or not prefix:
            raise PolicyError("preset prefix:BUCKET/PREFIX needs a prefix")
        prefix = prefix if prefix.endswith("/") else prefix + "/"
        doc = {"Statement": [
            {"Effect": "Allow", "Action": _RW, "Resource": [arn(bucket, prefix + "*")]},
            {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:ListBucketMultipartUploads"],
             "Resource": [arn(bucket)], "Condition": {"StringLike": {"s3:prefix": [prefix + "*"]}}},
            {"Effect": "Allow", "Action": ["s3:GetBucketLocation"], "Resource": [arn(bucket)]}]}
    else:
        raise PolicyError(f"unknown preset {kind!r}; presets:\n{PRESETS_HELP}")
    return Policy.parse(json.dumps({"Version": "2012-10-17", **doc}, indent=2))
