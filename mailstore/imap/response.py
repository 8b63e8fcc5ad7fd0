"""IMAP response encoding (RFC 3501 §7, §9): pure functions from values to bytes.

Strings go out quoted when they can (printable, no quote-breaking bytes,
short) and as literals otherwise; NIL for None.  ENVELOPE and BODYSTRUCTURE
are encoded from the JSON parsed at delivery (mailstore/message.py), so no
message body is read to answer them.  Message parts for BODY[section] are
cut from the message bytes by `section_bytes`, following RFC 3501 §6.4.5.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .. import cte, mime
from .reader import Section

_QUOTABLE_MAX = 256


def astring(value: str | bytes) -> bytes:
    """A string as a quoted string when safe, else a literal."""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if len(raw) <= _QUOTABLE_MAX and all(0x20 <= c < 0x7F for c in raw):
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(raw) + raw


def nstring(value: str | bytes | None) -> bytes:
    return b"NIL" if value is None else astring(value)


def literal(data: bytes) -> bytes:
    """A literal.  A NUL, which only a literal8 may carry (RFC 3516), goes out as 0x80, as Dovecot sends it."""
    if b"\0" in data:
        data = data.replace(b"\0", b"\x80")
    return b"{%d}\r\n" % len(data) + data


def literal8(data: bytes) -> bytes:
    return b"~{%d}\r\n" % len(data) + data


def mailbox_id(guid: str) -> str:
    """RFC 8474 MAILBOXID: the mailbox's GUID, which RENAME keeps (an objectid: letters and digits)."""
    return "F" + guid


def email_id(guid: str) -> str:
    """RFC 8474 EMAILID: the message's GUID, which COPY and MOVE keep, as its object is shared."""
    return "M" + guid


def list_line(verb: str, attrs: list[str] | tuple[str, ...], name: str, extra: bytes = b"") -> bytes:
    """* LIST (or LSUB) (attributes) "/" name [extended data] (RFC 3501 §7.2.2, RFC 5258)."""
    return f'* {verb} ({" ".join(attrs)}) "/" '.encode() + astring(name) + extra + b"\r\n"


def uid_set(uids: list[int]) -> str:
    """Sorted UIDs as a compact IMAP set: [2, 4, 5, 6] -> "2,4:6" (VANISHED, RFC 7162 §3.2.10)."""
    out: list[str] = []
    i = 0
    while i < len(uids):
        j = i
        while j + 1 < len(uids) and uids[j + 1] == uids[j] + 1:
            j += 1
        out.append(str(uids[i]) if i == j else f"{uids[i]}:{uids[j]}")
        i = j + 1
    return ",".join(out)


def flag_list(flags: list[str] | tuple[str, ...]) -> bytes:
    return b"(" + " ".join(flags).encode() + b")"


def internal_date(ts: float) -> bytes:
    """date-time, e.g. "17-Jul-1996 02:44:25 +0000"."""
    return b'"' + datetime.fromtimestamp(ts, UTC).strftime("%d-%b-%Y %H:%M:%S +0000").encode() + b'"'


def sexpr(value: Any) -> bytes:
    """A parenthesised list from nested lists/strings/ints/None (ENVELOPE, BODYSTRUCTURE)."""
    if value is None:
        return b"NIL"
    if isinstance(value, bool):
        return b"NIL"
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, (str, bytes)):
        return astring(value)
    return b"(" + b" ".join(sexpr(v) for v in value) + b")"


def envelope(env: list[Any]) -> bytes:
    """RFC 3501 §7.4.2 ENVELOPE: date subject from sender reply-to to cc bcc in-reply-to message-id."""
    return sexpr(env)


def bodystructure(bs: list[Any], extended: bool = True) -> bytes:
    """BODYSTRUCTURE (extended) or BODY (without extension data) from the stored structure."""
    return sexpr(bs if extended else _strip_extensions(bs))


def _strip_extensions(bs: list[Any]) -> list[Any]:
    """BODY: BODYSTRUCTURE without extension data (RFC 3501 §7.4.2)."""
    if bs and isinstance(bs[0], list):  # multipart: parts..., subtype, [params, disposition, language, location]
        n = next(i for i, v in enumerate(bs) if not isinstance(v, list))  # the children end at the subtype
        return [*(_strip_extensions(p) for p in bs[:n]), bs[n]]
    if len(bs) > 7 and isinstance(bs[0], str) and bs[0].upper() == "MESSAGE" and str(bs[1]).upper() == "RFC822":
        # type fields, envelope, body, lines: the body inside is a BODY too
        return [*bs[:8], _strip_extensions(bs[8]), bs[9]]
    if len(bs) > 7 and isinstance(bs[0], str) and bs[0].upper() == "TEXT":
        return bs[:8]  # type fields and the line count
    return bs[:7]


# ------------------------------------------------------------------ BODY[section]

def _split(data: bytes) -> tuple[bytes, bytes]:
    """Header block (with its blank line) and body of an RFC 5322 message or MIME part."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = data.find(sep)
        if i >= 0:
            return data[: i + len(sep)], data[i + len(sep):]
    return data, b""


def header_block(message: bytes) -> bytes:
    """What BODY[HEADER] answers; every header-only section of the message can be cut from it
    exactly as from the whole message (its first blank line is the message's)."""
    return _split(message)[0]


def _fields(header_block: bytes, names: tuple[str, ...], include: bool) -> bytes:
    wanted = {n.lower() for n in names}
    out: list[bytes] = []
    keep = False
    for line in header_block.splitlines(keepends=True):
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        name = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
        keep = (name in wanted) == include
        if keep:
            out.append(line)
    return b"".join(out) + b"\r\n"


def section_bytes(message: bytes, section: Section) -> bytes:
    """The bytes BODY[section] names (RFC 3501 §6.4.5); b"" for a part that does not exist."""
    if not section.parts:
        head, body = _split(message)
        if section.text == "":
            return message
        if section.text == "HEADER":
            return head
        if section.text == "TEXT":
            return body
        return _fields(head, section.fields, section.text == "HEADER.FIELDS")
    part = mime.find(mime.parse(message), section.parts)
    if part is None:
        return b""
    if section.text == "MIME":
        return message[part.start:part.body]
    if section.text == "":
        return message[part.body:part.end]
    # HEADER / TEXT / HEADER.FIELDS name the message inside a message/rfc822
    # part; any other part has none (empty, as Dovecot answers).
    if not part.message:
        return b""
    inner = part.children[0]
    ihead, ibody = message[inner.start:inner.body], message[inner.body:inner.end]
    if section.text == "HEADER":
        return ihead
    if section.text == "TEXT":
        return ibody
    return _fields(ihead, section.fields, section.text == "HEADER.FIELDS")


def binary_section(message: bytes, section: Section) -> tuple[bytes, bool]:
    """BINARY[section] (RFC 3516): the bytes, and whether a transfer encoding was removed (then they
    go out as a literal8, as Dovecot sends them).  Raises cte.UnknownEncoding."""
    got = cte.binary_section(message, mime.parse(message), section.parts, section.text)
    return got if got is not None else (section_bytes(message, section), False)


def partial(data: bytes, window: tuple[int, int] | None) -> bytes:
    if window is None:
        return data
    start, count = window
    return data[start:start + count]
