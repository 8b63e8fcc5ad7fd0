"""The mailbox metadata store: users, mailboxes, messages (SQLite, or PostgreSQL: sqlbackend.py).

Rules of this file's state:
- SQLite in WAL mode with synchronous=FULL: a committed delivery is on disk.
- Writers take the database's write lock up front (BEGIN IMMEDIATE).
- UIDs: a delivery *reserves* the mailbox's next UID (uidnext++ and a row in
  `pending`) before its object is stored, so the UID can travel inside the
  immutable object (reindex restores it), then *commits* the message row and
  drops the reservation.  UIDs are therefore strictly increasing in reservation
  order across processes.  A reader shows only messages below the lowest live
  reservation (VISIBLE, inside the same statement as the rows: one snapshot),
  so no client ever sees UID n+1 before n; a reservation left by a crashed
  process or host is reaped (`visible_uid_limit`), and what it uncovers gets a
  new MODSEQ (`uncover`).
- users.used_bytes is kept in the same transactions that add or remove messages.
- The schema version is PRAGMA user_version; MIGRATIONS upgrade it in order.
The SQL is what SQLite and PostgreSQL both run; where they differ (placeholders,
write locking, durability, schema versions) is sqlbackend.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from runtime.batching import BatchThread, Call, Outcome, call

from .sqlbackend import Conn, NoLock, PostgresBackend, SqliteBackend, WriteLock, open_backend
from .sqlbackend import StoreUnavailable as StoreUnavailable  # what any call raises while the database is away

T = TypeVar("T")

RESERVATION_SECONDS = 300.0
STALE_RESERVATION_SECONDS = 10.0  # older: ask whether its owner still lives
REAP_INTERVAL_SECONDS = 2.0

MIGRATIONS = [
    """
    CREATE TABLE users(
        name TEXT PRIMARY KEY, password TEXT NOT NULL, quota_bytes INTEGER NOT NULL DEFAULT 0,
        used_bytes INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL);
    CREATE TABLE aliases(address TEXT PRIMARY KEY, user_name TEXT NOT NULL REFERENCES users(name));
    CREATE TABLE mailboxes(
        id INTEGER PRIMARY KEY, user_name TEXT NOT NULL, name TEXT NOT NULL, guid TEXT NOT NULL UNIQUE,
        uidvalidity INTEGER NOT NULL, uidnext INTEGER NOT NULL DEFAULT 1,
        highestmodseq INTEGER NOT NULL DEFAULT 1, special_use TEXT, subscribed INTEGER NOT NULL DEFAULT 1,
        UNIQUE(user_name, name));
    CREATE TABLE messages(
        mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id), uid INTEGER NOT NULL,
        guid TEXT NOT NULL, object_key TEXT NOT NULL, size INTEGER NOT NULL,
        internal_date REAL NOT NULL, saved REAL NOT NULL, flags TEXT NOT NULL DEFAULT '',
        modseq INTEGER NOT NULL, envelope TEXT, bodystructure TEXT,
        PRIMARY KEY(mailbox_id, uid));
    CREATE INDEX messages_by_key ON messages(object_key);
    CREATE TABLE pending(mailbox_id INTEGER NOT NULL, uid INTEGER NOT NULL, expires REAL NOT NULL,
        PRIMARY KEY(mailbox_id, uid));
    """,
    # 2: \Recent (RFC 3501 §2.3.2): messages from this UID on have not been seen by any
    # read-write SELECT yet; the first such SELECT claims them.
    """
    ALTER TABLE mailboxes ADD COLUMN first_recent INTEGER NOT NULL DEFAULT 1;
    """,
    # 3: what changed since a MODSEQ (every IMAP refresh, CONDSTORE) without a mailbox scan.
    """
    CREATE INDEX messages_by_modseq ON messages(mailbox_id, modseq);
    """,
    # 4: which UIDs left a mailbox at which MODSEQ, so a session learns its EXPUNGEs
    # without comparing every UID it holds; kept for EXPUNGE_LOG_MODSEQS changes.
    """
    CREATE TABLE expunged(mailbox_id INTEGER NOT NULL, modseq INTEGER NOT NULL, uid INTEGER NOT NULL,
        PRIMARY KEY(mailbox_id, modseq, uid));
    """,
    # 5: what `mailstore import` already brought in: one row per source item, committed
    # with the message row, so an interrupted or repeated import never duplicates.
    """
    CREATE TABLE import_map(user_name TEXT NOT NULL, source TEXT NOT NULL, folder TEXT NOT NULL,
        item TEXT NOT NULL, validity TEXT NOT NULL, mailbox_id INTEGER NOT NULL, uid INTEGER NOT NULL,
        message_id TEXT, size INTEGER NOT NULL, PRIMARY KEY(user_name, source, folder, item));
    """,
    # 6: who holds a reservation ("host:pid"), so a process that was killed does not
    # hide a mailbox's newer mail for RESERVATION_SECONDS: its reservations are dropped
    # as soon as another process on that host opens the store.
    """
    ALTER TABLE pending ADD COLUMN owner TEXT;
    """,
    # 7: the last UIDVALIDITY given to any of a user's mailboxes, so a mailbox created
    # again (DELETE + CREATE, RENAME INBOX) never gets one it had (RFC 3501 §2.3.1.1),
    # however fast, from whichever process or host.
    """
    ALTER TABLE users ADD COLUMN last_uidvalidity INTEGER NOT NULL DEFAULT 0;
    UPDATE users SET last_uidvalidity =
        coalesce((SELECT max(uidvalidity) FROM mailboxes WHERE mailboxes.user_name = users.name), 0);
    """,
    # 8: subscriptions are names, not mailboxes (RFC 3501 §6.3.6, §6.3.9): they survive
    # DELETE, and a name may be subscribed that does not exist.
    """
    CREATE TABLE subscriptions(user_name TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY(user_name, name));
    INSERT INTO subscriptions(user_name, name) SELECT user_name, name FROM mailboxes WHERE subscribed = 1;
    """,
    # 9: the keywords a mailbox has defined: they stay in FLAGS after the last message
    # loses them, as Dovecot keeps them (RFC 3501 §7.2.6: FLAGS lists the defined flags).
    """
    CREATE TABLE keywords(mailbox_id INTEGER NOT NULL, name TEXT NOT NULL, PRIMARY KEY(mailbox_id, name));
    """,
    # 10: ENVELOPE and BODYSTRUCTURE parsed before they matched Dovecot's (message/rfc822
    # numbering, folded parameters, groups, extension data): parsed again from the object
    # the first time they are wanted (NULL means "not parsed yet", see MetaStore.set_parsed).
    """
    UPDATE messages SET envelope = NULL, bodystructure = NULL;
    """,
    # 11: how far back the expunge log is complete, per mailbox: QRESYNC (RFC 7162 §3.2.5)
    # answers "what vanished since MODSEQ m" from the log only when m >= expunge_log_from,
    # else from the UIDs that are missing. Existing mailboxes trust their log from now on.
    """
    ALTER TABLE mailboxes ADD COLUMN expunge_log_from INTEGER NOT NULL DEFAULT 0;
    UPDATE mailboxes SET expunge_log_from = highestmodseq;
    """,
    # 12: a mailbox id is never given again (AUTOINCREMENT): without it SQLite hands a deleted
    # mailbox's id to the next one created, and whatever is keyed by id (the IMAP snapshot
    # cache, a session that still has the old mailbox selected) took the new mailbox for the
    # old one. SQLite's table rebuild; _migrate runs it with foreign keys off, then checks them.
    """
    CREATE TABLE mailboxes_new(
        id INTEGER PRIMARY KEY AUTOINCREMENT, user_name TEXT NOT NULL, name TEXT NOT NULL,
        guid TEXT NOT NULL UNIQUE, uidvalidity INTEGER NOT NULL, uidnext INTEGER NOT NULL DEFAULT 1,
        highestmodseq INTEGER NOT NULL DEFAULT 1, special_use TEXT, subscribed INTEGER NOT NULL DEFAULT 1,
        first_recent INTEGER NOT NULL DEFAULT 1, expunge_log_from INTEGER NOT NULL DEFAULT 0,
        UNIQUE(user_name, name));
    INSERT INTO mailboxes_new(id, user_name, name, guid, uidvalidity, uidnext, highestmodseq, special_use,
        subscribed, first_recent, expunge_log_from)
        SELECT id, user_name, name, guid, uidvalidity, uidnext, highestmodseq, special_use, subscribed,
        first_recent, expunge_log_from FROM mailboxes;
    DROP TABLE mailboxes;
    ALTER TABLE mailboxes_new RENAME TO mailboxes;
    """,
    # 13: POP3 (pop3.py): a message's UIDL when it is not the one made from its UID and the
    # mailbox's UIDVALIDITY (kept from where it was imported), and the maildrop lock RFC 1939
    # asks for, one session per user across every host.
    """
    ALTER TABLE messages ADD COLUMN pop3_uidl TEXT;
    CREATE TABLE pop3_locks(user_name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires REAL NOT NULL);
    """,
    # 14: each user's Sieve scripts (sieve/scripts.py), at most one of them active: in the metadata
    # store, so they follow the user to every shim host.
    """
    CREATE TABLE sieve_scripts(user_name TEXT NOT NULL, name TEXT NOT NULL, script TEXT NOT NULL,
        active INTEGER NOT NULL DEFAULT 0, modified REAL NOT NULL, PRIMARY KEY(user_name, name));
    """,
    # 15: what Sieve sent on a user's behalf and must not send again before `expires`: vacation
    # replies per (sender, handle) (RFC 5230 §4.2), redirects per (message, target) so a retried
    # delivery does not forward twice (sieve/outbound.py).
    """
    CREATE TABLE sieve_duplicates(user_name TEXT NOT NULL, key TEXT NOT NULL, expires REAL NOT NULL,
        PRIMARY KEY(user_name, key));
    """,
]

EXPUNGE_LOG_MODSEQS = 100_000

SPECIAL_USE = {"Drafts": "\\Drafts", "Sent": "\\Sent", "Trash": "\\Trash", "Junk": "\\Junk",
               "Archive": "\\Archive"}


def next_uidvalidity(c: Conn, user: str) -> int:
    """Inside a write transaction: a UIDVALIDITY this user's mailboxes never had.

    The clock (so values look like Dovecot's), but always above the last one
    handed out: two creations in one second still differ (RFC 3501 §2.3.1.1).
    """
    row = c.execute("SELECT last_uidvalidity FROM users WHERE name=?", (user,)).fetchone()
    value = max(int(time.time()), (row[0] if row else 0) + 1)
    c.execute("UPDATE users SET last_uidvalidity=? WHERE name=?", (value, user))
    return value


class MetaError(Exception):
    pass


class NoSuchUser(MetaError):
    pass


class ReservationLost(StoreUnavailable):
    """A delivery's UID reservation was dropped (its owner looked dead, or it expired) before
    the commit: readers may have moved past that UID, so it cannot be committed any more.
    Nothing is acknowledged; the sender tries again (LMTP 451, APPEND NO [UNAVAILABLE])."""


class UserExists(MetaError):
    pass


@dataclass(frozen=True, slots=True)
class User:
    name: str
    quota_bytes: int  # 0: no quota
    used_bytes: int
    created: float


@dataclass(frozen=True, slots=True)
class Mailbox:
    id: int
    user: str
    name: str
    guid: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    special_use: str | None


@dataclass(frozen=True, slots=True)
class Message:
    mailbox_id: int
    uid: int
    guid: str
    object_key: str
    size: int
    internal_date: float
    saved: float
    flags: tuple[str, ...]
    modseq: int


MESSAGE_COLUMNS = "mailbox_id, uid, guid, object_key, size, internal_date, saved, flags, modseq"
# Rows below the mailbox's lowest reservation, judged in the statement's own snapshot: a limit
# read by one statement and used in the next lets through a UID n+1 committed in between while
# n (reserved in between too) is still in flight.
# Its one parameter is the mailbox id again (a subquery run once, not once per row).
VISIBLE = "uid < COALESCE((SELECT min(uid) FROM pending WHERE mailbox_id=?), 4611686018427387904)"
# Visible rows changed after a MODSEQ; parameters: mailbox id, modseq, mailbox id. The first part
# of a refresh's statement (changes_since, changes_with_expunges), whose other parts use UID <= 0.
CHANGED = f"SELECT uid, flags FROM messages WHERE mailbox_id=? AND modseq>? AND {VISIBLE}"


def _changed(rows: list[tuple[int, str]]) -> list[tuple[int, tuple[str, ...]]]:
    """The CHANGED rows of a refresh's statement (UIDs start at 1), in UID order, flags split."""
    return sorted((u, tuple(f.split()) if f else ()) for u, f in rows if u > 0)


def _message(r: tuple[Any, ...]) -> Message:
    """A `messages` row (MESSAGE_COLUMNS; SQLite's values are untyped) as a Message."""
    return Message(r[0], r[1], r[2], r[3], r[4], r[5], r[6], tuple(r[7].split()) if r[7] else (), r[8])


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message whose object is stored, its UID reserved: the row a commit adds."""

    user: str
    mailbox_id: int
    uid: int
    guid: str
    object_key: str
    size: int
    internal_date: float
    saved: float
    envelope: object  # JSON text already, or the value to encode
    bodystructure: object
    flags: tuple[str, ...] = ()
    pop3_uidl: str | None = None  # kept from an import (pop3.py); None: made from the UID


class MetaStore:
    """One per process; a connection per thread (call it from worker threads)."""

    def __init__(self, path: Path | str) -> None:
        """`path`: a SQLite file, or a postgresql:// URL (its password from PGPASSFILE or ~/.pgpass)."""
        self.backend: SqliteBackend | PostgresBackend = open_backend(path)
        self.path: Path | None = self.backend.path if isinstance(self.backend, SqliteBackend) else None
        self._local = threading.local()
        self._last_reap = 0.0
        self._migrate()
        if isinstance(self.backend, PostgresBackend):
            self.backend.hold_liveness(_owner())
        self.drop_dead_reservations()

    def drop_dead_reservations(self) -> int:
        """Reservations of processes that no longer run, and expired ones: their UIDs were never
        committed (their objects, if stored, are orphans for gc); keeping them would hide the
        mailbox's later mail.  Owners are checked on this host by PID on SQLite, on any host by
        the liveness lock each process holds on PostgreSQL."""
        self._last_reap = time.monotonic()
        c = self.conn()
        if isinstance(self.backend, PostgresBackend):
            owners = [o for o, in c.execute("SELECT DISTINCT owner FROM pending WHERE owner IS NOT NULL")]
            dead = [o for o in owners if o != _owner() and not self.backend.owner_alive(c, o)]
        else:
            host = socket.gethostname()
            owners = [o for o, in c.execute("SELECT DISTINCT owner FROM pending WHERE owner LIKE ?", (host + ":%",))]
            dead = [o for o in owners if not _alive(int(o.rsplit(":", 1)[1]))]
        now = time.time()
        if not dead and not c.execute("SELECT 1 FROM pending WHERE expires<=? LIMIT 1", (now,)).fetchone():
            return 0
        with self._write() as c:
            doomed: list[tuple[int, int]] = []
            for o in dead:
                doomed += c.execute("SELECT mailbox_id, uid FROM pending WHERE owner=?", (o,)).fetchall()
            doomed += c.execute("SELECT mailbox_id, uid FROM pending WHERE expires<=?", (now,)).fetchall()
            dropped = [(b, u) for b, u in sorted(set(doomed))
                       if c.execute("DELETE FROM pending WHERE mailbox_id=? AND uid=?", (b, u)).rowcount]
            self.uncover(c, dropped)
            return len(dropped)

    @staticmethod
    def bump_modseq(c: Conn, mailbox_id: int) -> int:
        """Inside a write transaction: the mailbox's next MODSEQ, taken (one statement)."""
        modseq: int = c.execute("UPDATE mailboxes SET highestmodseq = highestmodseq + 1 WHERE id=? "
                                "RETURNING highestmodseq", (mailbox_id,)).fetchone()[0]
        return modseq

    @staticmethod
    def uncover(c: Conn, dropped: Iterable[tuple[int, int]], modseqs: dict[int, int] | None = None) -> None:
        """Inside a write transaction that dropped or committed the reservations `dropped`
        ((mailbox id, uid) pairs): the rows above a reservation were hidden from readers
        (visible_uid_limit), and whatever happened to them meanwhile (a flag change by the
        session that appended them, a COPY in) went by every reader keyed on HIGHESTMODSEQ:
        IDLE, NOOP, CHANGEDSINCE, QRESYNC.  They get the MODSEQ of this change, so those readers
        see them now.  `modseqs`: mailbox id -> this transaction's MODSEQ where it has one."""
        lowest: dict[int, int] = {}
        for box_id, uid in dropped:
            lowest[box_id] = min(uid, lowest.get(box_id, uid))
        for box_id, uid in sorted(lowest.items()):
            modseq = modseqs.get(box_id) if modseqs is not None else None
            if modseq is None:
                modseq = MetaStore.bump_modseq(c, box_id)
            # "+modseq": walk the primary key from the UID up (a few rows, usually none). On the
            # (mailbox_id, modseq) index "modseq < new" matches every row of the mailbox, and
            # SQLite chose it: each delivery read the whole mailbox (tests/test_flat_cost.py).
            c.execute("UPDATE messages SET modseq=? WHERE mailbox_id=? AND uid>? AND +modseq<?",
                      (modseq, box_id, uid, modseq))

    def conn(self) -> Conn:
        c = getattr(self._local, "conn", None)
        if c is None or getattr(c, "broken", False):  # PostgreSQL restarted: connect again
            c = self._local.conn = self.backend.connect(durable=True)
        return c

    def _migrate(self) -> None:
        try:
            self.backend.migrate(self.conn(), MIGRATIONS)
        except RuntimeError as exc:
            raise MetaError(str(exc)) from None

    def flags_conn(self) -> Conn:
        """A connection whose commits are atomic but not fsynced (synchronous=NORMAL).

        For flag changes (and \\Recent) only: the durability rule covers acknowledged mail (a
        PUT, an LMTP 250, an APPEND OK); a STORE lost in a power cut is the
        same trade Dovecot makes, and it costs no fsync per command.
        """
        c = getattr(self._local, "flags_conn", None)
        if c is None or getattr(c, "broken", False):
            c = self._local.flags_conn = self.backend.connect(durable=False)
        return c

    def _write_flags(self) -> _Txn:
        return _Txn(self.flags_conn(), self._lock(), self.backend)

    def _lock(self) -> WriteLock | NoLock:
        lock: WriteLock | NoLock | None = getattr(self._local, "lock", None)
        if lock is None:
            lock = self._local.lock = self.backend.write_lock()
        return lock

    def changes_since(self, mailbox_id: int, modseq: int) -> tuple[list[tuple[int, tuple[str, ...]]], int]:
        """(uid, flags) of visible rows changed after `modseq`, and the visible message count: one
        statement, so both come from one snapshot."""
        self.reap_now_and_then()  # what a dead owner left
        rows = self.conn().execute(
            f"{CHANGED} UNION ALL SELECT 0, CAST(count(*) AS TEXT) FROM messages WHERE mailbox_id=? AND {VISIBLE}",
            (mailbox_id, modseq, mailbox_id, mailbox_id, mailbox_id)).fetchall()
        count = next(int(f) for u, f in rows if u == 0)
        return _changed(rows), count

    def changes_with_expunges(self, mailbox_id: int, modseq: int) -> tuple[
            list[tuple[int, tuple[str, ...]]], set[int]] | None:
        """(uid, flags) of visible rows changed after `modseq`, and the UIDs removed after it, from
        one statement (one snapshot); None when the expunge log does not reach back to `modseq`
        (or the mailbox is gone): then changes_since's count is the way to find what vanished.

        Every removal from a live mailbox is logged (EXPUNGE, MOVE, RENAME INBOX; QRESYNC relies
        on the same log), so this is exact without counting the mailbox: a refresh costs what
        changed, not the mailbox's size (tests/test_flat_cost.py)."""
        self.reap_now_and_then()
        rows = self.conn().execute(
            f"{CHANGED} UNION ALL SELECT -uid, '' FROM expunged WHERE mailbox_id=? AND modseq>? "
            "UNION ALL SELECT 0, CAST(expunge_log_from AS TEXT) FROM mailboxes WHERE id=?",
            (mailbox_id, modseq, mailbox_id, mailbox_id, modseq, mailbox_id)).fetchall()
        log_from = next((int(f) for u, f in rows if u == 0), None)
        if log_from is None or modseq < log_from:
            return None
        return _changed(rows), {-u for u, _ in rows if u < 0}

    def uid_flags(self, mailbox_id: int) -> list[tuple[int, tuple[str, ...]]]:
        """(uid, flags) of the visible messages: what SELECT needs, nothing more."""
        self.reap_now_and_then()
        rows = self.conn().execute(f"SELECT uid, flags FROM messages WHERE mailbox_id=? AND {VISIBLE} ORDER BY uid",
                                   (mailbox_id, mailbox_id))
        return [(u, tuple(f.split()) if f else ()) for u, f in rows]

    def visible_uids(self, mailbox_id: int) -> set[int]:
        """The UIDs of the visible messages: enough to tell which ones were expunged."""
        self.reap_now_and_then()
        rows = self.conn().execute(f"SELECT uid FROM messages WHERE mailbox_id=? AND {VISIBLE}",
                                   (mailbox_id, mailbox_id))
        return {u for u, in rows}

    def expunged_since(self, mailbox_id: int, modseq: int) -> list[int]:
        """UIDs removed from the mailbox after `modseq`, as far as the log reaches back."""
        rows = self.conn().execute("SELECT uid FROM expunged WHERE mailbox_id=? AND modseq>?", (mailbox_id, modseq))
        return [u for u, in rows]

    def vanished(self, mailbox_id: int, modseq: int, held: Collection[int], remaining: int) -> set[int]:
        """Which of `held` (UIDs a reader knew as of `modseq`) are gone, when `remaining` of
        them are still there: from the expunge log, else (it does not reach back) from the
        visible UIDs."""
        gone = {u for u in self.expunged_since(mailbox_id, modseq) if u in held}
        if len(held) - len(gone) != remaining:
            present = self.visible_uids(mailbox_id)
            gone = {u for u in held if u not in present}
        return gone

    @staticmethod
    def log_expunged(c: Conn, mailbox_id: int, modseq: int, uids: list[int]) -> None:
        """Inside a write transaction that removed `uids` and bumped the mailbox to `modseq`."""
        c.executemany("INSERT INTO expunged(mailbox_id, modseq, uid) VALUES (?,?,?)",
                      [(mailbox_id, modseq, u) for u in uids])
        cutoff = modseq - EXPUNGE_LOG_MODSEQS
        if cutoff > 0 and c.execute("DELETE FROM expunged WHERE mailbox_id=? AND modseq<?",
                                    (mailbox_id, cutoff)).rowcount:
            c.execute("UPDATE mailboxes SET expunge_log_from = CASE WHEN expunge_log_from > ? THEN expunge_log_from "
                      "ELSE ? END WHERE id=?", (cutoff - 1, cutoff - 1, mailbox_id))

    def vanished_since(self, mailbox_id: int, modseq: int, ranges: list[tuple[int, int]]) -> list[int]:
        """UIDs within `ranges` (inclusive) that left the mailbox after `modseq` (QRESYNC): from
        the expunge log where it reaches back that far, else every UID below UIDNEXT that is
        not there (RFC 7162 §3.2.5 allows UIDs the client never had)."""
        row = self.conn().execute("SELECT expunge_log_from, uidnext FROM mailboxes WHERE id=?",
                                  (mailbox_id,)).fetchone()
        if row is None:
            return []
        log_from, uidnext = row
        if modseq >= log_from:
            return sorted(u for u in self.expunged_since(mailbox_id, modseq) if any(a <= u <= b for a, b in ranges))
        limit = self.visible_uid_limit(mailbox_id)  # before the rows: what is below it then is there now, or gone
        present = self.visible_uids(mailbox_id)
        top = min(uidnext, limit) if limit is not None else uidnext
        out: set[int] = set()
        for a, b in ranges:
            out.update(u for u in range(max(a, 1), min(b, top - 1) + 1) if u not in present)
        return sorted(out)

    def _write(self) -> _Txn:
        return _Txn(self.conn(), self._lock(), self.backend)

    # ------------------------------------------------------------------ users

    def add_user(self, name: str, password_hash: str, quota_bytes: int = 0) -> User:
        now = time.time()
        with self._write() as c:
            if c.execute("SELECT 1 FROM users WHERE name=?", (name,)).fetchone():
                raise UserExists(name)
            c.execute("INSERT INTO users(name, password, quota_bytes, created) VALUES (?,?,?,?)",
                      (name, password_hash, quota_bytes, now))
            for box in ("INBOX", *SPECIAL_USE):
                self._create_mailbox(c, name, box)
                c.execute("INSERT INTO subscriptions(user_name, name) VALUES (?,?) ON CONFLICT DO NOTHING", (name, box))
        return User(name, quota_bytes, 0, now)

    def get_user(self, name: str) -> User | None:
        row = self.conn().execute("SELECT name, quota_bytes, used_bytes, created FROM users WHERE name=?",
                                  (name,)).fetchone()
        return User(*row) if row else None

    def get_users(self, names: list[str]) -> dict[str, User]:
        unique = list(dict.fromkeys(names))
        rows = self.conn().execute(
            f"SELECT name, quota_bytes, used_bytes, created FROM users WHERE name IN ({','.join('?' * len(unique))})",
            unique).fetchall()
        return {r[0]: User(*r) for r in rows}

    def password_hash(self, name: str) -> str | None:
        row = self.conn().execute("SELECT password FROM users WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def list_users(self) -> list[User]:
        return [User(*r) for r in self.conn().execute(
            "SELECT name, quota_bytes, used_bytes, created FROM users ORDER BY name")]

    def delete_user(self, name: str) -> list[str]:
        """Remove a user's metadata; returns the object keys to delete (after this commit)."""
        with self._write() as c:
            if not c.execute("SELECT 1 FROM users WHERE name=?", (name,)).fetchone():
                raise NoSuchUser(name)
            keys = [r[0] for r in c.execute(
                "SELECT object_key FROM messages WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE user_name=?)",
                (name,))]
            c.execute("DELETE FROM messages WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE user_name=?)", (name,))
            c.execute("DELETE FROM expunged WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE user_name=?)", (name,))
            c.execute("DELETE FROM import_map WHERE user_name=?", (name,))
            c.execute("DELETE FROM pending WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE user_name=?)", (name,))
            c.execute("DELETE FROM keywords WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE user_name=?)", (name,))
            c.execute("DELETE FROM mailboxes WHERE user_name=?", (name,))
            c.execute("DELETE FROM subscriptions WHERE user_name=?", (name,))
            c.execute("DELETE FROM aliases WHERE user_name=?", (name,))
            c.execute("DELETE FROM pop3_locks WHERE user_name=?", (name,))
            c.execute("DELETE FROM sieve_scripts WHERE user_name=?", (name,))
            c.execute("DELETE FROM sieve_duplicates WHERE user_name=?", (name,))
            c.execute("DELETE FROM users WHERE name=?", (name,))
        return keys

    def set_password(self, name: str, password_hash: str) -> None:
        with self._write() as c:
            if c.execute("UPDATE users SET password=? WHERE name=?", (password_hash, name)).rowcount == 0:
                raise NoSuchUser(name)

    def set_quota(self, name: str, quota_bytes: int) -> None:
        with self._write() as c:
            if c.execute("UPDATE users SET quota_bytes=? WHERE name=?", (quota_bytes, name)).rowcount == 0:
                raise NoSuchUser(name)

    def add_alias(self, address: str, user: str) -> None:
        with self._write() as c:
            if not c.execute("SELECT 1 FROM users WHERE name=?", (user,)).fetchone():
                raise NoSuchUser(user)
            c.execute("INSERT INTO aliases(address, user_name) VALUES (?,?) "
                      "ON CONFLICT(address) DO UPDATE SET user_name=excluded.user_name", (address, user))

    def resolve_alias(self, address: str) -> str | None:
        row = self.conn().execute("SELECT user_name FROM aliases WHERE address=?", (address,)).fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------------ mailboxes

    def _create_mailbox(self, c: Conn, user: str, name: str, guid: str | None = None,
                        uidvalidity: int | None = None) -> int:
        box_id: int = c.execute(
            "INSERT INTO mailboxes(user_name, name, guid, uidvalidity, special_use) VALUES (?,?,?,?,?) RETURNING id",
            (user, name, guid or uuid.uuid4().hex, uidvalidity or next_uidvalidity(c, user),
             SPECIAL_USE.get(name))).fetchone()[0]
        return box_id

    def mailbox(self, user: str, name: str) -> Mailbox | None:
        row = self.conn().execute(
            "SELECT id, user_name, name, guid, uidvalidity, uidnext, highestmodseq, special_use FROM mailboxes "
            "WHERE user_name=? AND name=?", (user, name)).fetchone()
        return Mailbox(*row) if row else None

    def mailboxes(self, user: str) -> list[Mailbox]:
        return [Mailbox(*r) for r in self.conn().execute(
            "SELECT id, user_name, name, guid, uidvalidity, uidnext, highestmodseq, special_use FROM mailboxes "
            "WHERE user_name=? ORDER BY name", (user,))]

    # ------------------------------------------------------------------ deliveries

    def reserve_uid(self, user: str, mailbox: str) -> tuple[Mailbox, int]:
        """The next UID of a mailbox, reserved until commit_message or release_uid."""
        with self._write() as c:
            row = c.execute("SELECT id, uidnext FROM mailboxes WHERE user_name=? AND name=?",
                            (user, mailbox)).fetchone()
            if row is None:
                raise MetaError(f"no mailbox {mailbox!r} for {user}")
            box_id, uid = row
            c.execute("UPDATE mailboxes SET uidnext=? WHERE id=?", (uid + 1, box_id))
            c.execute("INSERT INTO pending(mailbox_id, uid, expires, owner) VALUES (?,?,?,?)",
                      (box_id, uid, time.time() + RESERVATION_SECONDS, _owner()))
        box = self.mailbox(user, mailbox)
        assert box is not None
        return box, uid

    def reserve_uids(self, targets: list[tuple[str, str]]) -> list[tuple[Mailbox, int]]:
        """reserve_uid for several (user, mailbox) at once: one transaction per message."""
        with self._write() as c:
            return self.reserve_uids_tx(c, targets)

    @staticmethod
    def reserve_uids_tx(c: Conn, targets: list[tuple[str, str]]) -> list[tuple[Mailbox, int]]:
        out = []
        for user, mailbox in targets:
            row = c.execute("SELECT id, user_name, name, guid, uidvalidity, uidnext, highestmodseq, special_use "
                            "FROM mailboxes WHERE user_name=? AND name=?", (user, mailbox)).fetchone()
            if row is None:
                raise MetaError(f"no mailbox {mailbox!r} for {user}")
            box = Mailbox(*row)
            c.execute("UPDATE mailboxes SET uidnext=? WHERE id=?", (box.uidnext + 1, box.id))
            c.execute("INSERT INTO pending(mailbox_id, uid, expires, owner) VALUES (?,?,?,?)",
                      (box.id, box.uidnext, time.time() + RESERVATION_SECONDS, _owner()))
            out.append((box, box.uidnext))
        return out

    def release_uid(self, mailbox_id: int, uid: int) -> None:
        with self._write() as c:
            if c.execute("DELETE FROM pending WHERE mailbox_id=? AND uid=?", (mailbox_id, uid)).rowcount:
                self.uncover(c, [(mailbox_id, uid)])

    def commit_message(self, user: str, mailbox_id: int, uid: int, guid: str, object_key: str, size: int,
                       internal_date: float, saved: float, envelope: object, bodystructure: object,
                       flags: tuple[str, ...] = ()) -> None:
        self.commit_messages([NewMessage(user, mailbox_id, uid, guid, object_key, size, internal_date, saved,
                                         envelope, bodystructure, flags)], [])

    def commit_messages(self, rows: Sequence[NewMessage], released: Sequence[tuple[int, int]]) -> None:
        """Commit several delivered messages and drop failed reservations, in one transaction."""
        with self._write() as c:
            self.commit_messages_tx(c, rows, released)

    @classmethod
    def commit_messages_tx(cls, c: Conn, rows: Sequence[NewMessage],
                           released: Sequence[tuple[int, int]]) -> None:
        modseqs: dict[int, int] = {}  # one transaction, one change per mailbox (RFC 7162 allows shared values)
        for row in rows:
            cls.commit_one(c, row, modseqs)
        dropped = [(mailbox_id, uid) for mailbox_id, uid in released
                   if c.execute("DELETE FROM pending WHERE mailbox_id=? AND uid=?", (mailbox_id, uid)).rowcount]
        cls.uncover(c, dropped, modseqs)

    @staticmethod
    def define_keywords(c: Conn, mailbox_id: int, flags: Iterable[str]) -> None:
        """Inside a write transaction: remember the keywords (not \\system flags) a mailbox has used."""
        c.executemany("INSERT INTO keywords(mailbox_id, name) VALUES (?,?) ON CONFLICT DO NOTHING",
                      [(mailbox_id, f) for f in flags if not f.startswith("\\")])

    def keywords(self, mailbox_id: int) -> set[str]:
        return {n for n, in self.conn().execute("SELECT name FROM keywords WHERE mailbox_id=?", (mailbox_id,))}

    @staticmethod
    def commit_one(c: Conn, m: NewMessage, modseqs: dict[int, int] | None = None) -> None:
        """Inside a write transaction: add the row, bump the mailbox's modseq and the user's usage.
        `modseqs` (mailbox id -> modseq) gives the messages of one transaction one modseq."""
        modseq = modseqs.get(m.mailbox_id) if modseqs is not None else None
        if modseq is None:
            modseq = MetaStore.bump_modseq(c, m.mailbox_id)
            if modseqs is not None:
                modseqs[m.mailbox_id] = modseq
        env = m.envelope if isinstance(m.envelope, str) else json.dumps(m.envelope)
        bs = m.bodystructure if isinstance(m.bodystructure, str) else json.dumps(m.bodystructure)
        c.execute("INSERT INTO messages(mailbox_id, uid, guid, object_key, size, internal_date, saved, flags,"
                  " modseq, envelope, bodystructure, pop3_uidl) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                  (m.mailbox_id, m.uid, m.guid, m.object_key, m.size, m.internal_date, m.saved, " ".join(m.flags),
                   modseq, env, bs, m.pop3_uidl))
        MetaStore.define_keywords(c, m.mailbox_id, m.flags)
        c.execute("UPDATE users SET used_bytes=used_bytes+? WHERE name=?", (m.size, m.user))
        if not c.execute("DELETE FROM pending WHERE mailbox_id=? AND uid=?", (m.mailbox_id, m.uid)).rowcount:
            raise ReservationLost(f"the reservation of UID {m.uid} in mailbox {m.mailbox_id} was dropped")
        MetaStore.uncover(c, [(m.mailbox_id, m.uid)], {m.mailbox_id: modseq})

    def set_parsed(self, mailbox_id: int, uid: int, envelope: str, bodystructure: str) -> None:
        """Store a message's ENVELOPE/BODYSTRUCTURE parsed again (a cache of the object: no fsync)."""
        with self._write_flags() as c:
            c.execute("UPDATE messages SET envelope=?, bodystructure=? WHERE mailbox_id=? AND uid=? "
                      "AND envelope IS NULL", (envelope, bodystructure, mailbox_id, uid))

    def first_recent(self, mailbox_id: int) -> int:
        """The first UID no read-write SELECT has claimed yet (EXAMINE looks, never claims)."""
        first: int = self.conn().execute("SELECT first_recent FROM mailboxes WHERE id=?",
                                         (mailbox_id,)).fetchone()[0]
        return first

    def claim_recent(self, mailbox_id: int, below: int) -> int:
        """A read-write SELECT: the first \\Recent UID for this session; later sessions see none of these."""
        first: int = self.conn().execute("SELECT first_recent FROM mailboxes WHERE id=?",
                                         (mailbox_id,)).fetchone()[0]
        if first >= below:  # nothing new to claim: no write, no fsync
            return below
        with self._write_flags() as c:  # \Recent is session state: no fsync for it
            first = c.execute("SELECT first_recent FROM mailboxes WHERE id=?", (mailbox_id,)).fetchone()[0]
            c.execute("UPDATE mailboxes SET first_recent = CASE WHEN first_recent > ? THEN first_recent ELSE ? END "
                      "WHERE id=?", (below, below, mailbox_id))
        return first

    def lowest_reservation(self, mailbox_id: int) -> int | None:
        """The lowest UID reserved in the mailbox and not yet committed or dropped (a read only)."""
        row = self.conn().execute("SELECT min(uid) FROM pending WHERE mailbox_id=?", (mailbox_id,)).fetchone()
        return row[0] if row is not None else None

    def visible_uid_limit(self, mailbox_id: int) -> int | None:
        """Messages with uid below this are complete and in order (None: no limit).

        A reservation lives as long as storing one object takes; one older than
        STALE_RESERVATION_SECONDS may belong to a process (or host) that died mid-delivery,
        so its owner is checked (at most every REAP_INTERVAL_SECONDS) before it hides newer mail,
        and one past RESERVATION_SECONDS is dropped by the same reaper (never merely skipped: the
        mail it uncovers gets a new MODSEQ, see uncover)."""
        self.reap_now_and_then()
        limit: int | None = self.conn().execute("SELECT min(uid) FROM pending WHERE mailbox_id=?",
                                                (mailbox_id,)).fetchone()[0]
        return limit

    def reap_now_and_then(self) -> None:
        """Before a read of visible mail, at most every REAP_INTERVAL_SECONDS: if any reservation is
        STALE_RESERVATION_SECONDS old, drop_dead_reservations asks whether its owner lives."""
        if time.monotonic() - self._last_reap <= REAP_INTERVAL_SECONDS:
            return
        self._last_reap = time.monotonic()
        oldest = self.conn().execute("SELECT min(expires) FROM pending").fetchone()[0]  # in flight only: few rows
        if oldest is not None and oldest - RESERVATION_SECONDS < time.time() - STALE_RESERVATION_SECONDS:
            self.drop_dead_reservations()

    def messages(self, mailbox_id: int) -> list[Message]:
        self.reap_now_and_then()
        rows = self.conn().execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id=? AND {VISIBLE} ORDER BY uid",
            (mailbox_id, mailbox_id))
        return [_message(r) for r in rows]

    def pop3_listing(self, mailbox_id: int) -> list[tuple[int, int, str, str | None]]:
        """(uid, size, object key, kept POP3 UIDL or None) of every visible message, by UID."""
        self.reap_now_and_then()
        rows = self.conn().execute(
            f"SELECT uid, size, object_key, pop3_uidl FROM messages WHERE mailbox_id=? AND {VISIBLE} ORDER BY uid",
            (mailbox_id, mailbox_id))
        return [(int(u), int(s), str(k), p) for u, s, k, p in rows]

    def pop3_lock(self, user: str, holder: str, seconds: float) -> bool:
        """Take (or renew) the user's maildrop lock for `seconds`; False when another holds it."""
        now = time.time()
        with self._write() as c:
            row = c.execute("SELECT holder, expires FROM pop3_locks WHERE user_name=?", (user,)).fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                return False
            if row is None:
                c.execute("INSERT INTO pop3_locks(user_name, holder, expires) VALUES (?,?,?)",
                          (user, holder, now + seconds))
            else:
                c.execute("UPDATE pop3_locks SET holder=?, expires=? WHERE user_name=?", (holder, now + seconds, user))
            return True

    def pop3_unlock(self, user: str, holder: str) -> None:
        with self._write() as c:
            c.execute("DELETE FROM pop3_locks WHERE user_name=? AND holder=?", (user, holder))

    def messages_by_uid(self, mailbox_id: int, uids: list[int]) -> dict[int, Message]:
        """The rows of these UIDs only (FETCH/SEARCH on a part of a big mailbox)."""
        out: dict[int, Message] = {}
        c = self.conn()
        for i in range(0, len(uids), 500):
            chunk = uids[i:i + 500]
            for r in c.execute(
                    f"SELECT {MESSAGE_COLUMNS} FROM messages "
                    f"WHERE mailbox_id=? AND uid IN ({','.join('?' * len(chunk))})", (mailbox_id, *chunk)):
                out[r[1]] = _message(r)
        return out

    def highestmodseq(self, mailbox_id: int) -> int:
        row = self.conn().execute("SELECT highestmodseq FROM mailboxes WHERE id=?", (mailbox_id,)).fetchone()
        return row[0] if row else 0

    def known_keys(self, object_keys: list[str]) -> set[str]:
        c = self.conn()
        out: set[str] = set()
        for i in range(0, len(object_keys), 500):
            chunk = object_keys[i:i + 500]
            out.update(r[0] for r in c.execute(
                f"SELECT object_key FROM messages WHERE object_key IN ({','.join('?' * len(chunk))})", chunk))
        return out

    # ------------------------------------------------------------------ reindex

    def restore(self, user: str, plan: Rebuilt) -> None:
        """Replace a user's mailboxes and messages with ones rebuilt from the bucket (rebuild.merge)."""
        with self._write() as c:
            c.execute("DELETE FROM messages WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE user_name=?)", (user,))
            c.execute("DELETE FROM expunged WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE user_name=?)", (user,))
            c.execute("DELETE FROM pending WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE user_name=?)", (user,))
            c.execute("DELETE FROM keywords WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE user_name=?)", (user,))
            c.execute("DELETE FROM mailboxes WHERE user_name=?", (user,))
            ids: dict[str, int] = {}
            for b in plan.boxes:
                ids[b.guid] = self._create_mailbox(c, user, b.name, b.guid, b.uidvalidity)
            # The default mailboxes, unless a record or the database said which the user has (renamed, deleted)
            for name in ("INBOX",) if plan.mailboxes_known else ("INBOX", *SPECIAL_USE):
                if name not in {b.name for b in plan.boxes}:
                    self._create_mailbox(c, user, name)
            used = 0
            for m in plan.messages:
                c.execute("INSERT INTO messages(mailbox_id, uid, guid, object_key, size, internal_date, saved,"
                          " flags, modseq, envelope, bodystructure, pop3_uidl) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                          (ids[m.mailbox_guid], m.uid, m.guid, m.object_key, m.size, m.internal_date, m.saved,
                           m.flags, m.modseq, json.dumps(m.envelope), json.dumps(m.bodystructure), m.pop3_uidl))
                used += m.size
            for b in plan.boxes:  # expunges before the rebuild are not known: QRESYNC falls back to UIDs
                c.execute("UPDATE mailboxes SET uidnext=?, highestmodseq=?, expunge_log_from=? WHERE id=?",
                          (b.uidnext, b.highestmodseq, b.highestmodseq, ids[b.guid]))
            for guid, name in plan.keywords:
                c.execute("INSERT INTO keywords(mailbox_id, name) VALUES (?,?) ON CONFLICT DO NOTHING",
                          (ids[guid], name))
            for name in plan.subscriptions:
                c.execute("INSERT INTO subscriptions(user_name, name) VALUES (?,?) ON CONFLICT DO NOTHING",
                          (user, name))
            c.execute("UPDATE users SET used_bytes=? WHERE name=?", (used, user))


@dataclass(slots=True)
class RebuiltBox:
    name: str
    guid: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int


@dataclass(frozen=True, slots=True)
class RebuiltMessage:
    mailbox_guid: str
    uid: int
    guid: str
    object_key: str
    size: int
    internal_date: float
    saved: float
    modseq: int
    flags: str
    envelope: object
    bodystructure: object
    pop3_uidl: str | None = None


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """A user's metadata as reindex rebuilt it (rebuild.merge)."""

    boxes: list[RebuiltBox]
    messages: list[RebuiltMessage]
    keywords: list[tuple[str, str]]  # (mailbox guid, keyword)
    subscriptions: list[str]
    copies: int
    mailboxes_known: bool  # the boxes are all the user has (from a state record or the database)


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"  # the pid after a fork, not the parent's


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class MetaWriter:
    """Group commit for the metadata store: one thread, one transaction per batch.

    Concurrent deliveries would otherwise each BEGIN IMMEDIATE on their own
    connection, and SQLite's busy handler makes the losers sleep (1, 2, 5 ms...)
    before retrying.  Here every queued operation runs in one transaction, each
    inside its own SAVEPOINT (a failing one is rolled back alone), with one
    fsync for the batch, behind the cross-process WriteLock.
    """

    def __init__(self, meta: MetaStore) -> None:
        self.meta = meta
        self._lock: WriteLock | NoLock | None = None
        self._thread = BatchThread("meta-writer", self._run_batch, max_batch=512)

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """fn(connection, *args) inside the next batch's transaction."""
        return self._thread.submit(fn, *args)

    def close(self) -> None:
        self._thread.close()

    def _run_batch(self, calls: list[Call]) -> list[Outcome]:
        c = self.meta.conn()
        if self._lock is None:
            self._lock = self.meta.backend.write_lock()
        outcomes: list[Outcome] = []
        self._lock.acquire()  # other processes' writers: woken at once, never sleeping
        try:
            self.meta.backend.begin_write(c)
            try:
                for fn, args, _ in calls:
                    c.execute("SAVEPOINT op")
                    ok, value = call(fn, (c, *args))
                    c.execute("RELEASE op" if ok else "ROLLBACK TO op")
                    if not ok:
                        c.execute("RELEASE op")
                    outcomes.append((ok, value))
                c.execute("COMMIT")
            except BaseException:
                if c.in_transaction and not getattr(c, "broken", False):  # a lost connection took it along
                    c.execute("ROLLBACK")
                raise
        finally:
            self._lock.release()
        return outcomes


class _Txn:
    def __init__(self, conn: Conn, lock: WriteLock | NoLock, backend: SqliteBackend | PostgresBackend) -> None:
        self.c = conn
        self.lock = lock
        self.backend = backend

    def __enter__(self) -> Conn:
        self.lock.acquire()
        try:
            self.backend.begin_write(self.c)
        except BaseException:
            self.lock.release()
            raise
        return self.c

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is None:
                self.c.execute("COMMIT")
            elif not getattr(self.c, "broken", False):  # a lost connection rolled it back already
                self.c.execute("ROLLBACK")
        finally:
            self.lock.release()
