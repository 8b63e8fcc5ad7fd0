"""`mailstore metadata copy`: SQLite to PostgreSQL and back, verified, resumable (issue 15)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import psycopg
import pytest

from conftest import mailstore, new_metadata
from mailstore import folders, metacopy
from mailstore.db import MetaStore, NewMessage
from mailstore.imap.framing import CommandFramer, Framed
from mailstore.imap.parser import parse_command
from mailstore.imap.session import ImapContext, Session
from mailstore.users import AddressPolicy, hash_password
from test_imap_transcript import unreachable_storage

USERS = ["ann@x.test", "ben@x.test"]


def fill(meta: MetaStore, per_box: int = 500) -> None:
    """Two users, three mailboxes each, flags and keywords, an expunge, aliases, subscriptions."""
    for user in USERS:
        meta.add_user(user, hash_password("pw"))
        folders.create_mailbox(meta, user, "Lists/Python")
        for box in ("INBOX", "Lists/Python", "Archive"):
            reserved = meta.reserve_uids([(user, box)] * per_box)
            rows = [NewMessage(user, b.id, uid, uuid.uuid4().hex, f"k/{user}/{box}/{uid}", 1000 + uid,
                               1.7e9 + uid, 1.7e9 + uid, ["Mon, 1 Jan 2024 00:00:00 +0000", f"m{uid}"], ["TEXT"],
                               ("\\Seen", "$Work") if uid % 3 == 0 else ("\\Flagged",) if uid % 5 == 0 else ())
                    for b, uid in reserved]
            meta.commit_messages(rows, [])
        box = meta.mailbox(user, "INBOX")
        assert box is not None
        folders.store_flags(meta, box.id, [1, 2, 3], "+FLAGS", ["\\Deleted"])
        folders.expunge(meta, user, box.id, None)
        folders.set_subscribed(meta, user, "Lists/Python", True)
    meta.add_alias("postmaster@x.test", USERS[0])


def imap_view(meta: MetaStore) -> list[bytes]:
    """What an IMAP client sees of every user (no message bodies needed)."""
    async def go() -> list[bytes]:
        ctx = ImapContext(meta, fs=unreachable_storage(), policy=AddressPolicy("x.test"), max_append=1000)
        out = []
        for user in USERS:
            s = Session(ctx, "127.0.0.1")
            for line in (f"a LOGIN {user} pw", 'b LIST "" "*"', "c LSUB \"\" \"*\"",
                         "d STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ SIZE MAILBOXID)",
                         "e EXAMINE Lists/Python", "f FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE EMAILID)",
                         "g SEARCH KEYWORD $Work", "h LOGOUT"):
                for ev in CommandFramer().feed(line.encode() + b"\r\n"):
                    assert isinstance(ev, Framed)
                    out.append(await s.handle(parse_command(ev.data)))
        await ctx.fs.close()
        return out
    return asyncio.run(go())


def test_sqlite_to_postgresql_and_back(request, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lite = MetaStore(tmp_path / "meta.db")
    fill(lite)
    pg_url = new_metadata(request, tmp_path, "postgresql")
    got = mailstore("metadata", "copy", "--from", str(tmp_path / "meta.db"), "--to", pg_url, "--quiet")
    report = json.loads(got.stdout)
    assert report["verified"] and report["rows"]["messages"] == 2 * 3 * 500 - 2 * 3
    assert report["rows"]["expunged"] == 6 and report["rows"]["aliases"] == 1
    assert imap_view(MetaStore(pg_url)) == imap_view(lite)
    # a new mailbox in the copy gets an id above every copied one (never one given before)
    pg = MetaStore(pg_url)
    top = max(b.id for u in USERS for b in pg.mailboxes(u))
    folders.create_mailbox(pg, USERS[0], "New")
    assert pg.mailbox(USERS[0], "New").id > top  # type: ignore[union-attr]
    # and back to a SQLite file
    back = tmp_path / "back.db"
    folders.delete_mailbox(pg, USERS[0], "New")
    mailstore("metadata", "copy", "--from", pg_url, "--to", str(back), "--quiet")
    assert imap_view(MetaStore(back)) == imap_view(lite)


def test_a_stopped_copy_resumes_and_a_different_target_is_refused(request, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lite = MetaStore(tmp_path / "meta.db")
    fill(lite, per_box=1500)
    pg_url = new_metadata(request, tmp_path, "postgresql")

    def stop_in_messages(table: str, rows: int) -> None:
        if table == "messages" and rows >= metacopy.BATCH:
            raise KeyboardInterrupt  # the operator's Ctrl-C, one batch in

    with pytest.raises(KeyboardInterrupt):
        metacopy.copy(lite, MetaStore(pg_url), stop_in_messages)
    with psycopg.connect(pg_url) as c:
        assert c.execute("SELECT count(*) FROM messages").fetchone()[0] == metacopy.BATCH
    counts = metacopy.copy(lite, MetaStore(pg_url))  # run again: it goes on
    assert counts["messages"] == 2 * 3 * 1500 - 6
    # a target that holds something else is not silently merged
    other = tmp_path / "other.db"
    MetaStore(other).add_user(USERS[0], hash_password("a different password"))
    got = mailstore("metadata", "copy", "--from", str(tmp_path / "meta.db"), "--to", str(other), "--quiet",
                    check=False)
    assert got.returncode == 1 and "users: source has 2 rows" in got.stderr, got.stderr
