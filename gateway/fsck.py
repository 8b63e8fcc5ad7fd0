"""Offline verification and index rebuild of a local engine's data directory.

`verify` reads every committed record of every segment (all checksums), every
blob block, and checks that the index and the data files agree both ways:
every index row points at a record with its seq, namespace and key, and every
record in a segment is accounted for (live or dead).

`rebuild` forgets the index and makes a new one from the data files alone:
per (namespace, key) the record with the highest seq wins; a tombstone winner
means "absent".  A torn tail (damage after the last sound record of a
segment) is where that segment's data ends; it is quarantined, never just
dropped.  Damage in the middle of a segment costs only the records it touches
(scan.py resynchronises on the next sound record).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runtime.sealing import SealError, SecretBox

from .engine import records
from .engine.index import connect, key_bytes
from .engine.model import SYS, BlobRef, CorruptRecord, ObjectMeta
from .engine.recovery import IndexUnusable, check_index_file
from .engine.scan import quarantine_tail, scan_file
from .engine.segments import DataDir, fsync_dir, verify_blob
from .filemodes import too_open

Progress = Callable[[int, int], None]  # (done, total) segments


@dataclass
class Report:
    records: int = 0
    live: int = 0
    dead: int = 0
    blobs: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(root: Path, progress: Progress = lambda done, total: None) -> Report:
    data = DataDir(root)
    rep = Report()
    rep.warnings.extend(too_open(root))
    try:
        check_index_file(data)
        conn = connect(data.index_path)
    except IndexUnusable as exc:
        rep.problems.extend(exc.reasons)
        return rep
    try:
        _verify(conn, data, rep, progress)
        _verify_keys(conn, root, rep)
    finally:
        conn.close()
    return rep


def _verify(conn: sqlite3.Connection, data: DataDir, rep: Report, progress: Progress) -> None:
    segs = dict(conn.execute("SELECT id, size FROM segments").fetchall())
    for seg_id in sorted(set(data.segment_ids()) - set(segs)):
        if data.segment_path(seg_id).stat().st_size:
            rep.problems.append(f"segment {seg_id}: file holds data the index does not know")
    seen: set[int] = set()
    for n, (seg_id, size) in enumerate(sorted(segs.items()), 1):
        path = data.segment_path(seg_id)
        progress(n - 1, len(segs))
        if not path.exists():
            if size:
                rep.problems.append(f"segment {seg_id}: file missing")
            continue
        actual = path.stat().st_size
        if actual < size:
            rep.problems.append(f"segment {seg_id}: file has {actual} bytes, index says {size} committed")
        scan = scan_file(path, 0, size)
        for gap in scan.gaps:
            rep.problems.append(f"segment {seg_id} bytes {gap.start}..{gap.end}: {gap.reason}")
        for f in scan.records:
            rec, offset, raw = f.record, f.offset, f.raw
            if f.error is not None:
                rep.problems.append(f"segment {seg_id} offset {offset} ({rec.namespace}/{rec.key}): {f.error}")
            rep.records += 1
            rep.bytes += len(raw)
            seen.add(rec.seq)
            row = conn.execute("SELECT seq, segment, offset, length FROM objects WHERE ns=? AND key=?",
                               (rec.namespace, key_bytes(rec.key))).fetchone()
            if row is not None and row[0] == rec.seq:
                rep.live += 1
                if (row[1], row[2], row[3]) != (seg_id, offset, len(raw)):
                    rep.problems.append(f"{rec.namespace}/{rec.key}: index location {row[1:]} "
                                        f"but record is at {(seg_id, offset, len(raw))}")
                for ref in rec.blobs:
                    rep.blobs += 1
                    try:
                        verify_blob(data, ref)
                    except CorruptRecord as exc:
                        rep.problems.append(f"{rec.namespace}/{rec.key}: {exc}")
            elif conn.execute("SELECT 1 FROM dead WHERE seq=? AND segment=?", (rec.seq, seg_id)).fetchone():
                rep.dead += 1
            else:
                rep.problems.append(f"segment {seg_id} offset {offset}: record seq {rec.seq} "
                                    f"({rec.namespace}/{rec.key}) is neither live nor dead in the index")
    progress(len(segs), len(segs))
    for ns, key, seq, seg in conn.execute("SELECT ns, key, seq, segment FROM objects"):
        if seq not in seen:
            rep.problems.append(f"index row {ns}/{key.decode(errors='replace')} seq {seq} "
                                f"has no record (segment {seg})")
    for seq, seg in conn.execute("SELECT seq, segment FROM dead"):
        if seq not in seen:
            rep.problems.append(f"dead row seq {seq} has no record (segment {seg})")


def _verify_keys(conn: sqlite3.Connection, root: Path, rep: Report) -> None:
    """Encryption at rest (gateway/sse.py, kms.py): every store key and KMS key version opens with
    this directory's master key, and every sealed object names one that exists. A problem here
    means objects that can never be read again (a wrong or lost master key, a lost key record)."""
    sealed = []
    for ns, key, text in conn.execute("SELECT ns, key, meta FROM objects WHERE instr(meta, '\"se\":') > 0"):
        meta = ObjectMeta.from_json(json.loads(text))
        if meta.sealing is not None and meta.sealing.mode != "SSE-C":
            sealed.append((f"{ns}/{key.decode(errors='replace')}", meta.sealing))
    rows = {k.decode(errors="replace"): ObjectMeta.from_json(json.loads(t)).user
            for k, t in conn.execute("SELECT key, meta FROM objects WHERE ns=? AND (key >= ? AND key < ? OR "
                                     "key >= ? AND key < ?)", (SYS, b"kms-key/", b"kms-key0", b"sse-key/",
                                                                b"sse-key0"))}
    if not rows and not sealed:
        return
    try:
        master = SecretBox((root / "master.key").read_bytes())
    except (OSError, ValueError) as exc:
        rep.problems.append(f"master.key cannot be read ({exc}): no encrypted object can be opened")
        return
    opened: set[str] = set()  # "sse-key/ID" and "kms-key/ID:VERSION" that open
    for name, fields in rows.items():
        kind, _, kid = name.partition("/")
        sealed_keys = ([(kid, fields.get("key_enc", ""))] if kind == "sse-key" else
                       [(f"{kid}:{v[0]}", v[1]) for v in json.loads(fields.get("versions", "[]"))])
        for label, text in sealed_keys:
            try:
                master.open(text, label)
                opened.add(f"{kind}/{label}")
            except SealError:
                rep.problems.append(f"{name}: key material does not open with master.key (a wrong master key?)")
    for where, s in sealed:
        if s.mode == "aws:kms":
            arn, _, version = s.key_id.rpartition("#")
            need = f"kms-key/{arn.rsplit(':key/', 1)[-1]}:{version}"
        else:
            need = f"sse-key/{s.key_id}"
        if need not in opened:
            rep.problems.append(f"{where}: sealed under {need}, which is missing or does not open")


@dataclass(frozen=True, slots=True)
class _Winner:
    seq: int
    segment: int
    offset: int
    length: int
    kind: int
    meta: ObjectMeta | None
    blobs: tuple[BlobRef, ...]


@dataclass
class _Found:
    """What the segment files say, before it becomes an index."""

    winners: dict[tuple[str, str], _Winner] = field(default_factory=dict)  # newest record per key
    dead: list[tuple[int, int, int]] = field(default_factory=list)  # (seq, segment, length)
    sizes: dict[int, int] = field(default_factory=dict)  # segment -> where its sound data ends
    max_seq: int = 0


def rebuild(root: Path, progress: Progress = lambda done, total: None) -> Report:
    """Write a new index from the segment files alone, then swap it in.

    The old index is never read, so it may be missing, stale, corrupt or half
    written.  A torn tail is copied to quarantine/ before it is cut.
    """
    data = DataDir(root)
    data.create()
    rep = Report()
    found = _read_segments(data, rep, progress)
    tmp = root / "index.db.rebuild"
    for suffix in ("", "-wal", "-shm"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)
    _write_index(tmp, found, rep)
    # The new index is complete and synced; only now may torn tails go (into quarantine).
    for seg_id, size in found.sizes.items():
        path = data.segment_path(seg_id)
        if path.stat().st_size > size:
            fd = os.open(path, os.O_RDWR)
            try:
                where = quarantine_tail(data, seg_id, fd, size, "torn tail found by fsck --rebuild-index")
            finally:
                os.close(fd)
            rep.problems.append(f"segment {seg_id}: data ends at {size}; the bytes after it are in {where}")
    for suffix in ("-wal", "-shm"):
        Path(str(data.index_path) + suffix).unlink(missing_ok=True)
    os.replace(tmp, data.index_path)
    fsync_dir(root)
    for suffix in ("-wal", "-shm"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)
    return rep


def _read_segments(data: DataDir, rep: Report, progress: Progress) -> _Found:
    """Every record of every segment: per (namespace, key) the highest seq wins."""
    found = _Found()
    ids = data.segment_ids()
    for n, seg_id in enumerate(ids, 1):
        progress(n - 1, len(ids))
        scan = scan_file(data.segment_path(seg_id))
        for gap in scan.gaps:
            rep.problems.append(f"segment {seg_id} bytes {gap.start}..{gap.end}: {gap.reason}")
        tail = scan.torn_tail
        found.sizes[seg_id] = tail.start if tail is not None else scan.size
        for f in scan.records:
            rec = f.record
            if f.error is not None:
                # Indexed all the same: a read fails loudly rather than an older
                # version silently reappearing.
                rep.problems.append(f"segment {seg_id} offset {f.offset}: {f.error}")
            rep.records += 1
            found.max_seq = max(found.max_seq, rec.seq)
            k = (rec.namespace, rec.key)
            old = found.winners.get(k)
            if old is None or rec.seq > old.seq:
                if old is not None:
                    found.dead.append((old.seq, old.segment, old.length))
                found.winners[k] = _Winner(rec.seq, seg_id, f.offset, len(f.raw), rec.kind, rec.meta, rec.blobs)
            else:
                found.dead.append((rec.seq, seg_id, len(f.raw)))
    progress(len(ids), len(ids))
    return found


def _write_index(path: Path, found: _Found, rep: Report) -> None:
    """A complete index at `path` (synced and checkpointed): a tombstone winner means absent."""
    conn = connect(path)
    dead = list(found.dead)
    live_by_seg: dict[int, int] = {}
    dead_by_seg: dict[int, int] = {}
    conn.execute("BEGIN")
    for (ns, key), w in found.winners.items():
        if w.kind == records.TOMBSTONE:
            dead.append((w.seq, w.segment, w.length))
            continue
        m = w.meta
        assert m is not None
        conn.execute(
            "INSERT INTO objects(ns, key, seq, segment, offset, length, size, etag, mtime, meta, blobs)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (ns, key_bytes(key), w.seq, w.segment, w.offset, w.length, m.size, m.etag, m.mtime,
             records.meta_json(m), records.blobs_json(w.blobs)))
        live_by_seg[w.segment] = live_by_seg.get(w.segment, 0) + w.length
        rep.live += 1
    for seq, seg_id, length in dead:
        conn.execute("INSERT OR REPLACE INTO dead(seq, segment, length) VALUES (?,?,?)", (seq, seg_id, length))
        dead_by_seg[seg_id] = dead_by_seg.get(seg_id, 0) + length
        rep.dead += 1
    for seg_id, size in found.sizes.items():
        conn.execute("INSERT INTO segments(id, size, live, dead, sealed) VALUES (?,?,?,?,1)",
                     (seg_id, size, live_by_seg.get(seg_id, 0), dead_by_seg.get(seg_id, 0)))
    conn.execute("UPDATE state SET v=? WHERE k='seq'", (found.max_seq,))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
