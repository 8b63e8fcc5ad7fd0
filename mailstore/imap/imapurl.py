"""IMAP URLs naming a stored message or part (RFC 5092), as CATENATE (RFC 4469) takes them.

Only URLs relative to this server are read, as Dovecot reads them: an
absolute path "/mailbox[;UIDVALIDITY=n]/;UID=n[/;SECTION=s][/;PARTIAL=o[.n]]"
or, with a mailbox selected, ";UID=n[...]" relative to it.  "imap://host/..."
is refused (which server a host name means is not ours to guess), and so is
anything with ;URLAUTH (RFC 4467 is not offered).  Names are matched without
regard to case; the mailbox is %-encoded UTF-8 (RFC 5092 §5) and becomes the
modified UTF-7 name the store keeps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from . import mutf7
from .parse_fetch import parse_section
from .reader import ParseError, Reader, Section


class BadUrl(ValueError):
    """NO [BADURL url] text."""


@dataclass(frozen=True, slots=True)
class MessageUrl:
    mailbox: str | None  # None: the selected mailbox
    uidvalidity: int | None
    uid: int
    section: Section | None  # None: the whole message
    partial: tuple[int, int | None] | None  # offset and length (None: to the end)


_PARAM = re.compile(r"/?;([A-Za-z]+)=([^/;]*)")


def parse(url: str) -> MessageUrl:
    if "://" in url or url.startswith("//"):
        raise BadUrl("Relative URL required")
    mailbox: str | None = None
    rest = url
    if url.startswith("/"):
        end = url.find(";")
        end = len(url) if end < 0 else end - 1 if url[end - 1] == "/" else end
        try:
            name = unquote(url[1:end], errors="strict")
        except UnicodeDecodeError:
            raise BadUrl("Mailbox name is not UTF-8") from None
        mailbox = "INBOX" if name.upper() == "INBOX" else mutf7.encode(name)
        rest = url[end:]
    params: dict[str, str] = {}
    order: list[str] = []
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if m is None:
            raise BadUrl(f"Invalid IMAP URL at {rest[pos:pos + 20]!r}")
        name = m.group(1).upper()
        if name in params or name not in ("UIDVALIDITY", "UID", "SECTION", "PARTIAL"):
            raise BadUrl(f"Unexpected ;{m.group(1)} in the URL")
        # ";UIDVALIDITY=" follows the mailbox name; the rest are "/;NAME=", but a UID
        # relative to the selected mailbox starts the URL: ";UID=".
        wants_slash = name in ("SECTION", "PARTIAL") or (name == "UID" and mailbox is not None)
        if m.group(0).startswith("/") != wants_slash:
            raise BadUrl(f"Misplaced ;{m.group(1)} in the URL")
        params[name] = unquote(m.group(2))
        order.append(name)
        pos = m.end()
    if order != [n for n in ("UIDVALIDITY", "UID", "SECTION", "PARTIAL") if n in params]:
        raise BadUrl("URL parts out of order")
    if "UID" not in params:
        raise BadUrl("The URL names no message (;UID=)")
    if "UIDVALIDITY" in params and mailbox is None:
        raise BadUrl("UIDVALIDITY without a mailbox")
    return MessageUrl(mailbox, _number(params.get("UIDVALIDITY")), _number(params["UID"]) or 0,
                      _section(params.get("SECTION")), _partial(params.get("PARTIAL")))


def _number(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or int(text) == 0 or int(text) > 2**32 - 1:
        raise BadUrl(f"Invalid number {text!r}")
    return int(text)


def _section(text: str | None) -> Section | None:
    if text is None:
        return None
    r = Reader(b"[" + text.encode() + b"]", "*")
    try:
        got = parse_section(r)
        r.end()
    except ParseError as exc:
        raise BadUrl(f"Invalid section: {exc.text}") from None
    return got


def _partial(text: str | None) -> tuple[int, int | None] | None:
    if text is None:
        return None
    m = re.fullmatch(r"(\d{1,10})(?:\.(\d{1,10}))?", text)
    if m is None or (m.group(2) is not None and int(m.group(2)) == 0):
        raise BadUrl(f"Invalid partial range {text!r}")
    return int(m.group(1)), int(m.group(2)) if m.group(2) else None
