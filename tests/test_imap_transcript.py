"""Byte-exact IMAP session transcripts (the session with a real metadata store, no sockets)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from cache import Fs, open_fs
from mailstore import folders
from mailstore.db import MetaStore
from mailstore.imap.framing import CommandFramer, Framed
from mailstore.imap.parser import parse_command
from mailstore.imap.reader import ParseError
from mailstore.imap.session import ImapContext, Session
from mailstore.users import AddressPolicy, hash_password


@pytest.fixture
def ctx(metadata):  # type: ignore[no-untyped-def]
    meta = MetaStore(metadata)  # each transcript on SQLite and on PostgreSQL
    meta.add_user("t@x.test", hash_password("pw"))
    for i in range(3):
        box, uid = meta.reserve_uid("t@x.test", "INBOX")
        meta.commit_message("t@x.test", box.id, uid, f"g{i}", f"k{i}", 100 + i, 0.0, 0.0, [], [],
                            ("\\Seen",) if i == 0 else ())
    return ImapContext(meta, fs=unreachable_storage(), policy=AddressPolicy("x.test"), max_append=1000)


def unreachable_storage() -> Fs:
    """A real S3 client whose gateway is down (a closed loopback port): these transcripts
    never read bodies, and an EXPUNGE must complete when the objects cannot be deleted
    (they are left for `mailstore gc`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return open_fs(f"s3:http://k:s@127.0.0.1:{port}/?bucket=mail&max_retries=0&timeout=1s&absolute_timeout=2s")


async def _on_this_loop(ctx: ImapContext) -> None:
    """The S3 client binds its connection pool to one event loop: a fresh one per asyncio.run."""
    await ctx.fs.close()
    ctx.fs = unreachable_storage()


def run(ctx: ImapContext, *lines: bytes) -> list[bytes]:
    async def go() -> list[bytes]:
        await _on_this_loop(ctx)
        s = Session(ctx, "127.0.0.1")
        framer = CommandFramer()
        out = []
        for line in lines:
            for ev in framer.feed(line + b"\r\n"):
                assert isinstance(ev, Framed)
                out.append(await s.handle(parse_command(ev.data)))
        await ctx.fs.close()
        return out
    return asyncio.run(go())


def test_login_select_store_search_expunge(ctx):
    uidvalidity = ctx.meta.mailbox("t@x.test", "INBOX").uidvalidity
    out = run(ctx, b"a1 LOGIN t@x.test pw", b"a2 SELECT INBOX", b"a3 STORE 2 +FLAGS (\\Deleted)",
              b"a4 SEARCH UNSEEN", b"a5 UID SEARCH DELETED", b"a6 EXPUNGE", b"a7 SEARCH ALL", b"a8 LOGOUT")
    assert out[0].startswith(b"a1 OK [CAPABILITY IMAP4rev1 ") and out[0].endswith(b"] LOGIN completed\r\n")
    assert out[1] == (b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
                      b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted\r\n"
                      b"* 3 EXISTS\r\n* 3 RECENT\r\n"
                      + f"* OK [UIDVALIDITY {uidvalidity}] UIDs valid\r\n".encode()
                      + b"* OK [UIDNEXT 4] Predicted next UID\r\n* OK [HIGHESTMODSEQ 4] Highest\r\n"
                      + f"* OK [MAILBOXID (F{ctx.meta.mailbox('t@x.test', 'INBOX').guid})] Ok\r\n".encode()
                      + b"* OK [UNSEEN 2] First unseen\r\na2 OK [READ-WRITE] SELECT completed\r\n")
    # RFC 3501 §2.3.2: \Recent is part of the flags this session sees (Dovecot shows it too)
    assert out[2] == b"* 2 FETCH (FLAGS (\\Deleted \\Recent))\r\na3 OK STORE completed\r\n"
    assert out[3] == b"* SEARCH 2 3\r\na4 OK SEARCH completed\r\n"
    assert out[4] == b"* SEARCH 2\r\na5 OK UID SEARCH completed\r\n"
    assert out[5] == b"* 2 EXPUNGE\r\n* 2 RECENT\r\na6 OK EXPUNGE completed\r\n"  # RECENT: its count changed
    assert out[6] == b"* SEARCH 1 2\r\na7 OK SEARCH completed\r\n"
    assert out[7] == b"* BYE mailstore IMAP logging out\r\na8 OK LOGOUT completed\r\n"


def test_states_and_errors(ctx):
    out = run(ctx, b"b1 SELECT INBOX", b"b2 LOGIN t@x.test nope", b"b3 LOGIN t@x.test pw", b"b4 FETCH 1 FLAGS",
              b"b5 SELECT Nowhere", b"b6 STATUS INBOX (MESSAGES UNSEEN UIDNEXT)", b"b7 CREATE INBOX",
              b"b8 LIST \"\" \"S*\"", b"b9 NAMESPACE", b"c1 GETQUOTAROOT INBOX", b"c2 LOGIN t@x.test pw")
    assert out[0] == b"b1 BAD SELECT needs authentication first\r\n"
    assert out[1] == b"b2 NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
    assert out[3] == b"b4 BAD FETCH needs a selected mailbox\r\n"
    assert out[4] == b"b5 NO [NONEXISTENT] No mailbox Nowhere\r\n"
    assert out[5] == b'* STATUS "INBOX" (MESSAGES 3 UNSEEN 2 UIDNEXT 4)\r\nb6 OK STATUS completed\r\n'
    assert out[6] == b"b7 NO [ALREADYEXISTS] Mailbox exists\r\n"
    assert out[7] == b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\nb8 OK LIST completed\r\n'
    assert out[8] == b'* NAMESPACE (("" "/")) NIL NIL\r\nb9 OK NAMESPACE completed\r\n'
    assert out[9] == b'* QUOTAROOT "INBOX" ""\r\n* QUOTA "" ()\r\nc1 OK GETQUOTAROOT completed\r\n'
    assert out[10] == b"c2 BAD Already authenticated\r\n"



def run_pair(ctx: ImapContext, *steps) -> list[bytes]:  # type: ignore[no-untyped-def]
    """Two sessions on one context: steps are (session 0 or 1, line), or a callable run in between."""
    async def go() -> list[bytes]:
        await _on_this_loop(ctx)
        sessions = [Session(ctx, "127.0.0.1"), Session(ctx, "127.0.0.1")]
        out = []
        for step in steps:
            if callable(step):
                step()
                continue
            who, line = step
            out.append(await sessions[who].handle(parse_command(line)))
        await ctx.fs.close()
        return out
    return asyncio.run(go())


@pytest.mark.parametrize("log_kept", [True, False])
def test_expunges_and_moves_elsewhere_reach_a_selected_session(ctx, log_kept):
    # Session 1 expunges message 3 and moves message 1 away; session 0 learns
    # both at its next NOOP, highest first: from the expunge log, or (when the
    # log no longer reaches back) from comparing UIDs. Pruned as log_expunged
    # prunes: the entries go, and expunge_log_from says from where the log is whole.
    def prune() -> None:
        if not log_kept:
            c = ctx.meta.conn()
            c.execute("DELETE FROM expunged")
            c.execute("UPDATE mailboxes SET expunge_log_from = highestmodseq")
    out = run_pair(ctx, (0, b"a1 LOGIN t@x.test pw"), (1, b"b1 LOGIN t@x.test pw"), (0, b"a2 SELECT INBOX"),
                   (1, b"b2 SELECT INBOX"), (1, b"b3 STORE 3 +FLAGS.SILENT (\\Deleted)"), (1, b"b4 EXPUNGE"),
                   (1, b"b5 MOVE 1 Trash"), prune, (0, b"a3 NOOP"), (0, b"a4 FETCH 1 (UID)"))
    assert out[5] == b"* 3 EXPUNGE\r\nb4 OK EXPUNGE completed\r\n"
    assert out[6].endswith(b"* 1 EXPUNGE\r\nb5 OK MOVE completed\r\n")
    assert out[7] == b"* 3 EXPUNGE\r\n* 1 EXPUNGE\r\n* 1 RECENT\r\na3 OK NOOP completed\r\n"
    assert out[8] == b"* 1 FETCH (UID 2)\r\na4 OK FETCH completed\r\n"


@pytest.mark.parametrize("log_kept", [True, False])
def test_qresync_select_whether_or_not_the_expunge_log_reaches_back(ctx, log_kept):
    # SELECT (QRESYNC (v m)) reports what vanished since m from the expunge log; when the log
    # was pruned past m (expunge_log_from moved on), it reports every UID below UIDNEXT that is
    # missing instead (RFC 7162 §3.2.5 allows UIDs the client never had), never fewer.
    def prune() -> None:
        c = ctx.meta.conn()
        c.execute("DELETE FROM expunged")
        c.execute("UPDATE mailboxes SET expunge_log_from = highestmodseq")  # autocommit on both backends
    box = ctx.meta.mailbox("t@x.test", "INBOX")
    steps = [(0, b"a1 LOGIN t@x.test pw"), (0, b"a2 ENABLE QRESYNC"), (0, b"a3 SELECT INBOX"),
             (0, b"a4 STORE 2 +FLAGS.SILENT (\\Deleted)"), (0, b"a5 EXPUNGE"), (0, b"a6 STORE 1 +FLAGS (\\Flagged)")]
    if not log_kept:
        steps.append(prune)
    modseq = box.highestmodseq
    steps += [(0, f"a7 SELECT INBOX (QRESYNC ({box.uidvalidity} {modseq} 1:9))".encode()),
              (1, b"b1 LOGIN t@x.test pw"), (1, f"b2 SELECT INBOX (QRESYNC ({box.uidvalidity} 1))".encode())]
    out = run_pair(ctx, *steps)
    assert out[4].startswith(b"* VANISHED 2\r\n* 2 RECENT\r\na5 OK [HIGHESTMODSEQ ")
    resync = out[-3].split(b"\r\n")
    assert resync[0] == b"* OK [CLOSED] Previous mailbox closed"
    assert b"* VANISHED (EARLIER) 2" in resync
    assert any(line.startswith(b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Flagged) MODSEQ (") for line in resync)
    assert out[-1].startswith(b"b2 BAD ")  # QRESYNC not enabled in that session


def test_arrival_ties_within_a_second_keep_sequence_order(tmp_path):
    # INTERNALDATE is stored to the microsecond but clients see whole seconds (RFC 3501
    # date-time): two deliveries in one second tie under ARRIVAL, and a tie stays in
    # sequence order under REVERSE too (RFC 5256 §3; Dovecot sorts so).
    meta = MetaStore(tmp_path / "meta.db")
    meta.add_user("t@x.test", hash_password("pw"))
    env = [None, "s", None, None, None, None, None, None, None, None]
    for i, when in enumerate((1000.7, 1000.2, 999.9)):
        box, uid = meta.reserve_uid("t@x.test", "INBOX")
        meta.commit_message("t@x.test", box.id, uid, f"g{i}", f"k{i}", 100, when, when, env, [])
    ctx = ImapContext(meta, fs=unreachable_storage(), policy=AddressPolicy("x.test"), max_append=1000)
    out = run(ctx, b"a1 LOGIN t@x.test pw", b"a2 SELECT INBOX", b"a3 SORT (REVERSE ARRIVAL) UTF-8 ALL",
              b"a4 SORT (ARRIVAL) UTF-8 ALL")
    assert out[2] == b"* SORT 1 2 3\r\na3 OK SORT completed\r\n"
    assert out[3] == b"* SORT 3 1 2\r\na4 OK SORT completed\r\n"


def test_objectid(ctx):
    """RFC 8474 OBJECTID: MAILBOXID from CREATE, SELECT and STATUS, kept by RENAME; EMAILID kept by
    COPY (the object is shared); THREADID NIL; SEARCH EMAILID/THREADID; a malformed id is BAD."""
    out = run(ctx, b"a1 LOGIN t@x.test pw", b"a2 CREATE Work", b"a3 STATUS Work (MAILBOXID MESSAGES)",
              b"a4 RENAME Work Done", b"a5 STATUS Done (MAILBOXID)", b"a6 SELECT INBOX",
              b"a7 FETCH 1:2 (EMAILID THREADID)", b"a8 COPY 2 Done", b"a9 SELECT Done", b"b1 FETCH 1 (UID EMAILID)",
              b"b2 SEARCH EMAILID Mg1", b"b3 SEARCH EMAILID Mg0", b"b4 SEARCH THREADID T1", b"b5 CAPABILITY")
    guid = ctx.meta.mailbox("t@x.test", "Done").guid
    assert out[1] == f"a2 OK [MAILBOXID (F{guid})] CREATE completed\r\n".encode()
    assert out[2] == f'* STATUS "Work" (MAILBOXID (F{guid}) MESSAGES 0)\r\na3 OK STATUS completed\r\n'.encode()
    assert out[4] == f'* STATUS "Done" (MAILBOXID (F{guid}))\r\na5 OK STATUS completed\r\n'.encode()
    inbox = ctx.meta.mailbox("t@x.test", "INBOX").guid
    assert f"* OK [MAILBOXID (F{inbox})] Ok\r\n".encode() in out[5]
    assert out[6] == (b"* 1 FETCH (EMAILID (Mg0) THREADID NIL)\r\n* 2 FETCH (EMAILID (Mg1) THREADID NIL)\r\n"
                      b"a7 OK FETCH completed\r\n")
    assert f"* OK [MAILBOXID (F{guid})] Ok\r\n".encode() in out[8]
    assert out[9] == b"* 1 FETCH (UID 1 EMAILID (Mg1))\r\nb1 OK FETCH completed\r\n"
    assert out[10] == b"* SEARCH 1\r\nb2 OK SEARCH completed\r\n"
    assert out[11] == b"* SEARCH\r\nb3 OK SEARCH completed\r\n"  # Mg0 is in INBOX, not here
    assert out[12] == b"* SEARCH\r\nb4 OK SEARCH completed\r\n"
    assert b" OBJECTID" in out[13]
    with pytest.raises(ParseError):  # objectid = 1*255(ALPHA / DIGIT / "_" / "-")
        parse_command(b"b6 SEARCH EMAILID M.x")


def test_a_mailbox_created_after_a_delete_is_not_the_deleted_one(ctx):
    """Mailbox ids are never given again (migration 12): the IMAP snapshot cache is keyed by id, and
    a new mailbox at the same MODSEQ as a deleted one with its id was answered from the old cache."""
    def one_message(name: str, flags: tuple[str, ...]) -> None:
        folders.create_mailbox(ctx.meta, "t@x.test", name)
        box, uid = ctx.meta.reserve_uid("t@x.test", name)
        ctx.meta.commit_message("t@x.test", box.id, uid, f"g-{name}", f"k-{name}", 10, 0.0, 0.0, [], [], flags)

    one_message("Old", ("\\Seen", "$Old"))
    old_id = ctx.meta.mailbox("t@x.test", "Old").id
    out = run(ctx, b"a1 LOGIN t@x.test pw", b"a2 SELECT Old", b"a3 UNSELECT", b"a4 DELETE Old")
    one_message("New", ())
    out = run(ctx, b"b1 LOGIN t@x.test pw", b"b2 SELECT New", b"b3 FETCH 1 (FLAGS)")
    assert out[2] == b"* 1 FETCH (FLAGS (\\Recent))\r\nb3 OK FETCH completed\r\n", out
    assert ctx.meta.mailbox("t@x.test", "New").id > old_id


def test_mail_hidden_behind_a_dropped_reservation_shows_up(ctx):
    """A UID reserved and then released (a failed delivery, or a dead host's reservation reaped)
    uncovers the mail above it without any message changing: HIGHESTMODSEQ moves on, so the
    snapshot cache and the sessions keyed on it see that mail (it once stayed hidden until the
    next delivery)."""
    folders.create_mailbox(ctx.meta, "t@x.test", "Stale")
    first, uid1 = ctx.meta.reserve_uid("t@x.test", "Stale")  # in flight...
    box, uid2 = ctx.meta.reserve_uid("t@x.test", "Stale")
    ctx.meta.commit_message("t@x.test", box.id, uid2, "g-stale", "k-stale", 10, 0.0, 0.0, [], [])
    out = run(ctx, b"a1 LOGIN t@x.test pw", b"a2 SELECT Stale")
    assert b"* 0 EXISTS\r\n" in out[1]  # UID 2 waits for UID 1 (never a higher UID first)
    ctx.meta.release_uid(first.id, uid1)  # ...and given up
    out = run(ctx, b"b1 LOGIN t@x.test pw", b"b2 SELECT Stale", b"b3 FETCH 1 (UID)")
    assert b"* 1 EXISTS\r\n" in out[1]
    assert out[2] == b"* 1 FETCH (UID 2)\r\nb3 OK FETCH completed\r\n"


def test_changes_to_mail_hidden_behind_a_reservation_reach_every_reader(ctx):
    """A session appends UID 2 and changes its flags while UID 1 is still in flight, so UID 2 is
    hidden from other readers (never a higher UID first) while its MODSEQ goes by them.  When
    UID 1 commits, a session that kept NOOPing sees both with their flags, and a CONDSTORE client
    asking for changes since the HIGHESTMODSEQ it saw meanwhile gets UID 2 too.  (Found by the
    concurrent IMAP test: an IDLE client kept UID 2's old flags for good.)"""
    folders.create_mailbox(ctx.meta, "t@x.test", "Late")
    first, uid1 = ctx.meta.reserve_uid("t@x.test", "Late")  # in flight...
    box, uid2 = ctx.meta.reserve_uid("t@x.test", "Late")
    ctx.meta.commit_message("t@x.test", box.id, uid2, "g-2", "k-2", 10, 0.0, 0.0, [], [], ("\\Draft",))

    async def go() -> list[bytes]:
        await _on_this_loop(ctx)
        s = Session(ctx, "127.0.0.1")
        out = []

        async def say(line: bytes) -> None:
            for ev in CommandFramer().feed(line + b"\r\n"):
                assert isinstance(ev, Framed)
                out.append(await s.handle(parse_command(ev.data)))

        await say(b"a1 LOGIN t@x.test pw")
        await say(b"a2 SELECT Late (CONDSTORE)")
        folders.store_flags(ctx.meta, box.id, [uid2], "FLAGS", ["\\Flagged"])  # the appender's STORE
        await say(b"a3 NOOP")
        ctx.meta.commit_message("t@x.test", first.id, uid1, "g-1", "k-1", 10, 0.0, 0.0, [], [])
        await say(b"a4 NOOP")
        await say(b"a5 FETCH 1:* (UID FLAGS)")
        await ctx.fs.close()
        return out

    out = asyncio.run(go())
    assert b"* 0 EXISTS\r\n" in out[1]
    assert out[2] == b"a3 OK NOOP completed\r\n"  # UID 2 still hidden: nothing to say yet
    assert b"* 2 EXISTS\r\n" in out[3], out[3]
    assert out[4].startswith(b"* 1 FETCH (UID 1 FLAGS (\\Recent))\r\n* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent))\r\n"), out[4]
    seen_meanwhile = ctx.meta.highestmodseq(box.id) - 1  # what a3 saw: UID 1's commit came after
    out = run(ctx, b"b1 LOGIN t@x.test pw", b"b2 SELECT Late",
              f"b3 FETCH 1:* (UID FLAGS) (CHANGEDSINCE {seen_meanwhile})".encode())
    assert b"UID 2 " in out[2], out[2]
