"""Receiving a request body: bounded, digested, verified, inline or spilled to a blob.

Every check that can be made before reading is made before reading (size
limits), and every digest the client sent is verified before anything is
committed: Content-MD5 (BadDigest), x-amz-content-sha256
(XAmzContentSHA256Mismatch), x-amz-checksum-* (BadDigest).  A failed upload
leaves nothing behind: its blob file, if any, is removed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from aiohttp import StreamReader, web
from awscrt import checksums as crt_checksums

from .engine.local import INLINE_MAX
from .engine.model import BlobRef
from .engine.segments import BlobWriter, DataDir
from .s3 import numbers
from .s3.chunked import AwsChunkedDecoder, ChunkSigner
from .s3.errors import S3Error
from .s3.sigv4 import STREAMING_PREFIX, UNSIGNED_PAYLOAD

MAX_PUT_SIZE = 5 << 30  # AWS: 5 GiB in a single PUT or part
READ_CHUNK = 1 << 20

# x-amz-checksum-<name>: how to compute it.  crc32c and crc64nvme arrive with
# the streaming and checksum work of the compatibility issue.
CHECKSUMS: dict[str, Callable[[], _Digest]] = {}


T = TypeVar("T")


class RunBlocking(Protocol):
    """How blocking work leaves the event loop (Gateway.run_blocking)."""

    def __call__(self, fn: Callable[..., T], /, *args: Any) -> Awaitable[T]: ...


class _Digest(Protocol):
    def update(self, data: bytes) -> None: ...
    def b64(self) -> str: ...


class _Crc32(_Digest):
    def __init__(self) -> None:
        self.v = 0

    def update(self, data: bytes) -> None:
        self.v = zlib.crc32(data, self.v)

    def b64(self) -> str:
        return base64.b64encode(self.v.to_bytes(4, "big")).decode()


class _Hash(_Digest):
    def __init__(self, name: str) -> None:
        self.h = hashlib.new(name)

    def update(self, data: bytes) -> None:
        self.h.update(data)

    def b64(self) -> str:
        return base64.b64encode(self.h.digest()).decode()


class _Crt(_Digest):
    """CRC32C and CRC64NVME from awscrt (the implementation botocore itself uses)."""

    def __init__(self, fn: Callable[[bytes, int], int], width: int) -> None:
        self.fn, self.width, self.v = fn, width, 0

    def update(self, data: bytes) -> None:
        self.v = self.fn(data, self.v)

    def b64(self) -> str:
        return base64.b64encode(self.v.to_bytes(self.width, "big")).decode()


CHECKSUMS.update({
    "crc32": _Crc32,
    "crc32c": lambda: _Crt(crt_checksums.crc32c, 4),
    "crc64nvme": lambda: _Crt(crt_checksums.crc64nvme, 8),
    "sha1": lambda: _Hash("sha1"),
    "sha256": lambda: _Hash("sha256"),
})
STREAMING = {
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD": (True, False),  # (chunks signed, trailer)
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER": (True, True),
    "STREAMING-UNSIGNED-PAYLOAD-TRAILER": (False, True),
}


@dataclass(slots=True)
class Expectations:
    """What the client claims about the body, from its headers."""

    length: int | None  # decoded length; None: chunked, length unknown
    payload_sha256: str | None  # hex, when signed
    content_md5: bytes | None
    checksums: dict[str, str] = field(default_factory=dict)  # name -> base64 sent as a header
    trailer_checksums: list[str] = field(default_factory=list)  # names promised in x-amz-trailer
    aws_chunked: bool = False
    chunk_signer: ChunkSigner | None = None
    expect_trailer: bool = False

    @classmethod
    def from_request(cls, request: web.BaseRequest, payload_hash: str,
                     chunk_seed: ChunkSigner | None = None) -> Expectations:
        h = request.headers
        encodings = [e.strip().lower() for e in h.get("content-encoding", "").split(",") if e.strip()]
        aws_chunked = payload_hash.startswith(STREAMING_PREFIX) or "aws-chunked" in encodings
        signed_chunks = trailer = False
        if payload_hash.startswith(STREAMING_PREFIX):
            if payload_hash not in STREAMING:
                raise S3Error("NotImplemented", f"x-amz-content-sha256 {payload_hash} is not supported")
            signed_chunks, trailer = STREAMING[payload_hash]
        cl = h.get("content-length")
        cl_value = numbers.decimal(cl) if cl is not None else None
        if cl is not None and cl_value is None:
            raise S3Error("InvalidArgument", "Content-Length must be a non-negative integer")
        length: int | None
        if aws_chunked:
            decoded = h.get("x-amz-decoded-content-length")
            if decoded is None:
                raise S3Error("MissingContentLength", "aws-chunked uploads need x-amz-decoded-content-length")
            length = numbers.argument(decoded, "x-amz-decoded-content-length")
        elif cl_value is not None:
            length = cl_value
        elif "chunked" in h.get("transfer-encoding", "").lower():
            length = None
        elif request.method == "PUT":
            raise S3Error("MissingContentLength")
        else:
            length = 0 if request.method != "POST" else None
        if length is not None and length > MAX_PUT_SIZE:
            raise S3Error("EntityTooLarge", extra={"ProposedSize": str(length), "MaxSizeAllowed": str(MAX_PUT_SIZE)})
        md5_b64 = h.get("content-md5")
        content_md5 = None
        if md5_b64 is not None:
            try:
                content_md5 = base64.b64decode(md5_b64, validate=True)
            except (binascii.Error, ValueError):
                raise S3Error("InvalidDigest") from None
            if len(content_md5) != 16:
                raise S3Error("InvalidDigest")
        checksums = {n: h[f"x-amz-checksum-{n}"] for n in CHECKSUMS if f"x-amz-checksum-{n}" in h}
        promised: list[str] = []
        for name in (t.strip().lower() for t in h.get("x-amz-trailer", "").split(",") if t.strip()):
            algo = name.removeprefix("x-amz-checksum-")
            if not name.startswith("x-amz-checksum-") or algo not in CHECKSUMS:
                raise S3Error("InvalidRequest", f"Unsupported trailing header {name}")
            promised.append(algo)
        if promised and not aws_chunked:
            raise S3Error("InvalidRequest", "x-amz-trailer needs an aws-chunked body")
        sha = payload_hash if payload_hash and payload_hash != UNSIGNED_PAYLOAD and not aws_chunked else None
        signer = None
        if signed_chunks:
            if chunk_seed is None:
                raise S3Error("AccessDenied", "Signed chunks need a signed request")
            signer = ChunkSigner(chunk_seed.key, chunk_seed.amz_date, chunk_seed.scope, chunk_seed.previous)
        return cls(length, sha, content_md5, checksums, promised, aws_chunked, signer, trailer or bool(promised))


@dataclass(slots=True)
class Received:
    data: bytes  # the body when inline; b"" when it went to a blob
    blob: BlobRef | None
    size: int
    md5_hex: str
    checksums: dict[str, str]  # verified, base64, to store with the object


class _Digests:
    def __init__(self, exp: Expectations) -> None:
        self.md5 = hashlib.md5()
        self.sha = hashlib.sha256() if exp.payload_sha256 else None
        self.extra = {n: CHECKSUMS[n]() for n in (*exp.checksums, *exp.trailer_checksums)}

    def update(self, data: bytes) -> None:
        self.md5.update(data)
        if self.sha is not None:
            self.sha.update(data)
        for d in self.extra.values():
            d.update(data)

    def verify(self, exp: Expectations, trailers: dict[str, str] | None = None) -> dict[str, str]:
        if exp.content_md5 is not None and self.md5.digest() != exp.content_md5:
            raise S3Error("BadDigest")
        if self.sha is not None and self.sha.hexdigest() != exp.payload_sha256:
            raise S3Error("XAmzContentSHA256Mismatch", extra={
                "ClientComputedContentSHA256": exp.payload_sha256 or "",
                "S3ComputedContentSHA256": self.sha.hexdigest()})
        claimed = dict(exp.checksums)
        for name in exp.trailer_checksums:
            value = (trailers or {}).get(f"x-amz-checksum-{name}")
            if value is None:
                raise S3Error("InvalidRequest", f"The trailing header x-amz-checksum-{name} was promised but not sent")
            claimed[name] = value
        out = {}
        for name, d in self.extra.items():
            got = d.b64()
            if got != claimed[name]:
                raise S3Error("BadDigest", f"The {name.upper()} you specified did not match the calculated checksum.")
            out[name] = got
        return out


async def receive(request: web.BaseRequest, exp: Expectations, data_dir: DataDir, *,
                  run: RunBlocking, force_blob: bool = False,
                  max_size: int = MAX_PUT_SIZE) -> Received:
    """Read the whole body; inline when small, else streamed to a new blob file.

    `run(fn, *args)` runs blocking work off the event loop.
    """
    digests = _Digests(exp)
    content = request.content
    decoder = (AwsChunkedDecoder(signer=exp.chunk_signer, expect_trailer=exp.expect_trailer)
               if exp.aws_chunked else None)
    if decoder is None and not force_blob and exp.length is not None and exp.length <= INLINE_MAX:
        try:
            data = await content.readexactly(exp.length) if exp.length else b""
        except asyncio.IncompleteReadError:
            raise S3Error("IncompleteBody") from None
        digests.update(data)
        return Received(data, None, len(data), digests.md5.hexdigest(), digests.verify(exp))
    # Unknown length or large: buffer up to INLINE_MAX, then spill to a blob.
    buf = bytearray()
    writer: BlobWriter | None = None
    total = 0
    try:
        async for chunk in _pieces(content, decoder):
            total += len(chunk)
            if total > max_size:
                raise S3Error("EntityTooLarge")
            if exp.length is not None and total > exp.length:
                raise S3Error("InvalidRequest", "The body is longer than Content-Length")
            if writer is None:
                buf += chunk
                if len(buf) > INLINE_MAX or force_blob:
                    writer = await run(BlobWriter, data_dir)
                    first, buf = bytes(buf), bytearray()
                    await run(_absorb, writer, digests, first)
            else:
                await run(_absorb, writer, digests, chunk)
        if exp.length is not None and total != exp.length:
            raise S3Error("IncompleteBody")
        trailers = decoder.trailers if decoder is not None else None
        if writer is None:
            if force_blob:
                writer = await run(BlobWriter, data_dir)
                await run(_absorb, writer, digests, bytes(buf))
            else:
                data = bytes(buf)
                digests.update(data)
                return Received(data, None, len(data), digests.md5.hexdigest(), digests.verify(exp, trailers))
        ref = await run(writer.finish)
        checksums = digests.verify(exp, trailers)
        return Received(b"", ref, ref.size, digests.md5.hexdigest(), checksums)
    except BaseException:
        if writer is not None:
            await run(writer.discard)
        raise


async def _pieces(content: StreamReader, decoder: AwsChunkedDecoder | None) -> AsyncIterator[bytes]:
    """The decoded body, piece by piece (aws-chunked framing removed and verified)."""
    while True:
        chunk = await content.read(READ_CHUNK)
        if not chunk:
            break
        if decoder is None:
            yield chunk
        else:
            for piece in decoder.feed(chunk):
                yield piece
    if decoder is not None:
        decoder.finish()


def _absorb(writer: BlobWriter, digests: _Digests, chunk: bytes) -> None:
    digests.update(chunk)
    writer.write(chunk)


def discard_blob(data_dir: DataDir, ref: BlobRef | None) -> None:
    if ref is not None:
        data_dir.blob_path(ref.blob_id).unlink(missing_ok=True)
