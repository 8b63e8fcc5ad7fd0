"""Opening a data directory: check the index against the data files, finish a crashed writer.

The data files are the truth; `index.db` is a cache of them.  The rules:

- Nothing here deletes or cuts a byte that may hold a committed record.  An
  uncommitted or torn tail is copied to `quarantine/` before it is cut; an
  empty segment file (no records at all) is the only file ever removed.
- Evidence that the index is older than the data (a segment file it does not
  know, a committed segment whose file is gone or shorter, a sealed segment
  that grew, no index beside segment files, an unreadable index) stops the
  open with `IndexUnusable`, whose message names the command that rebuilds
  the index from the data files (`mailstore fsck --rebuild-index`).
- The one case fixed in place is the writer that died between its segment
  sync and its index COMMIT, or an index whose last commits were lost with its
  `-wal`: records past the committed end of a segment whose writer is gone.
  Their sequence numbers tell which: records numbered above everything the
  index handed out were synced and nobody has written since, so they are
  adopted (newest record of a key wins, tombstones respected: the result is
  the same as if the COMMIT had happened).  A record numbered at or below it
  belongs to a batch whose numbers another writer has since reused, so that
  batch was never acknowledged: it is quarantined and cut.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from . import records
from .index import key_bytes
from .scan import Found, quarantine_tail, scan_file
from .segments import DataDir, try_lock

log = logging.getLogger(__name__)


class IndexUnusable(Exception):
    """The index cannot be trusted to describe the data files; it must be rebuilt."""

    def __init__(self, root: Path, reasons: list[str]) -> None:
        self.reasons = reasons
        shown = "; ".join(reasons[:5]) + (f"; and {len(reasons) - 5} more" if len(reasons) > 5 else "")
        super().__init__(
            f"the index of {root} does not match its data files ({shown}). Nothing was changed. "
            f"Stop every gateway on it and run: mailstore fsck --data-dir {root} --rebuild-index")


def check_index_file(data: DataDir) -> None:
    """Before the index is opened: refuse a missing index beside data, or an unreadable one."""
    if not data.index_path.exists():
        held = [i for i in data.segment_ids() if data.segment_path(i).stat().st_size > 0]
        if held:
            raise IndexUnusable(data.root, [f"index.db is missing but {len(held)} segment files hold records"])
        return
    try:
        conn = sqlite3.connect(f"file:{data.index_path}?mode=ro", uri=True, timeout=30.0)
        try:
            conn.execute("PRAGMA busy_timeout=30000")
            verdict = conn.execute("PRAGMA quick_check").fetchall()
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise IndexUnusable(data.root, [f"index.db is unreadable: {exc}"]) from None
    if verdict != [("ok",)]:
        raise IndexUnusable(data.root, [f"index.db is damaged: {verdict[0][0]}"])
    if tables and not {"objects", "dead", "segments", "state"} <= tables:
        raise IndexUnusable(data.root, ["index.db lacks the engine's tables"])
    if not tables and data.segment_ids():
        held = [i for i in data.segment_ids() if data.segment_path(i).stat().st_size > 0]
        if held:
            raise IndexUnusable(data.root, [f"index.db is empty but {len(held)} segment files hold records"])


@dataclass
class _Plan:
    """What recovery will do to one segment whose writer is gone (its flock held in `fd`)."""

    seg_id: int
    fd: int | None
    committed: int
    sealed: bool
    adopt: list[Found] = field(default_factory=list)
    cut_at: int | None = None  # quarantine and cut from here
    why: str = ""
    unlink: bool = False  # an empty file without records, or a row without a file
    skip: bool = False


def recover(conn: sqlite3.Connection, data: DataDir) -> None:
    """Under the data directory's write lock: seal dead writers' segments, or refuse (see above).

    Everything is inspected first; only when nothing points at a stale index
    is anything changed, in one index transaction.
    """
    reasons: list[str] = []
    plans: list[_Plan] = []
    try:
        last_seq = conn.execute("SELECT v FROM state WHERE k='seq'").fetchone()[0]
        for seg_id, size, sealed in conn.execute("SELECT id, size, sealed FROM segments").fetchall():
            plan = _inspect(data, seg_id, size, bool(sealed), last_seq, reasons)
            if plan is not None:
                plans.append(plan)
        known = {r[0] for r in conn.execute("SELECT id FROM segments")}
        for seg_id in data.segment_ids():
            if seg_id in known:
                continue
            fd = try_lock(data.segment_path(seg_id))
            if fd is None:
                continue  # its creator is alive and has not committed the row yet
            plans.append(_Plan(seg_id, fd, 0, False, unlink=True))
            if conn.execute("SELECT 1 FROM segments WHERE id=?", (seg_id,)).fetchone() is not None:
                plans[-1].unlink = False  # committed meanwhile: a later open will see it
                plans[-1].skip = True
            elif (size := os.fstat(fd).st_size) > 0:
                reasons.append(f"segment {seg_id} ({size} bytes) is not in the index")
        if reasons:
            raise IndexUnusable(data.root, reasons)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for plan in plans:
                _apply(conn, data, plan)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        for plan in plans:
            if plan.fd is not None:
                os.close(plan.fd)


def _inspect(data: DataDir, seg_id: int, size: int, sealed: bool, last_seq: int,
             reasons: list[str]) -> _Plan | None:
    path = data.segment_path(seg_id)
    fd = try_lock(path)
    if fd is None:
        if path.exists():
            return None  # a live writer holds it
        if size:
            reasons.append(f"segment {seg_id} has {size} committed bytes but its file is missing")
        return _Plan(seg_id, None, size, sealed, unlink=True)
    plan = _Plan(seg_id, fd, size, sealed)
    actual = os.fstat(fd).st_size
    if actual < size:
        reasons.append(f"segment {seg_id} has {actual} bytes, the index says {size} are committed")
    elif actual > size:
        _inspect_tail(data, plan, last_seq, reasons)
    return plan


def _inspect_tail(data: DataDir, plan: _Plan, last_seq: int, reasons: list[str]) -> None:
    """Bytes past the committed end of a segment whose writer is gone."""
    seg_id, size = plan.seg_id, plan.committed
    scan = scan_file(data.segment_path(seg_id), size)
    # Only an unbroken run of sound records from the committed end can be a batch.
    run: list[Found] = []
    pos = size
    for f in scan.records:
        if f.offset != pos or f.error is not None:
            break
        run.append(f)
        pos += len(f.raw)
    if len(scan.records) > len(run):
        reasons.append(f"segment {seg_id} holds sound records after damage past its committed end")
    elif run and all(f.record.seq > last_seq for f in run):
        if plan.sealed:
            reasons.append(f"sealed segment {seg_id} holds records past its committed end")
        plan.adopt = run
        if pos < scan.size:
            plan.cut_at, plan.why = pos, "a torn write after the adopted records"
    else:
        plan.cut_at = size
        plan.why = ("a batch whose sequence numbers were reused: never acknowledged" if run
                    else "a torn write: no complete record")


def _apply(conn: sqlite3.Connection, data: DataDir, plan: _Plan) -> None:
    seg_id = plan.seg_id
    path = data.segment_path(seg_id)
    if plan.skip:
        return
    if plan.unlink:  # a row without a file, or a file without records or row
        conn.execute("DELETE FROM segments WHERE id=? AND size=0", (seg_id,))
        if plan.fd is not None and os.fstat(plan.fd).st_size == 0:
            path.unlink()
        return
    assert plan.fd is not None
    end = plan.committed
    if plan.adopt:
        _adopt(conn, seg_id, plan.adopt)
        end = plan.adopt[-1].offset + len(plan.adopt[-1].raw)
        log.warning("segment %d: adopted %d synced records past the index's end (seq %d..%d)",
                    seg_id, len(plan.adopt), plan.adopt[0].record.seq, plan.adopt[-1].record.seq)
    if plan.cut_at is not None:
        where = quarantine_tail(data, seg_id, plan.fd, plan.cut_at, plan.why)
        if where is not None:
            log.warning("segment %d: cut the bytes past %d (%s); kept in %s", seg_id, plan.cut_at,
                        plan.why, where)
    if end == 0 and not plan.sealed:
        conn.execute("DELETE FROM segments WHERE id=? AND size=0", (seg_id,))
        path.unlink()
    elif not plan.sealed:
        conn.execute("UPDATE segments SET sealed=1 WHERE id=?", (seg_id,))


def _adopt(conn: sqlite3.Connection, seg_id: int, run: list[Found]) -> None:
    """Index records that were synced but whose COMMIT never happened (or was lost)."""
    live = dead = 0
    for f in run:
        rec, length = f.record, len(f.raw)
        row = conn.execute("SELECT seq, segment, length FROM objects WHERE ns=? AND key=?",
                           (rec.namespace, key_bytes(rec.key))).fetchone()
        if row is not None and row[0] > rec.seq:
            conn.execute("INSERT OR REPLACE INTO dead(seq, segment, length) VALUES (?,?,?)",
                         (rec.seq, seg_id, length))
            dead += length
            continue
        if row is not None:
            conn.execute("INSERT OR REPLACE INTO dead(seq, segment, length) VALUES (?,?,?)", row)
            if row[1] == seg_id:
                live -= row[2]
                dead += row[2]
            else:
                conn.execute("UPDATE segments SET live=live-?, dead=dead+? WHERE id=?",
                             (row[2], row[2], row[1]))
        if rec.kind == records.PUT:
            m = rec.meta
            assert m is not None
            conn.execute(
                "INSERT OR REPLACE INTO objects(ns, key, seq, segment, offset, length, size, etag, mtime,"
                " meta, blobs) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (rec.namespace, key_bytes(rec.key), rec.seq, seg_id, f.offset, length, m.size, m.etag,
                 m.mtime, records.meta_json(m), records.blobs_json(rec.blobs)))
            live += length
        else:
            conn.execute("DELETE FROM objects WHERE ns=? AND key=?", (rec.namespace, key_bytes(rec.key)))
            conn.execute("INSERT OR REPLACE INTO dead(seq, segment, length) VALUES (?,?,?)",
                         (rec.seq, seg_id, length))
            dead += length
    end = run[-1].offset + len(run[-1].raw)
    conn.execute("UPDATE segments SET size=?, live=live+?, dead=dead+? WHERE id=?", (end, live, dead, seg_id))
    conn.execute("UPDATE state SET v=max(v, ?) WHERE k='seq'", (max(f.record.seq for f in run),))
