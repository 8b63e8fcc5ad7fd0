"""SORT keys (RFC 5256; DISPLAYFROM/DISPLAYTO: RFC 5957): pure functions of a message's ENVELOPE.

Strings compare with i;ascii-casemap (ASCII letters folded to upper case);
ties, and the end of every ordering, fall back to the message sequence number.
"""

from __future__ import annotations

import email.utils
import re
import unicodedata
from typing import Any

from ..mime import decoded

_BLOB = r"\[[^\[\]]*\]"
_LEADER = re.compile(rf"^(?:[ \t]*(?:{_BLOB}[ \t]*)*(?:re|fwd?)[ \t]*(?:{_BLOB})?[ \t]*:)", re.I)
_BLOB_PREFIX = re.compile(rf"^[ \t]*{_BLOB}[ \t]*")
_TRAILER = re.compile(r"(?:[ \t]|\(fwd\))+$", re.I)
_FWD_WRAP = re.compile(r"^\[fwd:(.*)\]$", re.I | re.S)


def casemap(text: str) -> str:
    """i;ascii-casemap: only ASCII letters are folded."""
    return text.translate(_UPPER)


_UPPER = {c: c - 32 for c in range(ord("a"), ord("z") + 1)}


def base_subject(subject: str | None) -> str:
    """RFC 5256 §2.1: the subject without reply/forward decorations, whitespace collapsed."""
    s = re.sub(r"[ \t\r\n]+", " ", decoded(subject)).strip()
    while True:
        while True:  # (2) remove trailing "(fwd)" and whitespace
            t = _TRAILER.sub("", s)
            if t == s:
                break
            s = t
        while True:  # (3)+(4) remove leading "re:", "fwd:", "[blob]" (unless that leaves nothing)
            m = _LEADER.match(s)
            if m:
                s = s[m.end():]
                continue
            b = _BLOB_PREFIX.match(s)
            if b and s[b.end():].strip():
                s = s[b.end():]
                continue
            break
        m = _FWD_WRAP.match(s)  # (6) "[fwd: ...]"
        if not m:
            return s.strip()
        s = m.group(1)


def sent_date(envelope: list[Any], internal_date: float) -> float:
    """The Date: header as a timestamp (UTC), or INTERNALDATE when there is none or it does not parse."""
    try:
        parsed = email.utils.parsedate_to_datetime(envelope[0]) if envelope[0] else None
    except (TypeError, ValueError, IndexError):
        parsed = None
    return parsed.timestamp() if parsed is not None and parsed.tzinfo is not None else internal_date


def first_mailbox(addresses: list[list[str | None]] | None) -> str:
    """The local part of the first address (RFC 5256 §3: FROM, TO, CC)."""
    for _name, _route, mailbox, host in addresses or []:
        if host is not None:
            return casemap(mailbox or "")
    return ""


def unicode_casemap(text: str) -> str:
    """i;unicode-casemap (RFC 5051): titlecased, then fully decomposed, so "Ärger" sorts
    between "amy" and "bob" as Dovecot sorts it."""
    return unicodedata.normalize("NFKD", text.title().upper())


def display(addresses: list[list[str | None]] | None) -> str:
    """RFC 5957: the first address's display name, decoded, else its addr-spec."""
    for name, _route, mailbox, host in addresses or []:
        if host is not None:
            shown = decoded(name).strip()
            return unicode_casemap(shown or f"{mailbox or ''}@{host}")
    return ""


def key(criterion: str, envelope: list[Any], internal_date: float, size: int) -> tuple[Any, ...]:
    # INTERNALDATE as clients see it, in whole seconds: messages delivered within one second
    # tie, and ties stay in sequence order even under REVERSE (as Dovecot sorts them)
    internal_date = float(int(internal_date))
    if criterion == "ARRIVAL":
        return (internal_date,)
    if criterion == "DATE":
        return (sent_date(envelope, internal_date),)
    if criterion == "SIZE":
        return (size,)
    if criterion == "SUBJECT":
        return (casemap(base_subject(envelope[1])),)
    if criterion in ("FROM", "TO", "CC"):
        return (first_mailbox(envelope[{"FROM": 2, "TO": 5, "CC": 6}[criterion]]),)
    if criterion in ("DISPLAYFROM", "DISPLAYTO"):
        return (display(envelope[2 if criterion == "DISPLAYFROM" else 5]),)
    raise ValueError(criterion)
