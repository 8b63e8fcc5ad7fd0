"""The gateway's engine surface (api.Engine) served by Ceph RADOS (rados.py's layout).

Any number of gateways on any number of hosts share one cluster; nothing of a store
lives on a gateway host but the ceph.conf, the keyring and the master key (the same
32 bytes on every host, mode 0600).

- Objects: rados.py (data objects, the sharded OMAP index, compare-and-swap per key).
- Large bodies are staged as tail objects while they arrive (`RadosStager`: a tail per
  4 MiB, `<head>.t<n>`), and the head that lists them is written by `put`.
- Multipart: an upload is a record in `uploads.<bucket id>` (its key, metadata, and a
  state: "open", then "completing"); its parts are records in `parts.<upload id>`, each
  naming tails staged as `<bucket id>.<upload id>.<random>.t<n>`. Complete writes the head
  `<bucket id>.<upload id>` listing the chosen parts' tails (no byte is copied), swaps
  the index entry, then drops the parts it did not use and the records. The sweep keeps
  every data object of an open upload, and of a completed one its head names.
- Access keys: records in the metadata pool (`ns.key`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.keyfile import write_new_key

from .api import Bucket, Decide, Found, Part, Upload, choose_parts
from .model import (
    BlobRef,
    Change,
    Conditions,
    CorruptRecord,
    EngineUnavailable,
    ListPage,
    NoSuchBucket,
    NoSuchUpload,
    ObjectMeta,
    Sealing,
)
from .rados import STRIPE, UPLOADS, RadosBucket, RadosStore, Stored

CAS_ATTEMPTS = 16

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RadosFound:
    bucket: RadosBucket
    key: str
    entry: Stored
    current: bool = True  # False: a noncurrent version

    @property
    def meta(self) -> ObjectMeta:
        return self.entry.meta


class RadosStager:
    """A large body written as tail objects of STRIPE bytes while it arrives."""

    def __init__(self, store: RadosStore, head: str) -> None:
        self.store, self.head = store, head
        self.buf = bytearray()
        self.tails: list[BlobRef] = []
        self.pending: list[asyncio.Task[BlobRef]] = []

    def _flush(self, piece: bytes) -> None:
        name = f"{self.head}.t{len(self.pending)}"
        self.pending.append(asyncio.ensure_future(self.store.write_tail(name, piece)))

    async def write(self, chunk: bytes) -> None:
        self.buf += chunk
        while len(self.buf) >= STRIPE:
            piece, self.buf = bytes(self.buf[:STRIPE]), self.buf[STRIPE:]
            self._flush(piece)
            if len(self.pending) - sum(t.done() for t in self.pending) > 2:  # at most 3 tails in flight
                await asyncio.wait([t for t in self.pending if not t.done()], return_when=asyncio.FIRST_COMPLETED)

    async def finish(self) -> tuple[BlobRef, ...]:
        if self.buf or not self.pending:
            self._flush(bytes(self.buf))
            self.buf = bytearray()
        self.tails = list(await asyncio.gather(*self.pending))
        return tuple(self.tails)

    async def discard(self) -> None:
        results = await asyncio.gather(*self.pending, return_exceptions=True)
        self.pending = []
        for r in results:
            if isinstance(r, BlobRef):
                await self.store.remove_data(r.blob_id)


class RadosGateway:
    kind = "rados"
    inline_max = STRIPE

    def __init__(self, store: RadosStore, master_key_file: Path) -> None:
        self.store = store
        self.master_key_file = master_key_file
        self.metrics: dict[str, Any] = {"checksum_errors": 0}
        self.ops = store.ops  # RADOS operations by outcome, for /metrics

    def close(self) -> None:
        self.store.close()

    # ------------------------------------------------------------ buckets

    async def _fresh(self, name: str) -> RadosBucket:
        """The bucket as the metadata pool has it now (another gateway may have deleted it)."""
        return await self.store.bucket(name, fresh=True)

    async def bucket_exists(self, name: str) -> bool:
        try:
            await self._fresh(name)
        except NoSuchBucket:
            return False
        return True

    async def get_bucket(self, name: str) -> Bucket:
        b = await self._fresh(name)
        return Bucket(b.name, b.created, b.owner)

    async def bucket_info(self, name: str, *, fresh: bool) -> Bucket:
        b = await self.store.bucket(name, fresh=fresh)
        return Bucket(b.name, b.created, b.owner)

    async def list_buckets(self) -> list[Bucket]:
        return sorted((Bucket(b.name, b.created, b.owner) for b in await self.store.list_buckets()),
                      key=lambda b: b.name)

    async def create_bucket(self, name: str, owner: str) -> None:
        await self.store.create_bucket(name, owner)

    async def delete_bucket(self, name: str) -> None:
        """The bucket with its multipart uploads in progress (AWS: only objects keep a bucket):
        each aborted first (an upload being completed is left to finish, and its object then
        keeps the bucket); an upload begun meanwhile is forgotten with the bucket's records, its
        parts' tails swept as a gone bucket's."""
        b = await self._fresh(name)
        for upload_id, raw in await self.store.records(f"{UPLOADS}.{b.id}"):
            if json.loads(raw)["state"] == "open":
                with contextlib.suppress(NoSuchUpload):
                    await self.abort_upload(name, upload_id)
        await self.store.delete_bucket(name)
        for upload_id, _ in await self.store.records(f"{UPLOADS}.{b.id}"):
            await self.store.remove_record_object(f"parts.{upload_id}")
        await self.store.remove_record_object(f"{UPLOADS}.{b.id}")

    # ------------------------------------------------------------ objects

    async def head(self, bucket: str, key: str) -> Found:
        b, entry = await self.store.locate(bucket, key)
        return RadosFound(b, key, entry)

    def streamed(self, found: Found) -> bool:
        return found.meta.body_size > STRIPE

    async def read(self, found: Found) -> bytes:
        assert isinstance(found, RadosFound)
        with self._counting(found):
            rec = await self.store.read_record(found.bucket, found.key, found.entry, current=found.current)
            if not rec.blobs:
                return rec.body
            return b"".join(await asyncio.gather(*(self.store.read_tail(ref) for ref in rec.blobs)))

    async def stream(self, found: Found, start: int, end: int) -> AsyncIterator[bytes]:
        assert isinstance(found, RadosFound)
        with self._counting(found):
            rec = await self.store.read_record(found.bucket, found.key, found.entry, current=found.current)
            if not rec.blobs:
                yield rec.body[start:end]
                return
            pos = 0
            for ref in rec.blobs:  # one tail (at most STRIPE bytes) at a time, verified before sent
                lo, hi = max(start - pos, 0), min(end - pos, ref.size)
                if lo < hi:
                    data = await self.store.read_tail(ref)
                    yield data[lo:hi]
                pos += ref.size

    @contextlib.contextmanager
    def _counting(self, found: RadosFound) -> Iterator[None]:
        """A record or tail that fails its checksum is counted and logged (the dashboard alerts on
        it) before the error reaches the request, which never gets the bytes."""
        try:
            yield
        except CorruptRecord:
            self.metrics["checksum_errors"] += 1
            log.error("checksum error reading %s/%s (%s)", found.bucket.name, found.key, found.entry.oid)
            raise

    async def list_objects(self, bucket: str, prefix: str, delimiter: str, marker: str | None,
                           max_keys: int) -> ListPage:
        return await self.store.list_objects(bucket, prefix, delimiter, marker, max_keys)

    async def stager(self, bucket: str, upload: str | None = None) -> RadosStager:
        b = await self.store.bucket(bucket)
        head = self.store.new_oid(b, f"{upload}.{secrets.token_hex(8)}" if upload else None)
        return RadosStager(self.store, head)

    async def discard(self, blobs: tuple[BlobRef, ...]) -> None:
        for ref in blobs:
            await self.store.remove_data(ref.blob_id)

    async def put(self, bucket: str, key: str, meta: ObjectMeta, body: bytes = b"",
                  blobs: tuple[BlobRef, ...] = (), cond: Conditions | None = None,
                  decide: Decide | None = None) -> None:
        head = blobs[0].blob_id.rsplit(".", 1)[0] if blobs else None  # staged as <head>.t<n>
        await self.store.put(bucket, key, meta, body, cond, head=head, tails=blobs, decide=decide)

    # ------------------------------------------------------------ versions

    async def change_versions(self, bucket: str, key: str, decide: Decide) -> Change:
        return await self.store.change_versions(bucket, key, decide)

    async def head_version(self, bucket: str, key: str, order: str) -> Found:
        b, entry = await self.store.head_version(bucket, key, order)
        return RadosFound(b, key, entry, current=False)

    async def versions(self, bucket: str, key: str) -> list[tuple[str, ObjectMeta]]:
        return await self.store.versions(bucket, key)

    async def version_page(self, bucket: str, prefix: str, after: str | None,
                           limit: int) -> tuple[list[tuple[str, ObjectMeta, bool]], bool]:
        return await self.store.version_page(bucket, prefix, after, limit)

    async def delete(self, bucket: str, key: str, cond: Conditions | None = None) -> bool:
        return await self.store.delete(bucket, key, cond)

    async def delete_many(self, bucket: str, keys: list[str]) -> list[bool]:
        await self._fresh(bucket)  # NoSuchBucket before anything, as one request
        return await self.store.delete_many(bucket, keys)

    # ------------------------------------------------------------ multipart

    def _upload_from(self, bucket: str, upload_id: str, raw: str) -> tuple[Upload, dict[str, Any]]:
        d = json.loads(raw)
        return Upload(upload_id, bucket, d["key"], ObjectMeta.from_json(d["meta"]), d["initiated"], 0), d

    async def _upload(self, bucket: str, upload_id: str) -> tuple[RadosBucket, Upload, dict[str, Any], str]:
        b = await self._fresh(bucket)
        raw = await self.store.record(f"{UPLOADS}.{b.id}", upload_id)
        if raw is None:
            raise NoSuchUpload(upload_id)
        upload, d = self._upload_from(bucket, upload_id, raw)
        return b, upload, d, raw

    async def get_upload(self, bucket: str, upload_id: str) -> Upload:
        _, upload, d, _ = await self._upload(bucket, upload_id)
        if d["state"] != "open":
            raise NoSuchUpload(upload_id)
        return upload

    async def list_uploads(self, bucket: str) -> list[Upload]:
        b = await self._fresh(bucket)
        out = []
        for upload_id, raw in await self.store.records(f"{UPLOADS}.{b.id}"):
            upload, d = self._upload_from(bucket, upload_id, raw)
            if d["state"] == "open":
                out.append(upload)
        return sorted(out, key=lambda u: (u.key, u.initiated))

    async def create_upload(self, bucket: str, key: str, meta: ObjectMeta) -> str:
        b = await self._fresh(bucket)
        upload_id = secrets.token_hex(24)
        value = json.dumps({"key": key, "meta": ObjectMeta(0, '""', meta.mtime, meta.content_type, meta.headers,
                                                            meta.user, meta.checksums, tags=meta.tags,
                                                            sealing=meta.sealing, retention=meta.retention,
                                                            legal_hold=meta.legal_hold).to_json(),
                            "initiated": time.time(), "state": "open"})
        if not await self.store.swap_record(f"{UPLOADS}.{b.id}", upload_id, None, value):
            raise EngineUnavailable("an upload id was taken twice")
        return upload_id

    async def _parts(self, upload_id: str) -> dict[int, tuple[Part, str]]:
        out = {}
        for name, raw in await self.store.records(f"parts.{upload_id}"):
            d = json.loads(raw)
            blobs = tuple(BlobRef.from_json(t) for t in d["tails"])
            sealing = Sealing.from_json(d["se"]) if "se" in d else None
            out[int(name)] = (Part(int(name), d["size"], d["etag"], d["mtime"], blobs, 0, d.get("x", {}), sealing),
                              raw)
        return out

    async def list_parts(self, bucket: str, upload_id: str) -> list[Part]:
        await self.get_upload(bucket, upload_id)
        return [p for _, (p, _) in sorted((await self._parts(upload_id)).items())]

    async def put_part(self, bucket: str, upload_id: str, number: int, blobs: tuple[BlobRef, ...],
                       etag: str, checksums: dict[str, str] | None = None, size: int | None = None,
                       sealing: Sealing | None = None) -> None:
        await self.get_upload(bucket, upload_id)
        d: dict[str, Any] = {"size": sum(t.size for t in blobs) if size is None else size, "etag": etag,
                             "mtime": time.time(), "tails": [t.to_json() for t in blobs], "x": checksums or {}}
        if sealing is not None:
            d["se"] = sealing.to_json()
        value = json.dumps(d)
        name = f"{number:05d}"
        for _ in range(CAS_ATTEMPTS):
            raw = await self.store.record(f"parts.{upload_id}", name)
            if await self.store.swap_record(f"parts.{upload_id}", name, raw, value):
                if raw is not None:  # the part it replaced
                    old = [BlobRef.from_json(t) for t in json.loads(raw)["tails"]]
                    await self.discard(tuple(old))
                return
        raise EngineUnavailable(f"part {number} of {upload_id} kept changing")

    async def _close_upload(self, b: RadosBucket, upload_id: str, raw: str, d: dict[str, Any]) -> None:
        """The upload "completing": no part, abort or second completion gets in any more."""
        if d["state"] != "open":
            raise NoSuchUpload(upload_id)
        if not await self.store.swap_record(f"{UPLOADS}.{b.id}", upload_id, raw,
                                            json.dumps({**d, "state": "completing", "since": time.time()})):
            raise NoSuchUpload(upload_id)  # aborted or completed meanwhile

    async def _forget_upload(self, b: RadosBucket, upload_id: str, parts: list[Part]) -> None:
        for p in parts:
            await self.store.swap_record(f"parts.{upload_id}", f"{p.number:05d}", None, None)
        await self.store.remove_record_object(f"parts.{upload_id}")
        current = await self.store.record(f"{UPLOADS}.{b.id}", upload_id)
        if current is not None:
            await self.store.swap_record(f"{UPLOADS}.{b.id}", upload_id, current, None)

    async def abort_upload(self, bucket: str, upload_id: str) -> None:
        b, _, d, raw = await self._upload(bucket, upload_id)
        await self._close_upload(b, upload_id, raw, d)
        parts = [p for p, _ in (await self._parts(upload_id)).values()]
        for p in parts:
            await self.discard(p.blobs)
        await self._forget_upload(b, upload_id, parts)

    async def complete_upload(self, bucket: str, upload_id: str, chosen: list[tuple[int, str]],
                              cond: Conditions | None = None, checksums: dict[str, str] | None = None,
                              decide: Decide | None = None,
                              finish: Callable[[ObjectMeta], ObjectMeta] | None = None) -> ObjectMeta:
        b, upload, d, raw = await self._upload(bucket, upload_id)
        if d["state"] != "open":
            raise NoSuchUpload(upload_id)
        parts = {n: p for n, (p, _) in (await self._parts(upload_id)).items()}
        used, meta = choose_parts(parts, chosen, upload, checksums)  # InvalidPart etc. before anything changes
        meta = finish(meta) if finish is not None else meta
        await self._close_upload(b, upload_id, raw, d)
        try:
            await self.store.put(bucket, upload.key, meta, b"", cond, head=self.store.new_oid(b, upload_id),
                                 tails=tuple(t for p in used for t in p.blobs), decide=decide)
        except BaseException:
            # back to "open": the client may retry the completion (or abort)
            now = await self.store.record(f"{UPLOADS}.{b.id}", upload_id)
            if now is not None:
                await self.store.swap_record(f"{UPLOADS}.{b.id}", upload_id, now, raw)
            raise
        used_numbers = {p.number for p in used}
        for p in parts.values():
            if p.number not in used_numbers:
                await self.discard(p.blobs)
        await self._forget_upload(b, upload_id, list(parts.values()))
        return meta

    # ------------------------------------------------------------ shared records

    async def record(self, namespace: str, name: str) -> dict[str, str] | None:
        raw = await self.store.record(namespace, name)
        return json.loads(raw) if raw is not None else None

    async def records(self, namespace: str) -> list[tuple[str, dict[str, str]]]:
        return [(name, json.loads(raw)) for name, raw in await self.store.records(namespace)]

    async def swap_record(self, namespace: str, name: str, expected: dict[str, str] | None,
                          value: dict[str, str] | None) -> bool:
        return await self.store.swap_record(namespace, name, _text(expected), _text(value))

    # ------------------------------------------------------------ operations

    def master_key(self) -> bytes:
        """Every gateway of the cluster reads the same 32 bytes from its own 0600 file
        (`mailstore rados master-key` makes one)."""
        path = self.master_key_file
        try:
            st = path.stat()
            data = path.read_bytes()
        except OSError as exc:
            raise EngineUnavailable(f"the master key {path}: {exc.strerror}") from None
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise EngineUnavailable(f"the master key {path} may be read by others (chmod 600 it)")
        if len(data) != 32:
            raise EngineUnavailable(f"the master key {path} is not 32 bytes")
        return data

    async def stats(self) -> dict[str, Any]:
        return {"kind": "rados", "buckets": len(await self.store.list_buckets())}

    async def usage_by_prefix(self, bucket: str) -> dict[str, tuple[int, int]]:
        b = await self._fresh(bucket)
        out: dict[str, tuple[int, int]] = {}
        for key, raw in await self.store.entries(b):
            p = key[: key.index("/") + 1] if "/" in key else ""
            n, size = out.get(p, (0, 0))
            out[p] = (n + 1, size + json.loads(raw)["m"]["s"])
        return out

    async def probe(self) -> None:
        await asyncio.wait_for(self.store.list_buckets(), timeout=5)


def _text(fields: dict[str, str] | None) -> str | None:
    return json.dumps(fields, sort_keys=True, separators=(",", ":")) if fields is not None else None


def make_master_key(path: Path) -> None:
    """A new master key file (0600); refuses to replace one."""
    write_new_key(path)
