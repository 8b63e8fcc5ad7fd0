"""The local engine: the embedded default storage of a gateway (or several).

Reads are cheap synchronous calls (an indexed SQLite lookup and a positional
read of a record that is usually in the page cache).  The gateway makes them
on its event loop for small objects: a WAL reader never waits on a writer, and
a thread hop costs more than the read.  Large bodies are streamed from worker
threads.  Writes go to the group committer and are awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

from runtime.keyfile import write_new_key

from . import records
from .api import Bucket, Decide, EntityTooSmall, InvalidPartOrder, Part, Upload, choose_parts
from .commit import GroupCommitter, Guard, Txn, Write
from .index import IndexReader, connect
from .model import (
    MPU,
    SEP,
    SYS,
    VERSIONS,
    BlobRef,
    BucketAlreadyExists,
    BucketNotEmpty,
    Change,
    Conditions,
    CorruptRecord,
    EngineError,
    EngineUnavailable,
    InvalidPart,
    ListPage,
    NoSuchBucket,
    NoSuchKey,
    NoSuchUpload,
    NoSuchVersion,
    ObjectInfo,
    ObjectMeta,
    PreconditionFailed,
    Sealing,
    order_of,
)
from .recovery import check_index_file, recover
from .segments import DataDir, Generation, SegmentGone, SegmentReader, WriteLock, read_blob_blocks

log = logging.getLogger(__name__)

INLINE_MAX = 1 << 20  # bodies up to this size live inside the segment record


def master_key(root: Path) -> bytes:
    """The data directory's master key, made once (safely, if processes race) while the engine
    holds nothing: once it does, a missing key is an error (a new one would make every secret
    it sealed unreadable, silently)."""
    path = root / "master.key"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if DataDir(root).segment_ids():
            raise EngineUnavailable(f"{path} is missing but {root} holds data: the access keys' secrets are "
                                    "sealed with it; put it back from the backup (README: Backup and "
                                    "restore)") from None
        tmp = root / f".master.key.{os.getpid()}.{secrets.token_hex(4)}"
        write_new_key(tmp)
        try:
            os.link(tmp, path)  # fails if another process made it first: then use theirs
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        data = path.read_bytes()
    if len(data) != 32:
        raise ValueError(f"{path} is not a 32-byte key")
    return data


class NotAnEngine(ValueError):
    """A command that reads was given a directory that holds no engine."""


def is_engine(root: Path) -> bool:
    return (root / "segments").is_dir() or (root / "index.db").exists()


def find_engine(given: Path | str) -> Path:
    """The engine an admin command works on: DIR itself, or DIR/engine of an appliance's
    directory (what `mailstore init` and `mailstore up` make).  Never a new one: a typo
    would otherwise get an empty engine with its own master key."""
    root = Path(given)
    if is_engine(root):
        return root
    if is_engine(root / "engine"):
        return root / "engine"
    raise NotAnEngine(f"{root} holds no engine (neither {root}/segments nor {root}/engine/segments): give the "
                      "appliance's directory or its engine; `mailstore init --data-dir DIR` makes one")


def serving_engine(given: Path | str) -> Path:
    """The engine a gateway serves (and makes if new): DIR/engine of an appliance's directory,
    else DIR."""
    root = Path(given)
    if not is_engine(root) and ((root / "mailstore.toml").exists() or is_engine(root / "engine")):
        return root / "engine"
    return root


class EngineLocked(Exception):
    """An offline operation found gateways running on the data directory."""


class EngineLock:
    """Who may use a data directory: gateways and admin commands share it, offline work excludes."""

    def __init__(self, root: Path, *, exclusive: bool) -> None:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.fd = os.open(root / "engine.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise EngineLocked(
                f"{root} is in use by another process (stop the gateways first)" if exclusive
                else f"{root} is locked by an offline operation (fsck --rebuild-index?)") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalEngine:
    def __init__(self, root: Path, *, exclusive: bool = False, writer: bool = True) -> None:
        self.data = DataDir(root)
        self.data.create()
        master_key(root)  # made with the engine; missing from one that holds data: refused
        self._lock = EngineLock(root, exclusive=exclusive)
        self._local = threading.local()
        self._opened: list[tuple[IndexReader, SegmentReader]] = []  # every thread's readers, closed by close()
        self._opened_lock = threading.Lock()
        self.generation = Generation(root)
        try:
            check_index_file(self.data)
            if not self.data.index_path.exists():  # a new engine: the index is private whatever the umask
                with contextlib.suppress(FileExistsError):  # (SQLite gives its -wal and -shm the file's mode)
                    os.close(os.open(self.data.index_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            boot = connect(self.data.index_path)
            lock = WriteLock(root)
            try:
                with lock:
                    recover(boot, self.data)
                    self.generation.bump()  # drops what a process that died before its bump left cached
            finally:
                lock.close()
                boot.close()
        except BaseException:
            self.generation.close()
            self._lock.close()
            raise
        self._bucket_cache: dict[str, tuple[int, Bucket]] = {}  # get_bucket: name -> (generation, parsed)
        self.metrics = {"batches": 0, "batch_txns": 0, "commit_seconds": 0.0, "checksum_errors": 0}
        self.batch_observers: list[Callable[[int, float, float], None]] = []  # (txns, seconds, sync seconds)
        self.committer: GroupCommitter | None = None
        if writer:
            self.committer = GroupCommitter(self.data, self.generation, on_batch=self._count_batch)
            self.committer.start()

    def _count_batch(self, n: int, seconds: float, sync_seconds: float) -> None:
        self.metrics["batches"] += 1
        self.metrics["batch_txns"] += n
        self.metrics["commit_seconds"] += seconds
        for observe in self.batch_observers:
            observe(n, seconds, sync_seconds)

    def close(self) -> None:
        """Readers first, then the committer: its connection is then the index's last, and SQLite
        checkpoints the WAL into index.db as it closes."""
        with self._opened_lock:
            opened, self._opened = self._opened, []
        for index, segments in opened:
            index.conn.close()
            segments.close()
        if self.committer is not None:
            self.committer.close()
            self.committer = None
        self.generation.close()
        self._lock.close()

    # ------------------------------------------------------------ per-thread readers

    def _readers(self) -> tuple[IndexReader, SegmentReader]:
        r = getattr(self._local, "r", None)
        if r is None:
            r = (IndexReader(connect(self.data.index_path, readonly=True)), SegmentReader(self.data))
            self._local.r = r
            with self._opened_lock:
                self._opened.append(r)
        return r

    @property
    def index(self) -> IndexReader:
        return self._readers()[0]

    # ------------------------------------------------------------ writes

    async def _run(self, txn: Txn) -> list[int | None]:
        assert self.committer is not None, "engine opened read-only"
        txn.loop = asyncio.get_running_loop()
        txn.waiter = txn.loop.create_future()
        self.committer.submit(txn)
        return await txn.waiter

    def run_sync(self, txn: Txn) -> list[int | None]:
        assert self.committer is not None, "engine opened read-only"
        txn.event = threading.Event()
        self.committer.submit(txn)
        txn.event.wait()
        if txn.error is not None:
            raise txn.error
        assert txn.result is not None
        return txn.result

    # ------------------------------------------------------------ buckets

    def bucket_exists(self, name: str) -> bool:
        try:
            self.get_bucket(name)
        except NoSuchBucket:
            return False
        return True

    def _require_bucket(self, name: str) -> None:
        self.get_bucket(name)  # NoSuchBucket; from the per-generation cache, as the permission check read it

    def get_bucket(self, name: str) -> Bucket:
        """Asked by every request (its permission check): the record read once per generation of
        the system namespace (segments.Generation), which moves only when a bucket or a key
        changes, so a request costs a memory read, not a query."""
        generation = self.generation.read()  # before the query: a change after it moves it again
        hit = self._bucket_cache.get(name)
        if hit is not None and hit[0] == generation:
            return hit[1]
        info = self.index.get(SYS, f"bucket/{name}")
        if info is None:
            raise NoSuchBucket(name)
        bucket = Bucket(name, info.meta.mtime, info.meta.user.get("owner", ""))
        if len(self._bucket_cache) > 10_000:
            self._bucket_cache.clear()
        self._bucket_cache[name] = (generation, bucket)
        return bucket

    def list_buckets(self) -> list[Bucket]:
        return [Bucket(i.key.removeprefix("bucket/"), i.meta.mtime, i.meta.user.get("owner", ""))
                for i in self.index.scan(SYS, "bucket/", None, 1_000_000)]

    def create_bucket_txn(self, name: str, owner: str) -> Txn:
        meta = ObjectMeta(0, '""', time.time(), user={"owner": owner})
        return Txn([Write(SYS, f"bucket/{name}", meta)],
                   [Guard("absent", SYS, f"bucket/{name}", BucketAlreadyExists)])

    async def create_bucket(self, name: str, owner: str) -> None:
        await self._run(self.create_bucket_txn(name, owner))

    async def delete_bucket(self, name: str) -> None:
        """The bucket, with its multipart uploads in progress and their parts (AWS: only objects
        keep a bucket), in one transaction; an upload begun meanwhile goes right after."""
        for _ in range(16):
            writes, guards = self._upload_removal(name)
            try:
                await self._run(Txn([Write(SYS, f"bucket/{name}", None), *writes],
                                    [Guard("exists", SYS, f"bucket/{name}", NoSuchBucket),
                                     Guard("empty", name, "", BucketNotEmpty),
                                     Guard("empty", VERSIONS + name, "", BucketNotEmpty), *guards]))
                break
            except _Changed:
                continue  # an upload completed or aborted meanwhile
        else:
            raise EngineUnavailable(f"{name}: its uploads kept changing")
        for _ in range(16):  # begun between our read and our commit: no bucket to finish in now
            writes, guards = self._upload_removal(name)
            if not writes:
                return
            with contextlib.suppress(_Changed):
                await self._run(Txn(writes, guards))

    def _upload_removal(self, bucket: str) -> tuple[list[Write], list[Guard]]:
        writes: list[Write] = []
        guards: list[Guard] = []
        for u in self.index.scan(MPU, f"u/{bucket}/", None, 100_000):
            upload_id = u.key.rsplit("/", 1)[1]
            for p in self.index.scan(MPU, f"p/{upload_id}/", None, 100_000):
                writes.append(Write(MPU, p.key, None))
            writes.append(Write(MPU, u.key, None))
            guards.append(Guard("seq", MPU, u.key, _Changed, u.seq))
        return writes, guards

    # ------------------------------------------------------------ objects: reads

    def head(self, bucket: str, key: str) -> ObjectInfo:
        info = self.index.get(bucket, key)
        if info is None:
            self._require_bucket(bucket)
            raise NoSuchKey(key)
        return info

    def read_inline(self, info: ObjectInfo) -> bytes:
        """The verified inline body of `info` (re-looked-up if compaction moved it)."""
        for _ in range(5):
            loc = info.location
            try:
                buf = self._readers()[1].read(loc.segment, loc.offset, loc.length)
            except SegmentGone:
                fresh = self.index.get(info.bucket, info.key)
                if fresh is None or fresh.seq != info.seq:
                    raise NoSuchKey(info.key) from None
                info = fresh
                continue
            try:
                p = records.decode_prefix(buf)
                if p.seq != info.seq or p.total != loc.length:
                    raise CorruptRecord(f"index points at the wrong record for {info.key!r}")
                records.check_header(buf, p)
                return records.check_body(buf[records.PREFIX_SIZE + p.hlen:], p)
            except CorruptRecord:
                self.metrics["checksum_errors"] += 1
                log.error("checksum error reading %s/%s at %s", info.bucket, info.key, loc)
                raise
        raise NoSuchKey(info.key)

    def iter_body(self, info: ObjectInfo, start: int, end: int) -> Iterator[bytes]:
        """Verified bytes [start, end) of a blob-backed body (blocking: use a thread)."""
        pos = 0
        try:
            for ref in info.blobs:
                lo, hi = max(start - pos, 0), min(end - pos, ref.size)
                if lo < hi:
                    yield from read_blob_blocks(self.data, ref, lo, hi)
                pos += ref.size
        except CorruptRecord:
            self.metrics["checksum_errors"] += 1
            log.error("checksum error reading blob of %s/%s", info.bucket, info.key)
            raise

    def list_objects(self, bucket: str, prefix: str, delimiter: str, marker: str | None,
                     max_keys: int) -> ListPage:
        self._require_bucket(bucket)
        return self.index.list_page(bucket, prefix, delimiter, marker, max_keys)

    # ------------------------------------------------------------ objects: writes

    def _guards(self, bucket: str, key: str, cond: Conditions | None) -> list[Guard]:
        """The bucket exists, and `cond` holds: checked here on the current object, then held
        by a guard that the object is still that one when the write commits (_Changed if
        not: the caller decides again)."""
        guards = [Guard("exists", SYS, f"bucket/{bucket}", NoSuchBucket)]
        if cond is None:
            return guards
        if not cond.needs_current():
            if cond.if_none_match_any:
                guards.append(Guard("absent", bucket, key, PreconditionFailed))
            return guards
        info = self.index.get(bucket, key)
        if info is None:
            self._require_bucket(bucket)
        cond.check(info.meta if info is not None else None, key)
        guards.append(Guard("seq", bucket, key, _Changed, info.seq) if info is not None
                      else Guard("absent", bucket, key, _Changed))
        return guards

    async def _guarded(self, make: Callable[[list[Guard]], Txn], bucket: str, key: str,
                       cond: Conditions | None) -> list[int | None]:
        for _ in range(16):
            try:
                return await self._run(make(self._guards(bucket, key, cond)))
            except _Changed:
                continue  # written meanwhile: decide on the new current object
        raise EngineUnavailable(f"{bucket}/{key} kept changing")

    def put_txn(self, bucket: str, key: str, meta: ObjectMeta, body: bytes,
                blobs: tuple[BlobRef, ...], cond: Conditions | None = None) -> Txn:
        return Txn([Write(bucket, key, meta, body, blobs)], self._guards(bucket, key, cond))

    async def put(self, bucket: str, key: str, meta: ObjectMeta, body: bytes = b"",
                  blobs: tuple[BlobRef, ...] = (), cond: Conditions | None = None,
                  decide: Decide | None = None) -> int:
        if decide is not None:
            await self._versioned(bucket, key, decide, Write(bucket, key, meta, body, blobs))
            return 0
        seq = (await self._guarded(lambda g: Txn([Write(bucket, key, meta, body, blobs)], g), bucket, key, cond))[0]
        assert seq is not None
        return seq

    # ------------------------------------------------------------ versions

    async def _versioned(self, bucket: str, key: str, decide: Decide, new: Write | None,
                         also: Callable[[], tuple[list[Write], list[Guard]]] | None = None) -> Change:
        """Decide on the key's current object and noncurrent versions as they are, and apply the
        change in one transaction guarded on everything it read (decided again if it moved).
        A version moves between the current slot and `VERSIONS` with its blobs (its record, and
        an inline body, are written again)."""
        ns = VERSIONS + bucket
        for _ in range(16):
            cur = self.index.get(bucket, key)
            if cur is None:
                self._require_bucket(bucket)
            found = self.index.scan(ns, key + SEP, None, 1_000_000)
            olds = {i.key[len(key) + 1:]: i for i in found}
            change = decide(cur.meta if cur is not None else None, [(o, i.meta) for o, i in olds.items()])
            writes: list[Write] = []
            guards = [Guard("exists", SYS, f"bucket/{bucket}", NoSuchBucket),
                      Guard("seq", bucket, key, _Changed, cur.seq) if cur is not None
                      else Guard("absent", bucket, key, _Changed)]
            if cur is not None and change.archive:
                writes.append(Write(ns, key + SEP + order_of(cur.meta), cur.meta, self._inline(cur), cur.blobs))
            for order in change.remove:
                writes.append(Write(ns, olds[order].key, None))
                guards.append(Guard("seq", ns, olds[order].key, _Changed, olds[order].seq))
            for m in change.markers:
                writes.append(Write(ns, key + SEP + order_of(m), m))
            for order, meta in change.restamp:
                was = cur if not order else olds[order]
                assert was is not None
                writes.append(Write(bucket if not order else ns, key if not order else was.key, meta,
                                    self._inline(was), was.blobs, release_prev_blobs=False))
                if order:
                    guards.append(Guard("seq", ns, was.key, _Changed, was.seq))
            if change.promote is not None:
                up = olds[change.promote]
                writes.append(Write(ns, up.key, None, release_prev_blobs=False))
                guards.append(Guard("seq", ns, up.key, _Changed, up.seq))
                new = Write(bucket, key, up.meta, self._inline(up), up.blobs)
            if new is not None:
                new.release_prev_blobs = not change.archive
                writes.append(new)
            elif cur is not None and change.delete_current:
                writes.append(Write(bucket, key, None, release_prev_blobs=not change.archive))
            if also is not None:
                more_writes, more_guards = also()
                writes += more_writes
                guards += more_guards
            try:
                await self._run(Txn(writes, guards))
            except _Changed:
                continue
            return change
        raise EngineUnavailable(f"{bucket}/{key} kept changing")

    def _inline(self, info: ObjectInfo) -> bytes:
        return b"" if info.blobs or info.meta.marker else self.read_inline(info)

    async def change_versions(self, bucket: str, key: str, decide: Decide) -> Change:
        return await self._versioned(bucket, key, decide, None)

    def head_version(self, bucket: str, key: str, order: str) -> ObjectInfo:
        info = self.index.get(VERSIONS + bucket, key + SEP + order)
        if info is None:
            self._require_bucket(bucket)
            raise NoSuchVersion(order)
        return info

    def versions(self, bucket: str, key: str) -> list[tuple[str, ObjectMeta]]:
        self._require_bucket(bucket)
        return [(i.key[len(key) + 1:], i.meta) for i in self.index.scan(VERSIONS + bucket, key + SEP, None, 1_000_000)]

    def version_page(self, bucket: str, prefix: str, after: str | None,
                     limit: int) -> tuple[list[tuple[str, ObjectMeta, bool]], bool]:
        self._require_bucket(bucket)
        rows = self.index.merged(bucket, VERSIONS + bucket, prefix, after, limit + 1)
        return rows[:limit], len(rows) > limit

    async def delete(self, bucket: str, key: str, cond: Conditions | None = None) -> bool:
        """True when something was deleted (S3 answers 204 either way)."""
        res = await self._guarded(lambda g: Txn([Write(bucket, key, None)], g), bucket, key, cond)
        return res[0] is not None

    async def delete_many(self, bucket: str, keys: list[str]) -> list[bool]:
        res = await self._run(Txn([Write(bucket, k, None) for k in keys],
                                  [Guard("exists", SYS, f"bucket/{bucket}", NoSuchBucket)]))
        return [r is not None for r in res]

    # ------------------------------------------------------------ multipart

    def get_upload(self, bucket: str, upload_id: str) -> Upload:
        info = self.index.get(MPU, f"u/{bucket}/{upload_id}")
        if info is None:
            raise NoSuchUpload(upload_id)
        u = dict(info.meta.user)
        key = u.pop("\x00key")
        meta = ObjectMeta(0, "", info.meta.mtime, info.meta.content_type, info.meta.headers, u,
                          info.meta.checksums, tags=info.meta.tags, sealing=info.meta.sealing,
                          retention=info.meta.retention, legal_hold=info.meta.legal_hold)
        return Upload(upload_id, bucket, key, meta, info.meta.mtime, info.seq)

    def list_uploads(self, bucket: str) -> list[Upload]:
        self._require_bucket(bucket)
        out = [self.get_upload(bucket, i.key.rsplit("/", 1)[1])
               for i in self.index.scan(MPU, f"u/{bucket}/", None, 100_000)]
        return sorted(out, key=lambda u: (u.key, u.initiated))

    async def create_upload(self, bucket: str, key: str, meta: ObjectMeta) -> str:
        # Hex: a URL-safe base64 id may begin with "-", which command-line clients (the AWS CLI's
        # --upload-id) read as an option; AWS's own ids never do.
        upload_id = secrets.token_hex(24)
        stored = ObjectMeta(0, '""', time.time(), meta.content_type, meta.headers,
                            {**meta.user, "\x00key": key}, meta.checksums, tags=meta.tags, sealing=meta.sealing,
                            retention=meta.retention, legal_hold=meta.legal_hold)
        await self._run(Txn([Write(MPU, f"u/{bucket}/{upload_id}", stored)],
                            [Guard("exists", SYS, f"bucket/{bucket}", NoSuchBucket)]))
        return upload_id

    def list_parts(self, upload_id: str) -> list[Part]:
        return [Part(int(i.key.rsplit("/", 1)[1]), i.meta.size, i.meta.etag, i.meta.mtime, i.blobs, i.seq,
                     i.meta.checksums, i.meta.sealing)
                for i in self.index.scan(MPU, f"p/{upload_id}/", None, 100_000)]

    async def put_part(self, bucket: str, upload_id: str, number: int, blob: BlobRef, etag: str,
                       checksums: dict[str, str] | None = None, size: int | None = None,
                       sealing: Sealing | None = None) -> None:
        meta = ObjectMeta(blob.size if size is None else size, etag, time.time(), checksums=checksums or {},
                          sealing=sealing)
        await self._run(Txn([Write(MPU, f"p/{upload_id}/{number:05d}", meta, blobs=(blob,))],
                            [Guard("exists", MPU, f"u/{bucket}/{upload_id}", NoSuchUpload)]))

    async def abort_upload(self, bucket: str, upload_id: str) -> None:
        upload = self.get_upload(bucket, upload_id)
        writes = [Write(MPU, f"p/{upload_id}/{p.number:05d}", None) for p in self.list_parts(upload_id)]
        writes.append(Write(MPU, f"u/{bucket}/{upload_id}", None))
        await self._run(Txn(writes, [Guard("seq", MPU, f"u/{bucket}/{upload_id}", NoSuchUpload, upload.seq)]))

    async def complete_upload(self, bucket: str, upload_id: str, chosen: list[tuple[int, str]],
                              cond: Conditions | None = None, checksums: dict[str, str] | None = None,
                              decide: Decide | None = None,
                              finish: Callable[[ObjectMeta], ObjectMeta] | None = None) -> ObjectMeta:
        """Stitch parts into one object without copying: it references their blobs. `cond`: the
        If-Match / If-None-Match of the request, on the object it makes."""
        upload = self.get_upload(bucket, upload_id)
        parts = {p.number: p for p in self.list_parts(upload_id)}
        used, meta = choose_parts(parts, chosen, upload, checksums)
        meta = finish(meta) if finish is not None else meta
        used_numbers = {p.number for p in used}

        def upload_writes() -> tuple[list[Write], list[Guard]]:
            writes: list[Write] = []
            guards = [Guard("seq", MPU, f"u/{bucket}/{upload_id}", NoSuchUpload, upload.seq)]
            for p in parts.values():
                writes.append(Write(MPU, f"p/{upload_id}/{p.number:05d}", None,
                                    release_prev_blobs=p.number not in used_numbers))
                guards.append(Guard("seq", MPU, f"p/{upload_id}/{p.number:05d}", InvalidPart, p.seq))
            writes.append(Write(MPU, f"u/{bucket}/{upload_id}", None))
            return writes, guards

        def new() -> Write:
            return Write(bucket, upload.key, meta, blobs=tuple(b for p in used for b in p.blobs))

        if decide is not None:
            await self._versioned(bucket, upload.key, decide, new(), upload_writes)
            return meta

        def txn(guards: list[Guard]) -> Txn:
            writes, more = upload_writes()
            return Txn([new(), *writes], [*guards, *more])

        await self._guarded(txn, bucket, upload.key, cond)
        return meta



class _Changed(EngineError):
    """A guarded object changed between the read that decided and the commit."""

__all__ = ["INLINE_MAX", "Bucket", "EngineLock", "EngineLocked", "EntityTooSmall", "InvalidPartOrder",
           "LocalEngine", "NotAnEngine", "Part", "Upload", "find_engine", "master_key", "serving_engine"]
