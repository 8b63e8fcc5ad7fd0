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

Packs (rados_group.py) hold many records: the sweep removes a pack when no entry names any
of its slots, and zeroes a slot no entry names in a pack that stays (a PUT cut between the
pack's write and its index swap); check and rebuild read the slots an entry or the table names.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import rados_group, records
from .model import BLOCK_SIZE, SEP, CorruptRecord, ObjectMeta
from .rados import BUCKETS, ENTRY, UPLOADS, VERSION, RadosBucket, RadosStore, Stored, index_json

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


def _entries(store: RadosStore, b: RadosBucket) -> Iterator[tuple[str, Stored]]:
    """(key, entry) of every index entry of a bucket that names data (its current objects and
    noncurrent versions, not delete markers), shard by shard."""
    for shard in b.all_shards():
        for name, raw in _omap_all(store.index, shard):
            if name.startswith(ENTRY):
                yield name[len(ENTRY):], Stored.parse(raw.decode())
            elif name.startswith(VERSION):
                entry = Stored.parse(raw.decode())
                if entry.oid:
                    yield name[len(VERSION):].split(SEP, 1)[0], entry


def _named(store: RadosStore, b: RadosBucket, key: str) -> Stored | None:
    import rados
    with rados.ReadOpCtx() as op:
        it, _ = store.index.get_omap_vals_by_keys(op, (ENTRY + key,))
        store.index.operate_read_op(op, b.shard(key))
        got = dict(it)
    return Stored.parse(got[ENTRY + key].decode()) if ENTRY + key in got else None


def _table(store: RadosStore, oid: str) -> list[rados_group.Slot]:
    """A pack's slots (CorruptRecord when its table is damaged)."""
    need, slots = rados_group.read_table(store.data.read(oid, HEAD_READ, 0))
    if not slots:
        need, slots = rados_group.read_table(store.data.read(oid, need, 0))
    return slots


def _sweep_pack(store: RadosStore, b: RadosBucket, oid: str, report: FsckReport) -> None:
    """The slots no entry names are released (zeroed, their references dropped: the last one
    removes the pack)."""
    try:
        slots = _table(store, oid)
    except CorruptRecord:
        report.corrupt.append(oid)
        return
    dead = []
    for slot in slots:
        entry = _named(store, b, slot.key)
        if entry is None or (entry.oid, entry.at) != (oid, slot.at):
            dead.append(slot)
    if len(dead) == len(slots):
        store.data.remove_object(oid)
        report.removed.append(oid)
        return
    import rados
    orphans = [s for s in dead if not rados_group.zeroed(store.data.read(oid, records.PREFIX_SIZE, s.at))]
    for s in orphans:  # one slot per operation (see RadosStore._release)
        with rados.WriteOpCtx() as op:
            store.zero(op, s.at, s.size)
            op.execute("refcount", "put", rados_group.refcount_put(s.at))
            store.data.operate_write_op(op, oid)
        report.removed.append(f"{oid}@{s.at}")


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
        if b is not None and rados_group.is_pack(oid):
            _sweep_pack(store, b, oid, report)
            continue
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
            named = _named(store, b, rec.key) if rec is not None and rec.namespace == b.name else None
            if named is not None and named.oid == head:
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
        for key, entry in _entries(store, b):
            oid = entry.oid
            report.scanned += 1
            try:
                if deep and entry.at >= 0:
                    rec = records.decode(store.data.read(oid, entry.size, entry.at))
                    if (rec.namespace, rec.key) != (b.name, key):
                        report.corrupt.append(f"{oid}@{entry.at}")
                elif deep:
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
    newest: dict[str, tuple[float, str, str]] = {}  # key -> (mtime, the entry's "o" and where, meta text)

    def found(rec: records.Record, where: str) -> None:
        if rec.namespace != b.name or rec.meta is None:
            return
        if rec.key not in newest or rec.meta.mtime > newest[rec.key][0]:
            newest[rec.key] = (rec.meta.mtime, where, index_json(rec.meta))

    for obj in store.data.list_objects():
        if not obj.key.startswith(b.id + ".") or _head_of(obj.key) != obj.key:
            continue  # another bucket's, or a tail
        report.scanned += 1
        try:
            if not rados_group.is_pack(obj.key):
                found(_header(store, obj.key), json.dumps(obj.key))
                continue
            for slot in _table(store, obj.key):
                data = store.data.read(obj.key, slot.size, slot.at)
                if rados_group.zeroed(data):
                    continue  # released: overwritten or deleted
                try:
                    found(records.decode(data), f'{json.dumps(obj.key)},"a":{slot.at},"n":{slot.size}')
                except CorruptRecord:
                    report.corrupt.append(f"{obj.key}@{slot.at}")
        except CorruptRecord:
            report.corrupt.append(obj.key)
    for shard in b.all_shards():  # the shards, where the index pool lost them
        with rados.WriteOpCtx() as op:
            op.new(rados.LIBRADOS_CREATE_IDEMPOTENT)
            store.index.operate_write_op(op, shard)
    for key, (_, where, meta_text) in sorted(newest.items()):
        value = f'{{"o":{where},"m":{meta_text}}}'.encode()
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
