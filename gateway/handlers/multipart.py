"""Multipart upload: Create, UploadPart, UploadPartCopy, Complete, Abort, ListParts, ListMultipartUploads.

Parts are staged by the engine (blob files; RADOS tail objects); Complete stitches
the object out of the parts' pieces without copying a byte (ETag: MD5 of the part
MD5s, "-N").
"""

from __future__ import annotations

from aiohttp import web

from ..body import Expectations, receive
from ..context import Gateway, S3Request
from ..engine.api import Upload
from ..engine.model import BlobRef, NoSuchKey, NoSuchUpload
from ..s3 import numbers, xml
from ..s3.errors import S3Error
from ..s3.http import evaluate_preconditions
from ..s3.ops import parse_copy_source
from .objects import copy_body, meta_from_request, owner_xml, write_conditions

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


async def create_upload(gw: Gateway, r: S3Request) -> web.StreamResponse:
    assert r.bucket and r.key
    meta = meta_from_request(r, 0, "", {})
    upload_id = await gw.engine.create_upload(r.bucket, r.key, meta)
    return _xml("InitiateMultipartUploadResult",
                xml.elem("Bucket", r.bucket) + xml.elem("Key", r.key) + xml.elem("UploadId", upload_id))


def _part_number(r: S3Request) -> int:
    return numbers.argument(r.query.get("partNumber", ""), "partNumber", low=1, high=MAX_PART_NUMBER,
                            message="Part number must be an integer between 1 and 10000, inclusive")


async def upload_part(gw: Gateway, r: S3Request) -> web.StreamResponse:
    number = _part_number(r)
    await _upload(gw, r)
    if "x-amz-copy-source" in r.headers:
        return await upload_part_copy(gw, r, number)
    exp = Expectations.from_request(r.request, r.principal.payload_hash, r.principal.chunk_seed)
    assert r.bucket
    got = await receive(r.request, exp, gw.engine, r.bucket, run=gw.run_blocking, upload=r.query["uploadId"],
                        force_blob=True)
    etag = f'"{got.md5_hex}"'
    await _store_part(gw, r, number, got.blobs, etag)
    headers = {"ETag": etag}
    for name, v in got.checksums.items():
        headers[f"x-amz-checksum-{name}"] = v
    return web.Response(headers=headers)


async def _store_part(gw: Gateway, r: S3Request, number: int, blobs: tuple[BlobRef, ...], etag: str) -> None:
    assert r.bucket
    try:
        await gw.engine.put_part(r.bucket, r.query["uploadId"], number, blobs, etag)
    except BaseException:
        await gw.engine.discard(blobs)
        raise


async def upload_part_copy(gw: Gateway, r: S3Request, number: int) -> web.StreamResponse:
    sb, sk = parse_copy_source(r.headers["x-amz-copy-source"])
    src = await gw.engine.head(sb, sk)
    if evaluate_preconditions(r.headers, src.meta.etag, src.meta.mtime, prefix="x-amz-copy-source-"):
        raise S3Error("PreconditionFailed")
    start, end = 0, src.meta.size
    spec = r.headers.get("x-amz-copy-source-range")
    if spec is not None:
        start, end = _copy_range(spec, src.meta.size)
    assert r.bucket
    _, blobs, md5_hex = await copy_body(gw, src, start, end, r.bucket, upload=r.query["uploadId"])
    etag = f'"{md5_hex}"'
    await _store_part(gw, r, number, blobs, etag)
    return _xml("CopyPartResult", xml.elem("LastModified", xml.iso8601(src.meta.mtime)) + xml.elem("ETag", etag))


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
        await _upload(gw, r)
        exp = Expectations.from_request(r.request, r.principal.payload_hash, r.principal.chunk_seed)
        got = await receive(r.request, exp, gw.engine, run=gw.run_blocking, max_size=xml.MAX_XML_BODY)
        parts = xml.parse_complete_multipart(got.data)
        meta = await gw.engine.complete_upload(r.bucket, r.query["uploadId"], [(p.number, p.etag) for p in parts],
                                               cond)
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
        return _completed(r, done.etag)
    return _completed(r, meta.etag)


def _completed(r: S3Request, etag: str) -> web.Response:
    assert r.bucket and r.key
    host = r.headers.get("host", "")
    return _xml("CompleteMultipartUploadResult",
                xml.elem("Location", f"http://{host}/{r.bucket}/{r.key}") + xml.elem("Bucket", r.bucket)
                + xml.elem("Key", r.key) + xml.elem("ETag", etag))


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
