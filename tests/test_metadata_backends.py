"""The metadata store on both backends (issue 15): the same schema, and the UID rule across
processes or hosts (several MetaStores at once, as several shim hosts would be)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import psycopg
import pytest

from mailstore.db import MetaStore
from mailstore.users import hash_password


def test_postgres_schema_is_sqlites(postgres, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """PG_SCHEMA is the end state of MIGRATIONS: the same tables and columns, in order."""
    lite = MetaStore(tmp_path / "meta.db").conn()
    tables = [n for n, in lite.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
                                       "ORDER BY name")]
    expected = {t: [r[1] for r in lite.execute(f"PRAGMA table_info({t})")] for t in tables}
    MetaStore(postgres.url())  # migrates the session's database
    with psycopg.connect(postgres.url()) as c:
        got = {t: [r[0] for r in c.execute("SELECT column_name FROM information_schema.columns "
                                           "WHERE table_name=%s ORDER BY ordinal_position", (t,))] for t in tables}
    assert got == expected


def test_uids_across_stores_at_once(metadata) -> None:  # type: ignore[no-untyped-def]
    """Four stores (processes, or hosts on PostgreSQL), four threads each, 15 deliveries a
    thread into one mailbox: every UID once, in commit order, MODSEQs never falling in UID order
    (a UID committed after a higher one gives that one its MODSEQ: see MetaStore.uncover), the
    quota exact."""
    stores = [MetaStore(metadata) for _ in range(4)]
    stores[0].add_user("u@x", hash_password("pw"))
    done: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def deliver(meta: MetaStore, n: int) -> None:
        try:
            for i in range(15):
                box, uid = meta.reserve_uid("u@x", "INBOX")
                meta.commit_message("u@x", box.id, uid, f"g{n}-{i}", f"k{n}-{i}", 10, 0.0, 0.0, [], [])
                with lock:
                    done.append((uid, n))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(stores[n % 4], n)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    uids = sorted(u for u, _ in done)
    assert uids == list(range(1, 16 * 15 + 1))
    meta = stores[0]
    box = meta.mailbox("u@x", "INBOX")
    assert box is not None
    msgs = meta.messages(box.id)
    assert [m.uid for m in msgs] == uids
    modseqs = [m.modseq for m in msgs]
    assert modseqs == sorted(modseqs) and box.highestmodseq == max(modseqs)
    assert len(set(modseqs)) > 1
    assert meta.get_user("u@x").used_bytes == 10 * len(uids)  # type: ignore[union-attr]


def test_the_postgres_url_carries_no_password(postgres, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """On a command line the store is named by a URL without the password: libpq reads it from
    PGPASSFILE (a 0600 file)."""
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{postgres.port}:*:{postgres.user}:{postgres.password}\n")
    os.chmod(passfile, 0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    url = f"postgresql://{postgres.user}@127.0.0.1:{postgres.port}/{postgres.database}"
    meta = MetaStore(url)
    assert meta.list_users() is not None
    assert Path(passfile).stat().st_mode & 0o077 == 0


def test_a_dead_owners_reservation_stops_hiding_mail(metadata) -> None:  # type: ignore[no-untyped-def]
    """A process (or host) that died between reserving a UID and committing it: once the
    reservation is STALE_RESERVATION_SECONDS old, readers ask whether its owner lives (SQLite: this
    host's PID; PostgreSQL: the owner's liveness lock, any host) and drop it; a live owner's stays."""
    import socket
    import time

    from mailstore import db
    meta = MetaStore(metadata)
    meta.add_user("u@x", hash_password("pw"))
    box = meta.mailbox("u@x", "INBOX")
    assert box is not None
    dead_pid = 2**22 + 12345  # above Linux's pid_max default: no such process
    owner = f"{socket.gethostname()}:{dead_pid}" if meta.path is not None else f"gone-host:{dead_pid}"
    old = time.time() + db.RESERVATION_SECONDS - db.STALE_RESERVATION_SECONDS - 5
    with meta._write() as c:
        c.execute("INSERT INTO pending(mailbox_id, uid, expires, owner) VALUES (?,?,?,?)", (box.id, 1, old, owner))
        c.execute("UPDATE mailboxes SET uidnext=2 WHERE id=?", (box.id,))
    b, uid = meta.reserve_uid("u@x", "INBOX")  # a live delivery after it
    meta.commit_message("u@x", b.id, uid, "g", "k", 10, 0.0, 0.0, [], [])
    meta._last_reap = 0.0
    assert meta.visible_uid_limit(box.id) is None  # the dead owner's UID 1 no longer hides UID 2
    assert [m.uid for m in meta.messages(box.id)] == [2]
    mine = db._owner()  # a live owner's old reservation is kept
    with meta._write() as c:
        c.execute("INSERT INTO pending(mailbox_id, uid, expires, owner) VALUES (?,?,?,?)", (box.id, 3, old, mine))
    meta._last_reap = 0.0
    assert meta.visible_uid_limit(box.id) == 3


def test_an_expired_reservation_is_dropped_and_cannot_be_committed(metadata) -> None:  # type: ignore[no-untyped-def]
    """A reservation past RESERVATION_SECONDS (its owner alive but stuck) is dropped by the reaper,
    never merely skipped: the mail above it gets a new MODSEQ, and the late commit of that UID is
    refused (ReservationLost, a StoreUnavailable: LMTP 451, APPEND NO) instead of putting a UID
    below mail that readers have already seen."""
    import time

    from mailstore import db
    meta = MetaStore(metadata)
    meta.add_user("u@x", hash_password("pw"))
    box, late = meta.reserve_uid("u@x", "INBOX")
    b, uid = meta.reserve_uid("u@x", "INBOX")
    meta.commit_message("u@x", b.id, uid, "g", "k", 10, 0.0, 0.0, [], [])
    assert meta.visible_uid_limit(box.id) == late  # UID 2 waits for UID 1
    before = meta.messages_by_uid(box.id, [uid])[uid].modseq
    with meta._write() as c:  # time passes: the reservation expires
        c.execute("UPDATE pending SET expires=? WHERE mailbox_id=? AND uid=?", (time.time() - 1, box.id, late))
    meta._last_reap = 0.0
    assert meta.visible_uid_limit(box.id) is None
    assert meta.messages_by_uid(box.id, [uid])[uid].modseq > before == meta.highestmodseq(box.id) - 1
    with pytest.raises(db.ReservationLost):
        meta.commit_message("u@x", box.id, late, "g2", "k2", 10, 0.0, 0.0, [], [])
    assert [m.uid for m in meta.messages(box.id)] == [uid]
    assert isinstance(db.ReservationLost("x"), db.StoreUnavailable)


def test_a_reader_never_sees_a_uid_before_a_lower_one_in_flight(metadata, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The visibility limit is judged in the same statement as the rows it limits: once it was read
    by one statement and used in the next, and UIDs 1 and 2 reserved (2 also committed) in between
    showed 2 while 1 was still in flight."""
    meta = MetaStore(metadata)
    other = MetaStore(metadata)  # another process, or host
    meta.add_user("u@x", hash_password("pw"))
    box = meta.mailbox("u@x", "INBOX")
    assert box is not None
    real = MetaStore.visible_uid_limit

    def then_the_other_delivers(self: MetaStore, mailbox_id: int) -> int | None:
        limit = real(self, mailbox_id)
        if self is meta:
            other.reserve_uid("u@x", "INBOX")  # UID 1, in flight
            b, uid = other.reserve_uid("u@x", "INBOX")
            other.commit_message("u@x", b.id, uid, f"g{uid}", f"k{uid}", 10, 0.0, 0.0, [], [])
        return limit

    monkeypatch.setattr(MetaStore, "visible_uid_limit", then_the_other_delivers)
    assert meta.changes_since(box.id, 0) == ([], 0)
    assert meta.uid_flags(box.id) == []
    assert meta.visible_uids(box.id) == set()
    assert meta.messages(box.id) == []


def test_postgres_store_of_schema_12_migrates(postgres) -> None:  # type: ignore[no-untyped-def]
    """A PostgreSQL store an older release made (schema 12) takes the later migrations in their
    PostgreSQL form (PG_MIGRATIONS) when a newer release opens it: POP3's column and lock table,
    and the Sieve scripts' table."""
    from mailstore import sqlbackend

    name = "older_release"
    with psycopg.connect(postgres.url(), autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name}")
    old = sqlbackend.PG_SCHEMA.replace(" pop3_uidl TEXT,", "")
    old = old[:old.index("CREATE TABLE pop3_locks")]  # (and sieve_scripts, of 14, after it)
    with psycopg.connect(postgres.url(name), autocommit=True) as c:
        for stmt in old.split(";"):
            if stmt.strip():
                c.execute(stmt)
        c.execute("CREATE TABLE schema_version(version BIGINT NOT NULL)")
        c.execute("INSERT INTO schema_version(version) VALUES (12)")
        c.execute("INSERT INTO users(name, password, created) VALUES ('old@x', 'h', 0)")
    meta = MetaStore(postgres.url(name))
    assert meta.get_user("old@x") is not None
    assert meta.pop3_lock("old@x", "a", 60) and not meta.pop3_lock("old@x", "b", 60)
    with psycopg.connect(postgres.url(name)) as c:
        assert c.execute("SELECT version FROM schema_version").fetchone() == (15,)
        assert c.execute("SELECT count(*) FROM sieve_scripts").fetchone() == (0,)
        assert c.execute("SELECT count(*) FROM information_schema.columns WHERE table_name='messages' "
                         "AND column_name='pop3_uidl'").fetchone() == (1,)


def test_sieve_sends_are_claimed_once_across_stores(metadata) -> None:  # type: ignore[no-untyped-def]
    """A vacation reply or redirect is claimed before it is sent (sieve/outbound.py): eight
    threads on four stores (hosts, on PostgreSQL) claiming one key at once, exactly one wins;
    released (the relay refused it), it can be claimed again; run out, too."""
    from mailstore.sieve import outbound

    stores = [MetaStore(metadata) for _ in range(4)]
    stores[0].add_user("v@x", hash_password("pw"))
    won: list[bool] = []
    barrier = threading.Barrier(8)

    def claim(meta: MetaStore) -> None:
        barrier.wait()
        won.append(outbound.claim(meta, "v@x", "vacation:k", 3600))

    threads = [threading.Thread(target=claim, args=(stores[n % 4],)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [False] * 7 + [True]
    outbound.release(stores[1], "v@x", "vacation:k")
    assert outbound.claim(stores[2], "v@x", "vacation:k", -1)  # (claimed, already run out)
    assert outbound.claim(stores[3], "v@x", "vacation:k", 3600)
    assert not outbound.already_sent(stores[0], "v@x", "redirect:other")
    assert outbound.already_sent(stores[0], "v@x", "vacation:k")
