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
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from aiohttp import web

from .engine.local import INLINE_MAX
from .engine.model import BlobRef
from .engine.segments import BlobWriter, DataDir
from .s3.errors import S3Error
from .s3.sigv4 import STREAMING_PREFIX, UNSIGNED_PAYLOAD

MAX_PUT_SIZE = 5 << 30  # AWS: 5 GiB in a single PUT or part
READ_CHUNK = 1 << 20

# x-amz-checksum-<name>: how to compute it.  crc32c and crc64nvme arrive with
# the streaming and checksum work of the compatibility issue.
CHECKSUMS: dict[str, Callable[[], "_Digest"]] = {}


class _Digest:
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


CHECKSUMS.update({"crc32": _Crc32, "sha1": lambda: _Hash("sha1"), "sha256": lambda: _Hash("sha256")})
UNSUPPORTED_CHECKSUMS = ("crc32c", "crc64nvme")


@dataclass(slots=True)
class Expectations:
    """What the client claims about the body, from its headers."""

    length: int | None  # None: chunked, length unknown
    payload_sha256: str | None  # hex, when signed
    content_md5: bytes | None
    checksums: dict[str, str] = field(default_factory=dict)  # name -> base64 sent

    @classmethod
    def from_request(cls, request: web.BaseRequest, payload_hash: str) -> Expectations:
        h = request.headers
        if payload_hash.startswith(STREAMING_PREFIX) or h.get("content-encoding", "").startswith("aws-chunked"):
            raise S3Error("NotImplemented", "aws-chunked streaming uploads are not supported yet")
        cl = h.get("content-length")
        if cl is not None:
            if not cl.isdigit():
                raise S3Error("InvalidArgument", "Content-Length must be a non-negative integer")
            length: int | None = int(cl)
        elif "chunked" in h.get("transfer-encoding", "").lower():
            length = None
        else:
            length = 0 if request.method not in ("PUT", "POST") else None
            if request.method == "PUT":
                raise S3Error("MissingContentLength")
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
        checksums: dict[str, str] = {}
        for name in (*CHECKSUMS, *UNSUPPORTED_CHECKSUMS):
            v = h.get(f"x-amz-checksum-{name}")
            if v is not None:
                if name in UNSUPPORTED_CHECKSUMS:
                    raise S3Error("NotImplemented", f"x-amz-checksum-{name} is not supported yet")
                checksums[name] = v
        sha = payload_hash if payload_hash and payload_hash != UNSIGNED_PAYLOAD else None
        return cls(length, sha, content_md5, checksums)


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
        self.extra = {n: CHECKSUMS[n]() for n in exp.checksums}

    def update(self, data: bytes) -> None:
        self.md5.update(data)
        if self.sha is not None:
            self.sha.update(data)
        for d in self.extra.values():
            d.update(data)

    def verify(self, exp: Expectations) -> dict[str, str]:
        if exp.content_md5 is not None and self.md5.digest() != exp.content_md5:
            raise S3Error("BadDigest")
        if self.sha is not None and self.sha.hexdigest() != exp.payload_sha256:
            raise S3Error("XAmzContentSHA256Mismatch", extra={
                "ClientComputedContentSHA256": exp.payload_sha256 or "",
                "S3ComputedContentSHA256": self.sha.hexdigest()})
        out = {}
        for name, d in self.extra.items():
            got = d.b64()
            if got != exp.checksums[name]:
                raise S3Error("BadDigest", f"The {name.upper()} you specified did not match the calculated checksum.")
            out[name] = got
        return out


async def receive(request: web.BaseRequest, exp: Expectations, data_dir: DataDir, *,
                  run: Callable[..., Awaitable], force_blob: bool = False,  # type: ignore[type-arg]
                  max_size: int = MAX_PUT_SIZE) -> Received:
    """Read the whole body; inline when small, else streamed to a new blob file.

    `run(fn, *args)` runs blocking work off the event loop.
    """
    digests = _Digests(exp)
    content = request.content
    if not force_blob and exp.length is not None and exp.length <= INLINE_MAX:
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
        while True:
            chunk = await content.read(READ_CHUNK)
            if not chunk:
                break
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
        if writer is None:
            if force_blob:
                writer = await run(BlobWriter, data_dir)
                await run(_absorb, writer, digests, bytes(buf))
            else:
                data = bytes(buf)
                digests.update(data)
                return Received(data, None, len(data), digests.md5.hexdigest(), digests.verify(exp))
        ref = await run(writer.finish)
        checksums = digests.verify(exp)
        return Received(b"", ref, ref.size, digests.md5.hexdigest(), checksums)
    except BaseException:
        if writer is not None:
            await run(writer.discard)
        raise


def _absorb(writer: BlobWriter, digests: _Digests, chunk: bytes) -> None:
    digests.update(chunk)
    writer.write(chunk)


def discard_blob(data_dir: DataDir, ref: BlobRef | None) -> None:
    if ref is not None:
        data_dir.blob_path(ref.blob_id).unlink(missing_ok=True)
