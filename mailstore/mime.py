"""Where each MIME part of a message lies, as byte offsets into the stored bytes.

BODY[1.2], BODY[2.MIME] and the like (RFC 3501 §6.4.5) must be the exact
bytes of the message, not a re-serialisation: a signed part (S/MIME,
PGP/MIME) only verifies byte for byte, and mail with bare-LF lines must come
back as it went in.  So sections are cut out of the original bytes: headers
end at the first empty line, a multipart body is split at its boundary
delimiter lines (RFC 2046 §5.1.1: the line break before a delimiter belongs
to the delimiter), and a message/rfc822 body is a message again.  Only the
header block of each part goes through the stdlib parser, to read
Content-Type.
"""

from __future__ import annotations

import email
import re
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.message import Message
from email.policy import Compat32
from typing import Any

_FOLD = re.compile(r"\r?\n(?=[ \t])")


class _Unfolded(Compat32):
    """compat32, but header values read unfolded (RFC 5322 §2.2.3: a line break
    before whitespace is not part of the value), so a folded parameter such as
    boundary="foo<CRLF> bar" is the boundary "foo bar" that the body uses."""

    def header_fetch_parse(self, name: str, value: str) -> Any:
        return super().header_fetch_parse(name, _FOLD.sub("", value))


PARSE_POLICY = _Unfolded()

_BLANK = re.compile(rb"\r?\n\r?\n")
MAX_DEPTH = 50  # nesting deeper than this is treated as a leaf


@dataclass
class Part:
    start: int  # first byte of the part's header
    body: int  # first byte of its body (after the empty line)
    end: int  # one past its last body byte
    header: Message  # the part's header block, parsed (unfolded values)
    ctype: str  # its content type, lower case; the default where it has none
    multipart: bool = False
    message: bool = False  # message/rfc822: children[0] is the encapsulated message
    children: list[Part] = field(default_factory=list)


def parse(data: bytes, start: int = 0, end: int | None = None, *, default_type: str = "text/plain",
          depth: int = 0) -> Part:
    end = len(data) if end is None else end
    if data.startswith(b"\r\n", start) or data.startswith(b"\n", start):  # no header at all
        body = start + (2 if data[start:start + 1] == b"\r" else 1)
    else:
        m = _BLANK.search(data, start, end)
        body = m.end() if m else end
    header = email.message_from_bytes(data[start:body], policy=PARSE_POLICY)
    if header.get("Content-Type") is None:
        ctype = default_type
    else:
        ctype = header.get_content_type()
    part = Part(start, min(body, end), end, header, ctype)
    if depth >= MAX_DEPTH:
        return part
    if ctype.startswith("multipart/"):
        boundary = header.get_param("boundary")
        if isinstance(boundary, str) and boundary:
            child_type = "message/rfc822" if ctype == "multipart/digest" else "text/plain"
            spans = _split_multipart(data, part.body, end, boundary.encode("latin-1", "replace"))
            if spans:
                part.multipart = True
                part.children = [parse(data, a, b, default_type=child_type, depth=depth + 1) for a, b in spans]
    elif ctype == "message/rfc822":
        part.message = True
        part.children = [parse(data, part.body, end, depth=depth + 1)]
    return part


def _split_multipart(data: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """(start, end) of each body part between the delimiter lines."""
    delimiter = re.compile(rb"(?:\r?\n|^)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r?\n|$)", re.MULTILINE)
    spans: list[tuple[int, int]] = []
    part_start: int | None = None
    pos = start
    while True:
        m = delimiter.search(data, pos, end)
        if m is None:
            break
        if part_start is not None:
            spans.append((part_start, m.start()))
        if m.group(1):  # the close delimiter
            return spans
        part_start = m.end()
        pos = max(m.end(), pos + 1)
    if part_start is not None:  # no close delimiter: the last part runs to the end
        spans.append((part_start, end))
    return spans


def find(root: Part, numbers: tuple[int, ...]) -> Part | None:
    """The part a section's numbers name (RFC 3501 §6.4.5); None when there is no such part.

    An entity's parts are its children when it is multipart, else just part 1:
    its own body.  A part of type message/rfc822 has nested parts, the parts of
    the encapsulated message, so "2.1" of a forwarded message is the first part
    of the attached message and "1.2" of a message whose whole body is a
    message/rfc822 is the second part of the message inside.  As Dovecot does,
    a leaf part n also answers to n.1 (once).
    """
    return _find(root, numbers, True)


def _find(entity: Part, numbers: tuple[int, ...], top: bool) -> Part | None:
    n, rest = numbers[0], numbers[1:]
    if entity.multipart:
        if not 1 <= n <= len(entity.children):
            return None
        part, is_self = entity.children[n - 1], False
    elif n == 1:
        part, is_self = entity, True  # part 1 of a single-part entity is its body
    else:
        return None
    if not rest:
        return part
    if part.message:  # the numbers go on inside the encapsulated message
        return _find(part.children[0], rest, False)
    if part.multipart and not is_self:
        return _find(part, rest, False)
    if rest == (1,) and not is_self:  # a leaf's own part 1
        return part
    return None


def decoded(text: str | None) -> str:
    """RFC 2047 encoded-words decoded; text that does not decode stays as it is."""
    if not text:
        return ""
    try:
        return str(make_header(decode_header(text)))
    except (ValueError, LookupError, UnicodeError):
        return text
