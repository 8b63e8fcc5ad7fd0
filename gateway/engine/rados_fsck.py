"""Checking and repairing the RADOS layout (rados.py): the orphan sweep, the index check
against the data pool, and a bucket index rebuilt from the data objects alone.

Blocking (librados's synchronous calls): for the admin CLI, or a thread.

- **sweep**: a data object that no index entry names is an orphan: a PUT cut between its
  two writes, the loser of a race, data whose removal failed, or a deleted bucket's. It
  is removed once older than `min_age`, since a younger one may belong to a PUT between
  its data write and its index swap.
- **check**: every index entry's data object exists and (deep) holds that bucket and
  key with good checksums.
- **rebuild**: a bucket's index made again from its data objects (each record names its
  bucket and key): per key, the newest record; entries already present are kept.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import records
from .model import BLOCK_SIZE, CorruptRecord, ObjectMeta
from .rados import BUCKETS, ENTRY, UPLOADS, RadosBucket, RadosStore

HEAD_READ = 64 << 10


@dataclass
class FsckReport:
    scanned: int = 0
    removed: list[str] = field(default_factory=list)
    too_young: int = 0
    dangling: list[tuple[str, str]] = field(default_factory=list)  # (bucket, key)
    corrupt: list[str] = field(default_factory=list)
    restored: int = 0


def _header(store: RadosStore, oid: str) -> records.Record:
    """The record's prefix and header (checksummed), without its body."""
    head = store.data.read(oid, HEAD_READ, 0)
    p = records.decode_prefix(head)
    if records.PREFIX_SIZE + p.hlen > len(head):
        head = store.data.read(oid, records.PREFIX_SIZE + p.hlen, 0)
    h = json.loads(records.check_header(head, p))
    meta = ObjectMeta.from_json(h["m"]) if "m" in h else None
    return records.Record(p.kind, p.seq, h["b"], h["k"], meta, h.get("p"), (), b"")


def _head_of(oid: str) -> str:
    """The head object a data object belongs to: heads are `<bucket id>.<name>`, and every
    other data object is named after its head (tails `<head>.t<n>`, a multipart upload's
    parts `<bucket id>.<upload id>.<part>.t<n>`, whose object is `<bucket id>.<upload id>`)."""
    return ".".join(oid.split(".", 2)[:2])


def _entries(store: RadosStore, b: RadosBucket) -> Iterator[tuple[str, str]]:
    """(key, data object) of every index entry of a bucket, shard by shard."""
    for shard in b.all_shards():
        for name, raw in _omap_all(store.index, shard):
            if name.startswith(ENTRY):
                yield name[len(ENTRY):], json.loads(raw)["o"]


def _named(store: RadosStore, b: RadosBucket, key: str) -> str | None:
    import rados
    with rados.ReadOpCtx() as op:
        it, _ = store.index.get_omap_vals_by_keys(op, (ENTRY + key,))
        store.index.operate_read_op(op, b.shard(key))
        got = dict(it)
    return json.loads(got[ENTRY + key])["o"] if ENTRY + key in got else None


def _omap_all(io: Any, oid: str) -> Iterator[tuple[str, bytes]]:
    """Every OMAP entry of an object, a page at a time (none when it is missing)."""
    import rados
    after = ""
    while True:
        with rados.ReadOpCtx() as op:
            it, _ = io.get_omap_vals(op, after, "", 1000)
            try:
                io.operate_read_op(op, oid)
            except rados.ObjectNotFound:
                return
            page = list(it)
        yield from page
        if len(page) < 1000:
            return
        after = page[-1][0]


def buckets(store: RadosStore) -> list[RadosBucket]:
    """Every bucket, as the metadata pool lists them."""
    return [RadosBucket.from_json(name, raw) for name, raw in _omap_all(store.meta, BUCKETS)]


def sweep(store: RadosStore, min_age: float = 3600.0) -> FsckReport:
    """Remove the data objects no index entry names (of every bucket, and of buckets that
    are gone), older than `min_age` seconds."""
    import rados
    report = FsckReport()
    by_id = {b.id: b for b in buckets(store)}
    now = time.time()
    open_uploads = {bid: _live_uploads(store, bid, now, min_age, report) for bid in by_id}
    for obj in store.data.list_objects():
        oid = obj.key
        report.scanned += 1
        try:
            _, mtime = store.data.stat(oid)
        except rados.ObjectNotFound:
            continue  # removed meanwhile
        if now - time.mktime(mtime) < min_age:
            report.too_young += 1
            continue
        b = by_id.get(oid.split(".", 1)[0])
        head = _head_of(oid)  # a tail belongs to its head object
        if b is not None:
            if head.split(".", 1)[1] in open_uploads[b.id]:
                continue  # a part of an upload in progress
            try:
                rec = _header(store, head)
            except CorruptRecord:
                report.corrupt.append(oid)  # never removed silently: fsck reports it
                continue
            except rados.ObjectNotFound:
                rec = None  # a tail whose head is gone
            if rec is not None and rec.namespace == b.name and _named(store, b, rec.key) == head:
                continue
        store.data.remove_object(oid)
        report.removed.append(oid)
    return report


def _live_uploads(store: RadosStore, bid: str, now: float, min_age: float, report: FsckReport) -> set[str]:
    """A bucket's multipart uploads whose data objects must stay. A completion that died midway
    (its record "completing" for longer than `min_age`) is finished here: its records go, and
    with them the protection of whatever no index entry names, which this sweep then removes;
    an object the completion did put in the index keeps its head and tails."""
    import rados
    live = set()
    for name, raw in _omap_all(store.meta, f"ns.{UPLOADS}.{bid}"):
        d = json.loads(raw)
        if d.get("state") != "completing" or now - d.get("since", now) < min_age:
            live.add(name)
            continue
        try:
            store.meta.remove_object(f"ns.parts.{name}")
        except rados.ObjectNotFound:
            pass
        with rados.WriteOpCtx() as op:
            op.omap_cmp(name, raw.decode(), rados.LIBRADOS_CMPXATTR_OP_EQ)
            store.meta.remove_omap_keys(op, (name,))
            try:
                store.meta.operate_write_op(op, f"ns.{UPLOADS}.{bid}")
            except rados.Error:
                live.add(name)  # changed meanwhile: leave it to the next sweep
                continue
        report.removed.append(f"upload {name}")
    return live


def check(store: RadosStore, buckets: list[RadosBucket], *, deep: bool = False) -> FsckReport:
    """Every entry's data object is there (deep: and holds that key, checksums good)."""
    import rados
    report = FsckReport()
    for b in buckets:
        for key, oid in _entries(store, b):
            report.scanned += 1
            try:
                if deep:
                    rec = records.decode(store.data.read(oid, store.data.stat(oid)[0], 0))
                    for ref in rec.blobs:  # the tails, block by block
                        data = store.data.read(ref.blob_id, ref.size, 0)
                        if tuple(zlib.crc32(data[i:i + BLOCK_SIZE]) for i in range(0, len(data), BLOCK_SIZE)) \
                                != ref.crcs:
                            raise CorruptRecord(ref.blob_id)
                    if (rec.namespace, rec.key) != (b.name, key):
                        report.corrupt.append(oid)
                else:
                    store.data.stat(oid)
            except rados.ObjectNotFound:
                report.dangling.append((b.name, key))
            except CorruptRecord:
                report.corrupt.append(oid)
    return report


def rebuild(store: RadosStore, b: RadosBucket) -> FsckReport:
    """The bucket's index from its data objects: per key the newest record (by its mtime),
    set where the index has no entry."""
    import rados
    report = FsckReport()
    newest: dict[str, tuple[float, str, str]] = {}  # key -> (mtime, oid, meta text)
    for obj in store.data.list_objects():
        if not obj.key.startswith(b.id + ".") or _head_of(obj.key) != obj.key:
            continue  # another bucket's, or a tail
        report.scanned += 1
        try:
            rec = _header(store, obj.key)
        except CorruptRecord:
            report.corrupt.append(obj.key)
            continue
        if rec.namespace != b.name or rec.meta is None:
            continue
        if rec.key not in newest or rec.meta.mtime > newest[rec.key][0]:
            newest[rec.key] = (rec.meta.mtime, obj.key, records.meta_json(rec.meta))
    for shard in b.all_shards():  # the shards, where the index pool lost them
        with rados.WriteOpCtx() as op:
            op.new(rados.LIBRADOS_CREATE_IDEMPOTENT)
            store.index.operate_write_op(op, shard)
    for key, (_, oid, meta_text) in sorted(newest.items()):
        value = f'{{"o":{json.dumps(oid)},"m":{meta_text}}}'.encode()
        with rados.WriteOpCtx() as op:
            op.omap_cmp(ENTRY + key, "", rados.LIBRADOS_CMPXATTR_OP_EQ)  # an entry that is there stays
            store.index.set_omap(op, (ENTRY + key,), (value,))
            try:
                store.index.operate_write_op(op, b.shard(key))
                report.restored += 1
            except rados.Error as exc:  # the binding's own OSError, not the builtin
                if abs(getattr(exc, "errno", 0) or 0) != 125:  # ECANCELED: the entry exists and stays
                    raise
    return report
