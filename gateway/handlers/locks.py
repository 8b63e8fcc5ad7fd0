"""Object Lock's operations (AWS S3 API Reference): Get/PutObjectLockConfiguration and
Get/Put of an object version's retention and legal hold. The rules are gateway/objectlock.py's."""

from __future__ import annotations

import time
from dataclasses import replace

from aiohttp import web

from .. import objectlock, versioning
from ..body import Expectations, receive
from ..context import Gateway, S3Request
from ..engine.model import ObjectMeta
from ..policy import arn
from ..s3 import xml
from ..s3.errors import S3Error


def _xml(root: str, body: str) -> web.Response:
    return web.Response(body=xml.document(root, body), content_type="application/xml")


async def _body(gw: Gateway, r: S3Request) -> bytes:
    exp = Expectations.from_request(r.request, r.principal.payload_hash, r.principal.chunk_seed)
    return (await receive(r.request, exp, gw.engine, run=gw.run_blocking, max_size=xml.MAX_XML_BODY)).data


async def get_object_lock_configuration(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket
    config = await versioning.lock_config(gw, r.bucket)
    if config is None:
        raise S3Error("ObjectLockConfigurationNotFoundError", extra={"BucketName": r.bucket})
    return _xml("ObjectLockConfiguration", config.to_xml())


async def put_object_lock_configuration(gw: Gateway, r: S3Request) -> web.StreamResponse:
    """Object Lock turned on (a versioning-enabled bucket only) or its default retention changed;
    it is never turned off."""
    assert r.bucket
    b = await gw.engine.get_bucket(r.bucket)
    config = objectlock.parse_config(await _body(gw, r))
    if await gw.bucket_object_lock.read(r.bucket, b.created) is None and \
            await versioning.state(gw, r.bucket) != versioning.ENABLED:
        raise S3Error("InvalidBucketState", "Versioning must be 'Enabled' on the bucket to apply a Object Lock "
                      "configuration")
    await gw.bucket_object_lock.write(r.bucket, b.created, config.to_text())
    return web.Response()


async def _locked_bucket(gw: Gateway, r: S3Request) -> None:
    assert r.bucket
    if await versioning.lock_config(gw, r.bucket) is None:
        raise S3Error("InvalidRequest", "Bucket is missing Object Lock Configuration")


async def _version(gw: Gateway, r: S3Request) -> ObjectMeta:
    assert r.bucket and r.key
    meta = (await versioning.find(gw, r.bucket, r.key, r.query.get("versionId"))).meta
    versioning.refuse_marker(meta)
    return meta


async def get_object_retention(gw: Gateway, r: S3Request) -> web.StreamResponse:
    await _locked_bucket(gw, r)
    meta = await _version(gw, r)
    if meta.retention is None:
        raise S3Error("NoSuchObjectLockConfiguration")
    mode, until = meta.retention
    return _xml("Retention", xml.elem("Mode", mode) + xml.elem("RetainUntilDate", objectlock.iso(until)))


async def put_object_retention(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket and r.key
    await _locked_bucket(gw, r)
    root = xml.parse_xml(await _body(gw, r))
    if root.tag != "Retention":
        raise S3Error("MalformedXML")
    now = time.time()
    wanted = objectlock.retention_from(root.findtext("Mode"), root.findtext("RetainUntilDate"), now)
    bypass = bypasses(r)
    await gw.engine.change_versions(r.bucket, r.key, versioning.on_restamp(
        r.query.get("versionId"), lambda m: objectlock.new_retention(m, wanted, bypass, now), r.key))
    return web.Response()


async def get_object_legal_hold(gw: Gateway, r: S3Request) -> web.StreamResponse:
    await _locked_bucket(gw, r)
    meta = await _version(gw, r)
    return _xml("LegalHold", xml.elem("Status", "ON" if meta.legal_hold else "OFF"))


async def put_object_legal_hold(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket and r.key
    await _locked_bucket(gw, r)
    root = xml.parse_xml(await _body(gw, r))
    if root.tag != "LegalHold":
        raise S3Error("MalformedXML")
    hold = objectlock.hold_from((root.findtext("Status") or "").strip())
    await gw.engine.change_versions(r.bucket, r.key, versioning.on_restamp(
        r.query.get("versionId"), lambda m: _held(m, bool(hold)), r.key))
    return web.Response()


def _held(meta: ObjectMeta, hold: bool) -> ObjectMeta:
    return replace(meta, legal_hold=hold)


def bypasses(r: S3Request) -> bool:
    """x-amz-bypass-governance-retention: true from a principal allowed s3:BypassGovernanceRetention
    (AccessDenied when not allowed)."""
    if r.headers.get(objectlock.H_BYPASS, "").lower() != "true":
        return False
    assert r.bucket
    if not r.allows("s3:BypassGovernanceRetention", arn(r.bucket, r.key or "")):
        raise S3Error("AccessDenied")
    return True
