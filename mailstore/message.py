"""A delivered message: the bytes stored, and what IMAP will need without the body.

The stored object is the message as received, with `Return-Path:` and
`Delivered-To:` prepended (RFC 5321 §4.4; Delivered-To as Postfix and
Dovecot add it).  ENVELOPE and BODYSTRUCTURE (RFC 3501 §7.4.2) are parsed once,
at delivery, with the stdlib email parser, and kept in the metadata store as
JSON (None for NIL), so FETCH ENVELOPE/BODYSTRUCTURE never reads the object.
"""

from __future__ import annotations

import email
import email.policy
from email.message import Message
from email.utils import getaddresses
from typing import Any


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


def _addresses(msg: Message, name: str) -> list[list[Any]] | None:
    values = _values(msg, name)
    if not values:
        return None
    out = []
    # RFC 3501 §7.4.2: envelope fields are sent as they appear in the header,
    # RFC 2047 encoded-words and all; decoding is the client's business.
    for display, addr in getaddresses(values):
        mailbox, _, host = addr.partition("@")
        out.append([display or None, None, mailbox or None, host or None])
    return out or None


def envelope(msg: Message) -> list[Any]:
    frm = _addresses(msg, "From")
    return [
        _value(msg, "Date"), _value(msg, "Subject"), frm,
        _addresses(msg, "Sender") or frm, _addresses(msg, "Reply-To") or frm,
        _addresses(msg, "To"), _addresses(msg, "Cc"), _addresses(msg, "Bcc"),
        _value(msg, "In-Reply-To"), _value(msg, "Message-ID"),
    ]


def _params(part: Message) -> list[str] | None:
    params = part.get_params()
    if not params or len(params) < 2:
        return None
    flat: list[str] = []
    for k, v in params[1:]:
        flat += [k.upper(), v if isinstance(v, str) else str(v)]
    return flat


def bodystructure(part: Message) -> list[Any]:
    payload = part.get_payload()
    if part.get_content_type() == "message/rfc822" and isinstance(payload, list) and payload \
            and isinstance(payload[0], Message):
        # The stdlib reports an encapsulated message as "multipart" (its payload is a
        # list); RFC 3501 §7.4.2 gives it its own form: type fields, then the inner
        # message's ENVELOPE, BODYSTRUCTURE and line count.
        inner = payload[0]
        raw = inner.as_bytes(policy=email.policy.compat32.clone(linesep="\r\n", max_line_length=0))
        return ["MESSAGE", "RFC822", _params(part), _value(part, "Content-ID"), _value(part, "Content-Description"),
                (_value(part, "Content-Transfer-Encoding") or "7BIT").upper(), len(raw),
                envelope(inner), bodystructure(inner), raw.count(b"\n")]
    if part.is_multipart() and isinstance(payload, list):
        children = [bodystructure(p) for p in payload if isinstance(p, Message)]
        return [*children, part.get_content_subtype().upper(), _params(part), None, None, None]
    payload = part.get_payload(decode=False)
    raw = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""
    maintype, subtype = part.get_content_maintype().upper(), part.get_content_subtype().upper()
    params = _params(part)
    if maintype == "TEXT" and params is None:
        params = ["CHARSET", "US-ASCII"]
    fields = [maintype, subtype, params, _value(part, "Content-ID"), _value(part, "Content-Description"),
              (_value(part, "Content-Transfer-Encoding") or "7BIT").upper(), len(raw)]
    if maintype == "TEXT":
        fields.append(raw.count(b"\n") + (0 if raw.endswith(b"\n") or not raw else 1))
    return fields


def parse(data: bytes) -> tuple[list[Any], list[Any]]:
    """ENVELOPE and BODYSTRUCTURE of a message, as JSON-able lists."""
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    return envelope(msg), bodystructure(msg)
