"""AWS Signature Version 2 for S3 (Dovecot's default signing).

AWS S3 Developer Guide, "Signing and Authenticating REST Requests":

    StringToSign = Verb \\n Content-MD5 \\n Content-Type \\n Date \\n
                   CanonicalizedAmzHeaders CanonicalizedResource
    Signature    = Base64(HMAC-SHA1(secret, StringToSign))

- Date is the Date header, or empty when x-amz-date is sent (which then
  takes part as an amz header); in a presigned URL it is the Expires value.
- CanonicalizedAmzHeaders: every x-amz-* header, lower-cased, sorted,
  "name:value\\n", repeated values joined with ",".
- CanonicalizedResource: "/bucket" (when the bucket is in the Host) + the
  path as sent + the sub-resources of the query (sorted, values decoded).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from urllib.parse import quote

from .errors import S3Error

# The query parameters that are part of the resource (as AWS and botocore list them).
SUBRESOURCES = frozenset({
    "accelerate", "acl", "cors", "defaultObjectAcl", "delete", "lifecycle", "location", "logging",
    "notification", "partNumber", "policy", "requestPayment", "restore", "storageClass", "tagging",
    "torrent", "uploadId", "uploads", "versionId", "versioning", "versions", "website", "replication",
    "analytics", "metrics", "inventory", "select", "select-type", "object-lock", "retention", "legal-hold",
    "response-content-type", "response-content-language", "response-expires", "response-cache-control",
    "response-content-disposition", "response-content-encoding",
})
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class V2Request:
    access_key: str
    signature: str  # base64, as sent
    date: str  # what takes Date's place in the string to sign
    presigned: bool
    expires: int = 0  # epoch seconds, presigned only


def parse_header(value: str) -> tuple[str, str]:
    """`AWS AKID:signature` -> (AKID, signature)."""
    cred = value[4:].strip()
    akid, colon, sig = cred.rpartition(":")
    if not colon or not akid or not sig:
        raise S3Error("AccessDenied", "Malformed Signature Version 2 Authorization header")
    return akid, sig


def canonical_amz_headers(headers: dict[str, list[str]]) -> str:
    out = []
    for name in sorted(h for h in headers if h.startswith("x-amz-")):
        out.append(f"{name}:{','.join(_SPACES.sub(' ', v.strip()) for v in headers[name])}\n")
    return "".join(out)


def canonical_resource(raw_path: str, vhost_bucket: str | None, query: list[tuple[str, str]]) -> str:
    resource = (f"/{vhost_bucket}" if vhost_bucket else "") + raw_path
    subs = sorted((k, v) for k, v in query if k in SUBRESOURCES)
    if subs:
        resource += "?" + "&".join(f"{k}={v}" if v != "" else k for k, v in subs)
    return resource


def string_to_sign(method: str, headers: dict[str, list[str]], date: str, resource: str) -> str:
    def one(name: str) -> str:
        values = headers.get(name)
        return values[0].strip() if values else ""

    return f"{method}\n{one('content-md5')}\n{one('content-type')}\n{date}\n{canonical_amz_headers(headers)}{resource}"


def sign(secret: str, sts: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), sts.encode("utf-8"), hashlib.sha1).digest()).decode()


def verify(secret: str, candidates: list[str], claimed: str) -> None:
    """`candidates`: the strings to sign this request may have been signed as."""
    for sts in candidates:
        if hmac.compare_digest(sign(secret, sts).encode(), claimed.encode()):
            return
    raise S3Error("SignatureDoesNotMatch", extra={"StringToSign": candidates[0]})


def resource_forms(raw_path: str, vhost_bucket: str | None, query: list[tuple[str, str]]) -> list[str]:
    """The canonical resource, plus "/bucket/" for a path-style bucket request.

    AWS documents a bucket's resource as "/bucket/" and botocore signs it so
    while sending "/bucket"; other clients sign the path exactly as sent.
    """
    forms = [canonical_resource(raw_path, vhost_bucket, query)]
    if vhost_bucket is None and raw_path.count("/") == 1 and len(raw_path) > 1:
        forms.append(canonical_resource(raw_path + "/", None, query))
    return forms


def presign_query(method: str, resource: str, access_key: str, secret: str, expires_at: int) -> str:
    """Query string of a V2 presigned URL (what boto3's HmacV1QueryAuth makes)."""
    sig = sign(secret, f"{method}\n\n\n{expires_at}\n{resource}")
    return f"AWSAccessKeyId={quote(access_key, safe='')}&Expires={expires_at}&Signature={quote(sig, safe='')}"
