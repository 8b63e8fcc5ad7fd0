"""IMAP4rev2 (RFC 9051) and UTF8=ACCEPT (RFC 9755), checked against the RFCs.

Dovecot CE 2.3 has neither, so these are not side by side: each assertion
names what the RFC asks.  A session that enables neither keeps IMAP4rev1's
answers (the rest of the suite, and the Dovecot comparisons, check those).
"""

from __future__ import annotations

import re

import pytest

from imapdiff import Raw, status
from test_lmtp import DOMAIN, imap_server

USER = f"rev2@{DOMAIN}"


@pytest.fixture(scope="module")
def port(tmp_path_factory):  # type: ignore[no-untyped-def]
    with imap_server(tmp_path_factory.mktemp("rev2"), USER) as p:
        c = Raw(p)
        c.cmd(f"LOGIN {USER} pw")
        for i in range(3):
            c.cmd("APPEND INBOX \x00LIT\x00", f"Subject: m{i}\r\nFrom: a@example.org\r\n\r\nbody {i}\r\n".encode())
        c.close()
        yield p


def session(port: int, *enable: str) -> Raw:
    c = Raw(port)
    assert status(c.cmd(f"LOGIN {USER} pw")).startswith(b"OK")
    if enable:
        got = c.cmd("ENABLE " + " ".join(enable))
        assert got[0] == f"* ENABLED {' '.join(enable)}\r\n".encode(), got
    return c


def names(lines: list[bytes]) -> set[bytes]:
    """The mailbox names of LIST/LSUB lines (quoted or literal)."""
    out = set()
    for line in lines:
        if m := re.match(rb'\* (?:LIST|LSUB) \([^)]*\) "/" (?:"((?:[^"\\]|\\.)*)"|\{\d+\}\r\n(.*)|(\S+))\r\n', line, re.S):
            out.add(m.group(1) or m.group(2) or m.group(3))
    return out


def test_both_versions_are_advertised(port: int) -> None:
    caps = Raw(port).greeting
    assert b" IMAP4rev1 IMAP4rev2 " in caps and b" UTF8=ACCEPT" in caps and b" ENABLE " in caps


def test_imap4rev2_answers(port: int) -> None:
    old = session(port)
    new = session(port, "IMAP4rev2")
    # Mailbox names are UTF-8 both ways (RFC 9051 §5.1); the store keeps them as a rev1 client
    # sees them, modified UTF-7 (RFC 3501 §5.1.3), so both clients name the same mailbox.
    assert status(new.cmd('CREATE "Entwürfe"')).startswith(b"OK")
    assert b"Entw&APw-rfe" in names(old.cmd('LIST "" "*"'))
    assert "Entwürfe".encode() in names(new.cmd('LIST "" "*"'))
    assert names(new.cmd('LIST "" "*ü*"')) == {"Entwürfe".encode()}  # patterns match UTF-8 names
    assert names(new.cmd('LIST "" "Entw%"')) == {"Entwürfe".encode()}
    got = new.cmd('STATUS "Entwürfe" (MESSAGES DELETED SIZE)')
    name = "Entwürfe".encode()  # a quoted string may carry UTF-8 now (RFC 9051 §4.3); a literal always can
    assert got[0] in (b'* STATUS "%s" (MESSAGES 0 DELETED 0 SIZE 0)\r\n' % name,
                      b"* STATUS {%d}\r\n%s (MESSAGES 0 DELETED 0 SIZE 0)\r\n" % (len(name), name)), got
    assert status(new.cmd('RENAME "Entwürfe" "Archiv/Ärger"')).startswith(b"OK")
    assert b"Archiv/&AMQ-rger" in names(old.cmd('LIST "" "*"'))
    assert status(new.cmd('APPEND "Archiv/Ärger" \x00LIT\x00', b"Subject: x\r\n\r\nx\r\n")).startswith(b"OK")
    assert b"MESSAGES 1" in old.cmd('STATUS "Archiv/&AMQ-rger" (MESSAGES)')[0]

    # SELECT (RFC 9051 §6.3.2): FLAGS, EXISTS, LIST; OK UIDVALIDITY, UIDNEXT, PERMANENTFLAGS;
    # no RECENT and no UNSEEN (Appendix E), which IMAP4rev1 still gets.
    got = new.cmd("SELECT INBOX")
    text = b"".join(got)
    assert b"* 3 EXISTS" in text and b"* FLAGS (" in text and b"[UIDVALIDITY " in text and b"[UIDNEXT 4]" in text
    assert b"[PERMANENTFLAGS (" in text and re.search(rb'\* LIST \([^)]*\) "/" "?INBOX"?\r\n', text)
    assert b"RECENT" not in text and b"[UNSEEN" not in text
    rev1 = b"".join(old.cmd("EXAMINE INBOX"))
    assert b" RECENT\r\n" in rev1 and b"[UNSEEN 1]" in rev1 and b"* LIST" not in rev1
    # no \Recent in flags
    assert all(b"\\Recent" not in line for line in new.cmd("FETCH 1:* (FLAGS)"))
    # SEARCH answers ESEARCH (RFC 9051 §6.4.4), empty results without ALL
    def esearch(command: str) -> bytes:
        got = new.cmd(command)
        assert re.match(rb'\* ESEARCH \(TAG "%s"\)' % got[-1].split()[0], got[0]), got  # the command's own tag
        return re.sub(rb' \(TAG "[^"]*"\)', b"", got[0])
    assert esearch("SEARCH ALL") == b"* ESEARCH ALL 1:3\r\n"
    assert esearch("UID SEARCH SUBJECT m1") == b"* ESEARCH UID ALL 2\r\n"
    assert esearch("SEARCH SUBJECT nothing") == b"* ESEARCH\r\n"
    assert old.cmd("SEARCH ALL")[0] == b"* SEARCH 1 2 3\r\n"  # IMAP4rev1 unchanged
    # STATUS DELETED counts \Deleted messages (RFC 9051 §6.3.11)
    new.cmd("STORE 2 +FLAGS.SILENT (\\Deleted)")
    new.cmd("UNSELECT")
    assert b"DELETED 1" in new.cmd("STATUS INBOX (DELETED)")[0]
    old.close()
    new.close()


def test_utf8_accept(port: int) -> None:
    plain = session(port)
    c = session(port, "UTF8=ACCEPT")
    assert status(c.cmd('CREATE "Рабочие"')).startswith(b"OK")
    assert "Рабочие".encode() in names(c.cmd('LIST "" "*"'))
    assert b"&BCAEMAQxBD4ERwQ4BDU-" in names(plain.cmd('LIST "" "*"'))
    c.cmd("SELECT INBOX")
    # RFC 9755 §3: no CHARSET in SEARCH once enabled; SORT and THREAD only with UTF-8 (errata 4029)
    assert status(c.cmd("SEARCH CHARSET UTF-8 ALL")) == b"BAD"
    assert status(c.cmd("SORT (DATE) US-ASCII ALL")) == b"BAD"
    assert status(c.cmd("SORT (DATE) UTF-8 ALL")) == b"OK"
    assert status(c.cmd('SEARCH SUBJECT "m1"')) == b"OK"
    # APPEND of a message with UTF-8 headers as UTF8 (literal8) (RFC 9755 §4), also inside CATENATE
    message = "Subject: Grüße\r\nFrom: Jörg <jörg@bücher.example>\r\n\r\nHallo\r\n".encode()
    got = c.cmd('APPEND "Рабочие" UTF8 (\x00LIT8\x00)', message)
    assert status(got) == b"OK [APPENDUID]", got
    got = c.cmd('APPEND "Рабочие" CATENATE (UTF8 (\x00LIT8\x00) URL "/INBOX/;UID=1/;SECTION=TEXT")',
                b"Subject: Caf\xc3\xa9\r\n\r\n")
    assert status(got) == b"OK [APPENDUID]", got
    c.cmd('SELECT "Рабочие"')
    fetched = b"".join(c.cmd("FETCH 1:2 (BODY.PEEK[])"))
    assert message in fetched and b"Subject: Caf\xc3\xa9\r\n\r\nbody 0\r\n" in fetched
    # without ENABLE UTF8=ACCEPT the UTF8 form is refused
    assert status(plain.cmd("APPEND INBOX UTF8 (\x00LIT8\x00)", message)) == b"BAD"
    # RECENT and * SEARCH stay: UTF8=ACCEPT is not IMAP4rev2
    assert c.cmd("SEARCH ALL")[0].startswith(b"* SEARCH")
    plain.close()
    c.close()
