"""fscache: a size-bounded LRU disk cache in front of an S3 client (Dovecot's fscache).

Rules:
- Mail objects are immutable, so an entry never goes stale; only deletes
  invalidate (before and after the delete reaches S3).
- Writes go through to S3 first and are acknowledged then; the cache is
  filled behind the caller.  Reads are served from the cache when present.
- Entries are bytes, never pickles: b"MSC1" | crc32 | meta length | meta JSON |
  body.  The CRC is checked on every hit; a corrupt entry is dropped and the
  object fetched again, never served.
- diskcache keeps the cache safe for several processes sharing one directory;
  its calls block, so they run on this tier's own thread (a BatchThread), which
  takes every queued operation at once and runs the batch in one diskcache
  transaction: a cache hit under LRU is a write (its access time), and a
  thread hop costs more than the read, so both are paid once per batch.
- Concurrent misses on one key in one process make one S3 request.
- The cache is bounded by bytes and evicts the least recently used entries,
  to the minute: diskcache evicts by store time, and a hit re-stores its
  entry at most once a minute (each entry is tagged with the minute it was
  last stored or touched).  diskcache's own LRU writes an access time on
  every hit, which costs ~6x a plain read; this keeps hits reads.  We run
  diskcache's cull ourselves after each insert, so evictions are counted
  exactly.
"""

from __future__ import annotations

import asyncio
import builtins  # FsCache has a method named list: annotations after it say builtins.list
import json
import logging
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import diskcache

from runtime import batching

from .s3client import ListEntry, ObjectStat
from .store import Store

T = TypeVar("T")

log = logging.getLogger("cache.fscache")
MAGIC = b"MSC1"
HEADER = struct.Struct(">4sII")  # magic, crc32 of the rest, meta length


@dataclass
class CacheCounters:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    corrupt: int = 0
    inserts: int = 0
    invalidations: int = 0


def encode_entry(stat: ObjectStat, body: bytes) -> bytes:
    meta = json.dumps({"s": stat.size, "e": stat.etag, "t": stat.mtime, "c": stat.content_type,
                       "m": stat.metadata}, separators=(",", ":")).encode()
    crc = zlib.crc32(body, zlib.crc32(meta))
    return HEADER.pack(MAGIC, crc, len(meta)) + meta + body


def _checked(raw: bytes) -> tuple[bytes, bytes] | None:
    """(meta, body) of an entry that passes its checks, else None."""
    if len(raw) < HEADER.size:
        return None
    magic, crc, mlen = HEADER.unpack_from(raw)
    meta, body = raw[HEADER.size:HEADER.size + mlen], raw[HEADER.size + mlen:]
    if magic != MAGIC or len(meta) != mlen or zlib.crc32(body, zlib.crc32(meta)) != crc:
        return None
    return meta, body


def decode_entry(key: str, raw: bytes) -> tuple[bytes, ObjectStat] | None:
    """The body and stat of a cache entry, or None when it fails its checks."""
    parts = _checked(raw)
    if parts is None:
        return None
    m = json.loads(parts[0].decode())  # str: json skips its encoding detection
    return parts[1], ObjectStat(key, m["s"], m["e"], m["t"], m["c"], m["m"])


def _minute() -> int:
    return int(time.time() // 60)


def _cache_batch(cache: diskcache.Cache) -> Callable[[list[batching.Call]], list[batching.Outcome]]:
    """Run a batch in one diskcache transaction; calls flagged `alone` run after it
    (diskcache's cull measures the file, which shrinks only at commit)."""
    def run(calls: list[batching.Call]) -> list[batching.Outcome]:
        outcomes: dict[int, batching.Outcome] = {}
        together = [(i, c) for i, c in enumerate(calls) if not c[2].get("alone")]
        try:
            with cache.transact():
                for i, (fn, args, _) in together:
                    outcomes[i] = batching.call(fn, args)
        except Exception as exc:  # noqa: BLE001 - the transaction failed: none of it happened; each caller gets why
            for i, _ in together:
                outcomes[i] = (False, exc)
        for i, (fn, args, flags) in enumerate(calls):
            if flags.get("alone"):
                outcomes[i] = batching.call(fn, args)
        return [outcomes[i] for i in range(len(calls))]
    return run


class FsCache:
    def __init__(self, parent: Store, path: str, size: int) -> None:
        self.parent = parent
        # cull_limit=0: no culling inside set(); we cull after each insert and count.
        # disk_min_file_size: entries under 1 MiB (most mail) live in SQLite pages;
        # diskcache's default (32 KiB) would open a file for every 64 KiB hit.
        self.cache = diskcache.Cache(path, size_limit=size, eviction_policy="least-recently-stored",
                                     cull_limit=0, statistics=False, disk_min_file_size=1 << 20)
        self.counters = CacheCounters()
        self._worker = batching.BatchThread("fscache", _cache_batch(self.cache))
        # Cull after every 1/64 of the size inserted: the cache overshoots its
        # bound by at most that much, and a cull per insert would cost more than the insert.
        self._cull_every = max(size // 64, 1)
        self._since_cull = self._cull_every  # measure on the first insert
        self._inflight: dict[str, asyncio.Future[tuple[bytes, ObjectStat]]] = {}
        self._fills: dict[str, asyncio.Future[None]] = {}  # key -> fill in progress

    async def close(self) -> None:
        if self._fills:
            await asyncio.gather(*self._fills.values(), return_exceptions=True)
        self._worker.close()
        self.cache.close()
        await self.parent.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._worker.submit(fn, *args)

    def _store(self, key: str, entry: bytes) -> int:
        """Insert; cull only when what was added since the last cull may have
        pushed the cache past its bound (a cull measures the whole cache)."""
        self.cache.set(key, entry, tag=_minute())
        self._since_cull += len(entry)
        if self._since_cull < self._cull_every:
            return 0
        self._since_cull = 0
        culled: int = self.cache.cull()
        return culled

    def _lookup(self, key: str) -> tuple[bytes | None, int | None]:
        found: tuple[bytes | None, int | None] = self.cache.get(key, tag=True)
        return found

    def _touch(self, touched: list[tuple[str, bytes]]) -> None:
        """Hits on entries last stored minutes ago: store them again (they are now recent).
        No cull follows, so this runs inside the batch's transaction."""
        minute = _minute()
        for key, entry in touched:
            if key in self.cache:  # not deleted meanwhile
                self.cache.set(key, entry, tag=minute)

    async def _insert(self, key: str, stat: ObjectStat, body: bytes) -> None:
        evicted = await self._worker.submit(self._store, key, encode_entry(stat, body), alone=True)
        self.counters.inserts += 1
        self.counters.evictions += evicted

    # ------------------------------------------------------------------ reads

    async def get(self, key: str) -> tuple[bytes, ObjectStat]:
        filling = self._fills.get(key)
        if filling is not None:  # read-your-writes: the fill of a fresh put comes first
            await asyncio.wait([filling])
        raw, tag = await self._worker.submit(self._lookup, key)
        if raw is not None:
            hit = decode_entry(key, raw)
            if hit is not None:
                self.counters.hits += 1
                if tag != _minute():
                    self._worker.submit(self._touch, [(key, raw)])  # no need to wait for it
                return hit
            self.counters.corrupt += 1
            await self._run(self.cache.delete, key)  # never serve it; fetch again
        self.counters.misses += 1
        waiting = self._inflight.get(key)
        if waiting is not None:
            return await asyncio.shield(waiting)
        fut: asyncio.Future[tuple[bytes, ObjectStat]] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            body, stat = await self.parent.get(key)
            await self._insert(key, stat, body)
            fut.set_result((body, stat))
            return body, stat
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved when nobody else waited
            raise
        finally:
            del self._inflight[key]

    def _lookup_many(self, keys: list[str]) -> list[tuple[bytes | None, int | None]]:
        return [self.cache.get(k, tag=True) for k in keys]

    async def get_many(self, keys: list[str]) -> list[bytes]:
        """The bodies of several objects (FETCH of a message range): one cache
        batch for all the hits, and no stat decoded; misses take get()'s path."""
        if any(k in self._fills for k in keys):
            await asyncio.wait([self._fills[k] for k in keys if k in self._fills])
        found = await self._worker.submit(self._lookup_many, keys)
        bodies: list[bytes | None] = []
        now = _minute()
        stale: list[tuple[str, bytes]] = []
        for key, (raw, tag) in zip(keys, found, strict=True):
            parts = _checked(raw) if raw is not None else None
            if raw is None or parts is None:
                bodies.append(None)
                continue
            self.counters.hits += 1
            if tag != now:
                stale.append((key, raw))
            bodies.append(parts[1])
        if stale:
            self._worker.submit(self._touch, stale)
        missing = [i for i, b in enumerate(bodies) if b is None]
        if missing:  # corrupt entries are dropped and refetched there, misses filled
            got = await asyncio.gather(*(self.get(keys[i]) for i in missing))
            for i, (body, _) in zip(missing, got, strict=True):
                bodies[i] = body
        filled = [b for b in bodies if b is not None]
        assert len(filled) == len(bodies), "every miss was filled just above"
        return filled

    async def stat(self, key: str) -> ObjectStat:
        raw = await self._run(self.cache.get, key)
        if raw is not None and (hit := decode_entry(key, raw)) is not None:
            self.counters.hits += 1
            return hit[1]
        return await self.parent.stat(key)

    def list(self, prefix: str = "", delimiter: str | None = None) -> AsyncIterator[ListEntry]:
        return self.parent.list(prefix, delimiter)  # listings change; never cached

    # ------------------------------------------------------------------ writes

    async def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None,
                  content_type: str = "application/octet-stream") -> str:
        """Write through: acknowledged once S3 has it; the cache is filled behind the caller
        (a failed fill only means a later miss)."""
        etag = await self.parent.put(key, data, metadata, content_type)
        stat = ObjectStat(key, len(data), etag, time.time(), content_type,
                          {k.lower(): v for k, v in (metadata or {}).items()})
        fill = asyncio.ensure_future(self._insert(key, stat, data))
        self._fills[key] = fill
        fill.add_done_callback(lambda fut: self._fill_done(key, fut))
        return etag

    def _fill_done(self, key: str, fut: asyncio.Future[None]) -> None:
        if self._fills.get(key) is fut:
            del self._fills[key]
        if not fut.cancelled() and fut.exception() is not None:
            log.warning("cache fill of %s failed: %s", key, fut.exception())

    async def delete(self, key: str) -> None:
        await self._run(self.cache.delete, key)
        await self.parent.delete(key)
        await self._run(self.cache.delete, key)
        self.counters.invalidations += 1

    async def delete_many(self, keys: builtins.list[str]) -> builtins.list[tuple[str, str]]:
        await self._run(self._drop, keys)
        failed = await self.parent.delete_many(keys)
        await self._run(self._drop, keys)
        self.counters.invalidations += len(keys)
        return failed

    def _drop(self, keys: builtins.list[str]) -> None:
        for k in keys:
            self.cache.delete(k)

    async def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None) -> None:
        await self.parent.copy(src, dst, metadata)

    # ------------------------------------------------------------------ state

    def _sizes(self) -> tuple[int, int]:
        return len(self.cache), self.cache.volume()

    async def stats(self) -> dict[str, int]:
        entries, volume = await self._run(self._sizes)
        c = self.counters
        return {"hits": c.hits, "misses": c.misses, "evictions": c.evictions, "corrupt": c.corrupt,
                "inserts": c.inserts, "invalidations": c.invalidations, "entries": entries, "bytes": volume,
                "size_limit": int(self.cache.size_limit)}
