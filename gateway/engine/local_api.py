"""The gateway's engine surface (api.Engine) served by the local engine.

Reads stay on the event loop while they are cheap (an indexed SQLite lookup, a record
that is usually in the page cache) and move to a worker thread when they are not
(large bodies, long listings): a thread hop costs more than a small read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from .api import Bucket, Decide, Found, Part, RunBlocking, ThreadRunner, Upload
from .commit import Guard, Txn, Write
from .local import INLINE_MAX, LocalEngine, master_key
from .model import SYS, BlobRef, Change, Conditions, ListPage, ObjectInfo, ObjectMeta, PreconditionFailed, Sealing
from .segments import BlobWriter

T = TypeVar("T")

READ_ON_LOOP = 128 << 10  # inline bodies up to this are read on the event loop
LIST_ON_LOOP = 100  # listings of up to this many keys are made on the event loop


class LocalStager:
    """A large body streamed to a new blob file (fdatasynced at finish)."""

    def __init__(self, writer: BlobWriter, run: RunBlocking) -> None:
        self.writer, self.run = writer, run

    async def write(self, chunk: bytes) -> None:
        await self.run(self.writer.write, chunk)

    async def finish(self) -> tuple[BlobRef, ...]:
        return (await self.run(self.writer.finish),)

    async def discard(self) -> None:
        await self.run(self.writer.discard)


class LocalGateway:
    kind = "local"
    inline_max = INLINE_MAX

    def __init__(self, engine: LocalEngine, run: RunBlocking) -> None:
        self.local = engine
        self.run = run
        self.metrics: dict[str, Any] = engine.metrics

    def close(self) -> None:
        self.local.close()

    # ------------------------------------------------------------ buckets

    async def bucket_exists(self, name: str) -> bool:
        return self.local.bucket_exists(name)

    async def get_bucket(self, name: str) -> Bucket:
        return self.local.get_bucket(name)

    async def bucket_info(self, name: str, *, fresh: bool) -> Bucket:
        return self.local.get_bucket(name)  # one host: always as it is

    async def list_buckets(self) -> list[Bucket]:
        return self.local.list_buckets()

    async def create_bucket(self, name: str, owner: str) -> None:
        await self.local.create_bucket(name, owner)

    async def delete_bucket(self, name: str) -> None:
        await self.local.delete_bucket(name)

    # ------------------------------------------------------------ objects

    async def head(self, bucket: str, key: str) -> Found:
        return self.local.head(bucket, key)

    def streamed(self, found: Found) -> bool:
        assert isinstance(found, ObjectInfo)
        return bool(found.blobs)

    async def read(self, found: Found) -> bytes:
        assert isinstance(found, ObjectInfo)
        if found.blobs:
            return b"".join(await self.run(lambda: list(self.local.iter_body(found, 0, found.meta.body_size))))
        if found.meta.body_size <= READ_ON_LOOP:
            return self.local.read_inline(found)
        return await self.run(self.local.read_inline, found)

    async def stream(self, found: Found, start: int, end: int) -> AsyncIterator[bytes]:
        assert isinstance(found, ObjectInfo)
        if not found.blobs:
            yield (await self.read(found))[start:end]
            return
        it: Iterator[bytes] = self.local.iter_body(found, start, end)
        while (piece := await self.run(next, it, None)) is not None:
            yield piece

    async def list_objects(self, bucket: str, prefix: str, delimiter: str, marker: str | None,
                           max_keys: int) -> ListPage:
        if max_keys <= LIST_ON_LOOP:
            return self.local.list_objects(bucket, prefix, delimiter, marker, max_keys)
        return await self.run(self.local.list_objects, bucket, prefix, delimiter, marker, max_keys)

    async def stager(self, bucket: str, upload: str | None = None) -> LocalStager:
        return LocalStager(await self.run(BlobWriter, self.local.data), self.run)

    async def discard(self, blobs: tuple[BlobRef, ...]) -> None:
        for ref in blobs:
            self.local.data.blob_path(ref.blob_id).unlink(missing_ok=True)

    async def put(self, bucket: str, key: str, meta: ObjectMeta, body: bytes = b"",
                  blobs: tuple[BlobRef, ...] = (), cond: Conditions | None = None,
                  decide: Decide | None = None) -> None:
        await self.local.put(bucket, key, meta, body, blobs, cond, decide)

    async def delete(self, bucket: str, key: str, cond: Conditions | None = None) -> bool:
        return await self.local.delete(bucket, key, cond)

    async def delete_many(self, bucket: str, keys: list[str]) -> list[bool]:
        return await self.local.delete_many(bucket, keys)

    # ------------------------------------------------------------ versions

    async def change_versions(self, bucket: str, key: str, decide: Decide) -> Change:
        return await self.local.change_versions(bucket, key, decide)

    async def head_version(self, bucket: str, key: str, order: str) -> Found:
        return self.local.head_version(bucket, key, order)

    async def versions(self, bucket: str, key: str) -> list[tuple[str, ObjectMeta]]:
        return self.local.versions(bucket, key)

    async def version_page(self, bucket: str, prefix: str, after: str | None,
                           limit: int) -> tuple[list[tuple[str, ObjectMeta, bool]], bool]:
        return await self.run(self.local.version_page, bucket, prefix, after, limit)

    # ------------------------------------------------------------ multipart

    async def get_upload(self, bucket: str, upload_id: str) -> Upload:
        return self.local.get_upload(bucket, upload_id)

    async def list_uploads(self, bucket: str) -> list[Upload]:
        return self.local.list_uploads(bucket)

    async def create_upload(self, bucket: str, key: str, meta: ObjectMeta) -> str:
        return await self.local.create_upload(bucket, key, meta)

    async def list_parts(self, bucket: str, upload_id: str) -> list[Part]:
        return self.local.list_parts(upload_id)

    async def put_part(self, bucket: str, upload_id: str, number: int, blobs: tuple[BlobRef, ...],
                       etag: str, checksums: dict[str, str] | None = None, size: int | None = None,
                       sealing: Sealing | None = None) -> None:
        (blob,) = blobs
        await self.local.put_part(bucket, upload_id, number, blob, etag, checksums, size, sealing)

    async def abort_upload(self, bucket: str, upload_id: str) -> None:
        await self.local.abort_upload(bucket, upload_id)

    async def complete_upload(self, bucket: str, upload_id: str, chosen: list[tuple[int, str]],
                              cond: Conditions | None = None, checksums: dict[str, str] | None = None,
                              decide: Decide | None = None,
                              finish: Callable[[ObjectMeta], ObjectMeta] | None = None) -> ObjectMeta:
        return await self.local.complete_upload(bucket, upload_id, chosen, cond, checksums, decide, finish)

    # ------------------------------------------------------------ shared records

    async def record(self, namespace: str, name: str) -> dict[str, str] | None:
        info = self.local.index.get(SYS, f"{namespace}/{name}")
        return _fields(info.meta) if info is not None else None

    async def records(self, namespace: str) -> list[tuple[str, dict[str, str]]]:
        return [(i.key.removeprefix(f"{namespace}/"), _fields(i.meta))
                for i in self.local.index.scan(SYS, f"{namespace}/", None, 1_000_000)]

    async def swap_record(self, namespace: str, name: str, expected: dict[str, str] | None,
                          value: dict[str, str] | None) -> bool:
        key = f"{namespace}/{name}"
        info = self.local.index.get(SYS, key)
        if (None if info is None else _fields(info.meta)) != expected:
            return False
        guard = (Guard("absent", SYS, key, PreconditionFailed) if info is None
                 else Guard("seq", SYS, key, PreconditionFailed, info.seq))
        try:
            await self.local._run(Txn([Write(SYS, key, _meta(value) if value is not None else None)], [guard]))
        except PreconditionFailed:
            return False
        return True

    # ------------------------------------------------------------ operations

    def master_key(self) -> bytes:
        return master_key(self.local.data.root)

    async def stats(self) -> dict[str, Any]:
        return self.local.index.stats()

    async def usage_by_prefix(self, bucket: str) -> dict[str, tuple[int, int]]:
        return await self.run(lambda: self.local.index.usage_by_prefix(bucket))

    async def probe(self) -> None:
        self.local.bucket_exists("health-probe")


def _fields(meta: ObjectMeta) -> dict[str, str]:
    """A record's fields, kept in a SYS entry's user metadata (its creation time as mtime)."""
    return {**meta.user, "created": repr(meta.mtime)}


def _meta(fields: dict[str, str]) -> ObjectMeta:
    user = dict(fields)
    created = float(user.pop("created", "") or time.time())
    return ObjectMeta(0, '""', created, user=user)


def run_on(engine: LocalEngine, act: Callable[[LocalGateway], Coroutine[Any, Any, T]]) -> T:
    """Run `act` on the engine as a gateway sees it, from synchronous code (the CLI, first-time
    setup, tests); the engine stays open."""
    threads = ThreadRunner(2)
    try:
        return asyncio.run(act(LocalGateway(engine, threads)))
    finally:
        threads.shutdown()
