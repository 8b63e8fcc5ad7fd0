"""The IMAP I/O loop: bytes in, framed commands to the session, responses out.

Everything protocol-shaped lives in parser.py and session.py; this loop only
moves bytes, answers synchronizing literals with "+", and runs IDLE (RFC
2177): the session's refresh is polled (the store is shared with other
processes, LMTP included) and changes are pushed until the client sends DONE.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from .framing import CommandFramer, Framed, FramingError, NeedContinuation
from .parser import parse_command
from .reader import ParseError
from .session import ImapContext, Session

log = logging.getLogger("mailstore.imap")
IDLE_POLL_SECONDS = 0.5
IDLE_MAX_SECONDS = 30 * 60  # RFC 2177: clients re-issue IDLE at least every 29 minutes


async def serve_client(ctx: ImapContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       *, implicit_tls: bool = False) -> None:
    peer = writer.get_extra_info("peername")
    session = Session(ctx, peer[0] if peer else "")
    session.secure = implicit_tls
    framer = CommandFramer(max_literal=ctx.max_append)
    writer.write(session.greeting())
    if ctx.metrics is not None:
        ctx.metrics.sessions.inc()
        ctx.metrics.sessions_total.inc()
    try:
        while not session.logout:
            data = await reader.read(65536)
            if not data:
                return
            events = framer.feed(data)
            if framer.mid_command:
                _ack_now(writer)
            for ev in events:
                if isinstance(ev, NeedContinuation):
                    writer.write(b"+ Ready for literal data\r\n")
                elif isinstance(ev, FramingError):
                    writer.write(f"{ev.tag} BAD {ev.text}\r\n".encode())
                    if ev.fatal:
                        writer.write(b"* BYE Cannot resynchronise after that\r\n")
                        return
                elif isinstance(ev, Framed):
                    try:
                        cmd = parse_command(ev.data)
                    except ParseError as exc:
                        writer.write(f"{exc.tag} BAD {exc.text}\r\n".encode())
                        continue
                    if cmd.name == "IDLE" and session.user is not None:
                        if ctx.metrics is not None:
                            ctx.metrics.idling.inc()
                        try:
                            await _idle(session, cmd.tag, reader, writer)
                        finally:
                            if ctx.metrics is not None:
                                ctx.metrics.idling.dec()
                        continue
                    writer.write(await session.handle(cmd))
                    if session.pending_auth is not None:  # AUTHENTICATE: read the answer to "+ "
                        await writer.drain()
                        line = await _read_line(reader, MAX_AUTH_LINE)
                        if line is None:
                            writer.write(f"{session.pending_auth} BAD Line too long\r\n".encode())
                            session.pending_auth = None
                            writer.write(b"* BYE Cannot resynchronise after that\r\n")
                            return
                        writer.write(await session.finish_authenticate(session.pending_auth, line))
                    if session.start_tls:
                        # RFC 3501 §6.2.1: nothing the client sent before the handshake counts
                        await writer.drain()
                        framer = CommandFramer(max_literal=ctx.max_append)
                        await writer.start_tls(ctx.tls)
                        session.start_tls, session.secure = False, True
                        break
                    if session.logout:
                        break
            await writer.drain()
    except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
        pass
    except Exception:  # a fault of ours: the client is told, the log has the traceback
        log.exception("IMAP session from %s failed", session.peer)
        try:
            writer.write(b"* BYE Internal error, closing\r\n")
        except (ConnectionError, RuntimeError):
            pass
    finally:
        if ctx.metrics is not None:
            ctx.metrics.sessions.dec()
        writer.close()


def _ack_now(writer: asyncio.StreamWriter) -> None:
    """ACK what arrived at once rather than after the delayed-ACK timer (~40 ms).

    A client that writes a literal and then its closing CRLF in two sends
    (imaplib does) has Nagle hold the CRLF until the literal is ACKed; we
    send nothing meanwhile, so without this every APPEND waits out the timer.
    TCP_QUICKACK is not sticky: it is set again after each partial read.
    """
    sock = writer.get_extra_info("socket")
    if sock is not None and hasattr(socket, "TCP_QUICKACK"):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass


MAX_AUTH_LINE = 8192  # a SASL PLAIN answer is a few hundred bytes
MAX_IDLE_LINE = 1024  # "DONE"


async def _read_line(reader: asyncio.StreamReader, limit: int) -> bytes | None:
    """One line from the client, or None when it is longer than `limit` (the stream is then unusable)."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        return None
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise
        line = exc.partial
    return None if len(line) > limit else line


async def _idle(session: Session, tag: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"+ idling\r\n")
    await writer.drain()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + IDLE_MAX_SECONDS
    line_task = asyncio.ensure_future(_read_line(reader, MAX_IDLE_LINE))
    try:
        while loop.time() < deadline:
            done, _ = await asyncio.wait([line_task], timeout=IDLE_POLL_SECONDS)
            if done:
                line = line_task.result()
                if line is None:
                    writer.write(f"{tag} BAD Line too long\r\n* BYE Cannot resynchronise after that\r\n".encode())
                    session.logout = True
                elif line.strip().upper() == b"DONE":
                    writer.write(f"{tag} OK IDLE terminated\r\n".encode())
                else:
                    writer.write(f"{tag} BAD Expected DONE\r\n".encode())
                return
            updates = await session.refresh()
            if updates:
                writer.write(b"".join(updates))
                await writer.drain()
        writer.write(b"* BYE IDLE too long\r\n")
    finally:
        if not line_task.done():
            line_task.cancel()


async def start_imap(ctx: ImapContext, host: str, port: int, *, implicit_tls: bool = False) -> asyncio.Server:
    """A listener: plain (with STARTTLS when ctx.tls is set) or implicit TLS (993-style)."""
    return await asyncio.start_server(lambda r, w: serve_client(ctx, r, w, implicit_tls=implicit_tls), host, port,
                                      limit=1 << 20, ssl=ctx.tls if implicit_tls else None)
