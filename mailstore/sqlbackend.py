"""The two places the metadata can live, and every difference between them (issue 15).

MetaStore's SQL is written once, in what both SQLite and PostgreSQL run (`?`
placeholders, `ON CONFLICT`, `RETURNING`, `CASE` instead of two-argument
`max`).  What differs is here:

| | SQLite (embedded, `./dev up`) | PostgreSQL (several shim hosts) |
| --- | --- | --- |
| placeholders | `?` | `?` rewritten to `%s` (and `%` to `%%`) |
| a write transaction | `BEGIN IMMEDIATE` behind a flock | `BEGIN` + a transaction advisory lock |
| durable / flags connections | synchronous FULL / NORMAL | synchronous_commit on / off |
| schema | MIGRATIONS in order, `PRAGMA user_version` | their end state at once (`PG_SCHEMA`) |

Writers are serialised on both, one transaction at a time, so the rules in
db.py (UID reservations, MODSEQ, quotas) hold across processes and, on
PostgreSQL, across hosts: the advisory lock is the database's, not a host's.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

SCHEMA_VERSION_PG = 15  # the SQLite migration PG_SCHEMA matches
_WRITE_LOCK_KEY = 0x6D61696C  # "mail": the advisory lock every metadata writer takes
_LIVENESS: dict[tuple[str, str], Any] = {}  # (url, owner) -> the connection holding the owner's lock


class StoreUnavailable(Exception):
    """The metadata database cannot be reached (PostgreSQL down or restarting): try again later."""


class Conn(Protocol):
    """What MetaStore uses of a connection (sqlite3.Connection has it; PgConn adds it to psycopg)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...

    @property
    def in_transaction(self) -> bool: ...


class WriteLock:
    """A blocking flock next to the SQLite database, taken around every write transaction.

    SQLite's busy handler retries a locked BEGIN IMMEDIATE by sleeping (1, 2,
    5, 10 ms...), so writers in several processes would oversleep each other's
    short transactions; a flock waiter is woken the moment the holder lets go.
    """

    def __init__(self, db: Path) -> None:
        self.fd = os.open(str(db) + ".write-lock", os.O_RDWR | os.O_CREAT, 0o600)

    def acquire(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


class NoLock:
    """PostgreSQL's writers wait on the advisory lock inside the transaction instead."""

    def acquire(self) -> None:
        pass

    def release(self) -> None:
        pass


class SqliteBackend:
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

    def connect(self, *, durable: bool) -> Conn:
        c = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        c.execute("PRAGMA busy_timeout=30000")
        c.execute("PRAGMA foreign_keys=ON")
        return c

    def write_lock(self) -> WriteLock | NoLock:
        return WriteLock(self.path)

    def begin_write(self, c: Conn) -> None:
        c.execute("BEGIN IMMEDIATE")

    def ids_above(self, c: Conn, table: str, top: int) -> None:
        """The table's AUTOINCREMENT goes on above `top` (ids copied in: metacopy.py)."""
        if c.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (top, table)).rowcount == 0:
            c.execute("INSERT INTO sqlite_sequence(name, seq) VALUES (?, ?)", (table, top))

    def migrate(self, c: Conn, migrations: list[str]) -> None:
        # A migration may rebuild a table (SQLite's way to change one): foreign keys are off
        # for the transaction (the pragma is a no-op inside one) and checked before it commits.
        c.execute("PRAGMA foreign_keys=OFF")
        c.execute("BEGIN IMMEDIATE")
        try:
            version = c.execute("PRAGMA user_version").fetchone()[0]
            for i, script in enumerate(migrations[version:], start=version + 1):
                for stmt in script.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                c.execute(f"PRAGMA user_version={i}")
            broken = c.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"a migration left rows without their parents: {broken[:5]}")
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        finally:
            c.execute("PRAGMA foreign_keys=ON")


@functools.lru_cache(maxsize=2048)
def pg_sql(sql: str) -> str:
    """MetaStore's SQL for psycopg: `?` placeholders become `%s`, a literal `%` becomes `%%`."""
    return sql.replace("%", "%%").replace("?", "%s")


class PgConn:
    """A psycopg connection with sqlite3's calling convention (autocommit: BEGIN/COMMIT are ours)."""

    def __init__(self, conn: Any, backend: PostgresBackend) -> None:
        self.c = conn
        self.backend = backend
        self.generation = backend.generation
        self.lost = False

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        import psycopg
        try:
            return self.c.execute(pg_sql(sql), tuple(parameters))
        except psycopg.OperationalError as exc:  # the server went away: a temporary failure
            raise self._lose(exc) from None

    def script(self, sql: str) -> None:
        """Several statements without parameters, in one round trip (the simple query protocol)."""
        import psycopg
        try:
            self.c.execute(sql)
        except psycopg.OperationalError as exc:
            raise self._lose(exc) from None

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any:
        import psycopg
        try:
            with self.c.cursor() as cur:
                cur.executemany(pg_sql(sql), [tuple(p) for p in parameters])
                return cur
        except psycopg.OperationalError as exc:
            raise self._lose(exc) from None

    def _lose(self, exc: Exception) -> StoreUnavailable:
        """This connection is done for (a restart, a network cut): the next use makes a new one, and so
        do the other threads' connections made before (they went the same way, unnoticed yet)."""
        self.lost = True
        if self.generation == self.backend.generation:
            self.backend.generation += 1
        with contextlib.suppress(Exception):
            self.c.close()
        return StoreUnavailable(str(exc).strip())

    @property
    def broken(self) -> bool:
        """Lost (a server restart): MetaStore makes a new connection in its place."""
        return bool(self.lost or self.generation != self.backend.generation or self.c.closed or self.c.broken)

    def close(self) -> None:
        self.c.close()

    @property
    def in_transaction(self) -> bool:
        import psycopg
        return bool(self.c.info.transaction_status != psycopg.pq.TransactionStatus.IDLE)


class PostgresBackend:
    """The metadata in PostgreSQL.  The URL names no password: libpq finds it (PGPASSFILE or
    ~/.pgpass, a 0600 file), so it is never on a command line."""

    kind = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        self.generation = 0  # moves on when a connection is lost: every older one is made again

    def connect(self, *, durable: bool) -> Conn:
        import psycopg
        from psycopg.adapt import Loader

        class Number(Loader):  # sum() and friends answer numeric: as int (or float) like SQLite
            def load(self, data: Any) -> int | float:
                text = bytes(data).decode()
                return int(text) if text.lstrip("-").isdigit() else float(text)

        try:
            c = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(str(exc).strip()) from None
        c.adapters.register_loader("numeric", Number)
        if not durable:  # flag changes: atomic, not waited for on disk (SQLite: synchronous=NORMAL)
            c.execute("SET synchronous_commit = off")
        return PgConn(c, self)

    def write_lock(self) -> WriteLock | NoLock:
        return NoLock()

    def begin_write(self, c: Conn) -> None:
        assert isinstance(c, PgConn)
        c.script(f"BEGIN; SELECT pg_advisory_xact_lock({_WRITE_LOCK_KEY:d})")  # one round trip, not two

    def hold_liveness(self, owner: str) -> None:
        """While this process lives, a session advisory lock named after it is held, on a connection of
        its own: PostgreSQL lets go of it the moment the process (or its host) is gone, so any host
        can tell a dead owner's UID reservations from a slow one's (db.py drop_dead_reservations)."""
        import psycopg
        if (self.url, owner) in _LIVENESS:  # one lock per process and database, however many stores
            return
        try:
            c = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            # try, never wait: taken already means this process holds it (a store opened by
            # another URL of the same database)
            row = c.execute("SELECT pg_try_advisory_lock(1, hashtext(%s))", (owner,)).fetchone()
            if row is not None and row[0]:
                _LIVENESS[(self.url, owner)] = c
            else:
                c.close()
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(str(exc).strip()) from None

    def owner_alive(self, c: Conn, owner: str) -> bool:
        """Does the process that made `owner`'s reservations still hold its liveness lock?"""
        if not c.execute("SELECT pg_try_advisory_lock(1, hashtext(?))", (owner,)).fetchone()[0]:
            return True
        c.execute("SELECT pg_advisory_unlock(1, hashtext(?))", (owner,))
        return False

    def ids_above(self, c: Conn, table: str, top: int) -> None:
        """The table's identity goes on above `top` (ids copied in: metacopy.py)."""
        c.execute("SELECT setval(pg_get_serial_sequence(?, 'id'), ?, true)", (table, max(top, 1)))

    def migrate(self, c: Conn, migrations: list[str]) -> None:
        c.execute("BEGIN")
        try:
            c.execute("SELECT pg_advisory_xact_lock(?)", (_WRITE_LOCK_KEY,))
            c.execute("CREATE TABLE IF NOT EXISTS schema_version(version BIGINT NOT NULL)")
            row = c.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                for stmt in PG_SCHEMA.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                c.execute("INSERT INTO schema_version(version) VALUES (?)", (SCHEMA_VERSION_PG,))
                version = SCHEMA_VERSION_PG
            else:
                version = row[0]
            for later in range(version + 1, len(migrations) + 1):  # a store made by an older release
                if later not in PG_MIGRATIONS:
                    raise RuntimeError(f"PostgreSQL schema {version} is older than {len(migrations)}: "
                                       "a migration has no PostgreSQL form")
                for stmt in PG_MIGRATIONS[later].split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                c.execute("UPDATE schema_version SET version=?", (later,))
            for stmt in PG_TRIGGERS:  # made again on every open: idempotent
                c.execute(stmt)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise


def open_backend(spec: str | Path) -> SqliteBackend | PostgresBackend:
    """A SQLite file path, or a postgresql:// URL."""
    text = str(spec)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresBackend(text)
    if text.startswith("sqlite:///"):  # the URL form of mailstore.toml's [metadata] url
        return SqliteBackend(Path(text.removeprefix("sqlite://")))
    return SqliteBackend(Path(spec))


# Every change to a mailbox moves its HIGHESTMODSEQ: that commit tells every host which
# mailbox changed (mailstore/changes.py LISTENs), so IDLE on another host wakes at once.
PG_TRIGGERS = [
    """CREATE OR REPLACE FUNCTION mailstore_notify() RETURNS trigger AS $$
    BEGIN
        PERFORM pg_notify('mailstore_changes', NEW.id::text);
        RETURN NEW;
    END $$ LANGUAGE plpgsql""",
    "DROP TRIGGER IF EXISTS mailboxes_changed ON mailboxes",
    """CREATE TRIGGER mailboxes_changed AFTER UPDATE OF highestmodseq ON mailboxes FOR EACH ROW
    WHEN (NEW.highestmodseq IS DISTINCT FROM OLD.highestmodseq) EXECUTE FUNCTION mailstore_notify()""",
]

# The SQLite schema after MIGRATIONS 1-15, as PostgreSQL spells it: 64-bit integers
# (UIDs are unsigned 32-bit, MODSEQs 63-bit), double precision times, identity ids.
PG_SCHEMA = """
CREATE TABLE users(
    name TEXT PRIMARY KEY, password TEXT NOT NULL, quota_bytes BIGINT NOT NULL DEFAULT 0,
    used_bytes BIGINT NOT NULL DEFAULT 0, created DOUBLE PRECISION NOT NULL,
    last_uidvalidity BIGINT NOT NULL DEFAULT 0);
CREATE TABLE aliases(address TEXT PRIMARY KEY, user_name TEXT NOT NULL REFERENCES users(name));
CREATE TABLE mailboxes(
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, user_name TEXT NOT NULL, name TEXT NOT NULL,
    guid TEXT NOT NULL UNIQUE, uidvalidity BIGINT NOT NULL, uidnext BIGINT NOT NULL DEFAULT 1,
    highestmodseq BIGINT NOT NULL DEFAULT 1, special_use TEXT, subscribed BIGINT NOT NULL DEFAULT 1,
    first_recent BIGINT NOT NULL DEFAULT 1, expunge_log_from BIGINT NOT NULL DEFAULT 0,
    UNIQUE(user_name, name));
CREATE TABLE messages(
    mailbox_id BIGINT NOT NULL REFERENCES mailboxes(id), uid BIGINT NOT NULL,
    guid TEXT NOT NULL, object_key TEXT NOT NULL, size BIGINT NOT NULL,
    internal_date DOUBLE PRECISION NOT NULL, saved DOUBLE PRECISION NOT NULL, flags TEXT NOT NULL DEFAULT '',
    modseq BIGINT NOT NULL, envelope TEXT, bodystructure TEXT, pop3_uidl TEXT,
    PRIMARY KEY(mailbox_id, uid));
CREATE INDEX messages_by_key ON messages(object_key);
CREATE INDEX messages_by_modseq ON messages(mailbox_id, modseq);
CREATE TABLE pending(mailbox_id BIGINT NOT NULL, uid BIGINT NOT NULL, expires DOUBLE PRECISION NOT NULL,
    owner TEXT, PRIMARY KEY(mailbox_id, uid));
CREATE TABLE expunged(mailbox_id BIGINT NOT NULL, modseq BIGINT NOT NULL, uid BIGINT NOT NULL,
    PRIMARY KEY(mailbox_id, modseq, uid));
CREATE TABLE import_map(user_name TEXT NOT NULL, source TEXT NOT NULL, folder TEXT NOT NULL,
    item TEXT NOT NULL, validity TEXT NOT NULL, mailbox_id BIGINT NOT NULL, uid BIGINT NOT NULL,
    message_id TEXT, size BIGINT NOT NULL, PRIMARY KEY(user_name, source, folder, item));
CREATE TABLE subscriptions(user_name TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY(user_name, name));
CREATE TABLE keywords(mailbox_id BIGINT NOT NULL, name TEXT NOT NULL, PRIMARY KEY(mailbox_id, name));
CREATE TABLE pop3_locks(user_name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires DOUBLE PRECISION NOT NULL);
CREATE TABLE sieve_scripts(user_name TEXT NOT NULL, name TEXT NOT NULL, script TEXT NOT NULL,
    active BIGINT NOT NULL DEFAULT 0, modified DOUBLE PRECISION NOT NULL, PRIMARY KEY(user_name, name));
CREATE TABLE sieve_duplicates(user_name TEXT NOT NULL, key TEXT NOT NULL, expires DOUBLE PRECISION NOT NULL,
    PRIMARY KEY(user_name, key))
"""

# The SQLite migrations after 12, as PostgreSQL runs them on a store an older release made.
PG_MIGRATIONS = {
    13: """ALTER TABLE messages ADD COLUMN pop3_uidl TEXT;
    CREATE TABLE pop3_locks(user_name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires DOUBLE PRECISION NOT NULL)""",
    14: """CREATE TABLE sieve_scripts(user_name TEXT NOT NULL, name TEXT NOT NULL, script TEXT NOT NULL,
    active BIGINT NOT NULL DEFAULT 0, modified DOUBLE PRECISION NOT NULL, PRIMARY KEY(user_name, name))""",
    15: """CREATE TABLE sieve_duplicates(user_name TEXT NOT NULL, key TEXT NOT NULL,
    expires DOUBLE PRECISION NOT NULL, PRIMARY KEY(user_name, key))""",
}
