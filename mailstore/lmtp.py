"""The LMTP server (RFC 2033) on aiosmtpd, with one reply per recipient after DATA.

aiosmtpd speaks LMTP's LHLO and answers DATA with one reply per message; LMTP
wants one per accepted recipient, in RCPT order.  This module wraps it:

- the DATA hook returns one reply line per recipient (pushed as consecutive
  lines);
- aiosmtpd's own per-message failures during DATA (too much data, line too
  long) are turned into one reply per recipient in `push`, so an MTA never
  waits for replies that will not come;
- LHLO also advertises ENHANCEDSTATUSCODES and PIPELINING (RFC 2034, 2920).
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from runtime import logs

from .delivery import Deliverer, DeliveryError

log = logging.getLogger("mailstore.lmtp")


# RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients per transaction;
# past its limit it answers 452 (§4.5.3.1.10) and the client sends the rest later.
MAX_RECIPIENTS = 100
TOO_MANY = "452 4.5.3 Too many recipients"


class MailEnvelope(Envelope):
    """aiosmtpd's envelope, plus the local user each accepted RCPT address resolved to."""

    def __init__(self) -> None:
        super().__init__()
        self.users: dict[str, str] = {}


def _ours(envelope: Envelope) -> MailEnvelope:
    assert isinstance(envelope, MailEnvelope), "LMTPSession makes every envelope"
    return envelope


class Handler:
    """aiosmtpd's hooks: it calls handle_<VERB>(server, session, envelope, ...) and sends what they return."""

    def __init__(self, deliverer: Deliverer, max_recipients: int = MAX_RECIPIENTS) -> None:
        self.deliverer = deliverer
        self.max_recipients = max_recipients

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        head, last = responses[:-1], responses[-1]
        extra = ["250-ENHANCEDSTATUSCODES", "250-PIPELINING"]
        return head + extra + [last]

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        _ours(envelope).users.clear()
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.max_recipients:
            logs.event(log, logging.WARNING, "deferred", session=_session_id(session), remote=_peer(session),
                       rcpt=f"<{address}>", result=TOO_MANY[:9], reason=TOO_MANY[10:])
            return TOO_MANY
        try:
            user = await self.deliverer.recipient(address)
        except DeliveryError as exc:
            logs.event(log, logging.WARNING, "deferred" if exc.reply.startswith("4") else "rejected",
                       session=_session_id(session), remote=_peer(session), rcpt=f"<{address}>",
                       result=exc.reply[:9], reason=exc.reply[10:])
            return f"{exc.reply[:9]} <{address}>: {exc.reply[10:]}"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        _ours(envelope).users[address] = user
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        started = time.perf_counter()
        data = envelope.original_content or envelope.content or b""
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        users = _ours(envelope).users
        recipients = [(a, users[a]) for a in envelope.rcpt_tos]
        trace = {"session": _session_id(session), "queue_id": postfix_queue_id(data) or "-"}
        # aiosmtpd keeps the null reverse-path as the text "<>" (its own checks need it non-empty);
        # below this point the null sender is "" (Return-Path: <>, Sieve's envelope "from").
        sender = "" if envelope.mail_from in (None, "<>") else str(envelope.mail_from)
        replies = await self.deliverer.deliver(sender, recipients, data, trace)
        logs.event(log, logging.INFO, "transaction", **trace, remote=_peer(session),
                   **{"from": f"<{sender}>"}, recipients=len(replies),
                   accepted=sum(1 for r in replies if r.startswith("2")), size=len(data),
                   ms=round((time.perf_counter() - started) * 1000, 1))
        return "\r\n".join(replies)


def _session_id(session: Session) -> str:
    """A short id for the connection, in every log line of its transactions."""
    sid = getattr(session, "log_id", None)
    if sid is None:
        sid = session.log_id = secrets.token_urlsafe(9)  # type: ignore[attr-defined]
    return str(sid)


def _peer(session: Session) -> str:
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) and peer else "-"


_RECEIVED_ID = re.compile(rb"\bwith\s+\S+\s+id\s+([A-Za-z0-9]{5,})", re.IGNORECASE)


def postfix_queue_id(data: bytes) -> str | None:
    """The queue id the relaying MTA wrote in the topmost Received header ("... (Postfix) with
    ESMTPS id 4XyZ1kP3qYz2 for ..."), so a delivery in this log can be found in Postfix's."""
    head = data[:16384]
    for m in re.finditer(rb"^Received:(.*(?:\r?\n[ \t].*)*)", head, re.MULTILINE | re.IGNORECASE):
        found = _RECEIVED_ID.search(m.group(1))
        return found.group(1).decode() if found else None  # only the topmost: the last hop's
    return None


# The path nearly every MTA sends: <dot-atom@domain>, then nothing or space-separated parameters.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(rf"<((?:{_ATEXT}\.)*{_ATEXT}@(?:[A-Za-z0-9-]+\.)*[A-Za-z0-9-]+)>((?: [\x21-\x7e]+)*)")


class LMTPSession(LMTP):
    def _create_envelope(self) -> Envelope:
        return MailEnvelope()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """MAIL FROM / RCPT TO's address and what follows it, as aiosmtpd parses them.

        The plain form is read with one regular expression; anything else (quoted
        local parts, address literals, comments, odd spacing) goes to aiosmtpd's
        RFC 5322 parser, which cost ~100 us per recipient, a tenth of a delivery's
        CPU. tests/test_lmtp.py checks that both give the same answer. That parser
        raises IndexError or AttributeError on some paths cut short, which aiosmtpd
        answered with a 500 and a traceback; they are a malformed path here (553 5.1.3).
        """
        m = _PLAIN_PATH.fullmatch(arg)
        if m is None:
            try:
                return super()._getaddr(arg)
            except Exception:  # noqa: BLE001 - the stdlib parser on a path cut short ("<@", "<a@[")
                return None, None
        address = m.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, m.group(2)[1:]

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        """MAIL parameters; a SIZE that is not 1-19 ASCII digits is a syntax error.

        aiosmtpd checks SIZE with str.isdigit() and then int(): "SIZE=²" passed
        the check and raised, a 500 and a traceback per attempt.
        """
        result: dict[str, str | bool] | None = super()._getparams(params)
        size = result.get("SIZE") if result is not None else None
        if isinstance(size, str) and not re.fullmatch(r"[0-9]{1,19}", size):
            return None
        return result

    async def push(self, status: Any) -> None:
        text = status.decode() if isinstance(status, bytes) else status
        env = self.envelope
        if (env is not None and env.rcpt_tos and
                text.startswith(("552 Error: Too much mail data", "500 Line too long"))):
            code = "552 5.3.4 Message too big for system" if text.startswith("552") else \
                "500 5.5.2 Line too long (RFC 5321 4.5.3.1.6)"
            text = "\r\n".join(code for _ in env.rcpt_tos)
        await super().push(text)


async def start_lmtp(deliverer: Deliverer, host: str, port: int, *, max_size: int,
                     max_recipients: int = MAX_RECIPIENTS, sock: socket.socket | None = None,
                     tls: ssl.SSLContext | None = None) -> asyncio.Server:
    """`tls`: STARTTLS offered (RFC 3207), with this context."""
    handler = Handler(deliverer, max_recipients)
    loop = asyncio.get_running_loop()

    def factory() -> LMTPSession:
        # SIZE is advertised as the limit; aiosmtpd stops reading past it (bounded memory).
        return LMTPSession(handler, data_size_limit=max_size, enable_SMTPUTF8=True, decode_data=False,
                           hostname="mailstore", ident="mailstore LMTP", tls_context=tls)

    if sock is not None:  # a prefork worker: the socket is already bound
        return await loop.create_server(factory, sock=sock, backlog=256)
    return await loop.create_server(factory, host, port, backlog=256)
