"""Which S3 operation a request is: method x (service | bucket | object) x subresource.

Pure; the table follows the AWS S3 API reference's request syntax for each
operation.  Unknown subresources are NotImplemented rather than silently
served as the plain operation (a client asking for ?tagging must not get the
object body).
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import S3Error
from .http import decode_path

# Subresources we answer at the bucket level with fixed documents.
_BUCKET_GET = {
    "location": "GetBucketLocation",
    "uploads": "ListMultipartUploads",
    "versions": "ListObjectVersions",
    "versioning": "GetBucketVersioning",
    "acl": "GetBucketAcl",
    "policy": "GetBucketPolicy",
    "tagging": "GetBucketTagging",
    "encryption": "GetBucketEncryption",
    "lifecycle": "GetBucketLifecycleConfiguration",
    "object-lock": "GetObjectLockConfiguration",
}
_UNSUPPORTED = {
    "cors", "website", "logging", "notification",
    "replication", "torrent", "restore", "select",
    "accelerate", "requestPayment", "analytics", "metrics", "inventory", "intelligent-tiering",
    "ownershipControls", "publicAccessBlock", "policyStatus",
}


def operation(method: str, bucket: str | None, key: str | None, query: Mapping[str, str]) -> str:
    for name in query:
        if name in _UNSUPPORTED:
            raise S3Error("NotImplemented", f"The ?{name} subresource is not implemented")
    if bucket is None:
        if method in ("GET", "HEAD"):
            return "ListBuckets"
        raise S3Error("MethodNotAllowed")
    if key is None:
        if method == "GET":
            for sub, op in _BUCKET_GET.items():
                if sub in query:
                    return op
            return "ListObjectsV2" if query.get("list-type") == "2" else "ListObjects"
        if method == "HEAD":
            return "HeadBucket"
        if method == "PUT":
            if "policy" in query:
                return "PutBucketPolicy"
            if "tagging" in query:
                return "PutBucketTagging"
            if "acl" in query:
                return "PutBucketAcl"
            if "encryption" in query:
                return "PutBucketEncryption"
            if "lifecycle" in query:
                return "PutBucketLifecycleConfiguration"
            if "versioning" in query:
                return "PutBucketVersioning"
            if "object-lock" in query:
                return "PutObjectLockConfiguration"
            return "CreateBucket"
        if method == "DELETE":
            if "tagging" in query:
                return "DeleteBucketTagging"
            if "encryption" in query:
                return "DeleteBucketEncryption"
            if "lifecycle" in query:
                return "DeleteBucketLifecycle"
            return "DeleteBucketPolicy" if "policy" in query else "DeleteBucket"
        if method == "POST" and "delete" in query:
            return "DeleteObjects"
        raise S3Error("MethodNotAllowed")
    for name in ("encryption", "lifecycle", "object-lock"):
        if name in query:
            raise S3Error("NotImplemented", f"The ?{name} subresource is a bucket's, not an object's")
    if method == "GET":
        if "uploadId" in query:
            return "ListParts"
        if "acl" in query:
            return "GetObjectAcl"
        if "attributes" in query:
            return "GetObjectAttributes"
        if "tagging" in query:
            return "GetObjectTagging"
        if "retention" in query:
            return "GetObjectRetention"
        if "legal-hold" in query:
            return "GetObjectLegalHold"
        return "GetObject"
    if method == "HEAD":
        return "HeadObject"
    if method == "PUT":
        if "partNumber" in query and "uploadId" in query:
            return "UploadPart"
        if "acl" in query:
            return "PutObjectAcl"
        if "tagging" in query:
            return "PutObjectTagging"
        if "retention" in query:
            return "PutObjectRetention"
        if "legal-hold" in query:
            return "PutObjectLegalHold"
        return "PutObject"
    if method == "DELETE":
        if "tagging" in query:
            return "DeleteObjectTagging"
        return "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        if "uploadId" in query:
            return "CompleteMultipartUpload"
    raise S3Error("MethodNotAllowed")


def parse_copy_source(value: str) -> tuple[str, str, str | None]:
    """x-amz-copy-source: "[/]bucket/key[?versionId=...]", URL-encoded: bucket, key, version id."""
    path, versioned, version = value.partition("?versionId=")
    src = decode_path(path).lstrip("/")
    bucket, slash, key = src.partition("/")
    if not slash or not key or not bucket:
        raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key: sourcebucket/sourcekey")
    return bucket, key, (version if versioned else None)
