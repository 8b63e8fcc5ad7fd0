"""The self-describing record: the unit written to segment files.

Layout (little-endian), 36-byte prefix then header then body:

    magic    4s  b"MSR1"
    kind     B   PUT=1 or TOMBSTONE=2
    pad      3x
    seq      Q   global sequence number (allocated under the index write lock)
    hlen     I   header length
    blen     Q   inline body length (0 when the body lives in blob files)
    hcrc     I   CRC32 of prefix[0:28] + header
    bcrc     I   CRC32 of the inline body
    header   JSON {"b": namespace, "k": key, "m": ObjectMeta, "p": prev seq, "bl": blobs}
    body     inline bytes

Rules:
- A record describes itself fully (namespace, key, metadata, checksums), so the
  index can be rebuilt by reading segment files alone.
- `prev` names the seq of the record this one superseded.  Compaction may drop a
  dead record only once its `prev` is gone, so a rebuild can never resurrect an
  older version of a key (chains are dropped oldest first).
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

from .model import BlobRef, CorruptRecord, ObjectMeta

MAGIC = b"MSR1"
PREFIX = struct.Struct("<4sB3xQIQII")
PREFIX_SIZE = PREFIX.size  # 36
PUT = 1
TOMBSTONE = 2
MAX_HEADER = 1 << 20


@dataclass(frozen=True, slots=True)
class Record:
    kind: int
    seq: int
    namespace: str
    key: str
    meta: ObjectMeta | None
    prev: int | None
    blobs: tuple[BlobRef, ...]
    body: bytes


def meta_json(meta: ObjectMeta) -> str:
    return json.dumps(meta.to_json(), separators=(",", ":"), ensure_ascii=False)


def blobs_json(blobs: tuple[BlobRef, ...]) -> str | None:
    """The blob list as the index stores it (None for an inline body)."""
    return json.dumps([b.to_json() for b in blobs]) if blobs else None


def encode(kind: int, seq: int, namespace: str, key: str, meta: str | None,
           prev: int | None, blobs: tuple[BlobRef, ...], body: bytes) -> bytes:
    """`meta` is the ObjectMeta already serialized (meta_json): the index stores the same text."""
    h: dict[str, object] = {"b": namespace, "k": key, "p": prev}
    if blobs:
        h["bl"] = [b.to_json() for b in blobs]
    text = json.dumps(h, separators=(",", ":"), ensure_ascii=False)
    if meta is not None:
        text = f'{text[:-1]},"m":{meta}}}'
    header = text.encode()
    bcrc = zlib.crc32(body) if body else 0
    head = struct.pack("<4sB3xQIQ", MAGIC, kind, seq, len(header), len(body))
    hcrc = zlib.crc32(header, zlib.crc32(head))
    return head + struct.pack("<II", hcrc, bcrc) + header + body


@dataclass(frozen=True, slots=True)
class Prefix:
    kind: int
    seq: int
    hlen: int
    blen: int
    hcrc: int
    bcrc: int

    @property
    def total(self) -> int:
        return PREFIX_SIZE + self.hlen + self.blen


def decode_prefix(buf: bytes) -> Prefix:
    if len(buf) < PREFIX_SIZE:
        raise CorruptRecord("truncated record prefix")
    magic, kind, seq, hlen, blen, hcrc, bcrc = PREFIX.unpack_from(buf)
    if magic != MAGIC or kind not in (PUT, TOMBSTONE) or hlen > MAX_HEADER:
        raise CorruptRecord("bad record prefix")
    return Prefix(kind, seq, hlen, blen, hcrc, bcrc)


def check_header(buf: bytes, p: Prefix) -> bytes:
    """The header bytes of a record in `buf` (prefix at 0), checksum verified."""
    header = buf[PREFIX_SIZE:PREFIX_SIZE + p.hlen]
    if len(header) != p.hlen or zlib.crc32(header, zlib.crc32(buf[:28])) != p.hcrc:
        raise CorruptRecord(f"header checksum mismatch in record seq {p.seq}")
    return header


def check_body(body: bytes, p: Prefix) -> bytes:
    if len(body) != p.blen or (p.blen and zlib.crc32(body) != p.bcrc):
        raise CorruptRecord(f"body checksum mismatch in record seq {p.seq}")
    return body


def decode(buf: bytes) -> Record:
    """A whole record (prefix, header and inline body), every checksum verified."""
    p = decode_prefix(buf)
    header = check_header(buf, p)
    start = PREFIX_SIZE + p.hlen
    body = check_body(buf[start:start + p.blen], p)
    h = json.loads(header)
    meta = ObjectMeta.from_json(h["m"]) if "m" in h else None
    blobs = tuple(BlobRef.from_json(b) for b in h.get("bl", ()))
    return Record(p.kind, p.seq, h["b"], h["k"], meta, h.get("p"), blobs, body)
