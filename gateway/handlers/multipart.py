"""Multipart upload: Create, UploadPart, UploadPartCopy, Complete, Abort, ListParts, ListMultipartUploads.

Parts are staged by the engine (blob files; RADOS tail objects); Complete stitches
the object out of the parts' pieces without copying a byte (ETag: MD5 of the part
MD5s, "-N").
"""

from __future__ import annotations

import base64
import dataclasses
import time

from aiohttp import web

from runtime.sealing import Sealer

from .. import objectlock, sse, versioning
from ..body import CHECKSUMS, COMBINE, Expectations, receive
from ..context import Gateway, S3Request
from ..engine.api import Part, Upload
from ..engine.model import BlobRef, NoSuchKey, NoSuchUpload, ObjectMeta, Sealing
from ..s3 import numbers, xml
from ..s3.errors import S3Error
from ..s3.http import evaluate_preconditions
from ..s3.ops import parse_copy_source
from .objects import (
    CHECKSUM_ELEMENTS,
    copy_body,
    copy_source_key,
    keys_may_travel,
    meta_from_request,
    new_sealing,
    owner_xml,
    sealed_etag,
    write_conditions,
)

MAX_PART_NUMBER = 10000


def _xml(root: str, body: str) -> web.Response:
    return web.Response(body=xml.document(root, body), content_type="application/xml")


async def _upload(gw: Gateway, r: S3Request) -> Upload:
    assert r.bucket and r.key
    await gw.engine.get_bucket(r.bucket)
    upload = await gw.engine.get_upload(r.bucket, r.query["uploadId"])
    if upload.key != r.key:
        raise S3Error("NoSuchUpload")
    return upload


def _upload_checksum(r: S3Request) -> dict[str, str]:
    """x-amz-checksum-algorithm and x-amz-checksum-type of a CreateMultipartUpload (User Guide,
    "Checking object integrity"): FULL_OBJECT only for the CRCs, the default for CRC64NVME;
    COMPOSITE the default for the rest."""
    alg = r.headers.get("x-amz-checksum-algorithm")
    kind = r.headers.get("x-amz-checksum-type")
    if alg is None:
        if kind is not None:
            raise S3Error("InvalidRequest", "The x-amz-checksum-type header can only be used with the "
                          "x-amz-checksum-algorithm header.")
        return {}
    alg = alg.lower()
    if alg not in CHECKSUMS:
        raise S3Error("InvalidRequest", "Checksum algorithm provided is unsupported. Please try again with any of "
                      "the valid types: [CRC32, CRC32C, CRC64NVME, SHA1, SHA256]")
    kind = (kind or ("FULL_OBJECT" if alg == "crc64nvme" else "COMPOSITE")).upper()
    if kind not in ("COMPOSITE", "FULL_OBJECT") or (kind == "FULL_OBJECT" and alg not in COMBINE) \
            or (kind == "COMPOSITE" and alg == "crc64nvme"):
        raise S3Error("InvalidRequest", f"The {alg.upper()} checksum algorithm does not support the "
                      f"{kind} checksum type.")
    return {"algorithm": alg, "type": kind}


async def _part_sealer(gw: Gateway, r: S3Request, upload: Upload, number: int) -> tuple[bytes, Sealing] | None:
    """For a part of an encrypted upload: the upload's data key (SSE-C: opened with the key the
    request must send again) and the part's sealing (`stored` filled in once it is sealed)."""
    if sse.H_SSE in r.headers:
        raise S3Error("InvalidArgument", "x-amz-server-side-encryption header is not supported for this operation.",
                      extra={"ArgumentName": sse.H_SSE})
    customer = sse.customer_key(r.headers)
    if customer is not None and not keys_may_travel(r):
        raise S3Error("InvalidRequest", "Requests specifying Server Side Encryption with Customer provided keys "
                      "must be made over a secure connection.")
    s = upload.meta.sealing
    data_key = await gw.encryption.data_key(upload.meta, customer)
    if s is None or data_key is None:
        return None
    return data_key, Sealing(s.mode, s.key_id, "", 0, (number,))


async def create_upload(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket and r.key
    m = meta_from_request(r, 0, "", {})
    wanted = _upload_checksum(r)
    sealed = await new_sealing(gw, r)  # the upload's data key: every part is sealed with it
    meta = ObjectMeta(m.size, m.etag, m.mtime, m.content_type, m.headers, m.user, wanted, tags=m.tags,
                      sealing=sealed[1] if sealed is not None else None)
    asked = objectlock.requested(r.headers, time.time())
    if asked != (None, None) or await versioning.state(gw, r.bucket) is not None:  # kept until Complete
        meta = objectlock.stamped(meta, await versioning.lock_config(gw, r.bucket), asked, time.time())
    upload_id = await gw.engine.create_upload(r.bucket, r.key, meta)
    headers = sse.response_headers(meta)
    if wanted:
        headers |= {"x-amz-checksum-algorithm": wanted["algorithm"].upper(), "x-amz-checksum-type": wanted["type"]}
    resp = _xml("InitiateMultipartUploadResult",
                xml.elem("Bucket", r.bucket) + xml.elem("Key", r.key) + xml.elem("UploadId", upload_id))
    resp.headers.update(headers)
    return resp


def _part_checksums(upload: Upload, got: dict[str, str]) -> dict[str, str]:
    """A part's verified checksums; the upload's algorithm must be among them."""
    alg = upload.meta.checksums.get("algorithm")
    if alg and alg not in got:
        raise S3Error("InvalidRequest", f"The upload was created using a {alg.upper()} checksum. The part must "
                      f"include x-amz-checksum-{alg}.")
    return got


def _object_checksum(upload: Upload, parts: list[Part], claimed: dict[int, dict[str, str]]) -> dict[str, str]:
    """The object's checksum from its parts' (User Guide, "Checking object integrity"): COMPOSITE,
    the checksum of the parts' checksums with "-N"; FULL_OBJECT, the CRCs combined."""
    alg = upload.meta.checksums.get("algorithm")
    if not alg:
        return {}
    raw = []
    for p in parts:
        value = p.checksums.get(alg)
        if value is None:
            raise S3Error("InvalidRequest", f"The upload was created using a {alg.upper()} checksum. The complete "
                          f"request must include the checksum for each part. It was missing for part {p.number}.")
        if claimed.get(p.number, {}).get(alg, value) != value:
            raise S3Error("InvalidPart", f"The checksum of part {p.number} does not match the uploaded part's")
        raw.append(base64.b64decode(value))
    kind = upload.meta.checksums.get("type", "COMPOSITE")
    if kind == "FULL_OBJECT":
        combine, width = COMBINE[alg]
        crc = int.from_bytes(raw[0], "big")
        for piece, p in zip(raw[1:], parts[1:], strict=True):
            crc = combine(crc, int.from_bytes(piece, "big"), p.size)
        return {alg: base64.b64encode(crc.to_bytes(width, "big")).decode(), "type": kind}
    digest = CHECKSUMS[alg]()
    digest.update(b"".join(raw))
    return {alg: f"{digest.b64()}-{len(parts)}", "type": kind}


def _part_number(r: S3Request) -> int:
    return numbers.argument(r.query.get("partNumber", ""), "partNumber", low=1, high=MAX_PART_NUMBER,
                            message="Part number must be an integer between 1 and 10000, inclusive")


async def upload_part(gw: Gateway, r: S3Request) -> web.StreamResponse:
    number = _part_number(r)
    upload = await _upload(gw, r)
    if "x-amz-copy-source" in r.headers:
        return await upload_part_copy(gw, r, number, upload)
    exp = Expectations.from_request(r.request, r.principal.payload_hash, r.principal.chunk_seed)
    assert r.bucket
    sealed = await _part_sealer(gw, r, upload, number)
    got = await receive(r.request, exp, gw.engine, r.bucket, run=gw.run_blocking, upload=r.query["uploadId"],
                        force_blob=True, sealer=Sealer(sealed[0], number) if sealed is not None else None)
    etag, sealing = sealed_etag(sealed, got.md5_hex, got.stored)
    try:
        sums = _part_checksums(upload, got.checksums)
    except S3Error:
        await gw.engine.discard(got.blobs)
        raise
    await _store_part(gw, r, number, got.blobs, etag, sums, got.size, sealing)
    headers = {"ETag": etag, **sse.response_headers(upload.meta)}
    for name, v in got.checksums.items():
        headers[f"x-amz-checksum-{name}"] = v
    return web.Response(headers=headers)


async def _store_part(gw: Gateway, r: S3Request, number: int, blobs: tuple[BlobRef, ...], etag: str,
                      checksums: dict[str, str] | None = None, size: int | None = None,
                      sealing: Sealing | None = None) -> None:
    assert r.bucket
    try:
        await gw.engine.put_part(r.bucket, r.query["uploadId"], number, blobs, etag, checksums,
                                 size if sealing is not None else None, sealing)
    except BaseException:
        await gw.engine.discard(blobs)
        raise


async def upload_part_copy(gw: Gateway, r: S3Request, number: int, upload: Upload) -> web.StreamResponse:
    """UploadPartCopy; in an upload made with a checksum algorithm, the part's checksum is
    computed on the bytes copied, as AWS does."""
    sb, sk, source_version = parse_copy_source(r.headers["x-amz-copy-source"])
    src = await versioning.find(gw, sb, sk, source_version)
    if src.meta.marker:
        raise S3Error("InvalidRequest", "The source of a copy request may not specifically refer to a delete marker "
                      "by version id.")
    if evaluate_preconditions(r.headers, src.meta.etag, src.meta.mtime, prefix="x-amz-copy-source-"):
        raise S3Error("PreconditionFailed")
    start, end = 0, src.meta.size
    spec = r.headers.get("x-amz-copy-source-range")
    if spec is not None:
        start, end = _copy_range(spec, src.meta.size)
    assert r.bucket
    alg = upload.meta.checksums.get("algorithm")
    digest = CHECKSUMS[alg]() if alg else None
    source_key = await copy_source_key(gw, r, src)
    sealed = await _part_sealer(gw, r, upload, number)
    _, blobs, md5_hex, stored = await copy_body(gw, src, start, end, r.bucket, upload=r.query["uploadId"],
                                                also=digest, opened_with=source_key,
                                                sealer=Sealer(sealed[0], number) if sealed is not None else None)
    etag, sealing = sealed_etag(sealed, md5_hex, stored)
    sums = {alg: digest.b64()} if alg and digest is not None else {}
    await _store_part(gw, r, number, blobs, etag, sums, end - start, sealing)
    extra = "".join(xml.elem(CHECKSUM_ELEMENTS[a], v) for a, v in sums.items())
    return _xml("CopyPartResult", xml.elem("LastModified", xml.iso8601(src.meta.mtime)) + xml.elem("ETag", etag)
                + extra)


def _copy_range(spec: str, size: int) -> tuple[int, int]:
    """x-amz-copy-source-range `bytes=first-last` as [start, end): InvalidArgument when it is not
    of that form, InvalidRange when it reaches past the source (AWS, UploadPartCopy)."""
    unit, _, span = spec.strip().partition("=")
    first, dash, last = span.partition("-")
    a, b = numbers.decimal(first.strip()), numbers.decimal(last.strip())
    if unit != "bytes" or not dash or a is None or b is None or a > b:
        raise S3Error("InvalidArgument", "The x-amz-copy-source-range value must be of the form bytes=first-last "
                      "where first and last are the zero-based offsets of the first and last bytes to copy",
                      extra={"ArgumentName": "x-amz-copy-source-range", "ArgumentValue": spec[:64]})
    if b >= size:
        raise S3Error("InvalidRange", f"The specified copy range is outside the source object's size ({size})",
                      extra={"RangeRequested": spec[:64], "ActualObjectSize": str(size)})
    return a, b + 1


async def complete_upload(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket and r.key
    cond = write_conditions(r)
    try:
        upload = await _upload(gw, r)
        exp = Expectations.from_request(r.request, r.principal.payload_hash, r.principal.chunk_seed)
        got = await receive(r.request, exp, gw.engine, run=gw.run_blocking, max_size=xml.MAX_XML_BODY)
        parts = xml.parse_complete_multipart(got.data)
        sums: dict[str, str] = {}
        if upload.meta.checksums.get("algorithm"):
            stored = {p.number: p for p in await gw.engine.list_parts(r.bucket, upload.upload_id)}
            named = [stored[n] for n in dict.fromkeys(p.number for p in parts) if n in stored]
            sums = _object_checksum(upload, named, {p.number: p.checksums for p in parts})
            alg = upload.meta.checksums["algorithm"]
            sent = r.headers.get(f"x-amz-checksum-{alg}")
            if sent is not None and sent != sums[alg]:
                raise S3Error("BadDigest", f"The {alg.upper()} you specified did not match the calculated checksum.")
        now = await versioning.state(gw, r.bucket)
        version = (versioning.new_id() if now == versioning.ENABLED else "") if now is not None else ""
        decide = versioning.on_write(now, ObjectMeta(0, "", 0, version=version), cond, r.key) if now else None
        meta = await gw.engine.complete_upload(r.bucket, r.query["uploadId"], [(p.number, p.etag) for p in parts],
                                               None if decide else cond, sums, decide,
                                               lambda m: dataclasses.replace(m, version=version))
    except (NoSuchUpload, S3Error) as exc:
        if isinstance(exc, S3Error) and exc.code != "NoSuchUpload":
            raise
        # Completed already? AWS answers a repeated Complete with the same result while the object
        # it made is still there.
        try:
            done = (await gw.engine.head(r.bucket, r.key)).meta
        except NoSuchKey:
            raise exc from None
        if done.upload != r.query["uploadId"]:
            raise
        return _completed(r, done)
    return _completed(r, meta)


def _completed(r: S3Request, meta: ObjectMeta) -> web.Response:
    assert r.bucket and r.key
    host = r.headers.get("host", "")
    sums = "".join(xml.elem(CHECKSUM_ELEMENTS[a], v) for a, v in meta.checksums.items() if a in CHECKSUM_ELEMENTS)
    if sums:
        sums += xml.elem("ChecksumType", meta.checksums.get("type", "FULL_OBJECT"))
    resp = _xml("CompleteMultipartUploadResult",
                xml.elem("Location", f"http://{host}/{r.bucket}/{r.key}") + xml.elem("Bucket", r.bucket)
                + xml.elem("Key", r.key) + xml.elem("ETag", meta.etag) + sums)
    resp.headers.update(sse.response_headers(meta))
    resp.headers.update(versioning.headers(meta))
    return resp


async def abort_upload(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket
    await _upload(gw, r)
    await gw.engine.abort_upload(r.bucket, r.query["uploadId"])
    return web.Response(status=204)


async def list_parts(gw: Gateway, r: S3Request) -> web.StreamResponse:
    upload = await _upload(gw, r)
    max_parts = min(numbers.argument(r.query.get("max-parts", "1000"), "max-parts"), 1000)
    marker = numbers.argument(r.query.get("part-number-marker", "0") or "0", "part-number-marker")
    parts = [p for p in await gw.engine.list_parts(upload.bucket, upload.upload_id) if p.number > marker]
    shown = parts[:max_parts]
    truncated = len(parts) > max_parts
    k = r.principal.key
    body = [xml.elem("Bucket", r.bucket), xml.elem("Key", r.key), xml.elem("UploadId", upload.upload_id),
            f"<Initiator>{xml.elem('ID', k.access_key)}{xml.elem('DisplayName', k.name)}</Initiator>",
            await owner_xml(gw, r), "<StorageClass>STANDARD</StorageClass>",
            xml.elem("PartNumberMarker", marker), xml.elem("MaxParts", max_parts),
            xml.elem("IsTruncated", truncated)]
    if truncated and shown:
        body.append(xml.elem("NextPartNumberMarker", shown[-1].number))
    for p in shown:
        body.append(f"<Part>{xml.elem('PartNumber', p.number)}{xml.elem('LastModified', xml.iso8601(p.mtime))}"
                    f"{xml.elem('ETag', p.etag)}{xml.elem('Size', p.size)}</Part>")
    return _xml("ListPartsResult", "".join(body))


async def list_uploads(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket
    prefix = r.query.get("prefix", "")
    uploads = [u for u in await gw.engine.list_uploads(r.bucket) if u.key.startswith(prefix)]
    key_marker = r.query.get("key-marker", "")
    id_marker = r.query.get("upload-id-marker", "")
    if key_marker:
        uploads = [u for u in uploads if (u.key, u.upload_id) > (key_marker, id_marker) or u.key > key_marker]
    max_uploads = min(numbers.argument(r.query.get("max-uploads", "1000") or "1000", "max-uploads"), 1000)
    shown = uploads[:max_uploads]
    truncated = len(uploads) > max_uploads
    k = r.principal.key
    body = [xml.elem("Bucket", r.bucket), xml.elem("KeyMarker", key_marker),
            xml.elem("UploadIdMarker", id_marker), xml.elem("Prefix", prefix),
            xml.elem("MaxUploads", max_uploads), xml.elem("IsTruncated", truncated)]
    if truncated and shown:
        body.append(xml.elem("NextKeyMarker", shown[-1].key) + xml.elem("NextUploadIdMarker", shown[-1].upload_id))
    owner = await owner_xml(gw, r)
    for u in shown:
        body.append(f"<Upload>{xml.elem('Key', u.key)}{xml.elem('UploadId', u.upload_id)}"
                    f"<Initiator>{xml.elem('ID', k.access_key)}{xml.elem('DisplayName', k.name)}</Initiator>"
                    f"{owner}<StorageClass>STANDARD</StorageClass>"
                    f"{xml.elem('Initiated', xml.iso8601(u.initiated))}</Upload>")
    return _xml("ListMultipartUploadsResult", "".join(body))
