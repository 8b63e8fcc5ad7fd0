"""Values and errors that cross the engine boundary.

Everything the engine stores is an *object* in a namespace: user buckets hold
mail objects; reserved namespaces (names that can never be valid bucket names)
hold buckets, access keys and multipart uploads.  One write path, one index,
one compaction and one rebuild serve them all.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any, NamedTuple

# Reserved namespaces: "~" can never appear in a bucket name.
SYS = "~sys"  # keys: "bucket/<name>", "key/<access key id>"
MPU = "~mpu"  # keys: "u/<bucket>/<upload id>", "p/<upload id>/<part number:05d>"
VERSIONS = "~v/"  # + bucket: a versioned bucket's noncurrent versions, keys "<key>" SEP "<order>"
SEP = "\x01"  # sorts before every character a key may go on with: a key's versions follow it at once

BLOCK_SIZE = 1 << 20  # body checksum granularity for out-of-line blobs


@dataclass(frozen=True, slots=True)
class BlobRef:
    """An out-of-line body piece: a blob file with one CRC32 per BLOCK_SIZE."""

    blob_id: str
    size: int
    crcs: tuple[int, ...]

    def to_json(self) -> list[object]:
        return [self.blob_id, self.size, list(self.crcs)]

    @classmethod
    def from_json(cls, v: list[Any]) -> BlobRef:  # a header or index value, checksummed JSON
        return cls(v[0], v[1], tuple(v[2]))


@dataclass(frozen=True, slots=True)
class Sealing:
    """How an object's body is sealed (gateway/sse.py; runtime/sealing.py): the engine stores
    and verifies the `stored` sealed bytes and never opens them."""

    mode: str  # "AES256" (SSE-S3) or "SSE-C"
    key_id: str  # the store key that wraps the data key (SSE-C: the MD5 of the customer's key)
    wrapped: str  # the data key, wrapped (base64); "" on a part (its upload holds the key)
    stored: int  # sealed bytes stored
    streams: tuple[int, ...] = ()  # a multipart object's: the part numbers its parts were sealed as
    context: str = ""  # SSE-KMS: the encryption context (canonical JSON), bound to the wrapped key

    def to_json(self) -> list[object]:
        v: list[object] = [self.mode, self.key_id, self.wrapped, self.stored]
        if self.streams or self.context:
            v.append(list(self.streams))
        if self.context:
            v.append(self.context)
        return v

    @classmethod
    def from_json(cls, v: list[Any]) -> Sealing:
        return cls(v[0], v[1], v[2], v[3], tuple(v[4]) if len(v) > 4 else (), v[5] if len(v) > 5 else "")


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """What S3 reports about an object; stored with the record and the index."""

    size: int
    etag: str  # quoted, as sent in the ETag header
    mtime: float
    content_type: str = "binary/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)  # cache-control, content-encoding...
    user: dict[str, str] = field(default_factory=dict)  # x-amz-meta-* (name without prefix)
    checksums: dict[str, str] = field(default_factory=dict)  # crc32 -> base64 ...
    parts: int = 0
    part_sizes: tuple[int, ...] = ()  # a multipart object's, in order (GET ?partNumber=N)
    upload: str = ""  # the multipart upload it was completed from (a repeated Complete answers 200)
    tags: tuple[tuple[str, str], ...] = ()  # object tagging, in the order given
    sealing: Sealing | None = None  # encrypted at rest: `size` is the plaintext's
    version: str = ""  # its version id in a versioned bucket ("": the null version)
    marker: bool = False  # a delete marker (only ever a noncurrent entry; no body)
    retention: tuple[str, float] | None = None  # Object Lock: (GOVERNANCE | COMPLIANCE, retain until)
    legal_hold: bool = False  # Object Lock: on legal hold

    @property
    def body_size(self) -> int:
        """The bytes the engine stores for the body (the sealed size when encrypted)."""
        return self.sealing.stored if self.sealing is not None else self.size

    def to_json(self) -> dict[str, object]:
        d: dict[str, object] = {"s": self.size, "e": self.etag, "t": self.mtime, "c": self.content_type}
        if self.headers:
            d["h"] = self.headers
        if self.user:
            d["u"] = self.user
        if self.checksums:
            d["x"] = self.checksums
        if self.parts:
            d["p"] = self.parts
        if self.part_sizes:
            d["ps"] = list(self.part_sizes)
        if self.upload:
            d["mp"] = self.upload
        if self.tags:
            d["tg"] = [list(t) for t in self.tags]
        if self.sealing is not None:
            d["se"] = self.sealing.to_json()
        if self.version:
            d["v"] = self.version
        if self.marker:
            d["dm"] = 1
        if self.retention is not None:
            d["rt"] = list(self.retention)
        if self.legal_hold:
            d["lh"] = 1
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ObjectMeta:  # a header or index value, checksummed JSON
        return cls(d["s"], d["e"], d["t"], d.get("c", "binary/octet-stream"),
                   d.get("h", {}), d.get("u", {}), d.get("x", {}), d.get("p", 0), tuple(d.get("ps", ())),
                   d.get("mp", ""), tuple((k, v) for k, v in d.get("tg", ())),
                   Sealing.from_json(d["se"]) if "se" in d else None, d.get("v", ""), bool(d.get("dm")),
                   (d["rt"][0], d["rt"][1]) if "rt" in d else None, bool(d.get("lh")))


@dataclass(frozen=True, slots=True)
class Change:
    """What one write does to the versions of a key in a versioned bucket: decided by
    gateway/versioning.py from the key's current object and noncurrent versions, applied by
    the engine in one atomic step (retried, deciding again, when either changed meanwhile).
    Noncurrent versions are named by their order (`order_of`), newest first."""

    archive: bool = False  # the current object stays, as a noncurrent version
    delete_current: bool = False  # (a delete) the current object leaves the current slot
    markers: tuple[ObjectMeta, ...] = ()  # delete markers added as noncurrent versions
    remove: tuple[str, ...] = ()  # noncurrent versions removed, their data released
    promote: str | None = None  # the noncurrent version that becomes the current object
    restamp: tuple[tuple[str, ObjectMeta], ...] = ()  # new metadata, same body: ("", meta) for the current


def order_of(meta: ObjectMeta) -> str:
    """Where a version sorts among its key's noncurrent versions: newest first. A version id
    begins with its inverted microsecond time (gateway/versioning.py), and so does a null
    version's order."""
    if meta.version:
        return meta.version
    return f"{INVERTED - int(meta.mtime * 1_000_000):013x}null"


INVERTED = 16 ** 13 - 1


@dataclass(frozen=True, slots=True)
class Location:
    """Where a record lives: segment file, byte offset, record length."""

    segment: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    bucket: str
    key: str
    seq: int
    meta: ObjectMeta
    location: Location
    blobs: tuple[BlobRef, ...] = ()  # empty: the body is inline in the record


class ListEntry(NamedTuple):
    """One key of a listing page (a tuple: a page makes a thousand of them)."""

    key: str
    size: int
    etag: str
    mtime: float


@dataclass(frozen=True, slots=True)
class ListPage:
    entries: list[ListEntry]
    prefixes: list[str]
    truncated: bool
    next_marker: str | None  # last key or common prefix returned, when truncated


@dataclass(frozen=True, slots=True)
class Conditions:
    """A conditional write or delete (AWS S3 User Guide, "Conditional requests"): If-None-Match
    "*" (the key must be absent) or ETags (none may be the current one), If-Match "*" (the
    key must exist) or an ETag, and for deletes the size and the last-modified time."""

    if_none_match_any: bool = False
    if_match: str | None = None
    if_none_match: tuple[str, ...] = ()  # ETags, unquoted
    size: int | None = None
    mtime: int | None = None  # epoch seconds

    def needs_current(self) -> bool:
        """Whether the current object must be read to decide (If-None-Match: * needs no read)."""
        return self.if_match is not None or bool(self.if_none_match) or self.size is not None \
            or self.mtime is not None

    def check(self, current: ObjectMeta | None, key: str) -> None:
        """NoSuchKey when a condition needs an object that is not there (AWS answers a
        conditional write or delete of a missing key 404), PreconditionFailed when one does
        not hold; nothing when all hold."""
        if current is None:
            if self.if_match is not None or self.size is not None or self.mtime is not None:
                raise NoSuchKey(key)
            return
        etag = current.etag.strip('"')
        if self.if_none_match_any or etag in self.if_none_match:
            raise PreconditionFailed(key)
        if self.if_match not in (None, "*") and self.if_match.strip('"') != etag:
            raise PreconditionFailed(key)
        if self.size is not None and self.size != current.size:
            raise PreconditionFailed(key)
        if self.mtime is not None and self.mtime != int(current.mtime):
            raise PreconditionFailed(key)


# ------------------------------------------------------------------ errors

class EngineError(Exception):
    """Base of the engine's typed errors; the HTTP edge maps each one once."""


class NoSuchBucket(EngineError):
    pass


class NoSuchKey(EngineError):
    pass


class NoSuchVersion(EngineError):
    pass


class ObjectLocked(EngineError):
    """The version is under Object Lock (a retention date not passed, or a legal hold)."""


class BucketNotEmpty(EngineError):
    pass


class BucketAlreadyExists(EngineError):
    pass


class PreconditionFailed(EngineError):
    pass


class NoSuchUpload(EngineError):
    pass


class InvalidPart(EngineError):
    pass


class CorruptRecord(EngineError):
    """A stored record failed its checksum: never serve its bytes."""


class EngineUnavailable(EngineError):
    """Transient: the engine cannot take the request now (retry later)."""


class StorageFull(EngineUnavailable):
    """No space (or quota) left for data or index: nothing was written; retry after space is freed."""


_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_FULL = 13


def as_storage_error(exc: BaseException) -> EngineError:
    """The engine's error for a failed write: StorageFull when the disk is full, else unavailable."""
    if isinstance(exc, EngineError):
        return exc
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return StorageFull(str(exc))
    if getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL:
        return StorageFull(str(exc))
    return EngineUnavailable(str(exc))
