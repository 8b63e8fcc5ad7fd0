"""The sans-I/O IMAP command parser: framing with literals and limits, then syntax."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from mailstore.imap.framing import CommandFramer, Framed, FramingError, NeedContinuation
from mailstore.imap.parser import parse_command
from mailstore.imap.reader import AppendMessage, FetchAttribute, ParseError, SearchKey, Section, SequenceSet


def frame(*chunks: bytes, **limits: int) -> list:  # type: ignore[type-arg]
    f = CommandFramer(**limits)
    out = []
    for c in chunks:
        out += f.feed(c)
    return out


def one(line: bytes):  # type: ignore[no-untyped-def]
    events = frame(line + b"\r\n")
    assert len(events) == 1 and isinstance(events[0], Framed), events
    return parse_command(events[0].data)


# ------------------------------------------------------------------ framing

def test_framing_across_arbitrary_chunks():
    wire = b"a1 NOOP\r\na2 LOGIN alice secret\r\na3 LOGOUT\r\n"
    for step in (1, 2, 5, 100):
        f = CommandFramer()
        out = []
        for i in range(0, len(wire), step):
            out += f.feed(wire[i:i + step])
        assert [e.data for e in out] == [b"a1 NOOP", b"a2 LOGIN alice secret", b"a3 LOGOUT"]


def test_synchronizing_literal_asks_for_continuation():
    f = CommandFramer()
    assert f.feed(b"a1 LOGIN {5}\r\n") == [NeedContinuation(5)]
    assert f.feed(b"alice {6}\r\n") == [NeedContinuation(6)]
    events = f.feed(b"secret\r\n")
    assert events == [Framed(b"a1 LOGIN {5}\r\nalice {6}\r\nsecret")]
    cmd = parse_command(events[0].data)
    assert cmd.args == {"user": "alice", "password": b"secret"}


def test_literal_plus_needs_no_continuation_and_may_contain_crlf():
    msg = b"Subject: hi\r\n\r\nbody\r\n"
    events = frame(b"a1 APPEND INBOX (\\Seen) {%d+}\r\n" % len(msg) + msg + b"\r\n")
    assert len(events) == 1 and isinstance(events[0], Framed)
    cmd = parse_command(events[0].data)
    assert cmd.name == "APPEND" and cmd.args["messages"] == [AppendMessage(("\\Seen",), None, (msg,))]


def test_limits_checked_before_reading():
    # an oversized synchronizing literal is refused before the client sends it
    events = frame(b"a1 APPEND INBOX {999999}\r\n", max_literal=1000)
    assert events == [FramingError("a1", "[TOOBIG] Literal of 999999 bytes is over the limit of 1000", False)]
    # an oversized LITERAL+ is already on its way: fatal (answer, then close)
    events = frame(b"a2 APPEND INBOX {999999+}\r\n", max_literal=1000)
    assert isinstance(events[0], FramingError) and events[0].fatal
    # a line that never ends is cut at the limit, and the next command still works
    f = CommandFramer(max_line=100)
    events = f.feed(b"a3 NOOP " + b"x" * 200)
    assert isinstance(events[0], FramingError) and "too long" in events[0].text
    assert f.feed(b"yyy\r\na4 NOOP\r\n") == [Framed(b"a4 NOOP")]
    # NUL bytes are refused
    assert isinstance(frame(b"a5 LOGIN a\0b c\r\n")[0], FramingError)


# ------------------------------------------------------------------ syntax

def test_authentication_commands():
    assert one(b'a LOGIN "al\\"ice" "p w"').args == {"user": 'al"ice', "password": b"p w"}
    assert one(b"a AUTHENTICATE PLAIN").args == {"mechanism": "PLAIN", "initial": None}
    assert one(b"a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==").args["initial"] == b"AGFsaWNlAHNlY3JldA=="
    for name in ("CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "NAMESPACE", "IDLE", "CHECK", "CLOSE", "UNSELECT",
                 "EXPUNGE"):
        assert one(b"t " + name.encode()).name == name


def test_mailbox_commands():
    assert one(b"a SELECT inbox").args == {"mailbox": "INBOX", "condstore": False, "qresync": None}
    assert one(b'a EXAMINE "Sent Items" (CONDSTORE)').args == {"mailbox": "Sent Items", "condstore": True,
                                                                "qresync": None}
    q = one(b"a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541 (1:10 41:50)))").args["qresync"]
    assert (q["uidvalidity"], q["modseq"], q["known"].ranges) == (67890007, 20050715194045000,
                                                                   ((41, 41), (43, 211), (214, 541)))
    assert one(b"a SELECT INBOX (QRESYNC (1 2))").args["qresync"]["known"] is None
    for bad in (b"a SELECT INBOX (QRESYNC)", b"a SELECT INBOX (QRESYNC (0 2))", b"a SELECT INBOX (FOO)",
                b"a SELECT INBOX (QRESYNC (1 2) QRESYNC (1 2))", b"a SELECT INBOX (CONDSTORE"):
        with pytest.raises(ParseError):
            one(bad)
    assert one(b"a CREATE Archive/2026 (USE (\\Archive))").args == {"mailbox": "Archive/2026", "use": ["\\Archive"]}
    assert one(b"a RENAME INBOX Old").args == {"old": "INBOX", "new": "Old"}
    assert one(b'a LIST "" *').args["patterns"] == ["*"]
    assert one(b'a LIST "" %/Sub%').args["patterns"] == ["%/Sub%"]
    ext = one(b'a LIST (SUBSCRIBED) "" ("INBOX" "Sent") RETURN (CHILDREN SPECIAL-USE)').args
    assert ext == {"reference": "", "patterns": ["INBOX", "Sent"], "selection": ["SUBSCRIBED"],
                   "return": ["CHILDREN", "SPECIAL-USE"], "status": None, "extended": True}
    status = one(b'a LIST "" "%" RETURN (CHILDREN STATUS (MESSAGES SIZE))').args
    assert status["return"] == ["CHILDREN", "STATUS"] and status["status"] == ["MESSAGES", "SIZE"]
    assert one(b'a LIST "" "%"').args["extended"] is False
    assert one(b'a LSUB "" "*"').args["selection"] == ["SUBSCRIBED"]
    assert one(b"a STATUS INBOX (MESSAGES UNSEEN UIDNEXT HIGHESTMODSEQ)").args["items"] == [
        "MESSAGES", "UNSEEN", "UIDNEXT", "HIGHESTMODSEQ"]
    assert one(b"a GETQUOTAROOT INBOX").args == {"mailbox": "INBOX"}
    assert one(b'a GETQUOTA ""').args == {"root": ""}
    assert one(b"a ENABLE CONDSTORE UTF8=ACCEPT").args == {"capabilities": ["CONDSTORE", "UTF8=ACCEPT"]}
    assert one(b'a ID ("name" "mbsync" "version" "1.4")').args == {"params": {"name": "mbsync", "version": "1.4"}}
    assert one(b"a ID NIL").args == {"params": None}


def test_append_with_date():
    msg = b"x"
    cmd = one(b'a APPEND Drafts (\\Draft $Label1) "05-Nov-2026 13:04:05 +0100" {1+}\r\nx')
    assert cmd.args["messages"] == [AppendMessage(("\\Draft", "$Label1"),
                                                  datetime(2026, 11, 5, 12, 4, 5, tzinfo=timezone.utc), (msg,))]


def test_multiappend_catenate_and_literal8():
    """RFC 3502 (several messages), RFC 4469 (CATENATE), RFC 3516 (literal8 only where binary may go)."""
    cmd = one(b'a APPEND Drafts (\\Seen) {1+}\r\nx "05-Nov-2026 13:04:05 +0100" ~{3+}\r\nb\x00c'
              b' CATENATE (URL "/INBOX;UIDVALIDITY=7/;UID=20/;SECTION=HEADER" TEXT ~{2+}\r\n\x00\x01'
              b' URL ";UID=3")')
    one_, two, three = cmd.args["messages"]
    assert one_ == AppendMessage(("\\Seen",), None, (b"x",))
    assert two.parts == (b"b\x00c",) and two.binary and two.date is not None
    assert three == AppendMessage((), None, ("/INBOX;UIDVALIDITY=7/;UID=20/;SECTION=HEADER", b"\x00\x01", ";UID=3"),
                                  binary=True, catenate=True)
    # literal8 only where RFC 3516 puts it; an empty CATENATE list is BAD (as Dovecot answers)
    for bad in (b"a LOGIN ~{1+}\r\nx pw", b"a APPEND INBOX CATENATE ()", b"a APPEND INBOX CATENATE (FILE {1+}\r\nx)",
                b"a APPEND INBOX", b"a APPEND INBOX (\\Seen)"):
        with pytest.raises(ParseError):
            parse_command(bad)
    # the framer lets NUL through in a literal8 only
    assert frame(b"a APPEND INBOX ~{3+}\r\na\x00b\r\n") == [Framed(b"a APPEND INBOX ~{3+}\r\na\x00b")]
    assert isinstance(frame(b"a APPEND INBOX {3+}\r\na\x00b\r\n")[0], FramingError)


def test_fetch():
    cmd = one(b"a FETCH 1:*,7 (FLAGS UID BODY.PEEK[HEADER.FIELDS (From Subject)]<0.512> BODY[1.2.MIME] RFC822.SIZE)")
    assert cmd.args["set"] == SequenceSet(((1, None), (7, 7)))
    atts = cmd.args["attributes"]
    assert atts[0] == FetchAttribute("FLAGS") and atts[1] == FetchAttribute("UID")
    assert atts[2] == FetchAttribute("BODY", Section((), "HEADER.FIELDS", ("FROM", "SUBJECT")), True, (0, 512))
    assert atts[3] == FetchAttribute("BODY", Section((1, 2), "MIME"), False, None)
    assert one(b"a FETCH 3 ALL").args["attributes"] == [FetchAttribute(n) for n in
                                                         ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE")]
    assert one(b"a FETCH 3 BODY[]").args["attributes"] == [FetchAttribute("BODY", Section(), False, None)]
    assert one(b"a UID FETCH 10:20 (FLAGS) (CHANGEDSINCE 12345)").args["changedsince"] == 12345
    both = one(b"a UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)").args
    assert (both["changedsince"], both["vanished"]) == (12345, True)
    for bad in (b"a UID FETCH 1 FLAGS (VANISHED)", b"a UID FETCH 1 FLAGS (CHANGEDSINCE 1 CHANGEDSINCE 2)",
                b"a UID FETCH 1 FLAGS (FOO)"):
        with pytest.raises(ParseError):
            one(bad)
    assert one(b"a UID FETCH 10:20 (FLAGS)").name == "UID FETCH"


def test_store_copy_move_expunge():
    cmd = one(b"a STORE 2:4 +FLAGS.SILENT (\\Deleted \\Seen)")
    assert cmd.args == {"set": SequenceSet(((2, 4),)), "action": "+FLAGS", "silent": True,
                        "flags": ["\\Deleted", "\\Seen"], "unchangedsince": None}
    assert one(b"a UID STORE 5 (UNCHANGEDSINCE 9) FLAGS \\Flagged").args["unchangedsince"] == 9
    assert one(b"a COPY 1:3 Archive").args == {"set": SequenceSet(((1, 3),)), "mailbox": "Archive"}
    assert one(b"a UID MOVE 7 Trash").name == "UID MOVE"
    assert one(b"a UID EXPUNGE 1:5").args == {"set": SequenceSet(((1, 5),))}


def test_search():
    cmd = one(b'a SEARCH CHARSET UTF-8 OR FROM "bob" (UNSEEN SINCE 1-Jan-2026) NOT DELETED HEADER X-Spam yes 2:*')
    keys = cmd.args["keys"]
    assert cmd.args["charset"] == "UTF-8"
    assert keys == SearchKey("AND", (
        SearchKey("OR", (SearchKey("FROM", (b"bob",)),
                         SearchKey("AND", (SearchKey("UNSEEN"),
                                           SearchKey("SINCE", (datetime(2026, 1, 1, tzinfo=timezone.utc),)))))),
        SearchKey("NOT", (SearchKey("DELETED"),)),
        SearchKey("HEADER", ("X-Spam", b"yes")),
        SearchKey("SEQSET", (SequenceSet(((2, None),)),)),
    ))
    assert one(b"a UID SEARCH UID 100:* LARGER 1000 KEYWORD $Junk").name == "UID SEARCH"
    assert one(b"a SEARCH RETURN (MIN MAX COUNT) ALL").args["return"] == ["MIN", "MAX", "COUNT"]


@pytest.mark.parametrize("line,words", [
    (b"a FETCH 1 (FLAGS", "Expected )"),
    (b"a FETCH 0 FLAGS", "sequence"),
    (b"a FETCH 1:x FLAGS", "sequence"),
    (b"a FETCH 1 (BODY[BOGUS])", "Invalid section"),
    (b"a FETCH 1 (FLAGS) extra", "Unexpected"),
    (b"a STORE 1 FLIPFLAGS (\\Seen)", "Invalid STORE action"),
    (b"a STATUS INBOX (MESSAGES BOGUS)", "Invalid STATUS items"),
    (b"a SEARCH BEFORE 32-Jan-2026", "Invalid date"),
    (b'a LOGIN "unterminated', "Unterminated"),
    (b"a FROBNICATE", "Unknown command"),
    (b"a UID NOOP", "not a command"),
    (b"a EXPUNGE 1:2", "Unexpected"),
    (b"a APPEND INBOX notaliteral", "literal"),
    (b"a SEARCH " + b"(" * 40 + b"ALL" + b")" * 40, "nested"),
    (b"a SEARCH " + b"NOT " * 40 + b"ALL", "nested"),
])
def test_bad_syntax_is_a_precise_parse_error(line, words):
    with pytest.raises(ParseError) as e:
        one(line)
    assert e.value.tag == "a" and words in e.value.text, e.value.text


def test_invalid_tag():
    with pytest.raises(ParseError) as e:
        parse_command(b"+bad NOOP")
    assert e.value.tag == "*"


def test_sequence_set_contains():
    s = SequenceSet(((1, 3), (7, None)))
    assert [n for n in range(1, 12) if s.contains(n, largest=10)] == [1, 2, 3, 7, 8, 9, 10]
    assert SequenceSet(((None, 5),)).contains(9, largest=9)


def test_modified_utf7_mailbox_names():
    from mailstore.imap.mutf7 import MailboxNameError, decode, encode

    # RFC 3501 §5.1.3's example, and round trips
    assert encode("~peter/mail/台北/日本語") == "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert decode("~peter/mail/&U,BTFw-/&ZeVnLIqe-") == "~peter/mail/台北/日本語"
    for name in ("INBOX", "A&B", "Entwürfe", "Gesendete Objekte", "😀 emoji", "&", "a&-b"):
        assert decode(encode(name)) == name
    assert encode("A&B") == "A&-B"
    for bad in ("&Jjo!", "&U,BTFw", "caf\u00e9", "&AGE-"):  # junk, unterminated, raw 8-bit, ASCII encoded
        with pytest.raises(MailboxNameError):
            decode(bad)


def test_numbers_out_of_range_are_bad_not_server_errors():
    # RFC 3501 number/nz-number are 32-bit, RFC 7162 mod-sequences 63-bit (what SQLite's INTEGER
    # holds): anything larger is a BAD from the parser, never an overflow further in.
    big = b"99999999999999999999"
    for line in (b"a SELECT INBOX (QRESYNC (1 " + big + b"))", b"a UID FETCH 1 FLAGS (CHANGEDSINCE " + big + b")",
                 b"a SEARCH MODSEQ " + big, b"a STORE 1 (UNCHANGEDSINCE " + big + b") +FLAGS (\\Seen)",
                 b"a UID FETCH " + big + b" FLAGS", b"a SELECT INBOX (QRESYNC (1 1 1:" + big + b"))",
                 b"a SEARCH LARGER 4294967296", b"a FETCH 1 BODY[]<0.4294967296>", b"a SEARCH MODSEQ 9223372036854775808"):
        with pytest.raises(ParseError):
            one(line)
    assert one(b"a SEARCH MODSEQ 9223372036854775807").args["keys"].args[0].args == (9223372036854775807,)
    assert one(b"a FETCH 4294967295 FLAGS").args["set"].ranges == ((4294967295, 4294967295),)


def test_one_command_holds_at_most_one_appendlimit_of_literals():
    """MULTIAPPEND and CATENATE send several literals in one command, all held until it is
    parsed: together they stay within APPENDLIMIT (the next literal is refused before it is sent)."""
    events = frame(b"a APPEND INBOX {600+}\r\n" + b"x" * 600 + b" {600}\r\n", max_literal=1000, max_line=100)
    assert len(events) == 1 and isinstance(events[0], FramingError)
    assert events[0].tag == "a" and "[TOOBIG]" in events[0].text and not events[0].fatal
    assert frame(b"a APPEND INBOX {400+}\r\n" + b"x" * 400 + b" {400+}\r\n" + b"y" * 400 + b"\r\n",
                 max_literal=1000, max_line=100)[0] == Framed(b"a APPEND INBOX {400+}\r\n" + b"x" * 400 + b" {400+}\r\n" + b"y" * 400)
