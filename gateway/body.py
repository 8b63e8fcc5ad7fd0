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
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import StreamReader, web
from awscrt import checksums as crt_checksums

from runtime.sealing import Sealer

from .engine.api import Engine, RunBlocking, Stager
from .engine.model import BlobRef
from .s3 import numbers
from .s3.chunked import AwsChunkedDecoder, ChunkSigner
from .s3.errors import S3Error
from .s3.sigv4 import STREAMING_PREFIX, UNSIGNED_PAYLOAD

MAX_PUT_SIZE = 5 << 30  # AWS: 5 GiB in a single PUT or part
READ_CHUNK = 1 << 20

# x-amz-checksum-<name>: how to compute it.  crc32c and crc64nvme arrive with
# the streaming and checksum work of the compatibility issue.
CHECKSUMS: dict[str, Callable[[], Digest]] = {}


class Digest(Protocol):
    def update(self, data: bytes) -> None: ...
    def b64(self) -> str: ...



class _Crc32(Digest):
    def __init__(self) -> None:
        self.v = 0

    def update(self, data: bytes) -> None:
        self.v = zlib.crc32(data, self.v)

    def b64(self) -> str:
        return base64.b64encode(self.v.to_bytes(4, "big")).decode()


class _Hash(Digest):
    def __init__(self, name: str) -> None:
        self.h = hashlib.new(name)

    def update(self, data: bytes) -> None:
        self.h.update(data)

    def b64(self) -> str:
        return base64.b64encode(self.h.digest()).decode()


class _Crt(Digest):
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
# The CRCs a FULL_OBJECT multipart checksum combines part by part: (combine(crc, next crc, next
# length), width in bytes).
COMBINE: dict[str, tuple[Callable[[int, int, int], int], int]] = {
    "crc32": (crt_checksums.combine_crc32, 4),
    "crc32c": (crt_checksums.combine_crc32c, 4),
    "crc64nvme": (crt_checksums.combine_crc64nvme, 8),
}
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
    data: bytes  # the body as stored (sealed when encrypted) when inline; b"" when it was staged
    blobs: tuple[BlobRef, ...]  # the staged pieces (the engine's stager), in order
    size: int  # of the body as sent
    md5_hex: str  # of the body as sent
    checksums: dict[str, str]  # verified, base64, to store with the object
    stored: int = 0  # the bytes stored: `size`, or the sealed size when a Sealer was given


class Digests:
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


class _Intake:
    """Each piece of the body as sent: digested, then sealed when a Sealer is given; what
    comes out is what is stored."""

    def __init__(self, digests: Digests, sealer: Sealer | None) -> None:
        self.digests, self.sealer = digests, sealer

    def take(self, piece: bytes) -> bytes:
        self.digests.update(piece)
        return self.sealer.feed(piece) if self.sealer is not None else piece

    def finish(self) -> bytes:
        return self.sealer.finish() if self.sealer is not None else b""


async def receive(request: web.BaseRequest, exp: Expectations, engine: Engine, bucket: str = "", *,
                  run: RunBlocking, upload: str | None = None, force_blob: bool = False,
                  max_size: int = MAX_PUT_SIZE, sealer: Sealer | None = None) -> Received:
    """Read the whole body; in memory up to the engine's inline_max, else streamed to its
    stager (`force_blob`: staged whatever its size, as parts are). Large bodies are
    digested (and sealed) on a worker thread (`run`), so the loop keeps serving meanwhile.
    With a `sealer`, only sealed bytes are kept or staged: the digests are of the body as sent."""
    digests = Digests(exp)
    intake = _Intake(digests, sealer)
    content = request.content
    decoder = (AwsChunkedDecoder(signer=exp.chunk_signer, expect_trailer=exp.expect_trailer)
               if exp.aws_chunked else None)
    inline_max = engine.inline_max
    if decoder is None and not force_blob and exp.length is not None and exp.length <= inline_max:
        try:
            data = await content.readexactly(exp.length) if exp.length else b""
        except asyncio.IncompleteReadError:
            raise S3Error("IncompleteBody") from None
        digests.update(data)
        stored = sealer.whole(data) if sealer is not None else data
        checksums = digests.verify(exp)
        if len(stored) <= inline_max:
            return Received(stored, (), len(data), digests.md5.hexdigest(), checksums, len(stored))
        spill = await engine.stager(bucket, upload)  # sealing made it just too large to keep inline
        try:
            await spill.write(stored)
            return Received(b"", await spill.finish(), len(data), digests.md5.hexdigest(), checksums, len(stored))
        except BaseException:
            await spill.discard()
            raise
    # Unknown length or large: buffer up to inline_max, then spill to the stager.
    buf = bytearray()
    stager: Stager | None = None
    total = kept = 0
    try:
        async for chunk in _pieces(content, decoder):
            total += len(chunk)
            if total > max_size:
                raise S3Error("EntityTooLarge")
            if exp.length is not None and total > exp.length:
                raise S3Error("InvalidRequest", "The body is longer than Content-Length")
            if stager is None:
                buf += intake.take(chunk) if sealer is not None else chunk
                if len(buf) > inline_max or force_blob:
                    stager = await engine.stager(bucket, upload)
                    first, buf = bytes(buf), bytearray()
                    if sealer is None:
                        await run(digests.update, first)
                    kept += len(first)
                    await stager.write(first)
            else:
                out = await run(intake.take, chunk)
                kept += len(out)
                await stager.write(out)
        if exp.length is not None and total != exp.length:
            raise S3Error("IncompleteBody")
        trailers = decoder.trailers if decoder is not None else None
        last = intake.finish()
        if stager is None:
            if sealer is None:
                digests.update(bytes(buf))
            data = bytes(buf) + last
            if force_blob or len(data) > inline_max:
                stager = await engine.stager(bucket, upload)
                await stager.write(data)
                kept = len(data)
            else:
                return Received(data, (), total, digests.md5.hexdigest(), digests.verify(exp, trailers), len(data))
        elif last:
            kept += len(last)
            await stager.write(last)
        checksums = digests.verify(exp, trailers)
        blobs = await stager.finish()
        return Received(b"", blobs, total, digests.md5.hexdigest(), checksums, kept)
    except BaseException:
        if stager is not None:
            await stager.discard()
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
