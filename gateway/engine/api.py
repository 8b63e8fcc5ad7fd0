"""What the S3 layer asks of a storage engine: one async surface, two engines behind it.

`LocalGateway` (local_api.py) serves it from a local data directory (segments, blob
files, the SQLite index, the group committer); `RadosGateway` (rados_api.py) from Ceph
RADOS, where any number of gateways on any number of hosts share one cluster. Handlers,
the admin API, the key store and health see only this protocol, so a behaviour is
written once and both engines are tested by the same S3 suite.

Bodies are *staged* before they are committed: `receive` keeps a small body in memory
(`inline_max`) and streams a larger one to the engine's `Stager` (a blob file; RADOS tail
objects), whose pieces the engine's `put` or `put_part` then adopts. Pieces that are
never adopted go back through `discard`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from .model import BlobRef, Change, Conditions, InvalidPart, ListPage, ObjectMeta, Sealing

T = TypeVar("T")

# gateway/versioning.py's decision for one key: (current object, noncurrent versions newest
# first as (order, meta)) -> what the write does to them; it may raise (a condition failed).
Decide = Callable[[ObjectMeta | None, list[tuple[str, ObjectMeta]]], Change]

MIN_PART_SIZE = 5 << 20  # AWS: every part but the last is at least 5 MiB


class RunBlocking(Protocol):
    """How blocking work leaves the event loop (Gateway.run_blocking)."""

    def __call__(self, fn: Callable[..., T], /, *args: Any) -> Awaitable[T]: ...


class ThreadRunner(RunBlocking):
    """A pool of worker threads for the blocking work of one gateway process."""

    def __init__(self, workers: int = 8) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gateway-io")

    async def __call__(self, fn: Callable[..., T], /, *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True)


@dataclass(frozen=True, slots=True)
class Bucket:
    name: str
    created: float
    owner: str = ""  # "account:<name>" (accounts.py), or the access key that made it before accounts


@dataclass(frozen=True, slots=True)
class Upload:
    upload_id: str
    bucket: str
    key: str
    meta: ObjectMeta  # what the completed object will carry
    initiated: float
    seq: int  # the engine's version of the upload record


@dataclass(frozen=True, slots=True)
class Part:
    number: int
    size: int
    etag: str
    mtime: float
    blobs: tuple[BlobRef, ...]
    seq: int  # the engine's version of the part record
    checksums: dict[str, str] = field(default_factory=dict)  # verified x-amz-checksum-* of the part
    sealing: Sealing | None = None  # sealed: `size` is the plaintext's, `sealing.stored` what its blobs hold


class InvalidPartOrder(InvalidPart):
    pass


class EntityTooSmall(InvalidPart):
    pass


def choose_parts(parts: dict[int, Part], chosen: list[tuple[int, str]],
                 upload: Upload, checksums: dict[str, str] | None = None) -> tuple[list[Part], ObjectMeta]:
    """The parts a CompleteMultipartUpload names, checked as AWS checks them (ascending,
    each uploaded with that ETag, all but the last at least 5 MiB), and the object's
    metadata (ETag: MD5 of the parts' MD5s, "-N"). A part named twice in a row is one part
    (each naming must carry its ETag)."""
    numbers = [n for n, _ in chosen]
    if numbers != sorted(numbers):
        raise InvalidPartOrder()
    used: list[Part] = []
    for n, etag in chosen:
        p = parts.get(n)
        if p is None or p.etag.strip('"') != etag.strip('"'):
            raise InvalidPart(n)
        if not used or used[-1].number != n:
            used.append(p)
    for p in used[:-1]:
        if p.size < MIN_PART_SIZE:
            raise EntityTooSmall(p.number)
    digest = hashlib.md5(b"".join(bytes.fromhex(p.etag.strip('"')) for p in used)).hexdigest()
    sealing = None
    if upload.meta.sealing is not None:  # every part was sealed as its own stream (its part number)
        if any(p.sealing is None for p in used):
            raise InvalidPart("a part of an encrypted upload was stored in plaintext")
        sealing = dataclasses.replace(upload.meta.sealing, stored=sum(p.sealing.stored for p in used
                                                                      if p.sealing is not None),
                                      streams=tuple(p.number for p in used))
    meta = ObjectMeta(sum(p.size for p in used), f'"{digest}-{len(used)}"', time.time(),
                      upload.meta.content_type, upload.meta.headers, upload.meta.user, checksums or {}, len(used),
                      tuple(p.size for p in used), upload.upload_id, upload.meta.tags, sealing,
                      retention=upload.meta.retention, legal_hold=upload.meta.legal_hold)
    return used, meta


class Found(Protocol):
    """An object found by `head`: its metadata, and whatever the engine needs to read it."""

    @property
    def meta(self) -> ObjectMeta: ...


class Stager(Protocol):
    """A body too large to hold in memory, written out as it arrives."""

    async def write(self, chunk: bytes) -> None: ...

    async def finish(self) -> tuple[BlobRef, ...]:
        """Durable pieces, ready for `put`/`put_part`."""
        ...

    async def discard(self) -> None:
        """Remove what was written (safe to call twice, and after `finish`)."""
        ...


class Engine(Protocol):
    inline_max: int  # a body up to this size is read into memory and stored with its record
    kind: str  # "local" or "rados"
    metrics: dict[str, Any]

    # buckets
    async def bucket_exists(self, name: str) -> bool: ...
    async def get_bucket(self, name: str) -> Bucket: ...

    async def bucket_info(self, name: str, *, fresh: bool) -> Bucket:
        """The bucket, with its owner, for the permission check of every request (NoSuchBucket).
        Not `fresh`: possibly as cached, for operations whose engine call refuses to go on when
        the bucket it finds is owned by another (RADOS: `_with_bucket`)."""
        ...
    async def list_buckets(self) -> list[Bucket]: ...
    async def create_bucket(self, name: str, owner: str) -> None: ...
    async def delete_bucket(self, name: str) -> None: ...

    # objects
    async def head(self, bucket: str, key: str) -> Found: ...
    def streamed(self, found: Found) -> bool:
        """True when the body should be streamed (`stream`) rather than read whole (`read`)."""
        ...
    async def read(self, found: Found) -> bytes: ...
    def stream(self, found: Found, start: int, end: int) -> AsyncIterator[bytes]:
        """Verified bytes [start, end); CorruptRecord before any byte of a bad piece."""
        ...
    async def list_objects(self, bucket: str, prefix: str, delimiter: str, marker: str | None,
                           max_keys: int) -> ListPage: ...
    async def stager(self, bucket: str, upload: str | None = None) -> Stager:
        """Where a large body goes while it arrives (`upload`: a part of that upload)."""
        ...
    async def discard(self, blobs: tuple[BlobRef, ...]) -> None: ...
    async def put(self, bucket: str, key: str, meta: ObjectMeta, body: bytes = b"",
                  blobs: tuple[BlobRef, ...] = (), cond: Conditions | None = None,
                  decide: Decide | None = None) -> None:
        """`decide` (a versioned bucket): what becomes of the current object and the noncurrent
        versions as `meta` becomes current (its `remove`, `archive`, `markers`); it checks the
        write's conditions itself."""
        ...
    async def delete(self, bucket: str, key: str, cond: Conditions | None = None) -> bool: ...
    async def delete_many(self, bucket: str, keys: list[str]) -> list[bool]: ...

    # versions (versioning.py): noncurrent versions live beside their key, out of ListObjects' sight
    async def change_versions(self, bucket: str, key: str, decide: Decide) -> Change:
        """A write without a new object (a delete in a versioned bucket), atomic; the change made."""
        ...
    async def head_version(self, bucket: str, key: str, order: str) -> Found:
        """A noncurrent version (NoSuchVersion), readable as `head`'s objects are."""
        ...
    async def versions(self, bucket: str, key: str) -> list[tuple[str, ObjectMeta]]:
        """The key's noncurrent versions, (order, meta), newest first."""
        ...
    async def version_page(self, bucket: str, prefix: str, after: str | None,
                           limit: int) -> tuple[list[tuple[str, ObjectMeta, bool]], bool]:
        """Current objects and noncurrent versions under `prefix` in one order: (name, meta,
        current) where a version's name is key SEP order (so it follows its key), after the
        name `after`; and whether more may follow."""
        ...

    # multipart
    async def get_upload(self, bucket: str, upload_id: str) -> Upload: ...
    async def list_uploads(self, bucket: str) -> list[Upload]: ...
    async def create_upload(self, bucket: str, key: str, meta: ObjectMeta) -> str: ...
    async def list_parts(self, bucket: str, upload_id: str) -> list[Part]: ...
    async def put_part(self, bucket: str, upload_id: str, number: int, blobs: tuple[BlobRef, ...],
                       etag: str, checksums: dict[str, str] | None = None, size: int | None = None,
                       sealing: Sealing | None = None) -> None:
        """A part's pieces; `size` and `sealing` when they hold it sealed (size: the plaintext's)."""
        ...
    async def abort_upload(self, bucket: str, upload_id: str) -> None: ...
    async def complete_upload(self, bucket: str, upload_id: str, chosen: list[tuple[int, str]],
                              cond: Conditions | None = None, checksums: dict[str, str] | None = None,
                              decide: Decide | None = None,
                              finish: Callable[[ObjectMeta], ObjectMeta] | None = None) -> ObjectMeta:
        """`finish`: the object's metadata completed (its version id, its Object Lock retention)."""
        ...

    # small shared records (access keys): field maps changed by compare-and-swap
    async def record(self, namespace: str, name: str) -> dict[str, str] | None: ...
    async def records(self, namespace: str) -> list[tuple[str, dict[str, str]]]: ...
    async def swap_record(self, namespace: str, name: str, expected: dict[str, str] | None,
                          value: dict[str, str] | None) -> bool: ...

    # operations
    def master_key(self) -> bytes:
        """The 32-byte key that seals access-key secrets (every gateway of a store has the same)."""
        ...
    async def stats(self) -> dict[str, Any]: ...
    async def usage_by_prefix(self, bucket: str) -> dict[str, tuple[int, int]]:
        """Objects and bytes per first-level prefix ("a/"; "" for top-level keys): an admin query."""
        ...
    async def probe(self) -> None:
        """Raise when the engine cannot serve (health)."""
        ...
    def close(self) -> None: ...
