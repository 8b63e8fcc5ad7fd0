"""Object operations: Get, Head, Put, Copy, Delete, DeleteObjects."""

from __future__ import annotations

import hashlib
import time

from aiohttp import web

from ..body import Expectations, receive
from ..context import Gateway, S3Request
from ..engine.api import Found
from ..engine.model import BlobRef, Conditions, CorruptRecord, ObjectMeta
from ..policy import arn
from ..s3 import xml
from ..s3.errors import S3Error
from ..s3.http import ByteRange, evaluate_preconditions, header_value, http_date, parse_range
from ..s3.ops import parse_copy_source

STORED_HEADERS = ("cache-control", "content-disposition", "content-encoding", "content-language", "expires")
RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}
MAX_USER_METADATA = 2048  # AWS: user-defined metadata is limited to 2 KB
STREAM_BLOCK = 1 << 20


def meta_from_request(r: S3Request, size: int, etag: str, checksums: dict[str, str]) -> ObjectMeta:
    h = r.headers
    user: dict[str, str] = {}
    total = 0
    for name, value in h.items():
        lname = name.lower()
        if lname.startswith("x-amz-meta-"):
            short = lname[11:]
            header_value(value, name)
            user[short] = value if short not in user else f"{user[short]},{value}"
            total += len(short) + len(value)
    if total > MAX_USER_METADATA:
        raise S3Error("MetadataTooLarge", extra={"MaxSizeAllowed": str(MAX_USER_METADATA)})
    stored = {k: h[k] for k in STORED_HEADERS if k in h}
    if "content-encoding" in stored:  # aws-chunked is transport framing, not the object's encoding
        kept = [e for e in stored["content-encoding"].split(",") if e.strip().lower() != "aws-chunked"]
        if kept:
            stored["content-encoding"] = ",".join(e.strip() for e in kept)
        else:
            del stored["content-encoding"]
    ctype = h.get("content-type") or "binary/octet-stream"
    return ObjectMeta(size, etag, time.time(), ctype, stored, user, checksums)


def object_headers(meta: ObjectMeta, *, checksum_mode: bool = False) -> dict[str, str]:
    out = {
        "ETag": meta.etag,
        "Last-Modified": http_date(meta.mtime),
        "Content-Type": meta.content_type,
        "Accept-Ranges": "bytes",
    }
    for k, v in meta.headers.items():
        out[k.title()] = v
    for k, v in meta.user.items():
        out[f"x-amz-meta-{k}"] = v
    if meta.parts:
        out["x-amz-mp-parts-count"] = str(meta.parts)
    if checksum_mode:
        for name, v in meta.checksums.items():
            out[f"x-amz-checksum-{name}"] = v
    return out


def _preconditions(r: S3Request, info: Found) -> web.Response | None:
    """412 as an error; 304 as the response to send; None to go on."""
    status = evaluate_preconditions(r.headers, info.meta.etag, info.meta.mtime)
    if status == 412:
        raise S3Error("PreconditionFailed", extra={"Condition": "If-Match"})
    if status == 304:
        return web.Response(status=304, headers={"ETag": info.meta.etag,
                                                 "Last-Modified": http_date(info.meta.mtime)})
    return None


async def head_object(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket and r.key
    info = await gw.engine.head(r.bucket, r.key)
    if (not_modified := _preconditions(r, info)) is not None:
        return not_modified
    headers = object_headers(info.meta, checksum_mode=r.headers.get("x-amz-checksum-mode") == "ENABLED")
    rng = parse_range(r.headers.get("range"), info.meta.size)
    if rng is not None:
        headers["Content-Range"] = rng.content_range(info.meta.size)
        headers["Content-Length"] = str(rng.length)
        return web.Response(status=206, headers=headers)
    headers["Content-Length"] = str(info.meta.size)
    return web.Response(headers=headers)


async def get_object(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket and r.key
    if "partNumber" in r.query:
        raise S3Error("NotImplemented", "GetObject by partNumber is not supported yet")
    info = await gw.engine.head(r.bucket, r.key)
    if (not_modified := _preconditions(r, info)) is not None:
        return not_modified
    size = info.meta.size
    rng = parse_range(r.headers.get("range"), size)
    headers = object_headers(info.meta, checksum_mode=(
        rng is None and r.headers.get("x-amz-checksum-mode") == "ENABLED"))
    for param, header in RESPONSE_OVERRIDES.items():
        if param in r.query:
            headers[header] = header_value(r.query[param], param)
    status = 200
    span = ByteRange(0, size - 1) if size else None
    if rng is not None:
        status = 206
        span = rng
        headers["Content-Range"] = rng.content_range(size)
    if not gw.engine.streamed(info):
        body = await gw.engine.read(info)
        if span is not None and status == 206:
            body = body[span.start:span.end + 1]
        return web.Response(status=status, body=body, headers=headers)
    # Streamed: verified pieces; a checksum failure mid-stream aborts the
    # connection, so the client sees a truncated body, never wrong bytes.
    assert span is not None
    headers["Content-Length"] = str(span.length)
    resp = web.StreamResponse(status=status, headers=headers)
    it = gw.engine.stream(info, span.start, span.end + 1)
    first = await anext(it, None)  # fail before the status line if the first piece is bad
    await resp.prepare(r.request)
    piece = first
    try:
        while piece is not None:
            await resp.write(piece)
            piece = await anext(it, None)
    except CorruptRecord:
        # Headers are out: the only honest move left is to cut the connection,
        # so the client sees a short body (an error), never wrong bytes.
        if r.request.transport is not None:
            r.request.transport.abort()
        raise ConnectionResetError("corrupt block; response aborted") from None
    await resp.write_eof()
    return resp


def _conditions(r: S3Request) -> Conditions | None:
    inm = r.headers.get("if-none-match")
    im = r.headers.get("if-match")
    if inm is None and im is None:
        return None
    if inm is not None and inm.strip() != "*":
        raise S3Error("NotImplemented", "If-None-Match on PUT accepts only '*'")
    return Conditions(if_none_match_any=inm is not None, if_match=im.strip().strip('"') if im else None)


async def put_object(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket and r.key
    if "x-amz-copy-source" in r.headers:
        return await copy_object(gw, r)
    cond = _conditions(r)
    exp = Expectations.from_request(r.request, r.principal.payload_hash, r.principal.chunk_seed)
    m = meta_from_request(r, 0, "", {})  # validated before a byte of the body is read
    got = await receive(r.request, exp, gw.engine, r.bucket, run=gw.run_blocking)
    meta = ObjectMeta(got.size, f'"{got.md5_hex}"', m.mtime, m.content_type, m.headers, m.user, got.checksums)
    try:
        await gw.engine.put(r.bucket, r.key, meta, got.data, got.blobs, cond)
    except BaseException:
        await gw.engine.discard(got.blobs)
        raise
    headers = {"ETag": meta.etag}
    for name, v in got.checksums.items():
        headers[f"x-amz-checksum-{name}"] = v
    return web.Response(headers=headers)


async def copy_body(gw: Gateway, src: Found, start: int, end: int, bucket: str,
                    upload: str | None = None) -> tuple[bytes, tuple[BlobRef, ...], str]:
    """The bytes [start, end) of src as a new body (in memory, or staged in `bucket`; always
    staged for a part of `upload`) and their MD5."""
    if end - start <= gw.engine.inline_max and upload is None:
        data = ((await gw.engine.read(src))[start:end] if not gw.engine.streamed(src)
                else b"".join([piece async for piece in gw.engine.stream(src, start, end)]))
        return data, (), hashlib.md5(data).hexdigest()
    h = hashlib.md5()
    stager = await gw.engine.stager(bucket, upload)
    try:
        async for piece in gw.engine.stream(src, start, end):
            await gw.run_blocking(h.update, piece)
            await stager.write(piece)
        return b"", await stager.finish(), h.hexdigest()
    except BaseException:
        await stager.discard()
        raise


async def copy_object(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket and r.key
    sb, sk = parse_copy_source(r.headers["x-amz-copy-source"])
    src = await gw.engine.head(sb, sk)
    if evaluate_preconditions(r.headers, src.meta.etag, src.meta.mtime, prefix="x-amz-copy-source-"):
        raise S3Error("PreconditionFailed")
    directive = r.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise S3Error("InvalidArgument", "Unknown metadata directive.")
    if (sb, sk) == (r.bucket, r.key) and directive == "COPY":
        raise S3Error("InvalidRequest", "This copy request is illegal because it is trying to copy an "
                      "object to itself without changing the object's metadata, storage class, website "
                      "redirect location or encryption attributes.")
    data, blobs, md5_hex = await copy_body(gw, src, 0, src.meta.size, r.bucket)
    etag = f'"{md5_hex}"'
    if directive == "REPLACE":
        meta = meta_from_request(r, src.meta.size, etag, {})
    else:
        s = src.meta
        meta = ObjectMeta(s.size, etag, time.time(), s.content_type, s.headers, s.user, s.checksums)
    try:
        await gw.engine.put(r.bucket, r.key, meta, data, blobs, _conditions(r))
    except BaseException:
        await gw.engine.discard(blobs)
        raise
    body = xml.document("CopyObjectResult", xml.elem("LastModified", xml.iso8601(meta.mtime))
                        + xml.elem("ETag", meta.etag))
    return web.Response(body=body, content_type="application/xml")


async def delete_object(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket and r.key
    await gw.engine.delete(r.bucket, r.key)
    return web.Response(status=204)


async def delete_objects(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket
    exp = Expectations.from_request(r.request, r.principal.payload_hash, r.principal.chunk_seed)
    if exp.content_md5 is None and not exp.checksums:
        raise S3Error("InvalidRequest", "Missing required header for this request: Content-MD5")
    if exp.length is not None and exp.length > xml.MAX_XML_BODY:
        raise S3Error("MalformedXML", "The XML body is larger than this operation accepts")
    got = await receive(r.request, exp, gw.engine, run=gw.run_blocking, max_size=xml.MAX_XML_BODY)
    req = xml.parse_delete(got.data)
    if not await gw.engine.bucket_exists(r.bucket):
        raise S3Error("NoSuchBucket")
    errors: dict[str, tuple[str, str]] = {}
    for k in req.keys:
        if len(k.encode()) > 1024:
            errors[k] = ("KeyTooLongError", "Your key is too long")
        elif not gw.access.allows(r.principal.key, "s3:DeleteObject", arn(r.bucket, k)):
            errors[k] = ("AccessDenied", "Access Denied")
    await gw.engine.delete_many(r.bucket, [k for k in req.keys if k not in errors])
    parts = []
    for k in req.keys:
        if k in errors:
            code, message = errors[k]
            parts.append(f"<Error>{xml.elem('Key', k)}{xml.elem('Code', code)}{xml.elem('Message', message)}</Error>")
        elif not req.quiet:
            parts.append(f"<Deleted>{xml.elem('Key', k)}</Deleted>")
    return web.Response(body=xml.document("DeleteResult", "".join(parts)), content_type="application/xml")


async def get_object_acl(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket and r.key
    await gw.engine.head(r.bucket, r.key)
    return acl_response(r)


def acl_response(r: S3Request) -> web.Response:
    owner_id = r.principal.key.access_key
    body = (xml.owner(owner_id, r.principal.key.name or owner_id)
            + "<AccessControlList><Grant><Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\""
            f" xsi:type=\"CanonicalUser\">{xml.elem('ID', owner_id)}</Grantee>"
            "<Permission>FULL_CONTROL</Permission></Grant></AccessControlList>")
    return web.Response(body=xml.document("AccessControlPolicy", body), content_type="application/xml")

