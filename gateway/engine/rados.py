"""Objects on Ceph RADOS through librados (issue 16): any number of gateways on any number of
hosts, all state in the cluster.

Layout, designed for small immutable mail objects:

- **Data objects** (data pool): one per stored version, named `<bucket id>.<random>`,
  never overwritten. Each holds one self-describing record (records.py: bucket, key,
  metadata, CRC32 of header and body), written whole by one exclusive-create
  `write_full`, so the data, its metadata and its checksum land in one atomic RADOS
  write. Every read verifies the checksums. A body over STRIPE (4 MiB) goes to tail
  objects `<head>.t<n>` (a CRC32 per MiB each), written before the head that lists them.
- **The bucket index** (index pool): OMAP entries `k<key>` sharded over `shards` objects
  `<bucket id>.<n>` (n = CRC32 of the key mod shards, fixed when the bucket is made). An
  entry maps the key to its data object and its metadata (`{"o": oid, "m": meta}`), so
  HEAD and LIST read the index alone. The index is the truth: a key exists when its entry
  does. While a bucket is being deleted its shards carry a CLOSED mark that every index
  swap requires absent, so no PUT lands in a bucket that is going away; while its index
  moves to new shards (`reshard`), a RESHARDING mark holds writes back the same way.
- **Buckets** (metadata pool): OMAP entries of the object `buckets`, name -> `{"id",
  "owner", "created", "shards"}`. Other shared records (access keys, policies, multipart
  uploads) are OMAP entries of `ns.<namespace>` there, changed by compare-and-swap.

Write order: the data object first, then the index entry, so a crash leaves an orphan
(a data object no entry names; `sweep` removes it), never an entry without its data.
Every index change is one compound operation on one shard object that compares the
entry it replaces (`omap_cmp` EQ the value read, or EQ "" for "absent"), so two gateways
never race in a read-then-write: If-None-Match, If-Match, overwrites and deletes are
atomic per key. A data object that lost such a race is removed at once.

librados calls back on its own threads; `_aio` resolves an asyncio future on the loop
from there, so one gateway keeps many operations in flight.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from . import rados_group, records
from .api import Decide
from .model import (
    BLOCK_SIZE,
    SEP,
    BlobRef,
    BucketAlreadyExists,
    BucketNotEmpty,
    Change,
    Conditions,
    CorruptRecord,
    EngineUnavailable,
    ListEntry,
    ListPage,
    NoSuchBucket,
    NoSuchKey,
    NoSuchVersion,
    ObjectMeta,
    PreconditionFailed,
    order_of,
)
from .rados_group import PACK_NAME, GroupCommit
from .records import Record

T = TypeVar("T")
BUCKETS = "buckets"  # the metadata pool's object whose OMAP lists the buckets
UPLOADS = "uploads"  # records namespace "uploads.<bucket id>": the bucket's multipart uploads in progress
DEFAULT_SHARDS = 16
ECANCELED = 125  # an omap_cmp that did not hold
ENOENT = 2
EIO = 5
EEXIST = 17
STRIPE = 4 << 20  # a body above this goes to tail objects of this size, listed in the head
HEAD_MAX = STRIPE + (1 << 20)  # a head object is never larger: its record, with the body inline or not
HEADER_ROOM = 16 << 10  # what a GET reads beyond the body for the record's prefix and header
CAS_ATTEMPTS = 16
DELETE_BATCH = 200  # entries removed by one compound index operation (DeleteObjects)
PACKED_MAX = 1 << 20  # a body up to this goes into a pack (rados_group.py) with the others of its flush
PACK_BYTES = 4 << 20  # a pack holds up to this many bytes of records ...
PACK_COUNT = 64  # ... and up to this many records
SWAP_BATCH = 64  # index swaps of one shard in one compound operation
READ_BATCH = 64  # index entries of one shard read by one operation
# Index entries are "k" + the S3 key, so the shard's own marks never meet a key: CLOSED, set
# while the bucket is being deleted, sorts before every entry.
ENTRY = "k"
VERSION = "v"  # + key SEP order: a noncurrent version (versioned buckets), in its key's shard
CLOSED = "!closed"
RESHARDING = "!resharding"  # set while the entries move to new shards: writes wait (503), reads go on


@dataclass(frozen=True, slots=True)
class RadosBucket:
    """`depth`: a key's shard is chosen by its first `depth` path components ("/"), or by
    the whole key when 0. For mail, 2 puts one user's keys (`<hash>/<user>/...`, obox's
    layout) in one shard, so a LIST under a user's prefix asks one shard, not all."""

    name: str
    id: str  # names its data objects, for good
    owner: str
    created: float
    shards: int
    depth: int = 0
    index_id: str = ""  # names its index shards: a new one after each reshard ("" = id)

    @classmethod
    def from_json(cls, name: str, raw: bytes) -> RadosBucket:
        d = json.loads(raw)
        return cls(name, d["id"], d["owner"], d["created"], d["shards"], d.get("depth", 0), d.get("index", ""))

    def to_json(self) -> str:
        d: dict[str, object] = {"id": self.id, "owner": self.owner, "created": self.created, "shards": self.shards,
                                "depth": self.depth}
        if self.index_id:
            d["index"] = self.index_id
        return json.dumps(d)

    def all_shards(self) -> list[str]:
        return [f"{self.index_id or self.id}.{n}" for n in range(self.shards)]

    def _part(self, key: str) -> str:
        if self.depth and key.count("/") >= self.depth:
            return "/".join(key.split("/", self.depth)[: self.depth])
        return key

    def shard(self, key: str) -> str:
        return f"{self.index_id or self.id}.{zlib.crc32(self._part(key).encode()) % self.shards}"

    def shards_for(self, prefix: str) -> list[str]:
        """The shards that can hold keys under `prefix`: one when the prefix fixes the
        components the shard is chosen by, else all."""
        if self.depth and prefix.count("/") >= self.depth:
            return [self.shard(prefix)]
        return self.all_shards()


@dataclass(frozen=True, slots=True)
class Stored:
    """An object as the index names it."""

    oid: str
    meta: ObjectMeta
    raw: str  # the entry's exact text, for the next compare-and-swap
    at: int = -1  # in a pack (rados_group.py): the record's offset and length there
    size: int = 0

    @classmethod
    def parse(cls, text: str) -> Stored:
        d = json.loads(text)
        return cls(d["o"], ObjectMeta.from_json(d["m"]), text, d.get("a", -1), d.get("n", 0))


class RadosStore:
    """One connection to the cluster (librados is thread-safe; one per gateway process)."""

    def __init__(self, conffile: str, user: str, keyring: str, *, data_pool: str, index_pool: str,
                 meta_pool: str, namespace: str = "") -> None:
        """`namespace`: a RADOS namespace in all three pools, so several stores (tenants, test
        runs) share pools without seeing each other; cephx can confine a user to it."""
        import rados
        self._rados = rados
        try:
            self.cluster = rados.Rados(conffile=conffile, name=user, conf={"keyring": keyring})
        except rados.Error as exc:  # a missing or unreadable ceph.conf
            raise EngineUnavailable(f"RADOS: reading {conffile}: {exc}") from None
        try:
            self.cluster.connect(timeout=30)
            self.data = self.cluster.open_ioctx(data_pool)
            self.index = self.cluster.open_ioctx(index_pool)
            self.meta = self.cluster.open_ioctx(meta_pool)
            for io in (self.data, self.index, self.meta):
                io.set_namespace(namespace)
            self._zero_swapped = self._zero_order()
        except rados.Error as exc:  # no such pool, a wrong key, a cluster that does not answer
            self.cluster.shutdown()
            raise EngineUnavailable(f"RADOS: {exc}") from None
        self._buckets: dict[str, RadosBucket] = {}
        # group commit (rados_group.py): a pack writer per bucket, an index writer and reader per shard
        self._packers: dict[str, GroupCommit[tuple[str, bytes], tuple[str, int, int]]] = {}
        self._swappers: dict[str, GroupCommit[tuple[str, str, str | None], int]] = {}
        self._readers: dict[str, GroupCommit[str, dict[str, bytes]]] = {}
        self.ops = {"started": 0, "done": 0, "failed": 0}  # RADOS operations, counted on the loop

    def _zero_order(self) -> bool:
        """Whether this python-rados passes WriteOp.zero's offset and length to librados swapped,
        as Debian 12's does (a zero of length 0 then fails an assertion in the OSD): found out
        on a scratch object with a zero that is harmless either way."""
        name = f"probe.zero.{secrets.token_hex(8)}"
        self.data.write_full(name, b"\1" * 300)
        try:
            with self._rados.WriteOpCtx() as op:
                op.zero(50, 100)  # right: bytes 50-149 zeroed; swapped: 100-149
                self.data.operate_write_op(op, name)
            return bool(self.data.read(name, 1, 60) != b"\0")
        finally:
            self.data.remove_object(name)

    def zero(self, op: Any, at: int, size: int) -> None:
        """Zero `size` bytes at `at` in a write operation (see _zero_order)."""
        op.zero(*((size, at) if self._zero_swapped else (at, size)))

    def close(self) -> None:
        for io in (self.data, self.index, self.meta):
            io.close()
        self.cluster.shutdown()

    # ------------------------------------------------------------------ librados on the loop

    async def _aio(self, start: Callable[[Callable[..., None]], Any],
                   finish: Callable[[int], Any] | None = None) -> tuple[int, Any]:
        """Start an asynchronous librados call with a completion callback; its return value
        (negative errno or >= 0) and, for reads, its data, resolved on this loop.

        `finish(rv)` runs on the loop when librados is done with the operation, whether or not
        the caller still waits (a cancelled request): it collects what the operation filled
        and releases it, so an operation is never freed while librados still uses it. What
        it returns takes the place of the data."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[int, Any]] = loop.create_future()
        ops = self.ops
        ops["started"] += 1

        def done(completion: Any, data: Any = None) -> None:  # on a librados thread
            rv = completion.get_return_value()

            def resolve() -> None:
                ops["done"] += 1
                if rv < 0 and rv not in (-ENOENT, -ECANCELED, -EEXIST):  # not the answers the layout asks for
                    ops["failed"] += 1
                try:
                    result = (rv, finish(rv) if finish is not None else data)
                except Exception as exc:  # noqa: BLE001 - handed to the caller, if it still waits
                    if not fut.done():
                        fut.set_exception(exc)
                    return
                if not fut.done():  # the caller may have been cancelled meanwhile
                    fut.set_result(result)
            loop.call_soon_threadsafe(resolve)

        try:
            start(done)
        except self._rados.Error as exc:
            ops["done"] += 1
            ops["failed"] += 1
            if finish is not None:
                finish(-EIO)
            raise EngineUnavailable(f"RADOS: {exc}") from None
        return await fut

    async def _write(self, io: Any, oid: str, build: Callable[[Any], None]) -> int:
        """One compound write operation on `oid`; its return value (0, or -errno)."""
        op = io.create_write_op()
        try:
            build(op)
        except BaseException:
            io.release_write_op(op)
            raise
        # mtime: the binding would send 0 (the epoch) rather than "now"; the sweep reads it
        rv, _ = await self._aio(lambda cb: io.operate_aio_write_op(op, oid, oncomplete=cb, mtime=int(time.time())),
                                lambda rv: io.release_write_op(op))
        return rv

    async def _omap_read(self, io: Any, oid: str, ask: Callable[[Any], Any]) -> list[tuple[str, bytes]]:
        """One read operation of OMAP entries (`ask` adds it to the op and returns the
        iterator it fills); FileNotFoundError when the object does not exist."""
        op = io.create_read_op()
        try:
            it = ask(op)
        except BaseException:
            io.release_read_op(op)
            raise

        def collect(rv: int) -> list[tuple[str, bytes]]:
            try:
                return list(it) if rv >= 0 else []
            finally:
                io.release_read_op(op)

        rv, entries = await self._aio(lambda cb: io.operate_aio_read_op(op, oid, oncomplete=cb), collect)
        if rv == -ENOENT:
            raise FileNotFoundError(oid)
        _check(rv, f"reading the OMAP of {oid}")
        result: list[tuple[str, bytes]] = entries
        return result

    async def _omap_get(self, io: Any, oid: str, keys: tuple[str, ...]) -> dict[str, bytes]:
        return dict(await self._omap_read(io, oid, lambda op: io.get_omap_vals_by_keys(op, keys)[0]))

    async def _omap_page(self, io: Any, oid: str, after: str, prefix: str, limit: int) -> list[tuple[str, bytes]]:
        return await self._omap_read(io, oid, lambda op: io.get_omap_vals(op, after, prefix, limit)[0])

    async def _omap_all(self, io: Any, oid: str, prefix: str = "") -> list[tuple[str, bytes]]:
        """Every entry (under `prefix`), a page at a time; none when the object is missing."""
        out: list[tuple[str, bytes]] = []
        after = ""
        while True:
            try:
                page = await self._omap_page(io, oid, after, prefix, 1000)
            except FileNotFoundError:
                return out
            out += page
            if len(page) < 1000:
                return out
            after = page[-1][0]

    # ------------------------------------------------------------------ buckets

    async def create_bucket(self, name: str, owner: str, shards: int = DEFAULT_SHARDS,
                            depth: int = 0) -> RadosBucket:
        """Its index shards first, then its entry (exclusive: a second create fails), so a
        listed bucket always has its shards."""
        if shards < 1 or depth < 0:
            raise ValueError(f"a bucket needs at least one shard and a depth of 0 or more: {shards}, {depth}")
        b = RadosBucket(name, secrets.token_hex(8), owner, time.time(), shards, depth)
        await self._new_shards(b)
        value = b.to_json()

        def register(op: Any) -> None:
            op.new(self._rados.LIBRADOS_CREATE_IDEMPOTENT)
            op.omap_cmp(name, "", self._rados.LIBRADOS_CMPXATTR_OP_EQ)
            self.meta.set_omap(op, (name,), (value.encode(),))

        rv = await self._write(self.meta, BUCKETS, register)
        if rv == -ECANCELED:
            await self._remove_shards(b)
            raise BucketAlreadyExists(name)
        _check(rv, "registering the bucket")
        self._buckets[name] = b
        return b

    async def bucket(self, name: str, *, fresh: bool = False) -> RadosBucket:
        """The bucket (cached: a bucket's id and shard count never change; `fresh`: read it again,
        since another gateway may have deleted it, or deleted and made it again)."""
        b = None if fresh else self._buckets.get(name)
        if b is not None:
            return b
        self._buckets.pop(name, None)
        try:
            got = await self._omap_get(self.meta, BUCKETS, (name,))
        except FileNotFoundError:
            raise NoSuchBucket(name) from None
        if name not in got:
            raise NoSuchBucket(name)
        b = self._buckets[name] = RadosBucket.from_json(name, got[name])
        return b

    async def list_buckets(self) -> list[RadosBucket]:
        return [RadosBucket.from_json(name, raw) for name, raw in await self._omap_all(self.meta, BUCKETS)]

    async def delete_bucket(self, name: str) -> None:
        """One deleter at a time (the bucket's entry swapped to a "deleting" copy), then every
        shard closed (CLOSED: each PUT's index swap requires it absent), then checked empty:
        a PUT racing the delete either landed before (BucketNotEmpty, and everything is
        opened again) or is refused. An acknowledged object never goes with its bucket."""
        b, raw, mine = await self._claim(name, "deleting")
        shards = b.all_shards()
        try:
            await self._mark(shards, CLOSED, True)
            for shard in shards:
                if await self._omap_page(self.index, shard, "", ENTRY, 1) or \
                        await self._omap_page(self.index, shard, "", VERSION, 1):
                    raise BucketNotEmpty(name)
            if not await self._swap_bucket(name, mine, None):
                raise EngineUnavailable(f"{name}: the bucket changed while it was being deleted")
        except BaseException:  # not deleted: open it again, as it was
            await self._mark(shards, CLOSED, False)
            await self._swap_bucket(name, mine, raw)
            raise
        self._buckets.pop(name, None)
        await self._remove_shards(b)

    async def _claim(self, name: str, flag: str) -> tuple[RadosBucket, str, str]:
        """One delete or reshard at a time: the bucket's entry swapped to a copy flagged
        `flag`. Returns the bucket, its entry as it was and the flagged copy."""
        b = await self.bucket(name)
        got = (await self._omap_get(self.meta, BUCKETS, (name,))).get(name)
        if got is None:
            raise NoSuchBucket(name)
        raw = got.decode()
        if json.loads(raw).get("deleting") or json.loads(raw).get("resharding"):
            raise EngineUnavailable(f"{name}: being deleted or resharded already")
        mine = raw[:-1] + f', "{flag}": true}}'
        if not await self._swap_bucket(name, raw, mine):
            raise EngineUnavailable(f"{name}: the bucket changed meanwhile")
        return b, raw, mine

    async def _mark(self, shards: list[str], mark: str, on: bool) -> None:
        """Set (or take away) a mark on index shards; taking away is best effort."""
        for shard in shards:
            if on:
                _check(await self._write(self.index, shard, lambda op: self.index.set_omap(op, (mark,), (b"1",))),
                       f"marking {shard}")
            else:
                await self._write(self.index, shard, lambda op: self.index.remove_omap_keys(op, (mark,)))

    async def _swap_bucket(self, name: str, expected: str, value: str | None) -> bool:
        def build(op: Any) -> None:
            op.omap_cmp(name, expected, self._rados.LIBRADOS_CMPXATTR_OP_EQ)
            if value is None:
                self.meta.remove_omap_keys(op, (name,))
            else:
                self.meta.set_omap(op, (name,), (value.encode(),))

        rv = await self._write(self.meta, BUCKETS, build)
        if rv == -ECANCELED:
            return False
        _check(rv, f"updating the bucket {name}")
        return True

    async def reshard(self, name: str, shards: int, depth: int | None = None) -> RadosBucket:
        """Move the bucket's index to `shards` new shards (and a new shard depth): one at a
        time (the entry swapped to a "resharding" copy); the old shards marked RESHARDING,
        which every index swap requires absent, so writes answer 503 meanwhile and reads go
        on; the entries copied; the bucket entry swapped to the new index; the old shards
        removed. Gateways holding the old index find its shards gone and read the bucket
        afresh. The data objects do not move."""
        if shards < 1 or (depth is not None and depth < 0):
            raise ValueError(f"a bucket needs at least one shard and a depth of 0 or more: {shards}, {depth}")
        self._buckets.pop(name, None)
        b, raw, mine = await self._claim(name, "resharding")
        new = RadosBucket(name, b.id, b.owner, b.created, shards, b.depth if depth is None else depth,
                          secrets.token_hex(8))
        try:
            await self._new_shards(new)
            await self._mark(b.all_shards(), RESHARDING, True)
            for shard, kind in ((shard, kind) for shard in b.all_shards() for kind in (ENTRY, VERSION)):
                after = ""
                while True:
                    page = await self._omap_page(self.index, shard, after, kind, 1000)
                    moving: dict[str, list[tuple[str, bytes]]] = {}
                    for k, v in page:
                        moving.setdefault(new.shard(k[1:].split(SEP, 1)[0]), []).append((k, v))
                    for target, kvs in moving.items():
                        keys, values = tuple(k for k, _ in kvs), tuple(v for _, v in kvs)
                        _check(await self._write(self.index, target, lambda op: self.index.set_omap(
                            op, keys, values)), "copying entries")  # noqa: B023 - awaited here
                    if len(page) < 1000:
                        break
                    after = page[-1][0]
            if not await self._swap_bucket(name, mine, new.to_json()):
                raise EngineUnavailable(f"{name}: the bucket changed meanwhile")
        except BaseException:  # as it was: the old shards open, the new ones gone
            await self._mark(b.all_shards(), RESHARDING, False)
            await self._swap_bucket(name, mine, raw)
            await self._remove_shards(new)
            raise
        await self._remove_shards(b)
        self._buckets[name] = new
        return new

    async def _new_shards(self, b: RadosBucket) -> None:
        for shard in b.all_shards():
            _check(await self._write(self.index, shard, lambda op: op.new(self._rados.LIBRADOS_CREATE_EXCLUSIVE)),
                   "a new shard")

    async def _remove_shards(self, b: RadosBucket) -> None:
        for shard in b.all_shards():
            rv, _ = await self._aio(lambda cb: self.index.aio_remove(shard, oncomplete=cb))  # noqa: B023 - awaited here
            if rv not in (0, -ENOENT):
                _check(rv, "removing a shard")

    # ------------------------------------------------------------------ records in the metadata pool

    async def record(self, namespace: str, name: str) -> str | None:
        """A small record (an access key, a policy, a multipart upload) shared by every
        gateway: the OMAP entry `name` of the metadata pool's object `ns.<namespace>`."""
        try:
            got = await self._omap_get(self.meta, f"ns.{namespace}", (name,))
        except FileNotFoundError:
            return None
        raw = got.get(name)
        return raw.decode() if raw is not None else None

    async def records(self, namespace: str, prefix: str = "") -> list[tuple[str, str]]:
        return [(k, v.decode()) for k, v in await self._omap_all(self.meta, f"ns.{namespace}", prefix)]

    async def swap_record(self, namespace: str, name: str, expected: str | None, value: str | None) -> bool:
        """Set (value) or remove (None) the record if it is still `expected` (None: absent), in
        one compare-and-swap; False when another gateway changed it first."""
        def build(op: Any) -> None:
            op.new(self._rados.LIBRADOS_CREATE_IDEMPOTENT)
            op.omap_cmp(name, expected or "", self._rados.LIBRADOS_CMPXATTR_OP_EQ)
            if value is None:
                self.meta.remove_omap_keys(op, (name,))
            else:
                self.meta.set_omap(op, (name,), (value.encode(),))

        rv = await self._write(self.meta, f"ns.{namespace}", build)
        if rv == -ECANCELED:
            return False
        _check(rv, f"updating {namespace}/{name}")
        return True

    async def remove_record_object(self, namespace: str) -> None:
        """The object holding a namespace's records (when it is empty and done with)."""
        rv, _ = await self._aio(lambda cb: self.meta.aio_remove(f"ns.{namespace}", oncomplete=cb))
        if rv not in (0, -ENOENT):
            _check(rv, f"removing {namespace}")

    # ------------------------------------------------------------------ objects

    async def _entry(self, b: RadosBucket, key: str, *, writing: bool = False) -> Stored | None:
        """The key's entry. `writing`: for a write that will swap it, which a closed shard
        refuses (NoSuchBucket while the bucket is deleted, EngineUnavailable while it is
        resharded; reads go on meanwhile)."""
        try:
            got = await self._read_entries(b.shard(key), ENTRY + key)
        except FileNotFoundError:
            self._buckets.pop(b.name, None)  # deleted (maybe made again): read it afresh next time
            raise NoSuchBucket(b.name) from None
        if CLOSED in got:
            raise NoSuchBucket(b.name)
        if writing and RESHARDING in got:
            raise EngineUnavailable(f"{b.name} is being resharded: try again")
        raw = got.get(ENTRY + key)
        if raw is None:
            return None
        return Stored.parse(raw.decode())

    async def _with_bucket(self, name: str, operation: Callable[[RadosBucket], Awaitable[T]]) -> T:
        """Run `operation` on the bucket; when its shards are gone, the cached bucket may be one
        deleted and made again by another gateway: read it afresh and run it once more, unless
        another account owns it now (the request was allowed for the owner it had: NoSuchBucket,
        and the next request is decided on the new owner)."""
        b = await self.bucket(name)
        try:
            return await operation(b)
        except NoSuchBucket:
            self._buckets.pop(name, None)
            fresh = await self.bucket(name)  # NoSuchBucket when it is really gone
            if fresh == b or fresh.owner != b.owner:
                raise
            return await operation(fresh)

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        """From the index alone: one RADOS read."""
        return await self._with_bucket(bucket, lambda b: self._head(b, key))

    async def _head(self, b: RadosBucket, key: str) -> ObjectMeta:
        entry = await self._entry(b, key)
        if entry is None:
            raise NoSuchKey(key)
        return entry.meta

    async def get(self, bucket: str, key: str) -> tuple[ObjectMeta, bytes]:
        """The index entry, then the data object, its checksums verified (a mismatch is
        CorruptRecord, never bytes)."""
        return await self._with_bucket(bucket, lambda b: self._get(b, key))

    async def _get(self, b: RadosBucket, key: str) -> tuple[ObjectMeta, bytes]:
        entry = await self._entry(b, key)
        if entry is None:
            raise NoSuchKey(key)
        rec = await self.read_record(b, key, entry)
        assert rec.meta is not None
        if not rec.blobs:
            return rec.meta, rec.body
        pieces = await asyncio.gather(*(self.read_tail(ref) for ref in rec.blobs))
        return rec.meta, b"".join(pieces)

    async def locate(self, bucket: str, key: str) -> tuple[RadosBucket, Stored]:
        """The object's bucket and index entry (NoSuchBucket, NoSuchKey): one RADOS read."""
        async def find(b: RadosBucket) -> tuple[RadosBucket, Stored]:
            entry = await self._entry(b, key)
            if entry is None:
                raise NoSuchKey(key)
            return b, entry

        return await self._with_bucket(bucket, find)

    async def read_record(self, b: RadosBucket, key: str, entry: Stored, *, current: bool = True) -> Record:
        """The record of the data object an entry names (prefix, header and inline body,
        checksums verified; tails are read apart). An object removed since the entry was
        read (overwritten, deleted) sends us back to the index for the current one (not
        `current`, a noncurrent version's: NoSuchVersion)."""
        for _ in range(CAS_ATTEMPTS):
            damage: CorruptRecord | None = None
            try:
                rec = await self._read_at(entry)
            except FileNotFoundError:
                pass
            except CorruptRecord as exc:
                if entry.at < 0:
                    raise
                # a pack's slot is zeroed when its object is overwritten or deleted: when the
                # index names another object now, that is what happened since it was read
                damage = exc
            else:
                if rec.namespace != b.name or rec.key != key:
                    raise CorruptRecord(f"{entry.oid} holds {rec.namespace}/{rec.key}, not {b.name}/{key}")
                return rec
            # deleted or overwritten since the index was read: read the index again (an entry
            # whose data stays missing is damage, which `check` reports)
            if not current:
                if damage is not None:
                    raise damage
                raise NoSuchVersion(key)
            fresh = await self._entry(b, key)
            if fresh is None:
                raise NoSuchKey(key)
            if damage is not None and fresh.raw == entry.raw:  # still named: the slot is damaged
                raise damage
            entry = fresh
        raise EngineUnavailable(f"{b.name}/{key}: the index names {entry.oid}, which is missing")

    async def _read_at(self, entry: Stored) -> Record:
        """The record an entry names, checksums verified; FileNotFoundError when its object is gone."""
        oid = entry.oid
        if entry.at >= 0:
            rv, data = await self._aio(lambda cb: self.data.aio_read(oid, entry.size, entry.at, cb))
            if rv == -ENOENT:
                raise FileNotFoundError(oid)
            _check(rv, f"reading {oid}")
            return records.decode(bytes(data))
        # librados fills a buffer of the length asked: ask for about what the record holds
        want = HEADER_ROOM + (entry.meta.body_size if entry.meta.body_size <= STRIPE else 0)
        rv, data = await self._aio(lambda cb: self.data.aio_read(oid, want, 0, cb))
        if rv == -ENOENT:
            raise FileNotFoundError(oid)
        _check(rv, f"reading {oid}")
        data = bytes(data)
        total = records.decode_prefix(data).total
        if total > len(data) == want:  # a header larger than HEADER_ROOM: the rest in a second read
            rv, more = await self._aio(lambda cb: self.data.aio_read(oid, min(total, HEAD_MAX) - len(data),
                                                                     len(data), cb))
            _check(rv, f"reading {oid}")
            data += bytes(more)
        return records.decode(data)

    async def read_tail(self, ref: BlobRef) -> bytes:
        """A tail object, its CRC32 per BLOCK_SIZE verified."""
        rv, data = await self._aio(lambda cb: self.data.aio_read(ref.blob_id, ref.size, 0, cb))
        _check(rv, f"reading {ref.blob_id}")
        data = bytes(data)
        crcs = tuple(zlib.crc32(data[i:i + BLOCK_SIZE]) for i in range(0, len(data), BLOCK_SIZE))
        if len(data) != ref.size or crcs != ref.crcs:
            raise CorruptRecord(f"tail {ref.blob_id} failed its checksum")
        return data

    async def put(self, bucket: str, key: str, meta: ObjectMeta, body: bytes,
                  cond: Conditions | None = None, *, head: str | None = None,
                  tails: tuple[BlobRef, ...] = (), decide: Decide | None = None) -> None:
        """The data object (exclusive create of a new name), then the index entry swapped in
        by one compare-and-swap on its shard; the data it replaced is removed after.

        `tails`: a body already staged as tail objects (`new_oid`'s `<head>.t<n>`, or a
        multipart upload's parts), with `head` the name they were staged for."""
        return await self._with_bucket(bucket, lambda b: self._put(b, key, meta, body, cond, head, tails, decide))

    def new_oid(self, b: RadosBucket, name: str | None = None) -> str:
        """A data object's name: `<bucket id>.<random>` (or `.<name>`, an upload's)."""
        return f"{b.id}.{name or secrets.token_hex(12)}"

    async def _put(self, b: RadosBucket, key: str, meta: ObjectMeta, body: bytes, cond: Conditions | None,
                   head: str | None, tails: tuple[BlobRef, ...], decide: Decide | None = None) -> None:
        cond = cond or Conditions()
        oid = head or self.new_oid(b)
        meta_text = records.meta_json(meta)
        staged = bool(tails)
        packed = not staged and head is None and len(body) <= PACKED_MAX
        at = size = -1
        try:
            if len(body) > STRIPE:  # the tails first: a head never names a tail not written
                tails = tuple(await asyncio.gather(*(
                    self.write_tail(f"{oid}.t{n}", body[i:i + STRIPE])
                    for n, i in enumerate(range(0, len(body), STRIPE)))))
            if staged:  # a long upload's early tails may have met a sweep: never name a missing one
                limit = asyncio.Semaphore(64)

                async def exists(t: BlobRef) -> None:
                    async with limit:
                        await self._tail_exists(t)

                await asyncio.gather(*(exists(t) for t in tails))
            record = records.encode(records.PUT, 0, b.name, key, meta_text, None, tails, b"" if tails else body)
            if packed:
                oid, at, size = await self._pack(b, key, record)
            else:
                rv = await self._write(self.data, oid, lambda op: _create(op, self._rados, record))
                if rv == -EEXIST and staged:
                    raise PreconditionFailed(f"{oid} was written already")
                _check(rv, "writing the object")
        except BaseException:
            if not packed:  # (a pack that failed is not there; one whose answer was lost is the sweep's)
                await self.remove_data(oid, () if staged else tails)
            raise
        where = f',"a":{at},"n":{size}' if packed else ""
        value = f'{{"o":{json.dumps(oid)}{where},"m":{index_json(meta)}}}'
        try:
            current: Stored | None = None  # mail keys are new: first try "absent", no read
            if decide is not None:
                await self._versioned(b, key, decide, value)
                return
            if cond.needs_current():
                current = await self._entry(b, key, writing=True)
                cond.check(current.meta if current is not None else None, key)
            for _ in range(CAS_ATTEMPTS):
                rv = await self._swap(b, key, current.raw if current is not None else "", value)
                if rv == 0:
                    break
                if rv != -ECANCELED:
                    _check(rv, "updating the index")
                current = await self._entry(b, key, writing=True)  # someone else's entry is there (now)
                cond.check(current.meta if current is not None else None, key)
            else:
                raise EngineUnavailable(f"{b.name}/{key}: the index kept changing")
        except BaseException:
            if packed:
                await self._release([(oid, at, size)])
            else:
                await self.remove_data(oid, () if staged else tails)
            raise
        if current is not None:
            await self._remove_object(current)

    # ------------------------------------------------------------------ versions

    async def change_versions(self, bucket: str, key: str, decide: Decide) -> Change:
        return await self._with_bucket(bucket, lambda b: self._versioned(b, key, decide, None))

    async def _versioned(self, b: RadosBucket, key: str, decide: Decide, value: str | None) -> Change:
        """Decide on the key's entry and noncurrent versions as they are, then apply the change
        by one compound operation on their shard that compares every entry it read or makes
        (decided again when one moved); data no entry names any more is released after.
        `value`: the new current entry (a put), whose data is written already."""
        shard = b.shard(key)
        for _ in range(CAS_ATTEMPTS):
            cur = await self._entry(b, key, writing=True)
            olds = {name[len(VERSION) + len(key) + 1:]: Stored.parse(raw.decode())
                    for name, raw in await self._omap_all(self.index, shard, VERSION + key + SEP)}
            change = decide(cur.meta if cur is not None else None, [(o, e.meta) for o, e in olds.items()])
            new_value = value
            compare = {ENTRY + key: cur.raw if cur is not None else "", CLOSED: "", RESHARDING: ""}
            sets: dict[str, str] = {}
            gone: list[str] = []
            released: list[Stored] = [olds[o] for o in change.remove]
            if cur is not None and change.archive:
                sets[VERSION + key + SEP + order_of(cur.meta)] = cur.raw
            for o in change.remove:
                compare[VERSION + key + SEP + o] = olds[o].raw
                gone.append(VERSION + key + SEP + o)
            for m in change.markers:
                sets[VERSION + key + SEP + order_of(m)] = f'{{"o":"","m":{index_json(m)}}}'
            for order, meta in change.restamp:
                was = cur if not order else olds[order]
                assert was is not None
                name = ENTRY + key if not order else VERSION + key + SEP + order
                compare[name] = was.raw
                sets[name] = _with_meta(was, meta)
            if change.promote is not None:
                compare[VERSION + key + SEP + change.promote] = olds[change.promote].raw
                gone.append(VERSION + key + SEP + change.promote)
                new_value = olds[change.promote].raw
            if new_value is not None:
                sets[ENTRY + key] = new_value
            elif cur is not None and change.delete_current:
                gone.append(ENTRY + key)
            if cur is not None and not change.archive and (new_value is not None or change.delete_current):
                released.append(cur)
            for name in sets:
                compare.setdefault(name, "")

            rv = await self._write(self.index, shard, self._compound(compare, sets, gone))
            if rv == -ECANCELED:
                continue
            if rv == -ENOENT:
                self._buckets.pop(b.name, None)
                raise NoSuchBucket(b.name)
            _check(rv, "updating the index")
            for e in released:
                if e.oid:
                    await self._remove_object(e)
            return change
        raise EngineUnavailable(f"{b.name}/{key}: the index kept changing")

    def _compound(self, compare: dict[str, str], sets: dict[str, str], gone: list[str]) -> Callable[[Any], None]:
        """An index operation: every comparison must hold ("": absent), then the sets and removals."""
        def build(op: Any) -> None:
            for name, expected in compare.items():
                op.omap_cmp(name, expected, self._rados.LIBRADOS_CMPXATTR_OP_EQ)
            if sets:
                self.index.set_omap(op, tuple(sets), tuple(v.encode() for v in sets.values()))
            if gone:
                self.index.remove_omap_keys(op, tuple(gone))

        return build

    async def head_version(self, bucket: str, key: str, order: str) -> tuple[RadosBucket, Stored]:
        async def find(b: RadosBucket) -> tuple[RadosBucket, Stored]:
            try:
                got = await self._read_entries(b.shard(key), VERSION + key + SEP + order)
            except FileNotFoundError:
                self._buckets.pop(b.name, None)
                raise NoSuchBucket(b.name) from None
            if CLOSED in got:
                raise NoSuchBucket(b.name)
            raw = got.get(VERSION + key + SEP + order)
            if raw is None:
                raise NoSuchVersion(order)
            return b, Stored.parse(raw.decode())

        return await self._with_bucket(bucket, find)

    async def versions(self, bucket: str, key: str) -> list[tuple[str, ObjectMeta]]:
        async def read(b: RadosBucket) -> list[tuple[str, ObjectMeta]]:
            got = await self._omap_all(self.index, b.shard(key), VERSION + key + SEP)
            return [(name[len(VERSION) + len(key) + 1:], Stored.parse(raw.decode()).meta) for name, raw in got]

        return await self._with_bucket(bucket, read)

    async def version_page(self, bucket: str, prefix: str, after: str | None,
                           limit: int) -> tuple[list[tuple[str, ObjectMeta, bool]], bool]:
        """Entries and versions of every shard, merged by name (UTF-8 bytes): a batch of each
        kind from each shard; names up to the smallest last name of a full batch are complete."""
        async def page(b: RadosBucket) -> tuple[list[tuple[str, ObjectMeta, bool]], bool]:
            sources = [(shard, kind) for shard in b.shards_for(prefix) for kind in (ENTRY, VERSION)]
            batch = min(limit + 1, 1000)
            try:
                pages = await asyncio.gather(*(self._omap_page(self.index, shard, kind + (after or ""),
                                                               kind + prefix, batch) for shard, kind in sources))
            except FileNotFoundError:
                raise NoSuchBucket(b.name) from None
            full = [p[-1][0][1:].encode() for p in pages if len(p) == batch]
            cut = min(full) if full else None
            rows = sorted(((name[1:], raw, name[0] == ENTRY) for p in pages for name, raw in p),
                          key=lambda r: r[0].encode())
            if cut is not None:
                rows = [r for r in rows if r[0].encode() <= cut]
            out = [(name, Stored.parse(raw.decode()).meta, cur) for name, raw, cur in rows[:limit]]
            return out, len(rows) > limit or cut is not None

        return await self._with_bucket(bucket, page)

    # ------------------------------------------------------------------ group commit

    def _group(self, table: dict[str, GroupCommit[Any, Any]], name: str,
               flush: Callable[[list[Any]], Awaitable[list[Any]]], limit: Callable[[list[Any], Any], bool],
               ) -> GroupCommit[Any, Any]:
        """The batcher of `name` in `table`, made when first needed and dropped when idle."""
        group = table.get(name)
        if group is None:
            def idle() -> None:
                if table.get(name) is made:
                    del table[name]

            made = group = table[name] = GroupCommit(flush, limit, idle)
        return group

    async def _pack(self, b: RadosBucket, key: str, record: bytes) -> tuple[str, int, int]:
        """The record written in a pack with the others of its flush: (pack, offset, length)."""
        def fits(batch: list[tuple[str, bytes]], item: tuple[str, bytes]) -> bool:
            return len(batch) < PACK_COUNT and sum(len(r) for _, r in batch) + len(item[1]) <= PACK_BYTES

        group = self._group(self._packers, b.id, lambda items: self._write_pack(b, items), fits)
        result: tuple[str, int, int] = await group.submit((key, record))
        return result

    async def _write_pack(self, b: RadosBucket, items: list[tuple[str, bytes]]) -> list[tuple[str, int, int]]:
        oid = f"{b.id}.{PACK_NAME}{secrets.token_hex(12)}"
        data, slots = rados_group.pack(items)

        def build(op: Any) -> None:
            _create(op, self._rados, data)
            op.execute("refcount", "set", rados_group.refcount_set(slots))

        _check(await self._write(self.data, oid, build), "writing a pack")
        return [(oid, s.at, s.size) for s in slots]

    async def _release(self, slots: list[tuple[str, int, int]]) -> None:
        """Pack slots (pack, offset, length) no entry names any more, best effort (what stays
        is the sweep's): each zeroed (BlueStore frees the space) and its reference dropped, by
        one operation; the last reference's removes the pack. One slot per operation: the
        refcount class reads the references as they were before the operation."""
        async def release(oid: str, at: int, size: int) -> None:
            def build(op: Any) -> None:
                self.zero(op, at, size)
                op.execute("refcount", "put", rados_group.refcount_put(at))

            try:
                await self._write(self.data, oid, build)
            except EngineUnavailable:
                pass

        await asyncio.gather(*(release(*slot) for slot in slots))

    async def _read_entries(self, shard: str, name: str) -> dict[str, bytes]:
        """OMAP entry `name` of a shard with the shard's marks, read with the others asked meanwhile;
        FileNotFoundError when the shard is gone."""
        async def flush(names: list[str]) -> list[dict[str, bytes]]:
            got = await self._omap_get(self.index, shard, (*dict.fromkeys(names), CLOSED, RESHARDING))
            return [got] * len(names)

        group = self._group(self._readers, shard, flush, lambda batch, _: len(batch) < READ_BATCH)
        got: dict[str, bytes] = await group.submit(name)
        return got

    async def write_tail(self, oid: str, piece: bytes) -> BlobRef:
        _check(await self._write(self.data, oid, lambda op: _create(op, self._rados, piece)), "writing a tail")
        crcs = tuple(zlib.crc32(piece[i:i + BLOCK_SIZE]) for i in range(0, len(piece), BLOCK_SIZE))
        return BlobRef(oid, len(piece), crcs)

    async def _tail_exists(self, ref: BlobRef) -> None:
        rv, _ = await self._aio(lambda cb: self.data.aio_read(ref.blob_id, 1, 0, cb))
        if rv == -ENOENT:
            raise EngineUnavailable(f"the staged tail {ref.blob_id} is gone (a sweep with a --min-age shorter "
                                    "than this upload?): the upload is refused, try again")
        _check(rv, f"reading {ref.blob_id}")

    async def _swap(self, b: RadosBucket, key: str, expected: str, value: str | None) -> int:
        """Set (or remove, value None) the entry if it is still `expected` ("" = absent), in one
        compound operation with the other swaps of its shard asked meanwhile."""
        shard = b.shard(key)

        def fits(batch: list[tuple[str, str, str | None]], item: tuple[str, str, str | None]) -> bool:
            return len(batch) < SWAP_BATCH and all(k != item[0] for k, _, _ in batch)  # a key once a batch

        group = self._group(self._swappers, shard, lambda items: self._swap_batch(shard, items), fits)
        rv: int = await group.submit((key, expected, value))
        if rv == -ENOENT:
            self._buckets.pop(b.name, None)
            raise NoSuchBucket(b.name)
        return rv

    async def _swap_batch(self, shard: str, items: list[tuple[str, str, str | None]]) -> list[int]:
        def build(op: Any) -> None:
            for key, expected, _ in items:
                op.omap_cmp(ENTRY + key, expected, self._rados.LIBRADOS_CMPXATTR_OP_EQ)
            op.omap_cmp(CLOSED, "", self._rados.LIBRADOS_CMPXATTR_OP_EQ)  # the bucket is not being deleted
            op.omap_cmp(RESHARDING, "", self._rados.LIBRADOS_CMPXATTR_OP_EQ)  # ... nor resharded
            sets = [(ENTRY + key, value.encode()) for key, _, value in items if value is not None]
            gone = tuple(ENTRY + key for key, _, value in items if value is None)
            if sets:
                self.index.set_omap(op, tuple(k for k, _ in sets), tuple(v for _, v in sets))
            if gone:
                self.index.remove_omap_keys(op, gone)

        rv = await self._write(self.index, shard, build)
        if rv == -ECANCELED and len(items) > 1:  # a compare failed, which one is not said: each alone
            return [rv for [rv] in await asyncio.gather(*(self._swap_batch(shard, [item]) for item in items))]
        return [rv] * len(items)

    async def delete(self, bucket: str, key: str, cond: Conditions | None = None) -> bool:
        """The entry out (compare-and-swap), then its data; False when there was none."""
        return await self._with_bucket(bucket, lambda b: self._delete(b, key, cond))

    async def _delete(self, b: RadosBucket, key: str, cond: Conditions | None) -> bool:
        cond = cond or Conditions()
        for _ in range(CAS_ATTEMPTS):
            current = await self._entry(b, key, writing=True)
            cond.check(current.meta if current is not None else None, key)
            if current is None:
                return False
            rv = await self._swap(b, key, current.raw, None)
            if rv == 0:
                await self._remove_object(current)
                return True
            if rv != -ECANCELED:
                _check(rv, "updating the index")
        raise EngineUnavailable(f"{b.name}/{key}: the index kept changing")

    async def delete_many(self, bucket: str, keys: list[str]) -> list[bool]:
        """DeleteObjects (obox's expunge): per index shard, the entries read in one operation and
        removed in one compound operation that compares each (so a key changed meanwhile fails
        the batch, whose keys are then deleted one by one); then the data. A thousand keys cost
        two operations per shard touched and one per object, not three per key."""
        return await self._with_bucket(bucket, lambda b: self._delete_many(b, keys))

    async def _delete_many(self, b: RadosBucket, keys: list[str]) -> list[bool]:
        by_shard: dict[str, list[str]] = {}
        for key in dict.fromkeys(keys):  # a key named twice is deleted once
            by_shard.setdefault(b.shard(key), []).append(key)
        gone: dict[str, bool] = {}
        removing: list[Stored] = []

        async def batch(shard: str, chunk: list[str]) -> None:
            try:
                got = await self._omap_get(self.index, shard, (*(ENTRY + k for k in chunk), CLOSED, RESHARDING))
            except FileNotFoundError:
                self._buckets.pop(b.name, None)
                raise NoSuchBucket(b.name) from None
            if CLOSED in got:
                raise NoSuchBucket(b.name)
            if RESHARDING in got:
                raise EngineUnavailable(f"{b.name} is being resharded: try again")
            present = {k: got[ENTRY + k].decode() for k in chunk if ENTRY + k in got}
            gone.update((k, False) for k in chunk if k not in present)
            if not present:
                return

            def build(op: Any) -> None:
                for k, raw in present.items():
                    op.omap_cmp(ENTRY + k, raw, self._rados.LIBRADOS_CMPXATTR_OP_EQ)
                op.omap_cmp(CLOSED, "", self._rados.LIBRADOS_CMPXATTR_OP_EQ)
                op.omap_cmp(RESHARDING, "", self._rados.LIBRADOS_CMPXATTR_OP_EQ)
                self.index.remove_omap_keys(op, tuple(ENTRY + k for k in present))

            rv = await self._write(self.index, shard, build)
            if rv == 0:
                for k, raw in present.items():
                    removing.append(Stored.parse(raw))
                    gone[k] = True
                return
            if rv == -ENOENT:
                self._buckets.pop(b.name, None)
                raise NoSuchBucket(b.name)
            if rv != -ECANCELED:
                _check(rv, "updating the index")
            for k in present:  # something changed meanwhile: key by key, each with its own swap
                gone[k] = await self._delete(b, k, None)

        await asyncio.gather(*(batch(shard, ks[i:i + DELETE_BATCH]) for shard, ks in by_shard.items()
                               for i in range(0, len(ks), DELETE_BATCH)))
        limit = asyncio.Semaphore(32)

        async def remove(entry: Stored) -> None:
            async with limit:
                await self._remove_object(entry)

        await asyncio.gather(*(remove(e) for e in removing))
        return [gone[k] for k in keys]

    async def _remove_object(self, entry: Stored) -> None:
        """An object the index no longer names, and its tails (listed in its header when it
        may have any); best effort: what stays behind is an orphan for the sweep."""
        if entry.at >= 0:
            await self._release([(entry.oid, entry.at, entry.size)])
            return
        tails: tuple[BlobRef, ...] = ()
        if entry.meta.body_size > STRIPE or entry.meta.parts:
            rv, data = await self._aio(lambda cb: self.data.aio_read(entry.oid, HEADER_ROOM, 0, cb))
            if rv >= 0:
                try:
                    p = records.decode_prefix(bytes(data))
                    if records.PREFIX_SIZE + p.hlen > len(data):
                        _, data = await self._aio(lambda cb: self.data.aio_read(
                            entry.oid, records.PREFIX_SIZE + p.hlen, 0, cb))
                    header = json.loads(records.check_header(bytes(data), p))
                    tails = tuple(BlobRef.from_json(t) for t in header.get("bl", ()))
                except (CorruptRecord, ValueError, KeyError):
                    pass  # a damaged head: its tails stay for the sweep
        await self.remove_data(entry.oid, tails)

    async def remove_data(self, oid: str, tails: tuple[BlobRef, ...] = ()) -> None:
        """Data objects, best effort (what stays behind is an orphan for the sweep)."""
        for name in [oid] + [t.blob_id for t in tails]:
            try:
                await self._aio(lambda cb: self.data.aio_remove(name, oncomplete=cb))  # noqa: B023 - awaited here
            except EngineUnavailable:
                pass

    # ------------------------------------------------------------------ listing

    async def entries(self, b: RadosBucket) -> list[tuple[str, bytes]]:
        """Every index entry of a bucket, (key, raw value), shard by shard: for admin queries."""
        out: list[tuple[str, bytes]] = []
        for shard in b.all_shards():
            out += [(name[len(ENTRY):], raw) for name, raw in await self._omap_all(self.index, shard, ENTRY)]
        return out

    async def list_objects(self, bucket: str, prefix: str, delimiter: str, marker: str | None,
                           max_keys: int) -> ListPage:
        """One page of an S3 listing: a batch from every shard at once, merged in key order
        (UTF-8 bytes, as OMAP and S3 sort). Only keys up to the smallest last key of a full
        batch are certain to be complete; the next round starts there. With a delimiter,
        every shard restarts after a rolled-up prefix, so its keys are never read."""
        return await self._with_bucket(bucket, lambda b: self._list(b, prefix, delimiter, marker, max_keys))

    async def _list(self, b: RadosBucket, prefix: str, delimiter: str, marker: str | None,
                    max_keys: int) -> ListPage:
        entries: list[ListEntry] = []
        prefixes: list[str] = []
        if max_keys <= 0:
            return ListPage(entries, prefixes, False, None)
        after = marker or ""
        if marker and delimiter and marker.startswith(prefix):
            i = marker.find(delimiter, len(prefix))
            if i >= 0:  # the marker is a prefix already rolled up: skip what it covers
                after = _past(marker[: i + len(delimiter)])
        # Keys hash evenly over the shards: twice a shard's share of the page is usually
        # enough in one round, and the `limit` rule below fetches more where it is not.
        shards = b.shards_for(prefix)
        batch = min(max(8, 2 * (max_keys + 1) // len(shards) + 1), max_keys + 1, 1000)
        last: str | None = None
        while True:
            try:
                pages = await asyncio.gather(*(self._omap_page(self.index, shard, ENTRY + after, ENTRY + prefix,
                                                               batch) for shard in shards))
            except FileNotFoundError:
                raise NoSuchBucket(b.name) from None
            full = [p[-1][0][1:].encode() for p in pages if len(p) == batch]
            limit = min(full) if full else None
            resume: str | None = None
            for key, raw in sorted(((k[1:], v) for p in pages for k, v in p), key=lambda kv: kv[0].encode()):
                kb = key.encode()
                if limit is not None and kb > limit:
                    break
                cp = None
                if delimiter:
                    i = key.find(delimiter, len(prefix))
                    if i >= 0:
                        cp = key[: i + len(delimiter)]
                        if prefixes and prefixes[-1] == cp:
                            continue
                if len(entries) + len(prefixes) >= max_keys:
                    return ListPage(entries, prefixes, True, last)
                if cp is not None:
                    prefixes.append(cp)
                    last = cp
                    resume = _past(cp)
                    break
                m = json.loads(raw)["m"]
                entries.append(ListEntry(key, m["s"], m["e"], m["t"]))
                last = key
            if resume is None:
                if limit is None:
                    return ListPage(entries, prefixes, False, None)
                resume = limit.decode()
            after = resume


def index_json(meta: ObjectMeta) -> str:
    """The metadata as an index entry holds it: ASCII JSON (non-ASCII escaped). python-rados's
    `omap_cmp` passes a value's length in characters, not bytes, so a value with non-ASCII text
    could never be compared equal, and its key never overwritten or deleted."""
    return json.dumps(meta.to_json(), separators=(",", ":"))


def _with_meta(entry: Stored, meta: ObjectMeta) -> str:
    """An index entry naming the same data with new metadata."""
    where = f',"a":{entry.at},"n":{entry.size}' if entry.at >= 0 else ""
    return f'{{"o":{json.dumps(entry.oid)}{where},"m":{index_json(meta)}}}'


def _create(op: Any, rados: Any, data: bytes) -> None:
    """A new object written whole: exclusive create, so a name is never written twice."""
    op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
    op.write_full(data)


def _past(cp: str) -> str:
    """A start-after that skips every key beginning with `cp` (U+10FFFF sorts last in UTF-8)."""
    return cp + "\U0010ffff"


def _check(rv: int, what: str) -> None:
    if rv < 0:
        raise EngineUnavailable(f"RADOS: {what} failed: errno {-rv}")

