"""The IMAP server with Python's imaplib, on mail delivered over LMTP (separate processes)."""

from __future__ import annotations

import imaplib
import signal
import smtplib
import time

import pytest

from conftest import new_metadata
from mailstore.db import MetaStore
from test_lmtp import DOMAIN, Shim

USER = f"ivy@{DOMAIN}"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    base = tmp_path_factory.mktemp("imap")
    shim = Shim(base, metadata=new_metadata(request, base))
    shim.add_user(USER)
    proc, info = shim.start_imap()
    port = info["port"]
    for i in range(5):
        deliver(shim, f"Subject: hello {i}\r\nFrom: Sender {i} <s{i}@example.org>\r\nTo: {USER}\r\n"
                      f"Date: Sun, 22 Nov 2026 0{i}:00:00 +0000\r\nMessage-ID: <m{i}@example.org>\r\n\r\n"
                      f"body number {i}\r\n")
    yield shim, port
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    shim.stop()


def deliver(shim: Shim, text: str) -> None:
    c = smtplib.LMTP("127.0.0.1", shim.port)
    c.sendmail("s@example.org", [USER], text.encode())
    c.quit()


def login(port: int) -> imaplib.IMAP4:
    m = imaplib.IMAP4("127.0.0.1", port)
    m.login(USER, "pw")
    return m


def test_login_capabilities_and_bad_password(stack):
    _, port = stack
    m = imaplib.IMAP4("127.0.0.1", port)
    assert "IMAP4REV1" in m.capabilities and "IDLE" in m.capabilities and "UIDPLUS" in m.capabilities
    with pytest.raises(imaplib.IMAP4.error) as e:
        m.login(USER, "wrong")
    assert "AUTHENTICATIONFAILED" in str(e.value)
    m.login(USER, "pw")
    m.logout()


def test_list_select_fetch_search(stack):
    _, port = stack
    m = login(port)
    typ, boxes = m.list()
    names = [b.decode() for b in boxes]
    assert any(n.endswith('"INBOX"') for n in names) and any("\\Sent" in n and '"Sent"' in n for n in names)
    typ, data = m.select("INBOX")
    assert typ == "OK" and int(data[0]) == 5
    typ, data = m.fetch("1:5", "(UID FLAGS RFC822.SIZE ENVELOPE)")
    assert typ == "OK" and len([d for d in data if isinstance(d, tuple) or b"ENVELOPE" in d]) == 5
    typ, data = m.fetch("2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert data[0][1] == b"Subject: hello 1\r\n\r\n"
    typ, data = m.fetch("3", "(BODY[TEXT])")
    assert data[0][1] == b"body number 2\r\n"
    typ, data = m.fetch("3", "(FLAGS)")
    assert b"\\Seen" in data[0]  # BODY[] without .PEEK set \Seen
    typ, data = m.search(None, "UNSEEN")
    assert data[0].split() == [b"1", b"2", b"4", b"5"]
    typ, data = m.search(None, 'FROM "s4@example.org"')
    assert data[0] == b"5"
    typ, data = m.uid("SEARCH", None, "BODY", "number 3")
    assert len(data[0].split()) == 1
    m.logout()


def test_store_copy_move_expunge_append(stack):
    _, port = stack
    m = login(port)
    m.create("Project")
    typ, data = m.append("Project", "(\\Flagged)", imaplib.Time2Internaldate(time.time()),
                         b"Subject: appended\r\n\r\nappended body\r\n")
    assert typ == "OK" and b"APPENDUID" in data[0]
    m.select("INBOX")
    typ, data = m.copy("1:2", "Project")
    assert typ == "OK" and b"COPYUID" in data[0]
    typ, data = m.status("Project", "(MESSAGES UIDNEXT)")
    assert b"MESSAGES 3" in data[0]
    m.store("1", "+FLAGS", "(\\Deleted)")
    typ, data = m.expunge()
    assert data == [b"1"]
    typ, data = m.select("INBOX")
    assert int(data[0]) == 4
    typ, data = m._simple_command("MOVE", "1", "Trash")
    assert typ == "OK"
    m.select("Project", readonly=True)
    typ, data = m.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    subjects = [d[1] for d in data if isinstance(d, tuple)]
    assert b"Subject: appended\r\n\r\n" in subjects and len(subjects) == 3
    m.rename("Project", "Projects")
    typ, boxes = m.list('""', "Proj*")  # imaplib sends its arguments verbatim
    assert any(b'"Projects"' in b for b in boxes)
    m.logout()


def test_two_sessions_see_each_others_changes_and_lmtp_mail(stack):
    shim, port = stack
    a, b = login(port), login(port)
    a.select("INBOX")
    b.select("INBOX")
    count = int(a.select("INBOX")[1][0])
    deliver(shim, "Subject: while selected\r\n\r\nnew\r\n")
    typ, data = b.noop()
    assert f"{count + 1} EXISTS".encode() in b" ".join(b.untagged_responses.get("EXISTS", [])) or \
        int(b.untagged_responses.get("EXISTS", [b"0"])[-1]) == count + 1
    a.noop()  # a learns of the new message too
    a.store(str(count + 1), "+FLAGS", "(\\Flagged)")
    b.noop()
    fetches = b.untagged_responses.get("FETCH", [])
    assert any(b"\\Flagged" in f for f in fetches)
    a.logout()
    b.logout()


def test_idle_pushes_new_mail(stack):
    shim, port = stack
    m = login(port)
    m.select("INBOX")
    tag = m._new_tag().decode()
    m.send(f"{tag} IDLE\r\n".encode())
    assert m.readline().startswith(b"+")
    deliver(shim, "Subject: pushed\r\n\r\nidle\r\n")
    m.sock.settimeout(10)
    line = m.readline()
    assert line.startswith(b"* ") and line.rstrip().endswith(b"EXISTS"), line
    m.send(b"DONE\r\n")
    line = m.readline()
    while line.startswith(b"* "):  # e.g. "* n RECENT" after the EXISTS
        line = m.readline()
    assert line.startswith(f"{tag} OK".encode())
    m.logout()


def test_recent_belongs_to_the_first_read_write_session(stack):
    shim, port = stack
    deliver(shim, "Subject: recent one\r\n\r\nr\r\n")
    a = login(port)
    typ, data = a.status("INBOX", "(RECENT)")
    assert b"RECENT 1" in data[0]
    a.select("INBOX")
    assert a.untagged_responses["RECENT"][-1] == b"1"
    typ, data = a.search(None, "RECENT")
    assert len(data[0].split()) == 1
    b = login(port)
    b.select("INBOX")
    assert b.untagged_responses["RECENT"][-1] == b"0"  # a has claimed it
    a.logout()
    b.logout()


def test_bad_input_keeps_the_connection(stack):
    _, port = stack
    m = login(port)
    m.select("INBOX")
    for bad in (b"x1 FETCH 1 (FLAGS", b"x2 FETCH 999 FLAGS", b"x3 FROBNICATE", b"x4 STORE 1 FLIP (\\Seen)"):
        m.send(bad + b"\r\n")
        line = m.readline()
        while line.startswith(b"* "):
            line = m.readline()
        assert line.startswith(bad[:3] + b"BAD"), line
    assert m.noop()[0] == "OK"  # still usable
    m.logout()


def test_authenticate_plain_with_continuation_and_sasl_ir(stack):
    _, port = stack
    m = imaplib.IMAP4("127.0.0.1", port)
    typ, _ = m.authenticate("PLAIN", lambda _: f"\0{USER}\0pw".encode())  # imaplib answers "+ "
    assert typ == "OK" and m.state == "AUTH"
    m.logout()
    import base64
    m = imaplib.IMAP4("127.0.0.1", port)
    ir = base64.b64encode(f"\0{USER}\0pw".encode()).decode()
    typ, _ = m._simple_command("AUTHENTICATE", "PLAIN", ir)  # SASL-IR (RFC 4959)
    assert typ == "OK"
    m.logout()


def test_failed_logins_are_throttled_per_address(stack):
    _, port = stack
    m = imaplib.IMAP4("127.0.0.1", port)
    times = []
    for _ in range(3):
        t0 = time.monotonic()
        with pytest.raises(imaplib.IMAP4.error):
            m.login(USER, "wrong")
        times.append(time.monotonic() - t0)
    assert times[1] >= 0.9 and times[2] >= 1.9  # 0, 1, 2 seconds: a growing delay
    m.login(USER, "pw")  # a success resets it
    m.logout()


def test_search_charset(stack):
    _, port = stack
    m = login(port)
    m.select("INBOX")
    assert m.search("UTF-8", "SUBJECT", "hello")[0] == "OK"
    typ, data = m.search("KOI8-R", "ALL")  # imaplib returns NO rather than raising here
    assert typ == "NO" and b"BADCHARSET" in data[0]
    m.logout()


def test_flag_searches_agree_with_the_general_search(stack):
    """Flag-and-number keys take a fast path over the session's view; adding a key that
    needs the message rows (LARGER 0) forces the general path: both must agree."""
    _, port = stack
    m = login(port)
    m.create("Flagged-search")
    for flags in ("", "\\Seen", "\\Seen \\Flagged", "\\Deleted $Junk", "\\Answered \\Draft", "$Junk \\Seen"):
        assert m.append("Flagged-search", f"({flags})", None, b"Subject: s\r\n\r\nbody\r\n")[0] == "OK"
    m.select("Flagged-search")
    queries = ["ALL", "SEEN", "UNSEEN", "FLAGGED NOT DELETED", "OR DELETED DRAFT", "KEYWORD $Junk",
               "UNKEYWORD $Junk", "NEW", "OLD", "RECENT", "2:4", "NOT 2:*", "UID 1:3", "OR ANSWERED (SEEN NOT FLAGGED)",
               "UNANSWERED UNDRAFT UNFLAGGED UNDELETED"]
    for q in queries:
        fast = m.search(None, q)[1][0].split()
        general = m.search(None, q, "LARGER", "0")[1][0].split()
        assert fast == general, q
    assert m.search(None, "KEYWORD $Junk")[1][0].split() == [b"4", b"6"]
    assert m.search(None, "OR DELETED DRAFT")[1][0].split() == [b"4", b"5"]
    m.logout()


def test_starttls_and_implicit_tls(stack, tmp_path):
    import ssl

    from conftest import make_tls_cert

    shim, _ = stack
    cert, key = make_tls_cert(tmp_path / "tls")
    proc, info = shim.start_imap("--listen-tls", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        m = imaplib.IMAP4("127.0.0.1", info["port"])
        assert "STARTTLS" in m.capabilities
        m.starttls(ssl_context=ctx)
        m.login(USER, "pw")
        assert m.select("INBOX")[0] == "OK"
        m.logout()
        s = imaplib.IMAP4_SSL("127.0.0.1", info["imaps_port"], ssl_context=ctx)
        s.login(USER, "pw")
        assert s.select("INBOX")[0] == "OK"
        s.logout()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_aioimaplib(stack):
    import asyncio

    import aioimaplib

    shim, port = stack

    async def main() -> None:
        c = aioimaplib.IMAP4(host="127.0.0.1", port=port, timeout=20)
        await c.wait_hello_from_server()
        assert (await c.login(USER, "pw")).result == "OK"
        assert (await c.create("Aio")).result == "OK"
        res = await c.append(b"Subject: aio\r\nMessage-ID: <aio1@x>\r\n\r\nfrom aioimaplib\r\n", mailbox="Aio",
                             flags="(\\Seen)")
        assert res.result == "OK"
        res = await c.select("INBOX")
        assert res.result == "OK"
        res = await c.search("ALL")
        total = len(res.lines[0].split())
        assert total > 0
        res = await c.fetch("1", "(FLAGS BODY.PEEK[HEADER])")
        assert res.result == "OK" and any(b"Subject:" in line for line in res.lines if isinstance(line, (bytes, bytearray)))
        assert (await c.store("1", "+FLAGS", "(\\Flagged)")).result == "OK"
        assert (await c.uid("fetch", "1:*", "(UID FLAGS)")).result == "OK"
        assert (await c.copy("1", "Aio")).result == "OK"
        res = await c.status("Aio", "(MESSAGES)")
        assert res.result == "OK" and b"MESSAGES 2" in res.lines[0]
        idle = await c.idle_start(timeout=10)
        deliver(shim, "Subject: aio push\r\n\r\npush\r\n")
        pushed = await c.wait_server_push()
        assert any(b"EXISTS" in p for p in pushed if isinstance(p, bytes)), pushed
        c.idle_done()
        await asyncio.wait_for(idle, 10)
        assert (await c.logout()).result == "OK"

    asyncio.run(main())


def test_envelope_parsed_by_an_older_version_is_parsed_again(stack):
    """Migration 10 empties the parsed ENVELOPE/BODYSTRUCTURE: the first FETCH (or SEARCH FROM)
    parses the object again and keeps the result."""

    shim, port = stack
    m = login(port)
    m.select("INBOX")
    before = m.fetch("1:*", "(ENVELOPE BODYSTRUCTURE)")[1]
    found = m.search(None, "FROM", "s2@example.org")[1]
    assert found != [b""]
    db = MetaStore(shim.db).conn()  # either backend; autocommit
    inbox = "mailbox_id=(SELECT id FROM mailboxes WHERE user_name=? AND name='INBOX')"
    db.execute(f"UPDATE messages SET envelope=NULL, bodystructure=NULL WHERE {inbox}", (USER,))
    assert m.fetch("1:*", "(ENVELOPE BODYSTRUCTURE)")[1] == before
    assert db.execute(f"SELECT count(*) FROM messages WHERE envelope IS NULL AND {inbox}", (USER,)).fetchone()[0] == 0
    db.execute(f"UPDATE messages SET envelope=NULL, bodystructure=NULL WHERE {inbox}", (USER,))
    assert m.search(None, "FROM", "s2@example.org")[1] == found
    db.close()
    m.logout()
