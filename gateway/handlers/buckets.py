"""Service and bucket operations, and the three listings (V1, V2, versions)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from urllib.parse import quote

from aiohttp import web

from .. import lifecycle, objectlock, sse, versioning
from ..accounts import account_of, owner_field
from ..body import Expectations, receive
from ..bucket_policies import MAX_POLICY
from ..context import Gateway, S3Request, valid_bucket_name
from ..engine.model import BucketAlreadyExists, ListPage, NoSuchBucket
from ..kms import KeyNotFound
from ..policy import Policy, PolicyError
from ..s3 import numbers, xml
from ..s3.errors import S3Error
from .objects import acl_response, owner_only_acl, owner_xml

MAX_KEYS = 1000
MAX_BUCKETS = 10_000  # ListBuckets' page: AWS's default and largest


def _xml(root: str, body: str) -> web.Response:
    return web.Response(body=xml.document(root, body), content_type="application/xml")


async def list_buckets(gw: Gateway, r: S3Request) -> web.StreamResponse:
    """ListBuckets (AWS S3 API Reference, "ListBuckets"): `prefix`, `bucket-region`, and pages of
    `max-buckets` (1-10,000) continued by an opaque `continuation-token`."""
    prefix = r.query.get("prefix", "")
    limit = MAX_BUCKETS
    if "max-buckets" in r.query:
        limit = numbers.argument(r.query["max-buckets"], "max-buckets", low=1, high=MAX_BUCKETS,
                                 message="Argument max-buckets must be an integer between 1 and 10000")
    after = _untoken(r.query["continuation-token"]) if r.query.get("continuation-token") else ""
    region = r.query.get("bucket-region")
    mine = r.principal.key.account
    found = [b for b in await gw.engine.list_buckets() if account_of(b.owner) == mine
             and b.name.startswith(prefix) and b.name > after and region in (None, gw.config.region)]
    shown = found[:limit]
    buckets = "".join(
        f"<Bucket>{xml.elem('Name', b.name)}{xml.elem('CreationDate', xml.iso8601(b.created))}"
        f"{xml.elem('BucketRegion', gw.config.region)}</Bucket>" for b in shown)
    body = f"<Buckets>{buckets}</Buckets>{await owner_xml(gw, r)}"
    if len(found) > limit:
        body += xml.elem("ContinuationToken", _token(shown[-1].name))
    if "prefix" in r.query:
        body += xml.elem("Prefix", prefix)
    return _xml("ListAllMyBucketsResult", body)


async def create_bucket(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket
    if not valid_bucket_name(r.bucket):
        raise S3Error("InvalidBucketName", extra={"BucketName": r.bucket})
    exp = Expectations.from_request(r.request, r.principal.payload_hash, r.principal.chunk_seed)
    got = await receive(r.request, exp, gw.engine, run=gw.run_blocking, max_size=xml.MAX_XML_BODY)
    location = xml.parse_location_constraint(got.data)
    if location and location != gw.config.region:
        raise S3Error("InvalidLocationConstraint",
                      f"The specified location-constraint is not valid: this is {gw.config.region}")
    locked = r.headers.get("x-amz-bucket-object-lock-enabled", "").lower() == "true"
    try:
        await gw.engine.create_bucket(r.bucket, owner_field(r.principal.key.account))
        if locked:  # versioned for good, before any object is written (objectlock.py)
            created = (await gw.engine.get_bucket(r.bucket)).created
            await gw.bucket_versioning.write(r.bucket, created, versioning.ENABLED)
            await gw.bucket_object_lock.write(r.bucket, created, objectlock.LockConfig().to_text())
    except BucketAlreadyExists:
        try:
            owner = (await gw.engine.get_bucket(r.bucket)).owner
        except NoSuchBucket:  # deleted meanwhile: the name was taken when we asked
            owner = ""
        if owner != owner_field(r.principal.key.account):
            raise S3Error("BucketAlreadyExists", extra={"BucketName": r.bucket}) from None
        if gw.config.region != "us-east-1":
            raise S3Error("BucketAlreadyOwnedByYou", extra={"BucketName": r.bucket}) from None
        # AWS, CreateBucket: in us-east-1 a bucket you own already is made "again": 200
    return web.Response(headers={"Location": f"/{r.bucket}"})


async def delete_bucket(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket
    await gw.engine.delete_bucket(r.bucket)
    await gw.bucket_policies.delete(r.bucket)  # (a bucket made again would not take them anyway)
    await gw.bucket_tags.delete(r.bucket)
    await gw.bucket_encryption.delete(r.bucket)
    await gw.bucket_lifecycle.delete(r.bucket)
    await gw.bucket_versioning.delete(r.bucket)
    await gw.bucket_object_lock.delete(r.bucket)
    return web.Response(status=204)


async def get_bucket_policy(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket
    b = await gw.engine.get_bucket(r.bucket)
    policy = await gw.bucket_policies.get(r.bucket, b.created)
    if policy is None:
        raise S3Error("NoSuchBucketPolicy", extra={"BucketName": r.bucket})
    return web.Response(body=policy.text.encode(), content_type="application/json")


async def put_bucket_policy(gw: Gateway, r: S3Request) -> web.StreamResponse:
    """API Reference, PutBucketPolicy: the AWS grammar with Principals, at most 20 KB, every
    resource within the bucket; 204."""
    assert r.bucket
    b = await gw.engine.get_bucket(r.bucket)
    exp = Expectations.from_request(r.request, r.principal.payload_hash, r.principal.chunk_seed)
    got = await receive(r.request, exp, gw.engine, run=gw.run_blocking, max_size=MAX_POLICY)
    try:
        text = got.data.decode()
        Policy.parse(text, bucket=r.bucket)
    except UnicodeDecodeError:
        raise S3Error("MalformedPolicy", "The policy is not UTF-8") from None
    except PolicyError as exc:
        raise S3Error("MalformedPolicy", str(exc)) from None
    await gw.bucket_policies.put(r.bucket, b.created, text)
    return web.Response(status=204)


async def delete_bucket_policy(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket
    await gw.engine.get_bucket(r.bucket)
    await gw.bucket_policies.delete(r.bucket)
    return web.Response(status=204)


async def put_bucket_acl(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket
    await gw.engine.get_bucket(r.bucket)
    await owner_only_acl(gw, r)
    return web.Response()


async def head_bucket(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket
    await gw.engine.get_bucket(r.bucket)
    return web.Response(headers={"x-amz-bucket-region": gw.config.region})


async def get_bucket_location(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket
    await gw.engine.get_bucket(r.bucket)
    # AWS answers an empty constraint for us-east-1.
    region = "" if gw.config.region == "us-east-1" else gw.config.region
    return web.Response(body=(f'{xml.HEADER}<LocationConstraint xmlns="{xml.NS}">{xml.esc(region)}'
                              "</LocationConstraint>").encode(), content_type="application/xml")


async def get_bucket_encryption(gw: Gateway, r: S3Request) -> web.StreamResponse:
    """API Reference, GetBucketEncryption; a bucket without default encryption answers
    ServerSideEncryptionConfigurationNotFoundError (its objects are stored as sent)."""
    assert r.bucket
    b = await gw.engine.get_bucket(r.bucket)
    algorithm = await gw.bucket_encryption.read(r.bucket, b.created)
    if algorithm is None:
        raise S3Error("ServerSideEncryptionConfigurationNotFoundError", extra={"BucketName": r.bucket})
    name, _, key = algorithm.partition(" ")
    return _xml("ServerSideEncryptionConfiguration", xml.encryption(name, key or None))


async def put_bucket_encryption(gw: Gateway, r: S3Request) -> web.StreamResponse:
    """API Reference, PutBucketEncryption: AES256 (SSE-S3) or aws:kms (SSE-KMS, with the key named by
    KMSMasterKeyID or else aws/s3) as the default of every new object written without SSE headers."""
    assert r.bucket
    b = await gw.engine.get_bucket(r.bucket)
    exp = Expectations.from_request(r.request, r.principal.payload_hash, r.principal.chunk_seed)
    got = await receive(r.request, exp, gw.engine, run=gw.run_blocking, max_size=xml.MAX_XML_BODY)
    algorithm, key = xml.parse_encryption(got.data)
    if algorithm == "aws:kms:dsse":
        raise S3Error("NotImplemented", "Dual-layer server-side encryption (DSSE-KMS) is not supported")
    if algorithm not in (sse.SSE_S3, sse.SSE_KMS):
        raise S3Error("MalformedXML", f"SSEAlgorithm {algorithm[:64]!r} is not AES256, aws:kms or aws:kms:dsse")
    if key is not None and algorithm != sse.SSE_KMS:
        raise S3Error("InvalidArgument", "a KMSMasterKeyID is given only with SSEAlgorithm aws:kms")
    if key is not None:
        try:
            await gw.encryption.kms.resolve(key)
        except KeyNotFound:
            raise S3Error("KMS.NotFoundException", f"Invalid keyId {key[:128]}") from None
    await gw.bucket_encryption.write(r.bucket, b.created, f"{algorithm} {key}" if key else algorithm)
    return web.Response()


async def delete_bucket_encryption(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket
    await gw.engine.get_bucket(r.bucket)
    await gw.bucket_encryption.delete(r.bucket)
    return web.Response(status=204)


async def get_bucket_lifecycle(gw: Gateway, r: S3Request) -> web.StreamResponse:
    """API Reference, GetBucketLifecycleConfiguration: the configuration as it was put."""
    assert r.bucket
    b = await gw.engine.get_bucket(r.bucket)
    text = await gw.bucket_lifecycle.read(r.bucket, b.created)
    if text is None:
        raise S3Error("NoSuchLifecycleConfiguration", extra={"BucketName": r.bucket})
    return web.Response(body=text.encode(), content_type="application/xml")


async def put_bucket_lifecycle(gw: Gateway, r: S3Request) -> web.StreamResponse:
    """API Reference, PutBucketLifecycleConfiguration: checked whole (gateway/lifecycle.py) before it
    replaces the bucket's configuration; the gateways' worker carries it out."""
    assert r.bucket
    b = await gw.engine.get_bucket(r.bucket)
    exp = Expectations.from_request(r.request, r.principal.payload_hash, r.principal.chunk_seed)
    got = await receive(r.request, exp, gw.engine, run=gw.run_blocking, max_size=xml.MAX_XML_BODY)
    lifecycle.parse(got.data)
    try:
        text = got.data.decode()
    except UnicodeDecodeError:
        raise S3Error("MalformedXML", "The configuration is not UTF-8") from None
    await gw.bucket_lifecycle.write(r.bucket, b.created, text)
    return web.Response()


async def delete_bucket_lifecycle(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket
    await gw.engine.get_bucket(r.bucket)
    await gw.bucket_lifecycle.delete(r.bucket)
    return web.Response(status=204)


async def get_bucket_acl(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket
    await gw.engine.get_bucket(r.bucket)
    return await acl_response(gw, r)


# ------------------------------------------------------------------ listings

def max_keys_arg(r: S3Request, name: str = "max-keys") -> int:
    v = r.query.get(name)
    if v is None:
        return MAX_KEYS
    n = numbers.decimal(v.removeprefix("-")) if v[:1] == "-" else numbers.decimal(v)
    if n is None:
        raise S3Error("InvalidArgument", f"Provided {name} not an integer or within integer range",
                      extra={"ArgumentName": name, "ArgumentValue": v[:64]})
    if v[:1] == "-":
        n = -n
    if n < 0:
        raise S3Error("InvalidArgument", f"{name} must be non-negative",
                      extra={"ArgumentName": name, "ArgumentValue": v})
    return min(n, MAX_KEYS)


Encode = Callable[[str], str]  # how names go into a listing (as they are, or URL-encoded)


def name_encoder(r: S3Request) -> Encode:
    enc = r.query.get("encoding-type")
    if enc is None:
        return lambda s: s
    if enc != "url":
        raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request",
                      extra={"ArgumentName": "encoding-type", "ArgumentValue": enc})
    return lambda s: quote(s, safe="/")  # RFC 3986: a space is %20, "+" is %2B


async def _page(gw: Gateway, r: S3Request, marker: str | None, max_keys: int) -> ListPage:
    assert r.bucket
    prefix = r.query.get("prefix", "")
    delimiter = r.query.get("delimiter", "")
    return await gw.engine.list_objects(r.bucket, prefix, delimiter, marker, max_keys)


def _contents(page: ListPage, enc: Encode, owner: str) -> str:
    """The listing's hot loop (a thousand keys a page): one f-string per key. The ETag is the
    server's own quoted hex, whose quotes S3 writes as &quot;; the size and time need no escaping."""
    esc, iso8601 = xml.esc, xml.iso8601
    tail = f"{owner}<StorageClass>STANDARD</StorageClass></Contents>"
    return "".join(
        f"<Contents><Key>{esc(enc(e.key))}</Key><LastModified>{iso8601(e.mtime)}</LastModified>"
        f"<ETag>{e.etag.replace(chr(34), '&quot;')}</ETag><Size>{e.size}</Size>{tail}"
        for e in page.entries
    )


def _prefixes(page: ListPage, enc: Encode) -> str:
    return "".join(f"<CommonPrefixes>{xml.elem('Prefix', enc(p))}</CommonPrefixes>" for p in page.prefixes)


def listing_fields(r: S3Request, enc: Encode, max_keys: int, *, encode_prefix: bool = True) -> str:
    """Name, Prefix, Delimiter, MaxKeys, EncodingType. ListObjects (V1) never encodes its Prefix
    (botocore, which asks V1 listings for url encoding unasked, decodes every other field
    but that one); an empty Delimiter is no delimiter, and is not echoed."""
    prefix = r.query.get("prefix", "")
    parts = [xml.elem("Name", r.bucket), xml.elem("Prefix", enc(prefix) if encode_prefix else prefix)]
    if r.query.get("delimiter"):
        parts.append(xml.elem("Delimiter", enc(r.query["delimiter"])))
    parts.append(xml.elem("MaxKeys", max_keys))
    if "encoding-type" in r.query:
        parts.append(xml.elem("EncodingType", "url"))
    return "".join(parts)


async def list_objects(gw: Gateway, r: S3Request) -> web.StreamResponse:
    enc = name_encoder(r)
    max_keys = max_keys_arg(r)
    marker = r.query.get("marker") or None
    page = await _page(gw, r, marker, max_keys)
    body = [listing_fields(r, enc, max_keys, encode_prefix=False), xml.elem("Marker", enc(marker or "")),
            xml.elem("IsTruncated", page.truncated)]
    if page.truncated and page.next_marker is not None:
        body.append(xml.elem("NextMarker", enc(page.next_marker)))
    body.append(_contents(page, enc, await owner_xml(gw, r)))
    body.append(_prefixes(page, enc))
    return _xml("ListBucketResult", "".join(body))


def _token(marker: str) -> str:
    return base64.urlsafe_b64encode(marker.encode()).decode()


def _untoken(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect",
                      extra={"ArgumentName": "continuation-token"}) from None


async def list_objects_v2(gw: Gateway, r: S3Request) -> web.StreamResponse:
    enc = name_encoder(r)
    max_keys = max_keys_arg(r)
    token = r.query.get("continuation-token")
    start_after = r.query.get("start-after") or None
    marker = _untoken(token) if token is not None else start_after
    page = await _page(gw, r, marker, max_keys)
    owner = await owner_xml(gw, r) if r.query.get("fetch-owner") == "true" else ""
    body = [listing_fields(r, enc, max_keys), xml.elem("KeyCount", len(page.entries) + len(page.prefixes)),
            xml.elem("IsTruncated", page.truncated)]
    if token is not None:
        body.append(xml.elem("ContinuationToken", token))
    if page.truncated and page.next_marker is not None:
        body.append(xml.elem("NextContinuationToken", _token(page.next_marker)))
    if start_after is not None:
        body.append(xml.elem("StartAfter", enc(start_after)))
    body.append(_contents(page, enc, owner))
    body.append(_prefixes(page, enc))
    return _xml("ListBucketResult", "".join(body))
