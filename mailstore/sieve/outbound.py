"""Mail that Sieve sends on a user's behalf: redirects and vacation replies.

Both are composed as Pigeonhole composes them and handed to the configured submission relay
(the local Postfix, which queues, signs and retries): this server never delivers mail to another
host itself. Both are remembered in the metadata store (`sieve_duplicates`): a vacation reply
per (sender, handle) for its :days (RFC 5230 §4.2), a redirect per (message, target) for 12 hours,
so an LMTP delivery the MTA retries, or a redirect that comes back, is not sent twice.

A vacation reply is never sent to the null sender, to the user's own addresses, to system
addresses (MAILER-DAEMON, owner-*, *-request, LISTSERV, majordomo), to mailing lists (List-*
headers), to automatic mail (Auto-Submitted other than "no", Precedence bulk/list/junk), nor for
mail that does not name the user in To, Cc or Bcc (RFC 5230 §4.5-4.6; the checks and their order
are Pigeonhole's).
"""

from __future__ import annotations

import email.header
import email.utils
import hashlib
import smtplib
import socket
import time
import uuid
from dataclasses import dataclass
from email.message import Message

from ..db import MetaStore
from .run import Vacation

REDIRECT_PERIOD = 12 * 3600  # a message forwarded to a target is not forwarded there again for this long
SMTP_TIMEOUT = 30.0
BANNER = "X-Sieve: mailstore Sieve"
LIST_HEADERS = ("list-id", "list-owner", "list-subscribe", "list-post", "list-unsubscribe", "list-help",
                "list-archive")
ADDRESS_HEADERS = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")


class SendError(Exception):
    """The relay did not take the message (refused it, or could not be reached)."""


@dataclass(frozen=True, slots=True)
class Relay:
    host: str
    port: int

    @classmethod
    def parse(cls, value: str) -> Relay:
        """HOST:PORT (or [v6]:PORT); ValueError when it is not one."""
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"submission relay {value!r}: expected HOST:PORT")
        return cls(host.strip("[]"), int(port))

    def send(self, mail_from: str, recipient: str, data: bytes) -> None:
        """Hand one message to the relay (blocking; SendError when it is not taken)."""
        try:
            with smtplib.SMTP(self.host, self.port, local_hostname=socket.gethostname(),
                              timeout=SMTP_TIMEOUT) as smtp:
                smtp.sendmail(mail_from, [recipient], data)
        except smtplib.SMTPRecipientsRefused as exc:
            code = next(iter(exc.recipients.values()))[0]
            raise SendError(f"relay refused <{recipient}>: {code}") from None
        except smtplib.SMTPResponseException as exc:
            raise SendError(f"relay answered {exc.smtp_code} {exc.smtp_error!r}") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise SendError(f"relay {self.host}:{self.port}: {exc}") from None


# ---------------------------------------------------------------- duplicates


def _key(kind: str, *parts: str) -> str:
    return kind + ":" + hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def already_sent(meta: MetaStore, user: str, key: str) -> bool:
    row = meta.conn().execute("SELECT expires FROM sieve_duplicates WHERE user_name=? AND key=?",
                              (user, key)).fetchone()
    return row is not None and float(row[0]) > time.time()


def claim(meta: MetaStore, user: str, key: str, period: float) -> bool:
    """Mark `key` sent for `period` seconds, unless it already is: False then. One statement, so
    two deliveries at once (an MTA delivers in parallel) cannot both send; the one that claims
    it sends (and releases it if the relay does not take the message)."""
    now = time.time()
    with meta._write() as c:
        c.execute("DELETE FROM sieve_duplicates WHERE user_name=? AND expires<=? AND key<>?", (user, now, key))
        got = c.execute("INSERT INTO sieve_duplicates(user_name, key, expires) VALUES (?,?,?) "
                        "ON CONFLICT(user_name, key) DO UPDATE SET expires=excluded.expires "
                        "WHERE sieve_duplicates.expires<=?", (user, key, now + period, now))
        return bool(got.rowcount)


def release(meta: MetaStore, user: str, key: str) -> None:
    with meta._write() as c:
        c.execute("DELETE FROM sieve_duplicates WHERE user_name=? AND key=?", (user, key))


# ---------------------------------------------------------------- redirect


def redirect_key(msg: Message, raw: bytes, target: str) -> str:
    ident = str(msg.get("message-id", "")).strip() or hashlib.sha256(raw).hexdigest()
    return _key("redirect", ident, target.lower())


def redirected(raw: bytes, user: str) -> bytes:
    """The message as it goes out again: as stored, without our Return-Path (the relay's MAIL FROM
    makes the next one), marked with who forwarded it."""
    head = raw.split(b"\r\n", 1)
    if head[0].lower().startswith(b"return-path:") and len(head) == 2:
        raw = head[1]
    return f"{BANNER}\r\nX-Sieve-Redirected-From: {user}\r\n".encode() + raw


# ---------------------------------------------------------------- vacation


def _addresses(msg: Message, headers: tuple[str, ...]) -> list[tuple[str, str]]:
    values = [str(v) for h in headers for v in (msg.get_all(h) or [])]
    return [(n, a) for n, a in email.utils.getaddresses(values) if a]


def vacation_refusal(msg: Message, sender: str, own: list[str], vac: Vacation, meta: MetaStore,
                     user: str) -> str | None:
    """Why no vacation reply goes to this message (None: one does)."""
    mine = {a.lower() for a in own if a}
    if not sender:
        return "discarded vacation reply to <>"
    if sender.lower() in mine:
        return f"discarded vacation reply to own address <{sender}>"
    if already_sent(meta, user, vacation_key(sender, vac)):
        return f"discarded duplicate vacation response to <{sender}>"
    if any(msg.get(h) is not None for h in LIST_HEADERS):
        return f"discarding vacation response to mailinglist recipient <{sender}>"
    auto = str(msg.get("auto-submitted", "")).strip().lower()
    if auto and not auto.startswith("no"):
        return f"discarding vacation response to auto-submitted message from <{sender}>"
    precedence = str(msg.get("precedence", "")).strip().lower()
    if precedence in ("bulk", "list", "junk"):
        return f"discarding vacation response to precedence={precedence} message from <{sender}>"
    local = sender.rpartition("@")[0].lower()
    if (local in ("mailer-daemon", "listserv", "majordomo") or "-request" in local
            or local.startswith("owner-")):
        return f"not sending vacation response to system address <{sender}>"
    if addressed_as(msg, own) is None:
        return "discarding vacation response for implicitly delivered message"
    return None


def addressed_as(msg: Message, own: list[str]) -> str | None:
    """The first of the user's addresses (the recipient first, then :addresses) that the message's
    To, Cc or Bcc names: the reply comes from it."""
    named = {a.lower() for _, a in _addresses(msg, ADDRESS_HEADERS)}
    return next((a for a in own if a and a.lower() in named), None)


def vacation_key(sender: str, vac: Vacation) -> str:
    return _key("vacation", sender.lower(), vac.handle)


def _header(value: str) -> str:
    """A header value as it may go on the wire: RFC 2047 words when it is not ASCII."""
    return value if value.isascii() else email.header.Header(value, "utf-8").encode()


def vacation_reply(msg: Message, sender: str, recipient: str, vac: Vacation, now: float | None = None) -> bytes:
    """The reply (RFC 5230 §5): from :from, or the user's address the message was sent to
    (`recipient`: the RCPT TO, or which of :addresses it named), to the sender as the message names
    it, "Auto: " and the subject (or :subject), threaded, marked Auto-Submitted: auto-replied."""
    to = f"<{sender}>"
    for name, addr in _addresses(msg, ("from", "sender", "reply-to")):
        if addr.lower() == sender.lower():
            to = email.utils.formataddr((name, addr)) if name else f"<{addr}>"
            break
    frm = vac.sender if vac.sender is not None else f"<{recipient}>"
    if vac.subject is not None:
        subject = _header(vac.subject)
    elif msg.get("subject") is not None:
        subject = "Auto: " + " ".join(str(msg.get("subject")).split())
    else:
        subject = "Automated reply"
    lines = [BANNER, f"Message-ID: <mailstore-sieve-{uuid.uuid4().hex}@{socket.gethostname()}>",
             f"Date: {email.utils.formatdate(now, localtime=False)}", f"From: {_header(frm)}",
             f"To: {to}", f"Subject: {subject}"]
    msgid = str(msg.get("message-id", "")).strip()
    if msgid:
        refs = " ".join(str(msg.get("references", "")).split())
        lines += [f"In-Reply-To: {msgid}", f"References: {(refs + ' ' + msgid).strip()}"]
    lines += ["Auto-Submitted: auto-replied (vacation)", "Precedence: bulk", "X-Auto-Response-Suppress: All",
              "MIME-Version: 1.0"]
    reason = vac.reason.replace("\r\n", "\n").replace("\n", "\r\n") + "\r\n"  # (as Pigeonhole ends it)
    if vac.mime:  # the reason is a MIME entity: its own headers, then its body
        return ("\r\n".join(lines) + "\r\n" + reason.lstrip("\r\n")).encode()
    lines += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"]
    return ("\r\n".join(lines) + "\r\n\r\n" + reason).encode()
