"""Group commit: many writes, one fdatasync and one index COMMIT.

One committer thread per process owns that process's active segment.  It takes
every transaction waiting in its queue (requests pile up there while the
previous batch is syncing: that is the whole trick) and, for the batch:

1. BEGIN IMMEDIATE: the database's single write lock, shared by all processes,
   so sequence numbers and guard checks follow one global order;
2. checks each transaction's guards (bucket exists, If-None-Match, ...) against
   the index plus the batch's own earlier writes; a failing transaction fails
   alone;
3. appends the records to the segment and fdatasyncs it (and the blob
   directories a new blob was linked into);
4. applies the index changes and COMMITs (WAL, synchronous=FULL);
5. only then completes the callers' futures: durable before acknowledged.

If a sync fails nothing in the batch is acknowledged and the segment is
abandoned for a new one: after a failed fsync the page cache cannot be trusted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import records
from .index import connect, key_bytes
from .model import SYS, BlobRef, EngineError, EngineUnavailable, ObjectMeta, StorageFull, as_storage_error
from .segments import DataDir, Generation, SegmentWriter, WriteLock, fsync_dir

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Write:
    """One record to log: a PUT of (ns, key), or a delete when meta is None."""

    ns: str
    key: str
    meta: ObjectMeta | None
    body: bytes = b""
    blobs: tuple[BlobRef, ...] = ()
    release_prev_blobs: bool = True  # unlink the blob files of what this replaces
    meta_text: str | None = None  # meta serialized once, for the record and the index


@dataclass(frozen=True, slots=True)
class Guard:
    """A condition checked inside the write lock, before anything is written.

    kind: "exists" | "absent" | "etag" | "seq" | "empty"  ("empty": no live key
    in ns starting with `key`).
    """

    kind: str
    ns: str
    key: str
    error: type[EngineError]
    value: object = None


@dataclass(slots=True)
class Txn:
    """Writes that commit together or not at all, and how to tell the caller.

    An async caller sets `loop` and `waiter`; a blocking caller sets `event`.
    The committer fills `result` (the seq of each write, None for a delete of
    nothing) or `error`, then wakes callers once per batch per event loop.
    """

    writes: list[Write]
    guards: list[Guard] = field(default_factory=list)
    result: list[int | None] | None = None
    error: BaseException | None = None
    loop: asyncio.AbstractEventLoop | None = None
    waiter: asyncio.Future[list[int | None]] | None = None
    event: threading.Event | None = None

    def size(self) -> int:
        return sum(len(w.body) + 512 for w in self.writes)


def _deliver(txns: list[Txn]) -> None:
    """On the caller's event loop: complete the waiters of a finished batch."""
    for t in txns:
        w = t.waiter
        if w is None or w.done():
            continue
        if t.error is not None:
            w.set_exception(t.error)
        elif t.result is not None:
            w.set_result(t.result)
        else:  # the committer answers every transaction; not doing so is our bug, said out loud
            w.set_exception(EngineUnavailable("transaction finished without a result"))


def finish(batch: list[Txn]) -> None:
    """Wake every caller of `batch`: one call_soon_threadsafe per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Txn]] = {}
    for t in batch:
        if t.loop is not None:
            by_loop.setdefault(t.loop, []).append(t)
        if t.event is not None:
            t.event.set()
    for loop, txns in by_loop.items():
        try:
            loop.call_soon_threadsafe(_deliver, txns)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


@dataclass(slots=True)
class _Current:
    seq: int
    segment: int
    length: int
    etag: str
    blobs: str | None


# The group committer's working state for one batch: what each write replaces
# (the index row, or an earlier write of the same batch), and the plan per txn.
Overlay = dict[tuple[str, str], _Current | None]
Step = tuple[Write, int, bytes, _Current | None]  # (write, its seq or 0 for a no-op delete, record, replaced)
Planned = list[tuple[Txn, list[Step]]]


class GroupCommitter:
    MAX_BATCH_BYTES = 16 << 20
    SEGMENT_LIMIT = 64 << 20

    def __init__(self, data: DataDir, generation: Generation, *,
                 on_batch: Callable[[int, float, float], None] | None = None) -> None:
        self.data = data
        self.generation = generation  # bumped by a batch that changes the system namespace
        self.conn = connect(data.index_path)
        self.lock = WriteLock(data.root)
        self._queue: queue.SimpleQueue[Txn | None] = queue.SimpleQueue()
        self._segment: SegmentWriter | None = None
        self._thread: threading.Thread | None = None
        self._on_batch = on_batch  # (transactions, commit seconds, of which fdatasync seconds)
        self._sync_seconds = 0.0
        self.failed: BaseException | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._segment = self._new_segment()
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._segment is not None:
            self._seal(self._segment)
            self._segment = None
        self.conn.close()
        self.lock.close()

    def submit(self, txn: Txn) -> None:
        if self.failed is not None:
            txn.error = EngineUnavailable("storage failed; restart the gateway")
            finish([txn])
            return
        self._queue.put(txn)

    # ------------------------------------------------------------ segments

    def _new_segment(self) -> SegmentWriter:
        c = self.conn
        with self.lock:
            c.execute("BEGIN IMMEDIATE")
            try:
                seg_id = c.execute("INSERT INTO segments(size) VALUES (0)").lastrowid
                assert seg_id is not None
                writer = SegmentWriter(self.data, seg_id)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        return writer

    def _seal(self, seg: SegmentWriter) -> None:
        c = self.conn
        with self.lock:
            if seg.size == 0:
                c.execute("DELETE FROM segments WHERE id=?", (seg.id,))
                seg.path.unlink(missing_ok=True)
            else:
                c.execute("UPDATE segments SET sealed=1 WHERE id=?", (seg.id,))
        seg.close()

    # ------------------------------------------------------------ the loop

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            size = first.size()
            stop = False
            while size < self.MAX_BATCH_BYTES:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
                size += nxt.size()
            try:
                self._commit(batch)
            except BaseException as exc:  # keep the thread alive; fail the batch
                error = as_storage_error(exc)
                if isinstance(error, StorageFull):
                    log.warning("group commit refused %d transactions: %s", len(batch), exc)
                else:
                    log.exception("group commit failed")
                for t in batch:
                    if t.result is None and t.error is None:
                        t.error = error
            finish(batch)
            if stop:
                return

    def _current(self, ns: str, key: str, overlay: Overlay) -> _Current | None:
        if (ns, key) in overlay:
            return overlay[(ns, key)]
        row = self.conn.execute(
            "SELECT seq, segment, length, etag, blobs FROM objects WHERE ns=? AND key=?",
            (ns, key_bytes(key)),
        ).fetchone()
        return _Current(*row) if row else None

    def _check(self, g: Guard, overlay: Overlay) -> None:
        if g.kind == "empty":
            lo = key_bytes(g.key)
            busy = self.conn.execute(
                "SELECT 1 FROM objects WHERE ns=? AND key>=? AND key<? LIMIT 1", (g.ns, lo, lo + b"\xff")
            ).fetchone() or any(
                ns == g.ns and k.startswith(g.key) and v is not None for (ns, k), v in overlay.items()
            )
            if busy:
                raise g.error()
            return
        cur = self._current(g.ns, g.key, overlay)
        ok = {
            "exists": cur is not None,
            "absent": cur is None,
            "etag": cur is not None and cur.etag.strip('"') == str(g.value).strip('"'),
            "seq": cur is not None and cur.seq == g.value,
        }[g.kind]
        if not ok:
            raise g.error()

    def _commit(self, batch: list[Txn]) -> None:
        t0 = time.perf_counter()
        if self._segment is not None and self._segment.size and \
                self._segment.size + sum(t.size() for t in batch) > self.SEGMENT_LIMIT:
            self._seal(self._segment)
            self._segment = None
        if self._segment is None:  # (a full disk may have refused the last attempt)
            self._segment = self._new_segment()
        with self.lock:
            planned = self._commit_locked(batch)
        if planned is None:
            return
        seg, end, released = planned
        seg.commit_size(end)
        for blob_id in released:
            try:
                self.data.blob_path(blob_id).unlink()
            except FileNotFoundError:
                pass
        if self._on_batch:
            self._on_batch(len(batch), time.perf_counter() - t0, self._sync_seconds)

    def _commit_locked(self, batch: list[Txn]) -> tuple[SegmentWriter, int, list[str]] | None:
        """Under the write lock: guards, append, sync, index, COMMIT.  Returns what to finish."""
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            seq = c.execute("SELECT v FROM state WHERE k='seq'").fetchone()[0]
            overlay: Overlay = {}
            planned: Planned = []
            for txn in batch:
                try:
                    for g in txn.guards:
                        self._check(g, overlay)
                except EngineError as exc:
                    txn.error = exc
                    continue
                plan: list[Step] = []
                for w in txn.writes:
                    cur = self._current(w.ns, w.key, overlay)
                    if w.meta is None and cur is None:
                        plan.append((w, 0, b"", None))  # deleting nothing: no record
                        continue
                    seq += 1
                    kind = records.PUT if w.meta is not None else records.TOMBSTONE
                    w.meta_text = records.meta_json(w.meta) if w.meta is not None else None
                    rec = records.encode(kind, seq, w.ns, w.key, w.meta_text, cur.seq if cur else None,
                                         w.blobs, w.body)
                    plan.append((w, seq, rec, cur))
                    overlay[(w.ns, w.key)] = (
                        _Current(seq, -1, len(rec), w.meta.etag,
                                 records.blobs_json(w.blobs))
                        if w.meta is not None else None
                    )
                planned.append((txn, plan))
            if not planned:
                c.execute("ROLLBACK")
                return None
            payload = b"".join(rec for _, plan in planned for _, _, rec, _ in plan)
            seg = self._segment
            assert seg is not None, "_commit opens a segment first"
            base = seg.append(payload)
            t_sync = time.perf_counter()
            try:
                seg.sync()
                blob_dirs = {self.data.blob_path(b.blob_id).parent
                             for _, plan in planned for w, _, _, _ in plan for b in w.blobs}
                for d in blob_dirs:
                    fsync_dir(d)
                self._sync_seconds = time.perf_counter() - t_sync
            except OSError as exc:
                # fsyncgate: after a failed fsync the page cache may hold bytes the
                # disk never got; acknowledging anything more would be a lie.
                self.failed = exc
                raise
            released = self._apply(planned, seg.id, base)
            c.execute("UPDATE segments SET size=? WHERE id=?", (base + len(payload), seg.id))
            c.execute("UPDATE state SET v=? WHERE k='seq'", (seq,))
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise
        if any(w.ns == SYS for _, plan in planned for w, seq, _, _ in plan if seq):
            self.generation.bump()  # still under the write lock
        for txn, plan in planned:
            txn.result = [s if s else None for _, s, _, _ in plan]
        return seg, base + len(payload), released

    def _apply(self, planned: Planned, seg_id: int, base: int) -> list[str]:
        """Index changes of a synced batch; returns blob ids no longer referenced."""
        c = self.conn
        released: list[str] = []
        offset = base
        located: dict[int, tuple[int, int]] = {}  # seq -> (segment, offset) for in-batch records
        live_delta = dead_delta = 0
        for _, plan in planned:
            for w, seq, rec, cur in plan:
                if not seq:
                    continue
                located[seq] = (seg_id, offset)
                if cur is not None:
                    cur_seg = seg_id if cur.segment == -1 else cur.segment
                    c.execute("INSERT INTO dead(seq, segment, length) VALUES (?,?,?)",
                              (cur.seq, cur_seg, cur.length))
                    if cur_seg == seg_id:
                        live_delta -= cur.length
                        dead_delta += cur.length
                    else:
                        c.execute("UPDATE segments SET live=live-?, dead=dead+? WHERE id=?",
                                  (cur.length, cur.length, cur_seg))
                    if cur.blobs and w.release_prev_blobs:
                        released.extend(b[0] for b in json.loads(cur.blobs))
                if w.meta is not None:
                    m = w.meta
                    c.execute(
                        "INSERT OR REPLACE INTO objects(ns, key, seq, segment, offset, length, size, etag,"
                        " mtime, meta, blobs) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (w.ns, key_bytes(w.key), seq, seg_id, offset, len(rec), m.size, m.etag, m.mtime,
                         w.meta_text,
                         records.blobs_json(w.blobs)),
                    )
                    live_delta += len(rec)
                else:
                    c.execute("DELETE FROM objects WHERE ns=? AND key=?", (w.ns, key_bytes(w.key)))
                    c.execute("INSERT INTO dead(seq, segment, length) VALUES (?,?,?)", (seq, seg_id, len(rec)))
                    dead_delta += len(rec)
                offset += len(rec)
        c.execute("UPDATE segments SET live=live+?, dead=dead+? WHERE id=?", (live_delta, dead_delta, seg_id))
        return released
