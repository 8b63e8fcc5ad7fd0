"""The object index: SQLite in WAL mode, shared by every process on a data dir.

Rules of this file's state:
- `objects` holds exactly one row per live (namespace, key): the newest PUT.
  Keys are stored as UTF-8 BLOBs, so ORDER BY key is S3's byte order and
  "every key starting with P" is the range [P, P + b'\\xff') (0xFF never occurs
  in UTF-8).
- `dead` holds every record still on disk that is not live (superseded PUTs,
  tombstones), with the seq of the record it superseded (`prev`).
- `segments.size` is the committed length of each segment file: bytes past it
  are a torn or uncommitted tail and are cut off by recovery.
- `state.seq` is the last sequence number handed out; it only grows.
- Writers run in `BEGIN IMMEDIATE` transactions (the one write lock of the
  database), so sequence numbers follow commit order across processes.
- WAL with synchronous=FULL: a COMMIT is on stable storage when it returns.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from .model import BlobRef, ListEntry, ListPage, Location, ObjectInfo, ObjectMeta

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects(
    ns TEXT NOT NULL, key BLOB NOT NULL, seq INTEGER NOT NULL,
    segment INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
    size INTEGER NOT NULL, etag TEXT NOT NULL, mtime REAL NOT NULL,
    meta TEXT NOT NULL, blobs TEXT,
    PRIMARY KEY(ns, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_with_blobs ON objects(blobs) WHERE blobs IS NOT NULL;
CREATE TABLE IF NOT EXISTS dead(
    seq INTEGER PRIMARY KEY, segment INTEGER NOT NULL, length INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS dead_by_segment ON dead(segment);
CREATE TABLE IF NOT EXISTS segments(
    id INTEGER PRIMARY KEY, size INTEGER NOT NULL DEFAULT 0,
    live INTEGER NOT NULL DEFAULT 0, dead INTEGER NOT NULL DEFAULT 0,
    sealed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS state(k TEXT PRIMARY KEY, v INTEGER NOT NULL);
INSERT OR IGNORE INTO state(k, v) VALUES ('seq', 0);
"""

ROW_COLUMNS = "seq, segment, offset, length, meta, blobs"


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    # Pages are read into SQLite's own cache, not memory-mapped: a mapped index counts
    # in the gateway's RSS page by page (374 MB at a million objects, against 81 MB
    # without), and lookups measured no slower (bench/scale.py, README "Benchmark").
    # The committer's cache is the larger: its inserts land anywhere in the key B-tree.
    conn.execute(f"PRAGMA cache_size={-16384 if readonly else -65536}")  # KiB: 16 MiB per reader, 64 MiB
    conn.execute("PRAGMA mmap_size=0")
    if not readonly:
        conn.executescript(SCHEMA)
    return conn


def key_bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogatepass")


IndexRow = tuple[int, int, int, int, str, str | None]  # ROW_COLUMNS


def row_to_info(ns: str, key: str, row: IndexRow) -> ObjectInfo:
    seq, segment, offset, length, meta, blobs = row
    return ObjectInfo(
        ns, key, seq, ObjectMeta.from_json(json.loads(meta)), Location(segment, offset, length),
        tuple(BlobRef.from_json(b) for b in json.loads(blobs)) if blobs else (),
    )


class IndexReader:
    """Read-only queries on one connection (one per thread that reads)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def get(self, ns: str, key: str) -> ObjectInfo | None:
        row = self.conn.execute(
            f"SELECT {ROW_COLUMNS} FROM objects WHERE ns=? AND key=?", (ns, key_bytes(key))
        ).fetchone()
        return row_to_info(ns, key, row) if row else None

    def exists(self, ns: str, key: str) -> bool:
        return self.conn.execute(
            "SELECT 1 FROM objects WHERE ns=? AND key=?", (ns, key_bytes(key))
        ).fetchone() is not None

    def any_with_prefix(self, ns: str, prefix: str) -> bool:
        lo = key_bytes(prefix)
        return self.conn.execute(
            "SELECT 1 FROM objects WHERE ns=? AND key>=? AND key<? LIMIT 1", (ns, lo, lo + b"\xff")
        ).fetchone() is not None

    def scan(self, ns: str, prefix: str, after: str | None, limit: int) -> list[ObjectInfo]:
        """Full rows in key order, for the few internal listings (buckets, parts)."""
        lo = key_bytes(prefix)
        start = max(lo, key_bytes(after) + b"\x00") if after is not None else lo
        rows = self.conn.execute(
            f"SELECT key, {ROW_COLUMNS} FROM objects WHERE ns=? AND key>=? AND key<? "
            "ORDER BY key LIMIT ?", (ns, start, lo + b"\xff", limit),
        ).fetchall()
        return [row_to_info(ns, r[0].decode("utf-8", "surrogatepass"), r[1:]) for r in rows]

    def list_page(self, ns: str, prefix: str, delimiter: str, marker: str | None,
                  max_keys: int) -> ListPage:
        """One page of an S3 listing.

        With a delimiter, each common prefix costs one index seek: after rolling
        up "a/" the scan jumps straight to the first key >= "a/" + 0xFF instead
        of reading every key below it, so listing stays fast with millions of keys.
        """
        pfx = key_bytes(prefix)
        hi = pfx + b"\xff"
        lo = pfx
        delim = key_bytes(delimiter) if delimiter else b""
        if marker is not None:
            mk = key_bytes(marker)
            lo = max(lo, mk + b"\x00")
            if delim and mk.startswith(pfx):
                i = mk.find(delim, len(pfx))
                if i >= 0:  # the marker is inside a prefix already rolled up
                    lo = max(lo, mk[: i + len(delim)] + b"\xff")
        entries: list[ListEntry] = []
        prefixes: list[str] = []
        if max_keys <= 0:
            return ListPage(entries, prefixes, False, None)
        if not delim:  # one query, one pass: the page, and one row more to tell whether it is truncated
            rows = self.conn.execute(
                "SELECT key, size, etag, mtime FROM objects WHERE ns=? AND key>=? AND key<? "
                "ORDER BY key LIMIT ?", (ns, lo, hi, max_keys + 1),
            ).fetchall()
            more = len(rows) > max_keys
            entries = [ListEntry(kb.decode("utf-8", "surrogatepass"), size, etag, mtime)
                       for kb, size, etag, mtime in (rows[:max_keys] if more else rows)]
            return ListPage(entries, prefixes, more, entries[-1].key if more else None)
        last: str | None = None
        # With a delimiter, a fetched batch is wasted from the first key that rolls
        # up (the scan jumps), so start small after each jump and grow while rows
        # are plain entries.
        cap = min(max_keys + 1, 1000)
        batch = 2
        while True:
            rows = self.conn.execute(
                "SELECT key, size, etag, mtime FROM objects WHERE ns=? AND key>=? AND key<? "
                "ORDER BY key LIMIT ?", (ns, lo, hi, batch),
            ).fetchall()
            if not rows:
                return ListPage(entries, prefixes, False, None)
            jumped = False
            for kb, size, etag, mtime in rows:
                if len(entries) + len(prefixes) >= max_keys:
                    return ListPage(entries, prefixes, True, last)
                i = kb.find(delim, len(pfx))
                if i >= 0:
                    cp = kb[: i + len(delim)]
                    last = cp.decode("utf-8", "surrogatepass")
                    prefixes.append(last)
                    lo = cp + b"\xff"
                    jumped = True
                    break
                last = kb.decode("utf-8", "surrogatepass")
                entries.append(ListEntry(last, size, etag, mtime))
            if jumped:
                batch = 2
                continue
            if len(rows) < batch:
                return ListPage(entries, prefixes, False, None)
            lo = rows[-1][0] + b"\x00"
            batch = min(batch * 4, cap)

    def merged(self, ns: str, versions_ns: str, prefix: str, after: str | None,
               limit: int) -> list[tuple[str, ObjectMeta, bool]]:
        """Rows of two namespaces in one key order (current objects, and noncurrent versions
        keyed key SEP order): (key, meta, from the first)."""
        lo = key_bytes(prefix)
        start = max(lo, key_bytes(after) + b"\x00") if after is not None else lo
        rows = self.conn.execute(
            "SELECT key, meta, ns = ? FROM objects WHERE ns IN (?, ?) AND key>=? AND key<? ORDER BY key LIMIT ?",
            (ns, ns, versions_ns, start, lo + b"\xff", limit)).fetchall()
        return [(kb.decode("utf-8", "surrogatepass"), ObjectMeta.from_json(json.loads(meta)), bool(cur))
                for kb, meta, cur in rows]

    def usage_by_prefix(self, ns: str) -> dict[str, tuple[int, int]]:
        """Object count and bytes per first-level prefix ("a/"); "" holds top-level keys.

        One pass over the namespace's rows: an admin query, not a hot path.
        """
        rows = self.conn.execute(
            "SELECT CASE WHEN instr(key, X'2F') > 0 THEN substr(key, 1, instr(key, X'2F')) ELSE X'' END AS p,"
            " count(*), coalesce(sum(size), 0) FROM objects WHERE ns=? GROUP BY p", (ns,)).fetchall()
        return {bytes(p).decode("utf-8", "surrogatepass"): (n, b) for p, n, b in rows}

    def stats(self) -> dict[str, int]:
        objects, size = self.conn.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM objects WHERE ns NOT LIKE '~%'"
        ).fetchone()
        segs, seg_bytes, live, dead = self.conn.execute(
            "SELECT count(*), coalesce(sum(size),0), coalesce(sum(live),0), coalesce(sum(dead),0) FROM segments"
        ).fetchone()
        return {"objects": objects, "bytes": size, "segments": segs, "segment_bytes": seg_bytes,
                "live_bytes": live, "dead_bytes": dead}
