"""Modified UTF-7 for IMAP mailbox names (RFC 3501 §5.1.3): pure encode/decode.

Printable US-ASCII other than "&" stands for itself; "&" is "&-"; any other
run of characters is UTF-16BE in modified base64 ("," for "/", no padding)
between "&" and "-".  Decoding is strict: what a conforming client cannot
have sent is an error, so the same name never has two spellings.
"""

from __future__ import annotations

import base64
import binascii


class MailboxNameError(ValueError):
    pass


def encode(name: str) -> str:
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            b64 = base64.b64encode("".join(run).encode("utf-16-be")).decode().rstrip("=").replace("/", ",")
            out.append(f"&{b64}-")
            run.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


def decode(wire: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(wire):
        ch = wire[i]
        if not 0x20 <= ord(ch) <= 0x7E:
            raise MailboxNameError(f"Mailbox name has a non-ASCII character at {i}")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = wire.find("-", i + 1)
        if end < 0:
            raise MailboxNameError("Unterminated &...- sequence in mailbox name")
        chunk = wire[i + 1:end]
        if not chunk:
            out.append("&")
        else:
            padded = chunk.replace(",", "/") + "=" * (-len(chunk) % 4)
            try:
                raw = base64.b64decode(padded, validate=True)
                text = raw.decode("utf-16-be")
            except (binascii.Error, UnicodeDecodeError):
                raise MailboxNameError(f"Invalid modified base64 in mailbox name: &{chunk}-") from None
            if len(raw) % 2 or any(0x20 <= ord(c) <= 0x7E for c in text) or encode(text) != f"&{chunk}-":
                raise MailboxNameError(f"Non-canonical modified UTF-7 in mailbox name: &{chunk}-")
            out.append(text)
        i = end + 1
    return "".join(out)
