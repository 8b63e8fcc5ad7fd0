"""Bucket versioning's own operations: Get/PutBucketVersioning and ListObjectVersions
(AWS S3 API Reference). What writes and deletes do to versions is gateway/versioning.py's."""

from __future__ import annotations

from aiohttp import web

from .. import versioning
from ..body import Expectations, receive
from ..context import Gateway, S3Request
from ..engine.model import SEP, NoSuchKey, ObjectMeta
from ..s3 import xml
from ..s3.errors import S3Error
from .buckets import listing_fields, max_keys_arg, name_encoder
from .objects import owner_xml

BATCH = 1000
LAST = "\U0010ffff"  # sorts after every character: "<name>" LAST skips every name that begins with <name>


def _xml(root: str, body: str) -> web.Response:
    return web.Response(body=xml.document(root, body), content_type="application/xml")


async def get_bucket_versioning(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket
    now = await versioning.state(gw, r.bucket)
    return _xml("VersioningConfiguration", xml.elem("Status", now) if now else "")


async def put_bucket_versioning(gw: Gateway, r: S3Request) -> web.StreamResponse:
    """Enabled or Suspended; a bucket once versioned is never unversioned again. MFA delete
    needs an MFA device, which this gateway has none of: 501."""
    assert r.bucket
    b = await gw.engine.get_bucket(r.bucket)
    exp = Expectations.from_request(r.request, r.principal.payload_hash, r.principal.chunk_seed)
    root = xml.parse_xml((await receive(r.request, exp, gw.engine, run=gw.run_blocking,
                                        max_size=xml.MAX_XML_BODY)).data)
    if root.tag != "VersioningConfiguration":
        raise S3Error("MalformedXML")
    status = root.findtext("Status")
    mfa = root.findtext("MfaDelete")
    if mfa is not None and mfa.strip() not in ("Disabled", "Enabled"):
        raise S3Error("MalformedXML", "MfaDelete must be Enabled or Disabled")
    if mfa is not None and mfa.strip() == "Enabled":
        raise S3Error("NotImplemented", "MFA delete is not supported")
    if status is None:
        return web.Response()  # nothing to change (AWS accepts an empty configuration)
    if status.strip() not in (versioning.ENABLED, versioning.SUSPENDED):
        raise S3Error("MalformedXML", "Status must be Enabled or Suspended")
    if status.strip() == versioning.SUSPENDED and await versioning.lock_config(gw, r.bucket) is not None:
        raise S3Error("InvalidBucketState", "An Object Lock configuration is present on this bucket, so the "
                      "versioning state cannot be changed.")
    await gw.bucket_versioning.write(r.bucket, b.created, status.strip())
    return web.Response()


async def list_object_versions(gw: Gateway, r: S3Request) -> web.StreamResponse:
    """Every version of every key under `prefix` (current, noncurrent, delete markers), by key
    and then newest first; pages continue at (key-marker, version-id-marker)."""
    assert r.bucket
    enc = name_encoder(r)
    max_keys = max_keys_arg(r)
    prefix = r.query.get("prefix", "")
    delimiter = r.query.get("delimiter", "")
    key_marker = r.query.get("key-marker") or None
    vid_marker = r.query.get("version-id-marker") or None
    if vid_marker is not None and key_marker is None:
        raise S3Error("InvalidArgument", "A version-id marker cannot be specified without a key marker.",
                      extra={"ArgumentName": "version-id-marker", "ArgumentValue": vid_marker[:64]})
    after: str | None = None
    seen: str | None = None  # the key whose newer versions were on an earlier page
    if key_marker is not None:
        after = key_marker + SEP + LAST
        if vid_marker is not None:
            versioning.check_id(vid_marker)
            seen = key_marker
            after = await _after_version(gw, r.bucket, key_marker, vid_marker)
        elif delimiter and key_marker.startswith(prefix) and (i := key_marker.find(delimiter, len(prefix))) >= 0:
            after = key_marker[: i + len(delimiter)] + LAST  # a common prefix given back as the marker
    items: list[tuple[str, ObjectMeta, bool] | str] = []  # (key, meta, latest) or a common prefix
    more = True
    while more and len(items) <= max_keys:
        rows, more = await gw.engine.version_page(r.bucket, prefix, after, BATCH)
        for name, meta, current in rows:
            after = name
            key = name if current else name.rsplit(SEP, 1)[0]
            if delimiter and (i := key.find(delimiter, len(prefix))) >= 0:
                items.append(key[: i + len(delimiter)])
                after, more = key[: i + len(delimiter)] + LAST, True
                break
            items.append((key, meta, current or key != seen))
            seen = key
            if len(items) > max_keys:
                break
        if not rows:
            break
    truncated = len(items) > max_keys
    items = items[:max_keys]
    owner = await owner_xml(gw, r)
    body = [listing_fields(r, enc, max_keys), xml.elem("KeyMarker", enc(key_marker or "")),
            xml.elem("VersionIdMarker", vid_marker or ""), xml.elem("IsTruncated", truncated)]
    if truncated and items:
        last = items[-1]
        if isinstance(last, str):
            body.append(xml.elem("NextKeyMarker", enc(last)))
        else:
            body.append(xml.elem("NextKeyMarker", enc(last[0])))
            body.append(xml.elem("NextVersionIdMarker", versioning.version_of(last[1])))
    for item in items:
        if isinstance(item, str):
            continue
        key, meta, latest = item
        common = (f"{xml.elem('Key', enc(key))}{xml.elem('VersionId', versioning.version_of(meta))}"
                  f"{xml.elem('IsLatest', latest)}{xml.elem('LastModified', xml.iso8601(meta.mtime))}")
        if meta.marker:
            body.append(f"<DeleteMarker>{common}{owner}</DeleteMarker>")
        else:
            body.append(f"<Version>{common}{xml.elem('ETag', meta.etag)}{xml.elem('Size', meta.size)}"
                        f"<StorageClass>STANDARD</StorageClass>{owner}</Version>")
    body += [f"<CommonPrefixes>{xml.elem('Prefix', enc(p))}</CommonPrefixes>" for p in items if isinstance(p, str)]
    return _xml("ListVersionsResult", "".join(body))


async def _after_version(gw: Gateway, bucket: str, key: str, version_id: str) -> str:
    """Where a page continues after (key, version id): after the current object when that is
    the version, else after that noncurrent version (after the whole key if it is gone)."""
    try:
        current = await gw.engine.head(bucket, key)
        if versioning.version_of(current.meta) == version_id:
            return key
    except NoSuchKey:  # no current object: the marker is a noncurrent version
        pass
    order = versioning.order_named(version_id, await gw.engine.versions(bucket, key))
    return key + SEP + (order if order is not None else LAST)
