"""Object operations: Get, Head, Put, Copy, Delete, DeleteObjects."""

from __future__ import annotations

import base64
import dataclasses
import email.errors
import email.header
import email.utils
import hashlib
import time
from datetime import datetime
from urllib.parse import parse_qsl

from aiohttp import web

from runtime.sealing import Sealer

from .. import lifecycle, objectlock, sse, versioning
from ..body import CHECKSUMS, Digest, Expectations, receive
from ..context import Gateway, S3Request
from ..engine.api import Found
from ..engine.model import (
    BlobRef,
    Conditions,
    CorruptRecord,
    NoSuchKey,
    ObjectLocked,
    ObjectMeta,
    PreconditionFailed,
    Sealing,
)
from ..policy import arn
from ..s3 import numbers, xml
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
            text = metadata_in(value)
            user[short] = text if short not in user else f"{user[short]},{text}"
            total += len(short) + len(value)
    if total > MAX_USER_METADATA:
        raise S3Error("MetadataTooLarge", extra={"MaxSizeAllowed": str(MAX_USER_METADATA)})
    stored = {k: h[k] for k in STORED_HEADERS if k in h}
    if "content-encoding" in stored:  # aws-chunked is transport framing, not the object's encoding
        codings = stored["content-encoding"].split(",")
        kept = [e for e in codings if e.strip().lower() != "aws-chunked"]
        if not kept:
            del stored["content-encoding"]
        elif len(kept) < len(codings):  # otherwise the value stays exactly as sent
            stored["content-encoding"] = ",".join(kept).strip()
    ctype = h.get("content-type") or "binary/octet-stream"
    return ObjectMeta(size, etag, time.time(), ctype, stored, user, checksums, tags=tags_from_header(r) or ())


MAX_OBJECT_TAGS = 10  # AWS: an object has at most 10 tags


def check_tags(tags: list[tuple[str, str]], limit: int) -> tuple[tuple[str, str], ...]:
    """AWS's rules (User Guide, "Categorizing your storage using tags"): at most `limit` tags,
    keys of 1-128 and values of 0-256 characters, each key once, none beginning with "aws:"."""
    if len(tags) > limit:
        raise S3Error("BadRequest", f"Object tags cannot be greater than {limit}" if limit == MAX_OBJECT_TAGS
                      else f"Bucket tags cannot be greater than {limit}")
    seen = set()
    for key, value in tags:
        if not 1 <= len(key) <= 128 or len(value) > 256:
            raise S3Error("InvalidTag", "The TagKey you have provided is too long, max 128" if len(key) > 128
                          else "The TagValue you have provided is too long, max 256" if len(value) > 256
                          else "The TagKey you have provided is invalid")
        if key.lower().startswith("aws:"):
            raise S3Error("InvalidTag", "Your TagKey cannot be prefixed with aws:")
        if key in seen:
            raise S3Error("InvalidTag", "Cannot provide multiple Tags with the same key")
        seen.add(key)
    return tuple(tags)


def tags_from_header(r: S3Request) -> tuple[tuple[str, str], ...] | None:
    """`x-amz-tagging: k1=v1&k2=v2` (URL query encoding), or None when absent."""
    text = r.headers.get("x-amz-tagging")
    if text is None:
        return None
    return check_tags(parse_qsl(text, keep_blank_values=True), MAX_OBJECT_TAGS)


def metadata_in(value: str) -> str:
    """A user metadata value as AWS stores it (S3 User Guide, "Working with object metadata"):
    RFC 2047 encoded-words decoded; other non-ASCII bytes read as UTF-8, or else ISO-8859-1
    (what Python's http.client sends). aiohttp hands the header's bytes over as UTF-8 with
    surrogate escapes."""
    raw = value.encode("utf-8", "surrogateescape")
    if raw.isascii():
        if "=?" not in value:
            return value
        try:
            return str(email.header.make_header(email.header.decode_header(value)))
        except (email.errors.HeaderParseError, LookupError, UnicodeDecodeError, ValueError):
            return value  # not an encoded-word after all: kept as sent
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def metadata_out(value: str) -> str:
    """A stored user metadata value as AWS returns it: as is when ASCII, else RFC 2047
    encoded (B, UTF-8), so a value sent encoded comes back exactly as sent."""
    if value.isascii():
        return value
    return f"=?UTF-8?B?{base64.b64encode(value.encode()).decode()}?="


def object_headers(meta: ObjectMeta, *, checksum_mode: bool = False, part_number: bool = False,
                   version_asked: bool = False) -> dict[str, str]:
    out = {
        "ETag": meta.etag,
        "Last-Modified": http_date(meta.mtime),
        "Content-Type": meta.content_type,
        "Accept-Ranges": "bytes",
    }
    for k, v in meta.headers.items():
        out[k.title()] = v
    for k, v in meta.user.items():
        out[f"x-amz-meta-{k}"] = metadata_out(v)
    if meta.tags:
        out["x-amz-tagging-count"] = str(len(meta.tags))
    if meta.parts and part_number:  # AWS sends it only to a request by partNumber
        out["x-amz-mp-parts-count"] = str(meta.parts)
    if checksum_mode:
        for name, v in meta.checksums.items():
            out[f"x-amz-checksum-{name}"] = v
    if meta.sealing is not None:
        out.update(sse.response_headers(meta))
    if meta.version or version_asked:
        out.update(versioning.headers(meta, version_asked))
    if meta.retention is not None or meta.legal_hold:
        out.update(objectlock.response_headers(meta))
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


def _requested(r: S3Request, meta: ObjectMeta) -> ByteRange | None:
    """The span a GET or HEAD asks for: its Range, or the part `?partNumber=N` names (AWS,
    GetObject: a ranged GET of that part; an object not uploaded in parts is its own part 1)."""
    if "partNumber" not in r.query:
        return parse_range(r.headers.get("range"), meta.size)
    n = numbers.argument(r.query["partNumber"], "partNumber", low=1, high=10_000,
                         message="Part number must be an integer between 1 and 10000, inclusive")
    if "range" in r.headers:
        raise S3Error("InvalidRequest", "Cannot specify both Range header and partNumber query parameter")
    if meta.parts and not meta.part_sizes:
        raise S3Error("NotImplemented", "This object was completed before its part sizes were kept")
    sizes = meta.part_sizes or (meta.size,)
    if n > len(sizes):
        raise S3Error("InvalidPart", f"The object has {len(sizes)} part(s), not {n}",
                      extra={"PartNumber": str(n)})
    if not meta.parts:
        return None  # the whole object, as a plain GET answers it
    start = sum(sizes[:n - 1])
    return ByteRange(start, start + sizes[n - 1] - 1)


def keys_may_travel(r: S3Request) -> bool:
    """Whether this request may carry an SSE-C key (sse.is_secure)."""
    return sse.is_secure(r.request.secure, r.request.remote, r.headers.get("x-forwarded-proto"))


async def _opening(gw: Gateway, r: S3Request, info: Found, *, reading: bool) -> bytes | None:
    """The data key a GET opens the object with (None: stored in plaintext), after the checks
    AWS makes of the request's SSE headers; a HEAD (not `reading`) only checks them, opening
    a key only to check an SSE-C key."""
    sse.refuse_on_read(r.headers)
    customer = sse.customer_key(r.headers)
    if customer is not None and not keys_may_travel(r):
        raise S3Error("InvalidRequest", "Requests specifying Server Side Encryption with Customer provided keys "
                      "must be made over a secure connection.")
    if customer is None and (info.meta.sealing is None or (not reading and info.meta.sealing.mode != sse.SSE_C)):
        return None
    return await gw.encryption.data_key(info.meta, customer)


async def expiration(gw: Gateway, bucket: str, key: str, meta: ObjectMeta) -> dict[str, str]:
    """x-amz-expiration, when a lifecycle rule of the bucket will expire this (current) object."""
    b = await gw.engine.bucket_info(bucket, fresh=False)
    text = await gw.bucket_lifecycle.read(bucket, b.created)
    if text is None:
        return {}
    value = lifecycle.expiration_header(lifecycle.rules_of(text), key, meta.size, meta.tags, meta.mtime)
    return {"x-amz-expiration": value} if value is not None else {}


async def head_object(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket and r.key
    info = await _found(gw, r)
    if info.meta.sealing is not None or sse.H_ALGORITHM in r.headers or sse.H_SSE in r.headers:
        await _opening(gw, r, info, reading=False)
    if (not_modified := _preconditions(r, info)) is not None:
        return not_modified
    headers = object_headers(info.meta, checksum_mode=r.headers.get("x-amz-checksum-mode") == "ENABLED",
                             part_number="partNumber" in r.query, version_asked="versionId" in r.query)
    if "versionId" not in r.query:
        headers.update(await expiration(gw, r.bucket, r.key, info.meta))
    rng = _requested(r, info.meta)
    if rng is not None:
        headers["Content-Range"] = rng.content_range(info.meta.size)
        headers["Content-Length"] = str(rng.length)
        return web.Response(status=206, headers=headers)
    headers["Content-Length"] = str(info.meta.size)
    return web.Response(headers=headers)


async def _found(gw: Gateway, r: S3Request) -> Found:
    """The object a GET or HEAD reads: the current one, or its `versionId` (never a delete marker)."""
    assert r.bucket and r.key
    if "versionId" not in r.query:
        try:
            return await gw.engine.head(r.bucket, r.key)  # the hot path: one lookup
        except NoSuchKey:
            pass
    info = await versioning.find(gw, r.bucket, r.key, r.query.get("versionId"))
    versioning.refuse_marker(info.meta)
    return info


async def get_object(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket and r.key
    info = await _found(gw, r)
    data_key = None
    if info.meta.sealing is not None or sse.H_ALGORITHM in r.headers or sse.H_SSE in r.headers:
        data_key = await _opening(gw, r, info, reading=True)
    if (not_modified := _preconditions(r, info)) is not None:
        return not_modified
    size = info.meta.size
    rng = _requested(r, info.meta)
    headers = object_headers(info.meta, checksum_mode=(
        rng is None and r.headers.get("x-amz-checksum-mode") == "ENABLED"), part_number="partNumber" in r.query,
        version_asked="versionId" in r.query)
    if "versionId" not in r.query:
        headers.update(await expiration(gw, r.bucket, r.key, info.meta))
    for param, header in RESPONSE_OVERRIDES.items():
        if param in r.query:
            headers[header] = header_value(r.query[param], param)
    status = 200
    span = ByteRange(0, size - 1) if size else None
    if rng is not None:
        status = 206
        span = rng
        headers["Content-Range"] = rng.content_range(size)
    if data_key is not None:
        start, end = (span.start, span.end + 1) if span is not None else (0, 0)
        if not gw.engine.streamed(info):
            body = await sse.read_opened(gw.engine, gw.run_blocking, info, data_key, start, end)
            return web.Response(status=status, body=body, headers=headers)
        it = sse.opened(gw.engine, gw.run_blocking, info, data_key, start, end)
    elif not gw.engine.streamed(info):
        body = await gw.engine.read(info)
        if span is not None and status == 206:
            body = body[span.start:span.end + 1]
        return web.Response(status=status, body=body, headers=headers)
    else:
        assert span is not None
        it = gw.engine.stream(info, span.start, span.end + 1)
    # Streamed: verified pieces; a checksum failure mid-stream aborts the
    # connection, so the client sees a truncated body, never wrong bytes.
    assert span is not None
    headers["Content-Length"] = str(span.length)
    resp = web.StreamResponse(status=status, headers=headers)
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


def write_conditions(r: S3Request) -> Conditions | None:
    """If-None-Match ("*" or ETags) and If-Match ("*" or an ETag) of a PutObject, CopyObject
    or CompleteMultipartUpload (AWS S3 User Guide, "Conditional writes")."""
    inm = r.headers.get("if-none-match")
    im = r.headers.get("if-match")
    if inm is None and im is None:
        return None
    etags = tuple(e.strip().removeprefix("W/").strip('"') for e in (inm or "").split(",") if e.strip())
    return Conditions(if_none_match_any="*" in etags, if_match=im.strip().strip('"') if im else None,
                      if_none_match=tuple(e for e in etags if e != "*"))


def delete_conditions(r: S3Request) -> Conditions | None:
    """If-Match, x-amz-if-match-size and x-amz-if-match-last-modified-time of a DeleteObject."""
    im = r.headers.get("if-match")
    size = r.headers.get("x-amz-if-match-size")
    when = r.headers.get("x-amz-if-match-last-modified-time")
    if im is None and size is None and when is None:
        return None
    return Conditions(if_match=im.strip().strip('"') if im else None,
                      size=numbers.argument(size, "x-amz-if-match-size") if size is not None else None,
                      mtime=_timestamp(when, "x-amz-if-match-last-modified-time") if when is not None else None)


def _timestamp(text: str, name: str) -> int:
    """An HTTP date (RFC 7231) or an ISO 8601 time, as epoch seconds."""
    try:
        return int(email.utils.parsedate_to_datetime(text).timestamp())
    except (TypeError, ValueError):
        pass
    try:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
    except ValueError:
        raise S3Error("InvalidArgument", f"{name} is not a date", extra={"ArgumentName": name}) from None


async def put_object(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket and r.key
    if "x-amz-copy-source" in r.headers:
        return await copy_object(gw, r)
    cond = write_conditions(r)
    exp = Expectations.from_request(r.request, r.principal.payload_hash, r.principal.chunk_seed)
    m = meta_from_request(r, 0, "", {})  # validated before a byte of the body is read
    sealed = await new_sealing(gw, r)
    got = await receive(r.request, exp, gw.engine, r.bucket, run=gw.run_blocking,
                        sealer=Sealer(sealed[0]) if sealed is not None else None)
    etag, sealing = sealed_etag(sealed, got.md5_hex, got.stored)
    meta = ObjectMeta(got.size, etag, m.mtime, m.content_type, m.headers, m.user, got.checksums,
                      tags=m.tags, sealing=sealing)
    try:
        meta, decide, cond = await versioning.for_write(gw, r.bucket, r.key, meta, cond, r.headers)
        await gw.engine.put(r.bucket, r.key, meta, got.data, got.blobs, cond, decide)
    except BaseException:
        await gw.engine.discard(got.blobs)
        raise
    headers = {"ETag": meta.etag, **sse.response_headers(meta), **versioning.headers(meta),
               **await expiration(gw, r.bucket, r.key, meta)}
    for name, v in got.checksums.items():
        headers[f"x-amz-checksum-{name}"] = v
    return web.Response(headers=headers)


async def new_sealing(gw: Gateway, r: S3Request) -> tuple[bytes, Sealing] | None:
    """The data key and sealing a new object written by this request gets (its SSE headers,
    else its bucket's default encryption), or None: stored in plaintext."""
    assert r.bucket
    default = None
    if sse.H_SSE not in r.headers and sse.H_ALGORITHM not in r.headers:
        b = await gw.engine.bucket_info(r.bucket, fresh=False)
        default = await gw.bucket_encryption.read(r.bucket, b.created)
    w = sse.wanted(r.headers, default, keys_may_travel(r))
    return await gw.encryption.new(w) if w is not None else None


def sealed_etag(sealed: tuple[bytes, Sealing] | None, md5_hex: str, stored: int) -> tuple[str, Sealing | None]:
    """A new object's ETag and sealing: the body's MD5, keyed for SSE-C (as on AWS, not the MD5)."""
    if sealed is None:
        return f'"{md5_hex}"', None
    data_key, s = sealed[0], dataclasses.replace(sealed[1], stored=stored)
    return (f'"{sse.keyed_etag(data_key, md5_hex)}"' if s.mode == sse.SSE_C else f'"{md5_hex}"'), s


async def copy_body(gw: Gateway, src: Found, start: int, end: int, bucket: str,
                    upload: str | None = None, also: Digest | None = None, *, opened_with: bytes | None = None,
                    sealer: Sealer | None = None) -> tuple[bytes, tuple[BlobRef, ...], str, int]:
    """The bytes [start, end) of src as a new body (in memory, or staged in `bucket`; always
    staged for a part of `upload`): the body, its pieces, the MD5 of the bytes copied and the
    size stored; `also` is fed the same bytes. With `opened_with` (src's data key) the bytes
    are src's plaintext; else they are what src stores, as stored. With a `sealer` the new
    body is sealed (the MD5 and `also` are of what was copied)."""
    pieces = (sse.opened(gw.engine, gw.run_blocking, src, opened_with, start, end) if opened_with is not None
              else gw.engine.stream(src, start, end))
    small = end - start <= gw.engine.inline_max and upload is None
    h = hashlib.md5()
    out = bytearray()
    stager = None
    try:
        async for piece in pieces:
            if small:
                h.update(piece)
                if also is not None:
                    also.update(piece)
            else:
                await gw.run_blocking(h.update, piece)
                if also is not None:
                    await gw.run_blocking(also.update, piece)
            out += sealer.feed(piece) if sealer is not None else piece
            if (len(out) > gw.engine.inline_max or upload is not None) and stager is None:
                stager = await gw.engine.stager(bucket, upload)
            if stager is not None and out:
                await stager.write(bytes(out))
                out.clear()
        if sealer is not None:
            out += sealer.finish()
        if stager is None and (len(out) > gw.engine.inline_max or upload is not None):
            stager = await gw.engine.stager(bucket, upload)
        if stager is None:
            return bytes(out), (), h.hexdigest(), len(out)
        if out:
            await stager.write(bytes(out))
        blobs = await stager.finish()
        return b"", blobs, h.hexdigest(), sum(b.size for b in blobs)
    except BaseException:
        if stager is not None:
            await stager.discard()
        raise


async def copy_object(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket and r.key
    sb, sk, source_version = parse_copy_source(r.headers["x-amz-copy-source"])
    src = await versioning.find(gw, sb, sk, source_version)
    if src.meta.marker:  # AWS: a delete marker is not a copy source
        raise S3Error("InvalidRequest", "The source of a copy request may not specifically refer to a delete marker "
                      "by version id.") if source_version else S3Error("NoSuchKey")
    if evaluate_preconditions(r.headers, src.meta.etag, src.meta.mtime, prefix="x-amz-copy-source-"):
        raise S3Error("PreconditionFailed")
    directive = r.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise S3Error("InvalidArgument", "Unknown metadata directive.")
    source_key = await copy_source_key(gw, r, src)
    if (sb, sk) == (r.bucket, r.key) and source_version is None and directive == "COPY" and sse.H_SSE not in r.headers \
            and sse.H_ALGORITHM not in r.headers:
        raise S3Error("InvalidRequest", "This copy request is illegal because it is trying to copy an "
                      "object to itself without changing the object's metadata, storage class, website "
                      "redirect location or encryption attributes.")
    tagging = r.headers.get("x-amz-tagging-directive", "COPY").upper()
    if tagging not in ("COPY", "REPLACE"):
        raise S3Error("InvalidArgument", "Unknown tagging directive.")
    tags = src.meta.tags if tagging == "COPY" else (tags_from_header(r) or ())
    algorithm = r.headers.get("x-amz-checksum-algorithm", "").lower() or None
    if algorithm is not None and algorithm not in CHECKSUMS:
        raise S3Error("InvalidRequest", "Checksum algorithm provided is unsupported. Please try again with any of "
                      "the valid types: [CRC32, CRC32C, CRC64NVME, SHA1, SHA256]")
    digest = CHECKSUMS[algorithm]() if algorithm is not None else None
    sealed = await new_sealing(gw, r)
    data, blobs, md5_hex, stored = await copy_body(gw, src, 0, src.meta.size, r.bucket, also=digest,
                                                   opened_with=source_key,
                                                   sealer=Sealer(sealed[0]) if sealed is not None else None)
    etag, sealing = sealed_etag(sealed, md5_hex, stored)
    if directive == "REPLACE":
        meta = meta_from_request(r, src.meta.size, etag, {})
    else:
        s = src.meta
        meta = ObjectMeta(s.size, etag, time.time(), s.content_type, s.headers, s.user, s.checksums)
    meta = dataclasses.replace(meta, tags=tags, sealing=sealing)
    if algorithm is not None and digest is not None:  # the copy's own, computed on its bytes
        meta = dataclasses.replace(meta, checksums={algorithm: digest.b64()})
    try:
        meta, decide, cond = await versioning.for_write(gw, r.bucket, r.key, meta, write_conditions(r), r.headers)
        await gw.engine.put(r.bucket, r.key, meta, data, blobs, cond, decide)
    except BaseException:
        await gw.engine.discard(blobs)
        raise
    out = {**sse.response_headers(meta), **versioning.headers(meta)}
    if source_version is not None or src.meta.version:
        out["x-amz-copy-source-version-id"] = versioning.version_of(src.meta)
    sums = "".join(xml.elem(CHECKSUM_ELEMENTS[a], v) for a, v in meta.checksums.items()
                   if a in CHECKSUM_ELEMENTS and algorithm is not None)
    body = xml.document("CopyObjectResult", xml.elem("LastModified", xml.iso8601(meta.mtime))
                        + xml.elem("ETag", meta.etag) + sums)
    return web.Response(body=body, content_type="application/xml", headers=out)


async def copy_source_key(gw: Gateway, r: S3Request, src: Found) -> bytes | None:
    """The data key that opens a copy's source (None: stored in plaintext), from the
    request's x-amz-copy-source-server-side-encryption-customer-* headers for an SSE-C source."""
    customer = sse.customer_key(r.headers, sse.COPY_SOURCE)
    if customer is not None and not keys_may_travel(r):
        raise S3Error("InvalidRequest", "Requests specifying Server Side Encryption with Customer provided keys "
                      "must be made over a secure connection.")
    if customer is None and src.meta.sealing is None:
        return None
    return await gw.encryption.data_key(src.meta, customer)


async def delete_object(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket and r.key
    bypass = r.headers.get(objectlock.H_BYPASS, "").lower() == "true" and \
        r.allows("s3:BypassGovernanceRetention", arn(r.bucket, r.key))
    headers = await delete_one(gw, r.bucket, r.key, r.query.get("versionId"), delete_conditions(r), bypass)
    return web.Response(status=204, headers=headers)


async def delete_one(gw: Gateway, bucket: str, key: str, version_id: str | None,
                     cond: Conditions | None, bypass: bool = False) -> dict[str, str]:
    """DeleteObject of a key or of one version (AWS S3 User Guide, "Deleting object versions"):
    the answer's x-amz-delete-marker and x-amz-version-id headers."""
    if version_id is not None:
        versioning.check_id(version_id)
        outcome = versioning.Outcome()
        await gw.engine.change_versions(bucket, key, versioning.on_delete_version(version_id, outcome, cond, key,
                                                                                  bypass))
        out = {"x-amz-version-id": version_id}
        if outcome.was_marker:
            out["x-amz-delete-marker"] = "true"
        return out
    now = await versioning.state(gw, bucket)
    if now is None:
        await gw.engine.delete(bucket, key, cond)
        return {}
    dm = versioning.marker(now)
    await gw.engine.change_versions(bucket, key, versioning.on_delete(now, dm, cond, key))
    return {"x-amz-delete-marker": "true", "x-amz-version-id": versioning.version_of(dm)}


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
    if any(v is not None for v in req.versions) or await versioning.state(gw, r.bucket) is not None:
        return await _delete_versions(gw, r, req)
    errors: dict[str, tuple[str, str]] = {}
    for k in req.keys:
        if len(k.encode()) > 1024:
            errors[k] = ("KeyTooLongError", "Your key is too long")
        elif not r.allows("s3:DeleteObject", arn(r.bucket, k)):
            errors[k] = ("AccessDenied", "Access Denied")
    for k, c in req.conditions.items():  # <ETag>, <Size>, <LastModifiedTime>: each on its own
        if k not in errors:
            try:
                await gw.engine.delete(r.bucket, k, Conditions(if_match=c.etag, size=c.size, mtime=c.mtime))
            except PreconditionFailed:
                errors[k] = ("PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
            except NoSuchKey:
                errors[k] = ("NoSuchKey", "The specified key does not exist.")
    await gw.engine.delete_many(r.bucket, [k for k in req.keys if k not in errors and k not in req.conditions])
    parts = []
    for k in req.keys:
        if k in errors:
            parts.append(_delete_error(k, None, *errors[k]))
        elif not req.quiet:
            parts.append(f"<Deleted>{xml.elem('Key', k)}</Deleted>")
    return web.Response(body=xml.document("DeleteResult", "".join(parts)), content_type="application/xml")


def _delete_error(key: str, version_id: str | None, code: str, message: str) -> str:
    v = xml.elem("VersionId", version_id) if version_id is not None else ""
    return f"<Error>{xml.elem('Key', key)}{v}{xml.elem('Code', code)}{xml.elem('Message', message)}</Error>"


async def _delete_versions(gw: Gateway, r: S3Request, req: xml.DeleteRequest) -> web.StreamResponse:
    """DeleteObjects in a versioned bucket, or naming versions: each entry as its DeleteObject
    would be (a delete marker, or that version removed)."""
    assert r.bucket
    parts = []
    for k, v in zip(req.keys, req.versions, strict=True):
        if len(k.encode()) > 1024:
            parts.append(_delete_error(k, v, "KeyTooLongError", "Your key is too long"))
            continue
        if not r.allows("s3:DeleteObjectVersion" if v is not None else "s3:DeleteObject", arn(r.bucket, k)):
            parts.append(_delete_error(k, v, "AccessDenied", "Access Denied"))
            continue
        c = req.conditions.get(k)
        bypass = r.headers.get(objectlock.H_BYPASS, "").lower() == "true" and \
            r.allows("s3:BypassGovernanceRetention", arn(r.bucket, k))
        try:
            said = await delete_one(gw, r.bucket, k, v, None if c is None else
                                    Conditions(if_match=c.etag, size=c.size, mtime=c.mtime), bypass)
        except PreconditionFailed:
            parts.append(_delete_error(k, v, "PreconditionFailed",
                                       "At least one of the pre-conditions you specified did not hold"))
            continue
        except NoSuchKey:
            parts.append(_delete_error(k, v, "NoSuchKey", "The specified key does not exist."))
            continue
        except ObjectLocked:
            parts.append(_delete_error(k, v, "AccessDenied", "Access Denied because object protected by object lock."))
            continue
        except S3Error as exc:
            parts.append(_delete_error(k, v, exc.code, exc.message))
            continue
        if req.quiet:
            continue
        out = xml.elem("Key", k) + (xml.elem("VersionId", v) if v is not None else "")
        if said.get("x-amz-delete-marker") == "true":
            out += xml.elem("DeleteMarker", "true")
            out += xml.elem("DeleteMarkerVersionId", said["x-amz-version-id"])
        parts.append(f"<Deleted>{out}</Deleted>")
    return web.Response(body=xml.document("DeleteResult", "".join(parts)), content_type="application/xml")


async def get_object_acl(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket and r.key
    await _found(gw, r)
    return await acl_response(gw, r)


ATTRIBUTES = ("ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize")
CHECKSUM_ELEMENTS = {"crc32": "ChecksumCRC32", "crc32c": "ChecksumCRC32C", "crc64nvme": "ChecksumCRC64NVME",
                     "sha1": "ChecksumSHA1", "sha256": "ChecksumSHA256"}


async def get_object_attributes(gw: Gateway, r: S3Request) -> web.StreamResponse:
    """API Reference, GetObjectAttributes: the attributes `x-amz-object-attributes` names, without
    the body; ObjectParts paged by `x-amz-max-parts` and `x-amz-part-number-marker`."""
    assert r.bucket and r.key
    wanted = [a.strip() for a in r.headers.get("x-amz-object-attributes", "").split(",") if a.strip()]
    if not wanted or any(a not in ATTRIBUTES for a in wanted):
        raise S3Error("InvalidArgument", "Invalid attribute name specified.",
                      extra={"ArgumentName": "x-amz-object-attributes"})
    max_parts = numbers.argument(r.headers.get("x-amz-max-parts", "1000"), "x-amz-max-parts", high=1000)
    marker = numbers.argument(r.headers.get("x-amz-part-number-marker", "0"), "x-amz-part-number-marker")
    meta = (await _found(gw, r)).meta
    out = []
    if "ETag" in wanted:
        out.append(xml.elem("ETag", meta.etag.strip('"')))
    if "Checksum" in wanted and meta.checksums:
        inner = "".join(xml.elem(CHECKSUM_ELEMENTS[a], v) for a, v in meta.checksums.items() if a in CHECKSUM_ELEMENTS)
        out.append(f"<Checksum>{inner}{xml.elem('ChecksumType', meta.checksums.get('type', 'FULL_OBJECT'))}"
                   "</Checksum>")
    if "ObjectParts" in wanted and meta.parts:
        inner = xml.elem("PartsCount", meta.parts)  # TotalPartsCount in the SDKs
        if meta.part_sizes:
            rest = [(n, size) for n, size in enumerate(meta.part_sizes, 1) if n > marker]
            shown = rest[:max_parts]
            inner += (xml.elem("PartNumberMarker", marker) + xml.elem("MaxParts", max_parts)
                      + xml.elem("IsTruncated", len(rest) > max_parts))
            if len(rest) > max_parts and shown:
                inner += xml.elem("NextPartNumberMarker", shown[-1][0])
            inner += "".join(f"<Part>{xml.elem('PartNumber', n)}{xml.elem('Size', size)}</Part>" for n, size in shown)
        out.append(f"<ObjectParts>{inner}</ObjectParts>")
    if "StorageClass" in wanted:
        out.append(xml.elem("StorageClass", "STANDARD"))
    if "ObjectSize" in wanted:
        out.append(xml.elem("ObjectSize", meta.size))
    return web.Response(body=xml.document("GetObjectAttributesResponse", "".join(out)),
                        content_type="application/xml", headers={"Last-Modified": http_date(meta.mtime)})


async def put_object_acl(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket and r.key
    await gw.engine.head(r.bucket, r.key)
    await owner_only_acl(gw, r)
    return web.Response()


async def owner_only_acl(gw: Gateway, r: S3Request) -> None:
    """A PutBucketAcl / PutObjectAcl: accepted when it says what is true anyway (a canned
    private ACL, or a body granting the owner FULL_CONTROL and nothing else); any other grant
    is AccessControlListNotSupported, as on an AWS bucket with ACLs off."""
    exp = Expectations.from_request(r.request, r.principal.payload_hash, r.principal.chunk_seed)
    body = (await receive(r.request, exp, gw.engine, run=gw.run_blocking, max_size=xml.MAX_XML_BODY)).data
    if not body.strip():
        return  # the headers said it (checked with every request: refuse_acls)
    account = await gw.accounts.known(r.principal.key.account)
    if xml.acl_grants(body) != [(account.canonical_id, "FULL_CONTROL")]:
        raise S3Error("AccessControlListNotSupported", "The bucket does not allow ACLs")


async def owner_xml(gw: Gateway, r: S3Request) -> str:
    """<Owner> of what the request touches: its account, which owns every bucket it may reach."""
    account = await gw.accounts.known(r.principal.key.account)
    return xml.owner(account.canonical_id, account.display)


async def acl_response(gw: Gateway, r: S3Request) -> web.Response:
    """The owner's FULL_CONTROL, the only grant there is (canned ACL "private")."""
    account = await gw.accounts.known(r.principal.key.account)
    body = (xml.owner(account.canonical_id, account.display)
            + "<AccessControlList><Grant><Grantee xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\""
            f" xsi:type=\"CanonicalUser\">{xml.elem('ID', account.canonical_id)}"
            f"{xml.elem('DisplayName', account.display)}</Grantee>"
            "<Permission>FULL_CONTROL</Permission></Grant></AccessControlList>")
    return web.Response(body=xml.document("AccessControlPolicy", body), content_type="application/xml")

