"""The IMAP I/O loop: bytes in, framed commands to the session, responses out.

Everything protocol-shaped lives in parser.py and session.py; this loop only
moves bytes, answers synchronizing literals with "+", and runs IDLE (RFC
2177): the session's refresh is polled (the store is shared with other
processes, LMTP included) and changes are pushed until the client sends DONE.
After COMPRESS DEFLATE (RFC 4978) both directions go through raw DEFLATE
(zlib, RFC 1951), each response flushed whole.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import zlib

from cache import mail_crypt_of
from runtime import logs

from .framing import CommandFramer, Framed, FramingError, NeedContinuation
from .parser import parse_command
from .reader import ParseError
from .session import ImapContext, Session

log = logging.getLogger("mailstore.imap")
IDLE_POLL_SECONDS = 0.5
NOTIFY_POLL_SECONDS = 1.0
IDLE_MAX_SECONDS = 30 * 60  # RFC 2177: clients re-issue IDLE at least every 29 minutes


class Connection:
    """The client's byte stream, inflated and deflated once COMPRESS DEFLATE is on."""

    INFLATE_CHUNK = 1 << 20  # at most this much inflated per read: a small deflate bomb stays small

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._inflate: zlib._Decompress | None = None
        self._deflate: zlib._Compress | None = None
        self._pending = b""  # read past a line (read_line), handed out first

    @property
    def compressed(self) -> bool:
        return self._deflate is not None

    def start_deflate(self) -> None:
        self._inflate = zlib.decompressobj(-15)  # RFC 4978 §3: raw DEFLATE, no zlib header
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)

    async def read(self) -> bytes:
        """What the client sent next (inflated); b"" at the end of the stream."""
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        while True:
            if self._inflate is not None and self._inflate.unconsumed_tail:
                return self._inflate.decompress(self._inflate.unconsumed_tail, self.INFLATE_CHUNK)
            raw = await self.reader.read(65536)
            if not raw or self._inflate is None:
                return raw
            data = self._inflate.decompress(raw, self.INFLATE_CHUNK)
            if self._inflate.eof:  # the client ended its deflate stream: nothing can follow
                return data or b""
            if data:
                return data

    async def read_line(self, limit: int) -> bytes | None:
        """One line, or None when it is longer than `limit` (the stream is then unusable)."""
        buf = b""
        while b"\n" not in buf:
            if len(buf) > limit:
                return None
            chunk = await self.read()
            if not chunk:
                if not buf:
                    raise asyncio.IncompleteReadError(b"", None)
                return buf if len(buf) <= limit else None
            buf += chunk
        end = buf.index(b"\n") + 1
        self._pending = buf[end:] + self._pending
        return buf[:end] if end <= limit else None

    def write(self, data: bytes) -> None:
        if self._deflate is not None:
            data = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        self.writer.write(data)

    async def drain(self) -> None:
        await self.writer.drain()

    async def close(self) -> None:
        """Close without destroying the last words. Closing a socket that holds unread input
        makes the kernel answer with RST, which can discard a BYE still in the client's
        receive buffer (a client sending a 2 MB line we refused saw only a reset). So: send
        what is queued, end our side (FIN), and swallow the client's remaining bytes for a
        moment (bounded in time and size) before closing."""
        try:
            await asyncio.wait_for(self.writer.drain(), LINGER_SECONDS)
            if self.writer.can_write_eof():
                self.writer.write_eof()
            loop = asyncio.get_running_loop()
            deadline, swallowed = loop.time() + LINGER_SECONDS, 0
            while swallowed < LINGER_BYTES and (left := deadline - loop.time()) > 0:
                data = await asyncio.wait_for(self.reader.read(65536), left)
                if not data:
                    break
                swallowed += len(data)
        except (TimeoutError, ConnectionError, OSError, RuntimeError):
            pass
        finally:
            self.writer.close()


async def serve_client(ctx: ImapContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       *, implicit_tls: bool = False) -> None:
    conn = Connection(reader, writer)
    peer = writer.get_extra_info("peername")
    session = Session(ctx, peer[0] if peer else "")
    started, ended = time.monotonic(), "closed"
    session.secure = implicit_tls
    framer = CommandFramer(max_literal=ctx.max_append)
    conn.write(session.greeting())
    if ctx.metrics is not None:
        ctx.metrics.sessions.inc()
        ctx.metrics.sessions_total.inc()
    try:
        while not session.logout:
            if session.notify is not None and not framer.mid_command:
                data = await _read_notifying(session, conn)
            else:
                data = await conn.read()
            if not data:
                return
            events = framer.feed(data)
            if framer.mid_command:
                _ack_now(writer)
            for ev in events:
                if isinstance(ev, NeedContinuation):
                    conn.write(b"+ Ready for literal data\r\n")
                elif isinstance(ev, FramingError):
                    conn.write(f"{ev.tag} BAD {ev.text}\r\n".encode())
                    if ev.fatal:
                        conn.write(b"* BYE Cannot resynchronise after that\r\n")
                        return
                elif isinstance(ev, Framed):
                    try:
                        cmd = parse_command(ev.data)
                    except ParseError as exc:
                        conn.write(f"{exc.tag} BAD {exc.text}\r\n".encode())
                        logs.event(log, logging.INFO, "command failed", session=session.session_id,
                                   user=session.user or "-", remote=session.peer or "-", command="-", result="BAD",
                                   text=exc.text[:200])
                        continue
                    if cmd.name == "IDLE" and session.user is not None:
                        if ctx.metrics is not None:
                            ctx.metrics.idling.inc()
                        try:
                            await _idle(session, cmd.tag, conn)
                        finally:
                            if ctx.metrics is not None:
                                ctx.metrics.idling.dec()
                        continue
                    conn.write(await session.handle(cmd))
                    if session.pending_auth is not None:  # AUTHENTICATE: read the answer to "+ "
                        await conn.drain()
                        line = await conn.read_line(MAX_AUTH_LINE)
                        if line is None:
                            conn.write(f"{session.pending_auth} BAD Line too long\r\n".encode())
                            session.pending_auth = None
                            conn.write(b"* BYE Cannot resynchronise after that\r\n")
                            return
                        conn.write(await session.finish_authenticate(session.pending_auth, line))
                    if session.start_tls:
                        # RFC 3501 §6.2.1: nothing the client sent before the handshake counts
                        await writer.drain()
                        framer = CommandFramer(max_literal=ctx.max_append)
                        await writer.start_tls(ctx.tls)
                        session.start_tls, session.secure = False, True
                        break
                    if session.start_deflate:
                        # RFC 4978 §3: compressed from the byte after the tagged OK; the client
                        # sends nothing more until it has that OK, so nothing buffered is lost
                        session.start_deflate = False
                        await conn.drain()
                        framer = CommandFramer(max_literal=ctx.max_append)
                        conn.start_deflate()
                        break
                    if session.logout:
                        break
            await conn.drain()
    except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, zlib.error) as exc:
        ended = type(exc).__name__
    except Exception:  # a fault of ours: the client is told, the log has the traceback
        ended = "error"
        log.exception("IMAP session %s from %s failed", session.session_id, session.peer)
        try:
            conn.write(b"* BYE Internal error, closing\r\n")
        except (ConnectionError, RuntimeError):
            pass
    finally:
        if ctx.metrics is not None:
            ctx.metrics.sessions.dec()
        if session.user is not None and (crypt := mail_crypt_of(ctx.fs)) is not None:
            crypt.release(session.user)  # the user's private key goes with the last session
        await conn.close()
        logs.event(log, logging.INFO, "disconnected", session=session.session_id, user=session.user or "-",
                   remote=session.peer or "-", reason="logout" if session.logout else ended,
                   commands=session.commands, seconds=round(time.monotonic() - started, 1))


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


LINGER_SECONDS = 2.0  # closing: how long the client's remaining input is swallowed (Connection.close)
LINGER_BYTES = 8 << 20  # ...and how much of it
MAX_AUTH_LINE = 8192  # a SASL PLAIN answer is a few hundred bytes
MAX_IDLE_LINE = 1024  # "DONE"


async def _read_notifying(session: Session, conn: Connection) -> bytes:
    """The client's next bytes; meanwhile, every NOTIFY_POLL_SECONDS, what NOTIFY asked to hear (RFC 5465)."""
    read = asyncio.ensure_future(conn.read())
    while True:
        done, _ = await asyncio.wait([read], timeout=NOTIFY_POLL_SECONDS)
        if done:
            return read.result()
        updates = await session.notifications(quiet=True)
        if updates:
            conn.write(b"".join(updates))
            await conn.drain()


async def _idle(session: Session, tag: str, conn: Connection) -> None:
    conn.write(b"+ idling\r\n")
    await conn.drain()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + IDLE_MAX_SECONDS
    line_task = asyncio.ensure_future(conn.read_line(MAX_IDLE_LINE))
    feed = session.ctx.changes
    try:
        while loop.time() < deadline:
            # Look again when the store says the mailbox changed (PostgreSQL: LISTEN, every
            # host), or after the poll interval (SQLite: one host, asking is cheap).
            box = session.view.box_id if session.view is not None else None
            waiter = asyncio.ensure_future(feed.wait(box) if feed is not None else asyncio.sleep(IDLE_POLL_SECONDS))
            try:
                done, _ = await asyncio.wait([line_task, waiter], return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not waiter.done():
                    waiter.cancel()
            if line_task in done:
                line = line_task.result()
                if line is None:
                    conn.write(f"{tag} BAD Line too long\r\n* BYE Cannot resynchronise after that\r\n".encode())
                    session.logout = True
                elif line.strip().upper() == b"DONE":
                    conn.write(f"{tag} OK IDLE terminated\r\n".encode())
                else:
                    conn.write(f"{tag} BAD Expected DONE\r\n".encode())
                return
            updates = await session.refresh()
            if session.notify is not None:
                updates += session.other_notifications()
            if updates:
                conn.write(b"".join(updates))
                await conn.drain()
        conn.write(b"* BYE IDLE too long\r\n")
    finally:
        if not line_task.done():
            line_task.cancel()


async def start_imap(ctx: ImapContext, host: str, port: int, *, implicit_tls: bool = False) -> asyncio.Server:
    """A listener: plain (with STARTTLS when ctx.tls is set) or implicit TLS (993-style)."""
    return await asyncio.start_server(lambda r, w: serve_client(ctx, r, w, implicit_tls=implicit_tls), host, port,
                                      limit=1 << 20, ssl=ctx.tls if implicit_tls else None)
