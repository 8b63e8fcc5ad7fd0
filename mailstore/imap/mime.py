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
import email.policy
import re
from dataclasses import dataclass, field

_BLANK = re.compile(rb"\r?\n\r?\n")
MAX_DEPTH = 50  # nesting deeper than this is treated as a leaf


@dataclass
class Part:
    start: int  # first byte of the part's header
    body: int  # first byte of its body (after the empty line)
    end: int  # one past its last body byte
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
    header = email.message_from_bytes(data[start:body], policy=email.policy.compat32)
    if header.get("Content-Type") is None:
        ctype = default_type
    else:
        ctype = header.get_content_type()
    part = Part(start, min(body, end), end)
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
    """The part a section's numbers name; None when there is no such part."""
    part = root
    for n in numbers:
        if part.message:  # numbers go into the encapsulated message
            part = part.children[0]
        if part.multipart:
            if not 1 <= n <= len(part.children):
                return None
            part = part.children[n - 1]
        elif n != 1:  # a single-part entity has one part: itself
            return None
    return part
