"""NOTIFY (RFC 5465), checked against the RFC: one client asks to hear about its mailboxes and
another changes them; what the first is told arrives without it sending anything.

(Dovecot CE 2.3 has NOTIFY, but what it sends and when depends on its index
state: a first NOTIFY reports every mailbox as new.  So this is not side by
side; each step names the RFC's answer.)
"""

from __future__ import annotations

import re
import select
import time

import pytest

from imapdiff import Raw, status
from test_lmtp import DOMAIN, imap_server

USER = f"notify@{DOMAIN}"


@pytest.fixture(scope="module")
def port(tmp_path_factory):  # type: ignore[no-untyped-def]
    with imap_server(tmp_path_factory.mktemp("notify"), USER) as p:
        yield p


def client(port: int) -> Raw:
    c = Raw(port)
    c.f = c.sock.makefile("rb", buffering=0)  # unbuffered: select() tells when a line is waiting
    assert status(c.cmd(f"LOGIN {USER} pw")).startswith(b"OK")
    return c


def unsolicited(c: Raw, seconds: float) -> list[bytes]:
    """Every line the server sends on its own within `seconds`."""
    lines: list[bytes] = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([c.sock], [], [], left)
        if ready:
            lines.append(c._line())
    return lines


def wait_for(c: Raw, pattern: bytes, seconds: float = 10) -> list[bytes]:
    got: list[bytes] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        got += unsolicited(c, 0.3)
        if any(re.search(pattern, line) for line in got):
            return got
    raise AssertionError(f"{pattern!r} never came: {got}")


def test_notify_tells_what_others_change(port: int) -> None:
    a, b = client(port), client(port)
    b.cmd("CREATE other")
    b.cmd("SUBSCRIBE other")
    a.cmd("SELECT INBOX")
    got = a.cmd("NOTIFY SET STATUS (SELECTED (MessageNew (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)]) MessageExpunge "
                "FlagChange)) (PERSONAL (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange))")
    assert status(got) == b"OK"
    # STATUS: where each watched mailbox stands now (RFC 5465 §3), the selected one left out
    assert any(re.match(rb"\* STATUS \"?other\"? \(MESSAGES 0 UIDNEXT 1 UIDVALIDITY \d+ UNSEEN 0 HIGHESTMODSEQ \d+\)",
                        x) for x in got), got
    assert not any(re.match(rb'\* STATUS "?INBOX"? ', x) for x in got), got

    b.cmd("APPEND other \x00LIT\x00", b"Subject: elsewhere\r\n\r\nx\r\n")  # MessageNew, not selected: STATUS
    assert any(re.match(rb'\* STATUS "?other"? \(MESSAGES 1 UIDNEXT 2 .*UNSEEN 1 ', x)
               for x in wait_for(a, rb"\* STATUS \"?other\"? \(MESSAGES 1"))
    b.cmd("APPEND INBOX \x00LIT\x00", b"Subject: here\r\n\r\nx\r\n")  # selected: EXISTS and the asked FETCH
    got = wait_for(a, rb"FETCH \(UID 1 BODY\[HEADER\.FIELDS \(SUBJECT\)\]")
    assert b"* 1 EXISTS\r\n" in got and any(b"Subject: here" in x for x in got), got
    b.cmd("CREATE brandnew")  # MailboxName: LIST for a new one, OLDNAME for a rename, \NonExistent when gone
    assert b'* LIST () "/" "brandnew"\r\n' in wait_for(a, rb"brandnew")
    b.cmd("RENAME brandnew renamed")
    assert b'* LIST () "/" "renamed" ("OLDNAME" ("brandnew"))\r\n' in wait_for(a, rb"OLDNAME")
    b.cmd("DELETE renamed")
    assert b'* LIST (\\NonExistent) "/" "renamed"\r\n' in wait_for(a, rb"NonExistent")
    b.cmd("UNSUBSCRIBE other")  # SubscriptionChange: LIST with or without \Subscribed
    assert b'* LIST () "/" "other"\r\n' in wait_for(a, rb'LIST \(\) "/" "other"')
    b.cmd("SUBSCRIBE other")
    assert b'* LIST (\\Subscribed) "/" "other"\r\n' in wait_for(a, rb"Subscribed")
    b.cmd("SELECT other")
    b.cmd("STORE 1 +FLAGS (\\Seen)")  # FlagChange elsewhere: STATUS with the new UNSEEN
    assert any(b"UNSEEN 0" in x for x in wait_for(a, rb'\* STATUS "?other"? \(MESSAGES 1 .*UNSEEN 0'))
    # An expunge in the selected mailbox waits for a command (RFC 3501 §7.4.1), then comes
    b.cmd("SELECT INBOX")
    b.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.cmd("EXPUNGE")
    assert not any(b"EXPUNGE" in x for x in unsolicited(a, 2.5))
    assert b"* 1 EXPUNGE\r\n" in a.cmd("NOOP")
    # During IDLE the other mailboxes' news comes too
    a.send(b"i1 IDLE\r\n")
    assert a._line().startswith(b"+")
    b.cmd("APPEND other \x00LIT\x00", b"Subject: during idle\r\n\r\nx\r\n")
    assert wait_for(a, rb'\* STATUS "?other"? \(MESSAGES 2')
    a.send(b"DONE\r\n")
    assert a._line().startswith(b"i1 OK")
    # NOTIFY NONE: quiet again
    assert status(a.cmd("NOTIFY NONE")) == b"OK"
    b.cmd("APPEND other \x00LIT\x00", b"Subject: unheard\r\n\r\nx\r\n")
    assert unsolicited(a, 2.5) == []
    a.close()
    b.close()


@pytest.mark.parametrize(("command", "answer"), [
    ("NOTIFY SET (PERSONAL (MessageNew))", b"BAD"),  # MessageNew needs MessageExpunge (RFC 5465 §5)
    ("NOTIFY SET (PERSONAL (FlagChange))", b"BAD"),  # FlagChange needs both
    ("NOTIFY SET (PERSONAL (MessageNew (UID) MessageExpunge))", b"BAD"),  # fetch attributes: selected only
    ("NOTIFY SET (PERSONAL (AnnotationChange))", b"NO [BADEVENT]"),  # not supported: which are
    ("NOTIFY SET (NOWHERE (MailboxName))", b"BAD"),
    ("NOTIFY SET (MAILBOXES (INBOX other) (MessageNew MessageExpunge)) (SUBTREE x NONE)", b"OK"),
    ("NOTIFY NONE", b"OK"),
])
def test_notify_arguments(port: int, command: str, answer: bytes) -> None:
    c = client(port)
    got = c.cmd(command)
    assert status(got) == answer, got
    if answer.startswith(b"NO [BADEVENT"):
        assert b"[BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)]" in got[-1]
    c.close()
