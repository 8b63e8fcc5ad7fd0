"""IMAP response encoding and BODY[section] extraction (RFC 3501 §6.4.5, §7.4.2)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailstore.imap.fetch import _body_item, _header_only
from mailstore.imap.headers import HeaderCache
from mailstore.imap.reader import FetchAttribute, Section
from mailstore.imap.response import (astring, bodystructure, envelope, flag_list, header_block, internal_date,
                                     nstring, partial, section_bytes)
from mailstore.message import parse

MULTI = (b"From: Alice <alice@example.com>\r\n"
         b"To: bob@example.com, \"Carol C\" <carol@example.com>\r\n"
         b"Subject: =?utf-8?q?caf=C3=A9?=\r\n"
         b"Message-ID: <m1@example.com>\r\n"
         b"MIME-Version: 1.0\r\n"
         b"Content-Type: multipart/mixed; boundary=\"XX\"\r\n"
         b"\r\n"
         b"--XX\r\n"
         b"Content-Type: text/plain; charset=utf-8\r\n"
         b"\r\n"
         b"first part\r\nline two\r\n"
         b"--XX\r\n"
         b"Content-Type: message/rfc822\r\n"
         b"\r\n"
         b"From: inner@example.org\r\nSubject: inner\r\n\r\ninner body\r\n"
         b"--XX--\r\n")


def test_strings():
    assert astring("INBOX") == b'"INBOX"'
    assert astring('a "b" \\c') == b'"a \\"b\\" \\\\c"'
    assert astring("café") == b"{5}\r\ncaf\xc3\xa9"
    assert astring("line\r\nbreak") == b"{11}\r\nline\r\nbreak"
    assert nstring(None) == b"NIL"
    assert flag_list(["\\Seen", "$Junk"]) == b"(\\Seen $Junk)"
    assert internal_date(0) == b'"01-Jan-1970 00:00:00 +0000"'


def test_envelope_and_bodystructure_from_stored_json():
    env, bs = parse(MULTI)
    e = envelope(env)
    # RFC 3501 §7.4.2: the subject as it appears in the header, encoded-words and all
    assert e.startswith(b'(NIL "=?utf-8?q?caf=C3=A9?=" (("Alice" NIL "alice" "example.com"))')
    assert b'((NIL NIL "bob" "example.com") ("Carol C" NIL "carol" "example.com"))' in e
    assert e.endswith(b'NIL NIL NIL "<m1@example.com>")')
    b = bodystructure(bs)
    # Lines are the LF count of the part's bytes, and single parts carry their extension
    # data (MD5, disposition, language, location), as Dovecot answers (test_imap_conformance.py)
    assert b.startswith(b'(("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 20 1 NIL NIL NIL NIL)')
    assert b'"MIXED" ("BOUNDARY" "XX")' in b
    assert b'("MESSAGE" "RFC822" NIL NIL NIL "7BIT"' in b
    assert bodystructure(bs, extended=False).endswith(b' "MIXED")')


def test_body_sections():
    assert section_bytes(MULTI, Section()) == MULTI
    head = section_bytes(MULTI, Section(text="HEADER"))
    assert head.startswith(b"From: Alice") and head.endswith(b"boundary=\"XX\"\r\n\r\n")
    assert section_bytes(MULTI, Section(text="HEADER.FIELDS", fields=("FROM", "SUBJECT"))) == \
        b"From: Alice <alice@example.com>\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\r\n"
    not_fields = section_bytes(MULTI, Section(text="HEADER.FIELDS.NOT", fields=("FROM", "SUBJECT", "TO")))
    assert not_fields.startswith(b"Message-ID:") and b"From:" not in not_fields
    assert section_bytes(MULTI, Section(text="TEXT")).startswith(b"--XX\r\n")
    assert section_bytes(MULTI, Section((1,))) == b"first part\r\nline two"
    assert section_bytes(MULTI, Section((1,), "MIME")) == b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    assert section_bytes(MULTI, Section((2,), "HEADER")) == b"From: inner@example.org\r\nSubject: inner\r\n\r\n"
    # the CRLF before a boundary belongs to the boundary (RFC 2046 §5.1.1)
    assert section_bytes(MULTI, Section((2,), "TEXT")) == b"inner body"
    assert section_bytes(MULTI, Section((9,))) == b""
    simple = b"Subject: s\r\n\r\nonly body\r\n"
    assert section_bytes(simple, Section((1,))) == b"only body\r\n"  # part 1 of a simple message is its body
    assert partial(b"0123456789", (2, 3)) == b"234" and partial(b"0123", (10, 5)) == b""


SIGNED = (b"Content-Type: multipart/signed; protocol=\"application/pgp-signature\"; boundary=\"s1\"\n"
          b"Subject: signed, bare LF lines\n"
          b"\n"
          b"preamble, ignored\n"
          b"--s1\n"
          b"Content-Type: multipart/alternative; boundary=\"a1\"\n"
          b"\n"
          b"--a1\n"
          b"Content-Type: text/plain\n"
          b"\n"
          b"plain  text with trailing spaces   \n\n"
          b"--a1\n"
          b"\n"
          b"a part with no header at all\n"
          b"--a1--\n"
          b"--s1\n"
          b"Content-Type: application/pgp-signature\n"
          b"\n"
          b"-----BEGIN PGP SIGNATURE-----\nxyz\n-----END PGP SIGNATURE-----\n"
          b"--s1--\n"
          b"epilogue, ignored\n")


def test_sections_are_cut_from_the_original_bytes():
    # A signature covers part 1 byte for byte: it must come back exactly, bare LFs and all.
    signed_part = SIGNED[SIGNED.index(b"Content-Type: multipart/alternative"):SIGNED.index(b"\n--s1\nContent-Type: app")]
    assert section_bytes(SIGNED, Section((1,), "MIME")) == b"Content-Type: multipart/alternative; boundary=\"a1\"\n\n"
    assert section_bytes(SIGNED, Section((1,), "MIME")) + section_bytes(SIGNED, Section((1,))) == signed_part
    assert section_bytes(SIGNED, Section((1, 1))) == b"plain  text with trailing spaces   \n"
    assert section_bytes(SIGNED, Section((1, 2))) == b"a part with no header at all"
    assert section_bytes(SIGNED, Section((1, 2), "MIME")) == b"\n"
    assert section_bytes(SIGNED, Section((2,))) == b"-----BEGIN PGP SIGNATURE-----\nxyz\n-----END PGP SIGNATURE-----"
    assert section_bytes(SIGNED, Section((3,))) == b"" and section_bytes(SIGNED, Section((1, 3))) == b""
    # no close delimiter: the last part runs to the end
    cut = MULTI[:MULTI.index(b"--XX--")]
    assert section_bytes(cut, Section((2,), "TEXT")) == b"inner body\r\n"
    # a boundary string inside a line is not a delimiter
    tricky = MULTI.replace(b"line two", b"line two --XX not a delimiter")
    assert section_bytes(tricky, Section((1,))) == b"first part\r\nline two --XX not a delimiter"


# ------------------------------------------------------------ the header cache (imap/headers.py)

_PIECES = st.sampled_from([b"From: a@b\r\n", b"Subject: x\r\n", b"SUBJECT:y\n", b" folded\r\n", b"\tfold\n",
                           b"Date: now\r\n", b"X-A: 1\r\n", b"\r\n", b"\n", b"\r\n\r\n", b"\n\n", b"body", b"\r",
                           b"no colon\r\n", b"from : spaced\r\n", b"\xff\xfe: bin\r\n"])
_HEADER_ITEMS = [
    FetchAttribute("RFC822.HEADER"),
    FetchAttribute("BODY", Section(text="HEADER"), peek=True),
    FetchAttribute("BODY", Section(text="HEADER")),
    FetchAttribute("BODY", Section(text="HEADER.FIELDS", fields=("FROM", "SUBJECT", "DATE")), peek=True),
    FetchAttribute("BODY", Section(text="HEADER.FIELDS.NOT", fields=("subject",)), peek=True),
    FetchAttribute("BODY", Section(text="HEADER.FIELDS", fields=("X-A",)), peek=True, partial=(2, 5)),
    FetchAttribute("BODY", Section(text="HEADER"), partial=(0, 3)),
]


@settings(max_examples=2000, deadline=None)
@given(message=st.lists(_PIECES, max_size=12).map(b"".join))
def test_header_items_from_the_header_block_equal_those_from_the_message(message: bytes) -> None:
    """FETCH answers a header-only item from the cached header block; it must be byte for byte
    what the whole message gives, for any placement of blank lines, LF or CRLF."""
    block = header_block(message)
    for a in _HEADER_ITEMS:
        assert _header_only(a)
        assert _body_item(a, block) == _body_item(a, message), (a, message)


def test_items_that_need_more_than_the_header_are_not_header_only() -> None:
    for a in [FetchAttribute("RFC822"), FetchAttribute("RFC822.TEXT"), FetchAttribute("PREVIEW"),
              FetchAttribute("BODY", Section()), FetchAttribute("BODY", Section(text="TEXT")),
              FetchAttribute("BODY", Section(parts=(1,), text="HEADER")), FetchAttribute("BODY", Section(parts=(2,))),
              FetchAttribute("BINARY", Section(text="HEADER")), FetchAttribute("BINARY.SIZE", Section(parts=(1,)))]:
        assert not _header_only(a), a


def test_header_cache_is_bounded_in_bytes_and_drops_the_least_recently_used() -> None:
    cache = HeaderCache(limit_bytes=100)
    for i in range(5):
        cache.put(f"k{i}", bytes(30))
    assert cache.size <= 100 and cache.get("k0") is None and cache.get("k4") == bytes(30)
    cache.get("k2")  # k2 is now the most recent: k3 goes first
    cache.put("k5", bytes(30))
    assert cache.get("k2") is not None and cache.get("k3") is None
    cache.put("big", bytes(200))  # larger than the whole cache: not kept
    assert cache.get("big") is None and cache.size <= 100
