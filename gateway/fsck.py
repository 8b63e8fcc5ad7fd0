"""Offline verification and index rebuild of a local engine's data directory.

`verify` reads every committed record of every segment (all checksums), every
blob block, and checks that the index and the data files agree both ways:
every index row points at a record with its seq, namespace and key, and every
record in a segment is accounted for (live or dead).

`rebuild` forgets the index and makes a new one from the data files alone:
per (namespace, key) the record with the highest seq wins; a tombstone winner
means "absent".  A torn tail (a record whose checksum fails at the end of a
segment) is where that segment's committed data ends.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .engine import records
from .engine.index import connect, key_bytes
from .engine.model import CorruptRecord
from .engine.segments import DataDir, verify_blob

Progress = Callable[[int, int], None]  # (done, total) segments


@dataclass
class Report:
    records: int = 0
    live: int = 0
    dead: int = 0
    blobs: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Scan:
    """The records of one segment with a sound header, and where sound data ends.

    A record whose prefix and header verify but whose body does not is listed
    with its error (its length is trustworthy, so the scan goes on past it).
    A bad prefix or header ends the scan: `end` is where trustworthy data
    ends and `error` says why.
    """

    records: list[tuple[int, bytes, records.Record, str | None]]
    end: int
    error: str | None


def _scan(path: Path, limit: int | None) -> Scan:
    with open(path, "rb") as f:
        data = f.read() if limit is None else f.read(limit)
    found: list[tuple[int, bytes, records.Record, str | None]] = []
    pos = 0
    while pos < len(data):
        try:
            p = records.decode_prefix(data[pos:pos + records.PREFIX_SIZE])
            raw = data[pos:pos + p.total]
            if len(raw) != p.total:
                raise CorruptRecord("truncated record")
            records.check_header(raw, p)
        except CorruptRecord as exc:
            return Scan(found, pos, str(exc))
        try:
            rec, err = records.decode(raw), None
        except CorruptRecord as exc:
            rec, err = records.decode(_without_body(raw, p)), str(exc)
        found.append((pos, raw, rec, err))
        pos += p.total
    return Scan(found, pos, None)


def _without_body(raw: bytes, p: records.Prefix) -> bytes:
    """The record with its body dropped (to read a header whose body is corrupt)."""
    header = raw[records.PREFIX_SIZE:records.PREFIX_SIZE + p.hlen]
    head = struct.pack("<4sB3xQIQ", records.MAGIC, p.kind, p.seq, p.hlen, 0)
    hcrc = zlib.crc32(header, zlib.crc32(head))
    return head + struct.pack("<II", hcrc, 0) + header


def verify(root: Path, progress: Progress = lambda done, total: None) -> Report:
    data = DataDir(root)
    conn = connect(data.index_path)
    rep = Report()
    try:
        segs = dict(conn.execute("SELECT id, size FROM segments").fetchall())
        seen: set[int] = set()
        for n, (seg_id, size) in enumerate(sorted(segs.items()), 1):
            path = data.segment_path(seg_id)
            progress(n - 1, len(segs))
            if not path.exists():
                rep.problems.append(f"segment {seg_id}: file missing")
                continue
            actual = path.stat().st_size
            if actual < size:
                rep.problems.append(f"segment {seg_id}: file has {actual} bytes, index says {size} committed")
            scan = _scan(path, size)
            if scan.error is not None:
                rep.problems.append(f"segment {seg_id} offset {scan.end}: {scan.error}")
            for offset, raw, rec, body_err in scan.records:
                if body_err is not None:
                    rep.problems.append(f"segment {seg_id} offset {offset} "
                                        f"({rec.namespace}/{rec.key}): {body_err}")
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
    finally:
        conn.close()
    return rep


def rebuild(root: Path, progress: Progress = lambda done, total: None) -> Report:
    """Write a new index from the segment files, then swap it in."""
    data = DataDir(root)
    tmp = root / "index.db.rebuild"
    for suffix in ("", "-wal", "-shm"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)
    conn = connect(tmp)
    rep = Report()
    winners: dict[tuple[str, str], tuple[int, int, int, int, records.Record]] = {}
    dead: list[tuple[int, int, int]] = []
    seg_sizes: dict[int, int] = {}
    max_seq = 0
    ids = data.segment_ids()
    for n, seg_id in enumerate(ids, 1):
        progress(n - 1, len(ids))
        scan = _scan(data.segment_path(seg_id), None)
        if scan.error is not None:
            rep.problems.append(f"segment {seg_id}: data ends at {scan.end} ({scan.error}); tail cut")
        seg_sizes[seg_id] = scan.end
        for offset, raw, rec, body_err in scan.records:
            if body_err is not None:
                # Indexed all the same: a read fails loudly rather than an older
                # version silently reappearing.
                rep.problems.append(f"segment {seg_id} offset {offset}: {body_err}")
            rep.records += 1
            max_seq = max(max_seq, rec.seq)
            k = (rec.namespace, rec.key)
            old = winners.get(k)
            entry = (rec.seq, seg_id, offset, len(raw), rec)
            if old is None or rec.seq > old[0]:
                if old is not None:
                    dead.append((old[0], old[1], old[3]))
                winners[k] = entry
            else:
                dead.append((rec.seq, seg_id, len(raw)))
    progress(len(ids), len(ids))
    conn.execute("BEGIN")
    live_by_seg: dict[int, int] = {}
    dead_by_seg: dict[int, int] = {}
    for (ns, key), (seq, seg_id, offset, length, rec) in winners.items():
        if rec.kind == records.TOMBSTONE:
            dead.append((seq, seg_id, length))
            continue
        m = rec.meta
        assert m is not None
        conn.execute(
            "INSERT INTO objects(ns, key, seq, segment, offset, length, size, etag, mtime, meta, blobs)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (ns, key_bytes(key), seq, seg_id, offset, length, m.size, m.etag, m.mtime,
             records.meta_json(m),
             json.dumps([b.to_json() for b in rec.blobs]) if rec.blobs else None))
        live_by_seg[seg_id] = live_by_seg.get(seg_id, 0) + length
        rep.live += 1
    for seq, seg_id, length in dead:
        conn.execute("INSERT INTO dead(seq, segment, length) VALUES (?,?,?)", (seq, seg_id, length))
        dead_by_seg[seg_id] = dead_by_seg.get(seg_id, 0) + length
        rep.dead += 1
    for seg_id, size in seg_sizes.items():
        conn.execute("INSERT INTO segments(id, size, live, dead, sealed) VALUES (?,?,?,?,1)",
                     (seg_id, size, live_by_seg.get(seg_id, 0), dead_by_seg.get(seg_id, 0)))
        path = data.segment_path(seg_id)
        if path.stat().st_size > size:
            with open(path, "r+b") as f:
                f.truncate(size)
                os.fsync(f.fileno())
    conn.execute("UPDATE state SET v=? WHERE k='seq'", (max_seq,))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    for suffix in ("-wal", "-shm"):
        Path(str(data.index_path) + suffix).unlink(missing_ok=True)
    os.replace(tmp, data.index_path)
    for suffix in ("-wal", "-shm"):
        Path(str(tmp) + suffix).unlink(missing_ok=True)
    return rep
