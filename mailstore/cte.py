"""Content-Transfer-Encoding (RFC 2045 §6) over the parts that mime.py finds.

Two directions, both for IMAP BINARY (RFC 3516):

- `binary_section` is what FETCH BINARY[n] answers: the part with its
  transfer encoding removed.  A leaf part's body is decoded; a multipart or an
  encapsulated message is rebuilt with every leaf inside decoded and its
  Content-Transfer-Encoding header moved to the end of its header block as
  "binary" (what Dovecot answers, so the result is again a message a client can
  parse).  An encoding nobody knows is `UnknownEncoding` (NO [UNKNOWN-CTE]).
- `encode_binary_parts` is what APPEND does with a message sent as a literal8:
  a part declared "binary" is stored base64-encoded (the stored object stays a
  message any IMAP4rev1 reader and Dovecot's obox can serve), and BINARY gives
  the bytes back.

Decoding is lenient as mail readers are: base64 ignores characters outside its
alphabet and missing padding; quoted-printable keeps a malformed "=" as it is.
"""

from __future__ import annotations

import base64
import binascii
import re

from . import mime

IDENTITY = frozenset({"7bit", "8bit", "binary"})
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_CTE_FIELD = re.compile(rb"content-transfer-encoding[ \t]*:", re.IGNORECASE)


class UnknownEncoding(ValueError):
    """A part's Content-Transfer-Encoding is none of RFC 2045's (x-uuencode, typos...)."""


def encoding(part: mime.Part) -> str:
    value = part.header.get("Content-Transfer-Encoding")
    return str(value).strip().lower() if value else "7bit"


def decode(data: bytes, cte: str) -> bytes:
    if cte in IDENTITY:
        return data
    if cte == "base64":
        clean = _NOT_BASE64.sub(b"", data.split(b"=", 1)[0])
        if len(clean) % 4 == 1:  # a lone last character carries no whole byte
            clean = clean[:-1]
        return base64.b64decode(clean + b"=" * (-len(clean) % 4))
    if cte == "quoted-printable":
        return binascii.a2b_qp(data)
    raise UnknownEncoding(cte)


def binary_section(data: bytes, root: mime.Part, parts: tuple[int, ...], text: str) -> tuple[bytes, bool] | None:
    """BINARY[parts.text] (text "" or "TEXT"): (bytes, whether anything was decoded); None when
    the section is raw header data that BINARY answers as BODY does (HEADER, HEADER.FIELDS, MIME)."""
    if text not in ("", "TEXT"):
        return None
    if not parts:
        return _converted(data, root) if text == "" else _converted_body(data, root)
    part = mime.find(root, parts)
    if part is None:
        return b"", False
    if text == "TEXT":  # the text of the message inside a message/rfc822 part
        return _converted_body(data, part.children[0]) if part.message else (b"", False)
    return _converted_body(data, part)


def _converted(data: bytes, part: mime.Part) -> tuple[bytes, bool]:
    """The part, header and body, with every leaf decoded."""
    body, changed = _converted_body(data, part)
    header = data[part.start:part.body]
    if changed and not part.multipart and not part.message:
        header = _header_saying(header, b"binary")
    return header + body, changed


def _converted_body(data: bytes, part: mime.Part) -> tuple[bytes, bool]:
    if part.message:
        return _converted(data, part.children[0])
    if not part.multipart:
        cte = encoding(part)
        return decode(data[part.body:part.end], cte), cte not in IDENTITY
    pieces: list[bytes] = []
    changed = False
    pos = part.body
    for child in part.children:  # what lies between the parts (delimiters, preamble) stays as it is
        pieces.append(data[pos:child.start])
        converted, child_changed = _converted(data, child)
        pieces.append(converted)
        changed |= child_changed
        pos = child.end
    pieces.append(data[pos:part.end])
    return b"".join(pieces), changed


def _header_saying(header: bytes, cte: bytes) -> bytes:
    """The header block without its Content-Transfer-Encoding field, then "Content-Transfer-Encoding: cte"."""
    eol = b"\r\n" if b"\r\n" in header else b"\n"
    lines = header.splitlines(keepends=True)
    if lines and lines[-1] in (b"\r\n", b"\n"):
        lines.pop()
    kept: list[bytes] = []
    dropping = False
    for line in lines:
        if line[:1] in (b" ", b"\t"):  # a folded continuation belongs to the field above
            if not dropping:
                kept.append(line)
            continue
        dropping = bool(_CTE_FIELD.match(line))
        if not dropping:
            kept.append(line)
    if kept and not kept[-1].endswith(b"\n"):
        kept[-1] += eol
    return b"".join(kept) + b"Content-Transfer-Encoding: " + cte + eol + eol


def encode_binary_parts(data: bytes) -> bytes:
    """The message with each leaf part declared "binary" stored as base64 instead (APPEND of a literal8)."""
    root = mime.parse(data)
    edits: list[tuple[int, int, bytes]] = []
    _collect(data, root, edits)
    if not edits:
        return data
    out: list[bytes] = []
    pos = 0
    for start, end, replacement in edits:
        out += [data[pos:start], replacement]
        pos = end
    out.append(data[pos:])
    return b"".join(out)


def _collect(data: bytes, part: mime.Part, edits: list[tuple[int, int, bytes]]) -> None:
    if part.multipart or part.message:
        for child in part.children:
            _collect(data, child, edits)
        return
    if encoding(part) != "binary":
        return
    header = data[part.start:part.body]
    eol = b"\r\n" if b"\r\n" in header else b"\n"
    encoded = base64.encodebytes(data[part.body:part.end]).rstrip(b"\n").replace(b"\n", eol)
    edits.append((part.start, part.end, _header_in_place(header, b"base64") + encoded))


def _header_in_place(header: bytes, cte: bytes) -> bytes:
    """The header block with the value of its Content-Transfer-Encoding field replaced, in place."""
    lines = header.splitlines(keepends=True)
    out: list[bytes] = []
    replacing = False
    for line in lines:
        if line[:1] in (b" ", b"\t") and replacing:
            continue
        replacing = bool(_CTE_FIELD.match(line))
        if replacing:
            eol = line[len(line.rstrip(b"\r\n")):]
            line = line[:line.index(b":") + 1] + b" " + cte + eol
        out.append(line)
    return b"".join(out)
