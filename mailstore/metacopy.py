"""`mailstore metadata copy --from A --to B`: the mail metadata from one store to another
(SQLite to PostgreSQL when a site grows past one host, and back), verified, resumable.

Stop the LMTP and IMAP servers of the source first: the copy reads a store that
does not change.  Tables go over in an order their references allow, in primary
key order, a batch per transaction; a row already in the target is skipped
(`ON CONFLICT DO NOTHING`), so a run that was stopped or failed is simply run
again.  Mailbox ids are kept (messages, keywords and the expunge log refer to
them) and the target's id counter moved past them.  At the end every table is
compared: the row count and a SHA-256 over its rows in key order must be equal
on both sides, or the copy reports which table differs and fails.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from .db import MetaStore

# (table, its columns, its primary key): parents before children.
TABLES: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("users", ("name", "password", "quota_bytes", "used_bytes", "created", "last_uidvalidity"), ("name",)),
    ("aliases", ("address", "user_name"), ("address",)),
    ("mailboxes", ("id", "user_name", "name", "guid", "uidvalidity", "uidnext", "highestmodseq", "special_use",
                   "subscribed", "first_recent", "expunge_log_from"), ("id",)),
    ("messages", ("mailbox_id", "uid", "guid", "object_key", "size", "internal_date", "saved", "flags", "modseq",
                  "envelope", "bodystructure", "pop3_uidl"), ("mailbox_id", "uid")),
    ("pending", ("mailbox_id", "uid", "expires", "owner"), ("mailbox_id", "uid")),
    ("expunged", ("mailbox_id", "modseq", "uid"), ("mailbox_id", "modseq", "uid")),
    ("import_map", ("user_name", "source", "folder", "item", "validity", "mailbox_id", "uid", "message_id", "size"),
     ("user_name", "source", "folder", "item")),
    ("subscriptions", ("user_name", "name"), ("user_name", "name")),
    ("keywords", ("mailbox_id", "name"), ("mailbox_id", "name")),
    ("sieve_scripts", ("user_name", "name", "script", "active", "modified"), ("user_name", "name")),
    ("sieve_duplicates", ("user_name", "key", "expires"), ("user_name", "key")),
]
BATCH = 2000


class CopyMismatch(Exception):
    pass


def _rows(meta: MetaStore, table: str, columns: tuple[str, ...], key: tuple[str, ...]) -> Any:
    return meta.conn().execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {', '.join(key)}")


def digest(meta: MetaStore, table: str, columns: tuple[str, ...]) -> tuple[int, str]:
    """(row count, the sum of the rows' SHA-256 mod 2^256): the same for the same rows on either
    backend, whatever order a database's collation lists them in."""
    total = 0
    count = 0
    for row in meta.conn().execute(f"SELECT {', '.join(columns)} FROM {table}"):
        total += int.from_bytes(hashlib.sha256(json.dumps(list(row), separators=(",", ":")).encode()).digest(), "big")
        count += 1
    return count, f"{total % (1 << 256):064x}"


def copy(source: MetaStore, target: MetaStore, progress: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Copy every table; returns rows per table in the target.  Raises CopyMismatch."""
    for table, columns, key in TABLES:
        insert = (f"INSERT INTO {table}({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
                  f"ON CONFLICT DO NOTHING")
        batch: list[tuple[Any, ...]] = []
        done = 0
        for row in _rows(source, table, columns, key):
            batch.append(tuple(row))
            if len(batch) >= BATCH:
                _write(target, insert, batch)
                done += len(batch)
                batch = []
                if progress is not None:
                    progress(table, done)
        if batch:
            _write(target, insert, batch)
            done += len(batch)
        if progress is not None:
            progress(table, done)
    _move_id_counter(target)
    return verify(source, target)


def _write(target: MetaStore, insert: str, batch: list[tuple[Any, ...]]) -> None:
    with target._write() as c:
        c.executemany(insert, batch)


def _move_id_counter(target: MetaStore) -> None:
    """New mailboxes in the target get ids above the copied ones (never one given before)."""
    with target._write() as c:
        target.backend.ids_above(c, "mailboxes", c.execute("SELECT coalesce(max(id), 0) FROM mailboxes").fetchone()[0])


def verify(source: MetaStore, target: MetaStore) -> dict[str, int]:
    counts: dict[str, int] = {}
    for table, columns, _ in TABLES:
        want, got = digest(source, table, columns), digest(target, table, columns)
        if want != got:
            raise CopyMismatch(f"{table}: source has {want[0]} rows ({want[1][:16]}), "
                               f"target {got[0]} ({got[1][:16]})")
        counts[table] = got[0]
    return counts
