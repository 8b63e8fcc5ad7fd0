"""Compaction: reclaim the space of deleted and overwritten objects, online.

One compactor at a time per data directory (flock on compact.lock; the other
gateways' compactors skip while it is held).  For a sealed segment whose dead
bytes pass the threshold:

1. read it record by record (checksums verified: corrupt records are never
   copied, they are reported and kept in place for fsck);
2. copy every live record, and every dead record that must stay (its `prev`
   still exists somewhere, so dropping it could let a rebuild resurrect an
   older version), into a fresh segment, then fdatasync it;
3. in one index transaction, point live rows at their new place with
   compare-and-set on seq (a row overwritten meanwhile is left alone), move
   or drop the dead rows, and forget the old segment;
4. unlink the old file.  Readers holding it open keep reading; a reader that
   looked it up just before step 3 gets SegmentGone and looks up again.

Sealed files are never modified; traffic is never blocked for longer than one
short index transaction.  Orphan blob files (uploads that never committed)
are removed here too, after a grace period.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable

from .engine import records
from .engine.index import connect, key_bytes
from .engine.local import LocalEngine
from .engine.model import CorruptRecord
from .engine.segments import SegmentWriter, WriteLock

log = logging.getLogger("gateway.compact")

Move = tuple[records.Record, bytes, str]  # a record to copy, its bytes, and why ("live" or "keep")
DEAD_RATIO = 0.5
ORPHAN_GRACE_SECONDS = 3600.0


class Compactor:
    def __init__(self, engine: LocalEngine, *, interval: float = 30.0, dead_ratio: float = DEAD_RATIO,
                 orphan_grace: float = ORPHAN_GRACE_SECONDS) -> None:
        self.engine = engine
        self.data = engine.data
        self.interval = interval
        self.dead_ratio = dead_ratio
        self.orphan_grace = orphan_grace
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = {"runs": 0, "segments_compacted": 0, "bytes_reclaimed": 0, "blobs_removed": 0,
                      "corrupt_records": 0}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="compactor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:
                log.exception("compaction pass failed")

    def run_once(self, progress: Callable[[int, int], None] = lambda done, total: None) -> dict[str, int]:
        """One pass over every eligible segment; returns what it did.  progress(done, total) segments."""
        lock_fd = os.open(self.data.root / "compact.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return {}
            conn = connect(self.data.index_path)
            self._lock = WriteLock(self.data.root)
            try:
                candidates = conn.execute(
                    "SELECT id, size, dead FROM segments WHERE sealed=1 AND size>0 AND dead>=size*?",
                    (self.dead_ratio,),
                ).fetchall()
                for n, (seg_id, size, _) in enumerate(candidates):
                    progress(n, len(candidates))
                    if self._stop.is_set():
                        break
                    self._compact(conn, seg_id, size)
                progress(len(candidates), len(candidates))
                self._sweep_orphan_blobs(conn)
            finally:
                conn.close()
                self._lock.close()
            self.stats["runs"] += 1
            return dict(self.stats)
        finally:
            os.close(lock_fd)

    def _is_needed(self, conn: sqlite3.Connection, rec: records.Record) -> str:
        """'live', 'keep' (dead but still shadowing an older record) or 'drop'."""
        row = conn.execute("SELECT seq FROM objects WHERE ns=? AND key=?",
                           (rec.namespace, key_bytes(rec.key))).fetchone()
        if row is not None and row[0] == rec.seq:
            return "live"
        if rec.prev is None:
            return "drop"
        if conn.execute("SELECT 1 FROM dead WHERE seq=?", (rec.prev,)).fetchone():
            return "keep"
        if row is not None and row[0] == rec.prev:
            return "keep"
        return "drop"

    def _compact(self, conn: sqlite3.Connection, seg_id: int, size: int) -> None:
        path = self.data.segment_path(seg_id)
        with open(path, "rb") as f:
            blob = f.read(size)
        moves: list[Move] = []
        pos = 0
        while pos < len(blob):
            try:
                p = records.decode_prefix(blob[pos:pos + records.PREFIX_SIZE])
                raw = blob[pos:pos + p.total]
                rec = records.decode(raw)
            except CorruptRecord:
                self.stats["corrupt_records"] += 1
                log.error("segment %d: corrupt record at %d; leaving the segment for fsck", seg_id, pos)
                return
            verdict = self._is_needed(conn, rec)
            if verdict != "drop":
                moves.append((rec, raw, verdict))
            pos += p.total
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row_id = conn.execute("INSERT INTO segments(size, sealed) VALUES (0, 1)").lastrowid
                assert row_id is not None  # an INSERT into a rowid table always has one
                new_id: int = row_id
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        writer = SegmentWriter(self.data, new_id)
        try:
            offsets = []
            payload = b"".join(raw for _, raw, _ in moves)
            base = writer.append(payload) if payload else 0
            off = base
            for _, raw, _ in moves:
                offsets.append(off)
                off += len(raw)
            if payload:
                writer.sync()
            with self._lock:
                self._swap(conn, seg_id, new_id, moves, offsets, len(payload))
        finally:
            writer.close()
        if not payload:
            with self._lock:
                conn.execute("DELETE FROM segments WHERE id=? AND size=0", (new_id,))
            writer.path.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        self.stats["segments_compacted"] += 1
        self.stats["bytes_reclaimed"] += size - len(payload)
        log.info("compacted segment %d: %d -> %d bytes", seg_id, size, len(payload))

    def _swap(self, conn: sqlite3.Connection, seg_id: int, new_id: int, moves: list[Move], offsets: list[int],
              new_size: int) -> tuple[int, int]:
        """One index transaction: rows follow their records to the new segment."""
        live = dead = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for (rec, raw, verdict), offset in zip(moves, offsets, strict=True):
                moved = 0
                if verdict == "live":
                    moved = conn.execute(
                        "UPDATE objects SET segment=?, offset=? WHERE ns=? AND key=? AND seq=?",
                        (new_id, offset, rec.namespace, key_bytes(rec.key), rec.seq)).rowcount
                if moved:
                    live += len(raw)
                else:  # dead (or died since we looked): its dead row moves with it
                    conn.execute("UPDATE dead SET segment=? WHERE seq=?", (new_id, rec.seq))
                    dead += len(raw)
            kept = {rec.seq for rec, _, _ in moves}
            gone = [s for (s,) in conn.execute("SELECT seq FROM dead WHERE segment=?", (seg_id,))
                    if s not in kept]
            conn.executemany("DELETE FROM dead WHERE seq=?", [(s,) for s in gone])
            conn.execute("UPDATE segments SET size=?, live=?, dead=? WHERE id=?", (new_size, live, dead, new_id))
            conn.execute("DELETE FROM segments WHERE id=?", (seg_id,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return live, dead

    def _sweep_orphan_blobs(self, conn: sqlite3.Connection) -> None:
        cutoff = time.time() - self.orphan_grace
        candidates = []
        for d in self.data.blobs.iterdir() if self.data.blobs.exists() else ():
            for f in d.glob("*.blob"):
                try:
                    if f.stat().st_mtime < cutoff:
                        candidates.append(f)
                except FileNotFoundError:
                    pass
        if not candidates:
            return
        referenced: set[str] = set()
        for (blobs,) in conn.execute("SELECT blobs FROM objects WHERE blobs IS NOT NULL"):
            referenced.update(b[0] for b in json.loads(blobs))
        for f in candidates:
            if f.stem not in referenced:
                f.unlink(missing_ok=True)
                self.stats["blobs_removed"] += 1
