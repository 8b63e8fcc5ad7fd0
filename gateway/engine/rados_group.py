"""Group commit on RADOS, and the pack objects it writes (issue 16).

On a small mail object the cost of a PUT is the number of RADOS operations, each of which
an OSD journals and commits on its own. Two batchers cut that number under load, the way a
database's group commit does, without delaying a request on an idle gateway:

- **GroupCommit**: the first item goes at once; items that arrive while its flush is in
  flight wait and go together in the next flush, as many as `fits` allows. One flush at a
  time per key (a bucket's pack writer, an index shard), so the batch grows with the load.
- **Packs**: the small objects of one flush land in one data object, `<bucket id>.pack-<random>`,
  written by one exclusive create: a table of its slots, then the records (records.py, each
  checksummed as a lone object is), and a reference per slot kept by Ceph's own `refcount`
  object class (the one RGW counts shared tail objects with). The table is never changed:
  a slot whose object is overwritten or deleted is released by one operation that zeroes
  it (BlueStore frees its space) and drops its reference, and the class removes the pack
  with its last reference, in that same operation.

Pack layout: `MSPK`, u32 table length, u32 CRC32 of the table, the table (JSON list of
[offset, length, key]), then the records at their offsets.
"""

from __future__ import annotations

import asyncio
import json
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .model import CorruptRecord

I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")  # its result

PACK_MAGIC = b"MSPK"
PACK_PREFIX = struct.Struct("<4sII")
PACK_PREFIX_SIZE = PACK_PREFIX.size  # 12
PACK_NAME = "pack-"  # a pack is `<bucket id>.pack-<random>`; other data objects are hex after the dot


class GroupCommit(Generic[I, R]):
    """Items submitted while a flush is in flight go together in the next one."""

    def __init__(self, flush: Callable[[list[I]], Awaitable[list[R]]], fits: Callable[[list[I], I], bool],
                 idle: Callable[[], None] | None = None) -> None:
        """`flush(items)` writes a batch and returns one result per item (or raises for all);
        `fits(batch, item)` says whether one more item may join a batch that is not empty;
        `idle()` runs when the queue is drained."""
        self.flush, self.fits, self.idle = flush, fits, idle
        self.queue: list[tuple[I, asyncio.Future[R]]] = []
        self.task: asyncio.Task[None] | None = None

    async def submit(self, item: I) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self.queue.append((item, fut))
        if self.task is None:
            self.task = asyncio.ensure_future(self._drain())
        return await fut

    async def _drain(self) -> None:
        try:
            while True:
                self.queue = [(item, fut) for item, fut in self.queue if not fut.cancelled()]
                if not self.queue:
                    return
                batch = [self.queue[0]]
                rest = self.queue[1:]
                for n, (item, fut) in enumerate(rest):
                    if not self.fits([i for i, _ in batch], item):
                        rest = rest[n:]
                        break
                    batch.append((item, fut))
                else:
                    rest = []
                self.queue = rest
                try:
                    results = await self.flush([item for item, _ in batch])
                except BaseException as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
        finally:
            self.task = None
            for _, fut in self.queue:  # only when the loop cancelled the drain itself
                if not fut.done():
                    fut.set_exception(asyncio.CancelledError())
            self.queue = []
            if self.idle is not None:
                self.idle()


@dataclass(frozen=True, slots=True)
class Slot:
    at: int  # offset of the record in the pack
    size: int
    key: str


def pack(records: list[tuple[str, bytes]]) -> tuple[bytes, list[Slot]]:
    """A pack's bytes for (key, encoded record) pairs, and where each record lies."""
    def table(slots: list[Slot]) -> bytes:  # offsets written fixed wide: its length does not depend on them
        return json.dumps([[f"{s.at:012d}", f"{s.size:012d}", s.key] for s in slots], separators=(",", ":")).encode()

    at = PACK_PREFIX_SIZE + len(table([Slot(0, 0, k) for k, _ in records]))
    slots = []
    for key, rec in records:
        slots.append(Slot(at, len(rec), key))
        at += len(rec)
    text = table(slots)
    head = PACK_PREFIX.pack(PACK_MAGIC, len(text), zlib.crc32(text))
    return head + text + b"".join(r for _, r in records), slots


def read_table(buf: bytes) -> tuple[int, list[Slot]]:
    """(bytes the table takes, its slots) from the start of a pack; CorruptRecord when damaged.
    With a buffer too short for the table, (bytes needed, [])."""
    if len(buf) < PACK_PREFIX_SIZE:
        raise CorruptRecord("truncated pack")
    magic, size, crc = PACK_PREFIX.unpack_from(buf)
    if magic != PACK_MAGIC:
        raise CorruptRecord("not a pack")
    end = PACK_PREFIX_SIZE + size
    if len(buf) < end:
        return end, []
    table = buf[PACK_PREFIX_SIZE:end]
    if zlib.crc32(table) != crc:
        raise CorruptRecord("pack table checksum mismatch")
    return end, [Slot(int(a), int(n), k) for a, n, k in json.loads(table)]


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<I", len(raw)) + raw


def _struct(payload: bytes) -> bytes:
    """Ceph's versioned encoding (ENCODE_START(1, 1)): version, compat version, length."""
    return struct.pack("<BBI", 1, 1, len(payload)) + payload


def refcount_set(slots: list[Slot]) -> bytes:
    """cls_refcount_set_op: a reference per slot, named by its offset."""
    return _struct(struct.pack("<I", len(slots)) + b"".join(_string(str(s.at)) for s in slots))


def refcount_put(at: int) -> bytes:
    """cls_refcount_put_op: the slot's reference dropped (no implicit reference)."""
    return _struct(_string(str(at)) + b"\0")


def is_pack(oid: str) -> bool:
    parts = oid.split(".", 2)
    return len(parts) == 2 and parts[1].startswith(PACK_NAME)


def zeroed(buf: bytes) -> bool:
    """A slot released since (its bytes zeroed), as opposed to damaged."""
    return not buf.strip(b"\0")
