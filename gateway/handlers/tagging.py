"""Object and bucket tagging (issue 17): Get/Put/DeleteObjectTagging, `x-amz-tagging` on
PutObject, CreateMultipartUpload and CopyObject (`x-amz-tagging-directive`), the
`x-amz-tagging-count` of GET and HEAD, and Get/Put/DeleteBucketTagging.

An object's tags are part of its metadata, stored with its record, so they follow it through
copies, rebuilds and both engines. Objects are immutable here, so PutObjectTagging writes the
object again with its new tags (its bytes copied, its ETag and Last-Modified kept), only if
it is still the object whose tags were asked to change (If-Match on its ETag). A bucket's
tags are a shared record that names the bucket's creation, as bucket policies are.
"""

from __future__ import annotations

import json
from dataclasses import replace

from aiohttp import web

from .. import versioning
from ..body import Expectations, receive
from ..context import Gateway, S3Request
from ..engine.model import Conditions, ObjectMeta
from ..s3 import xml
from ..s3.errors import S3Error
from .objects import MAX_OBJECT_TAGS, check_tags, copy_body

MAX_BUCKET_TAGS = 50


def _xml(root: str, body: str) -> web.Response:
    return web.Response(body=xml.document(root, body), content_type="application/xml")


async def _tags_in_body(gw: Gateway, r: S3Request, limit: int) -> tuple[tuple[str, str], ...]:
    exp = Expectations.from_request(r.request, r.principal.payload_hash, r.principal.chunk_seed)
    got = await receive(r.request, exp, gw.engine, run=gw.run_blocking, max_size=xml.MAX_XML_BODY)
    return check_tags(xml.parse_tagging(got.data), limit)


async def get_object_tagging(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket and r.key
    meta = (await versioning.find(gw, r.bucket, r.key, r.query.get("versionId"))).meta
    versioning.refuse_marker(meta)
    resp = _xml("Tagging", xml.tagging(meta.tags))
    resp.headers.update(versioning.headers(meta, "versionId" in r.query))
    return resp


async def _retag(gw: Gateway, r: S3Request, tags: tuple[tuple[str, str], ...]) -> None:
    """The object written again with `tags`, if it is still the one it was."""
    assert r.bucket and r.key
    src = await versioning.find(gw, r.bucket, r.key, None)
    if "versionId" in r.query and versioning.version_of(src.meta) != r.query["versionId"]:
        versioning.check_id(r.query["versionId"])
        raise S3Error("NotImplemented", "Only the current version's tags can be changed here")
    data, blobs, _, _ = await copy_body(gw, src, 0, src.meta.body_size, r.bucket)  # as stored: sealed stays sealed
    meta: ObjectMeta = replace(src.meta, tags=tags)
    try:
        await gw.engine.put(r.bucket, r.key, meta, data, blobs, Conditions(if_match=src.meta.etag.strip('"')))
    except BaseException:
        await gw.engine.discard(blobs)
        raise


async def put_object_tagging(gw: Gateway, r: S3Request) -> web.StreamResponse:
    await _retag(gw, r, await _tags_in_body(gw, r, MAX_OBJECT_TAGS))
    return web.Response()


async def delete_object_tagging(gw: Gateway, r: S3Request) -> web.StreamResponse:
    await _retag(gw, r, ())
    return web.Response(status=204)


async def _bucket_created(gw: Gateway, r: S3Request) -> float:
    assert r.bucket
    return (await gw.engine.get_bucket(r.bucket)).created


async def get_bucket_tagging(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket
    text = await gw.bucket_tags.read(r.bucket, await _bucket_created(gw, r))
    if text is None:
        raise S3Error("NoSuchTagSet", extra={"BucketName": r.bucket})
    return _xml("Tagging", xml.tagging(tuple(tuple(t) for t in json.loads(text))))


async def put_bucket_tagging(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket
    created = await _bucket_created(gw, r)
    tags = await _tags_in_body(gw, r, MAX_BUCKET_TAGS)
    await gw.bucket_tags.write(r.bucket, created, json.dumps(tags))
    return web.Response(status=204)


async def delete_bucket_tagging(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket
    await _bucket_created(gw, r)
    await gw.bucket_tags.delete(r.bucket)
    return web.Response(status=204)
