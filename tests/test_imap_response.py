"""IMAP response encoding and BODY[section] extraction (RFC 3501 §6.4.5, §7.4.2)."""

from __future__ import annotations

from mailstore.imap.reader import Section
from mailstore.imap.response import (astring, bodystructure, envelope, flag_list, internal_date, nstring, partial,
                                     section_bytes)
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
