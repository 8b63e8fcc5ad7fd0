"""A delivered message: the bytes stored, and what IMAP will need without the body.

The stored object is the message as received, with `Return-Path:` and
`Delivered-To:` prepended (RFC 5321 §4.4; Delivered-To as Postfix and
Dovecot add it).  ENVELOPE and BODYSTRUCTURE (RFC 3501 §7.4.2) are parsed once,
at delivery, with the stdlib email parser, and kept in the metadata store as
JSON (None for NIL), so FETCH ENVELOPE/BODYSTRUCTURE never reads the object.
"""

from __future__ import annotations

from email.message import Message
from email.utils import collapse_rfc2231_value
from typing import Any

from . import addresses, mime


def stored_bytes(data: bytes, mail_from: str, recipient: str) -> bytes:
    """The object body: trace headers first, then the message exactly as received."""
    head = f"Return-Path: <{mail_from}>\r\nDelivered-To: {recipient}\r\n".encode()
    return head + data


def _values(msg: Message, name: str) -> list[str]:
    """A header's values as sent.  Raw 8-bit bytes (not RFC 2047) are read as UTF-8:
    compat32's get() would hand back a Header object for them, which no JSON takes."""
    lname = name.lower()
    return [v.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if isinstance(v, str) else str(v)
            for k, v in msg.raw_items() if k.lower() == lname]


def _value(msg: Message, name: str) -> str | None:
    values = _values(msg, name)
    return values[0] if values else None


def _addresses(msg: Message, name: str) -> list[list[str | None]] | None:
    # RFC 3501 §7.4.2: envelope fields are sent as they appear in the header,
    # RFC 2047 encoded-words and all; groups and routes as the RFC spells them.
    values = _values(msg, name)
    return addresses.parse(values) if values else None


def envelope(msg: Message) -> list[Any]:
    frm = _addresses(msg, "From")
    return [
        _value(msg, "Date"), _value(msg, "Subject"), frm,
        _addresses(msg, "Sender") or frm, _addresses(msg, "Reply-To") or frm,
        _addresses(msg, "To"), _addresses(msg, "Cc"), _addresses(msg, "Bcc"),
        _value(msg, "In-Reply-To"), _value(msg, "Message-ID"),
    ]


def _params(part: Message, name: str = "Content-Type") -> list[str] | None:
    """A header's parameters as IMAP's flat list (RFC 2231 continuations joined), or None."""
    params = part.get_params(header=name)
    if not params or len(params) < 2:
        return None
    flat: list[str] = []
    for k, v in params[1:]:
        flat += [k.upper(), collapse_rfc2231_value(v) if isinstance(v, tuple) else str(v)]
    return flat


def _disposition(part: Message) -> list[Any] | None:
    value = _value(part, "Content-Disposition")
    if value is None:
        return None
    kind = value.split(";", 1)[0].strip()
    return [kind.upper(), _params(part, "Content-Disposition")] if kind else None


def _extension(part: Message) -> list[Any]:
    """A single part's extension data: MD5, disposition, language, location (RFC 3501 §7.4.2)."""
    return [_value(part, "Content-MD5"), _disposition(part), _value(part, "Content-Language"),
            _value(part, "Content-Location")]


def bodystructure(part: mime.Part, data: bytes) -> list[Any]:
    """BODYSTRUCTURE of a part of `data`, from the same tree BODY[section] is cut by:
    a part's size and line count are those of the bytes a client fetches for it."""
    h = part.header
    if part.multipart:
        children = [bodystructure(c, data) for c in part.children]
        return [*children, part.ctype.split("/", 1)[1].upper(), _params(h), _disposition(h),
                _value(h, "Content-Language"), _value(h, "Content-Location")]
    body = data[part.body:part.end]
    maintype, _, subtype = part.ctype.upper().partition("/")
    params = _params(h)
    if maintype == "TEXT" and not any(k == "CHARSET" for k in (params or [])[::2]):
        params = [*(params or []), "CHARSET", "US-ASCII"]
    fields: list[Any] = [maintype, subtype, params, _value(h, "Content-ID"), _value(h, "Content-Description"),
                         (_value(h, "Content-Transfer-Encoding") or "7BIT").upper(), len(body)]
    if part.message:
        inner = part.children[0]
        fields += [envelope(inner.header), bodystructure(inner, data), body.count(b"\n")]
    elif maintype == "TEXT":
        fields.append(body.count(b"\n"))
    return fields + _extension(h)


def parse(data: bytes) -> tuple[list[Any], list[Any]]:
    """ENVELOPE and BODYSTRUCTURE of a message, as JSON-able lists."""
    root = mime.parse(data)
    return envelope(root.header), bodystructure(root, data)
