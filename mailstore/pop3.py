"""POP3 (RFC 1939) on the INBOX of the same store, with CAPA (RFC 2449), UIDL, TOP,
RESP-CODES, AUTH-RESP-CODE (RFC 3206), PIPELINING, STLS (RFC 2595) and SASL PLAIN (RFC 5034).

- A session sees the INBOX as it was when it logged in: message numbers, sizes and UIDLs
  stay put while it runs (RFC 1939 §3). Mail delivered meanwhile waits for the next session.
- The maildrop lock RFC 1939 asks for is a row in the metadata store (`pop3_locks`), so it
  holds across every host: a second session of the user answers `-ERR [IN-USE]`. It is a
  lease, renewed while the session lives; a host that dies leaves it for at most LOCK_SECONDS.
- A UIDL is Dovecot's default, `%08Xu%08Xv` (the UID and the INBOX's UIDVALIDITY in
  hexadecimal, lower case as Dovecot prints them), so it is the same in every session and on
  every host, and changes only when the INBOX is made again; a message imported with a UIDL of
  its own keeps that one.
- DELE marks; QUIT (the UPDATE state) expunges the marked messages as IMAP's EXPUNGE does,
  and marks what RETR sent \\Seen (since the last RSET), as Dovecot does. A connection that
  ends without QUIT changes nothing.
- Logins share IMAP's throttle and its log (`mailstore.auth`, service=pop3), and a
  mail-crypt: store's key is opened by the login as it is for IMAP.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from cache import Fs, FsError, NotFound, mail_crypt_of
from runtime import logs

from . import connection, folders
from .db import MetaStore, StoreUnavailable
from .login import LoginRefused, auth_log, logged_in, password_login
from .throttle import LoginLimiter
from .users import AddressPolicy

log = logging.getLogger("mailstore.pop3")
_REFUSALS = {  # LoginRefused.kind: POP3's words, response code (RFC 3206), and whether it hangs up
    "throttled": ("Too many login attempts; try again later.", "LOGIN-DELAY", False),
    "failed": ("Authentication failed.", "AUTH", False),
    "key": ("Your mail key does not open with this password; ask the operator.", "SYS/PERM", True),
    "unavailable": ("Mail storage is unavailable; try again later.", "SYS/TEMP", True),
}

LOCK_SECONDS = 300.0  # the maildrop lock's lease; renewed every LOCK_SECONDS / 3 while the session lives
MAX_LINE = 8192
IDLE_SECONDS = 600.0  # RFC 1939 §3: an inactivity timer of at least 10 minutes
MAX_BAD_COMMANDS = 3  # refused commands before a login; the next command closes the connection (as Dovecot)


@dataclass
class Pop3Context:
    meta: MetaStore
    fs: Fs
    policy: AddressPolicy
    throttle: LoginLimiter = field(default_factory=LoginLimiter)
    tls: ssl.SSLContext | None = None
    metrics: Any = None  # mailstore.metrics.Pop3Metrics, when /metrics is served


@dataclass
class Drop:
    """The maildrop as the session sees it: one entry per message, numbered from 1."""

    uids: list[int]
    sizes: list[int]
    keys: list[str]
    uidls: list[str]
    mailbox_id: int
    deleted: set[int] = field(default_factory=set)  # message numbers DELE marked
    read: set[int] = field(default_factory=set)  # message numbers RETR sent

    def live(self) -> list[int]:
        return [n for n in range(1, len(self.uids) + 1) if n not in self.deleted]


class Pop3Error(Exception):
    """-ERR [code] text; `close`: the server hangs up after it."""

    def __init__(self, text: str, code: str = "", close: bool = False) -> None:
        super().__init__(text)
        self.text, self.code, self.close = text, code, close

    def line(self) -> bytes:
        return f"-ERR {f'[{self.code}] ' if self.code else ''}{self.text}\r\n".encode()


def stuffed(body: bytes) -> bytes:
    """A message as POP3 sends it: CRLF lines, a leading "." doubled, ended by CRLF "." CRLF."""
    text = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if text and not text.endswith(b"\r\n"):
        text += b"\r\n"
    if text.startswith(b"."):
        text = b"." + text
    return text.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def top(body: bytes, lines: int) -> bytes:
    """The header, the blank line and the first `lines` lines of the body (RFC 1939 TOP)."""
    text = body.replace(b"\r\n", b"\n")
    head, sep, rest = text.partition(b"\n\n")
    if not sep:
        return body
    kept = rest.split(b"\n")[:lines] if lines else []
    if kept and kept[-1] == b"" and not rest.endswith(b"\n"):
        kept = kept[:-1]
    return head + b"\n\n" + b"".join(k + b"\n" for k in kept)


class Session:
    def __init__(self, ctx: Pop3Context, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 secure: bool) -> None:
        self.ctx, self.reader, self.writer = ctx, reader, writer
        self.secure = secure
        peer = writer.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.session_id = secrets.token_urlsafe(9)
        self.user_arg: str | None = None  # USER given, PASS awaited
        self.user: str | None = None  # logged in
        self.drop: Drop | None = None
        self.holder = f"{self.session_id}"
        self.done = False
        self.commands = 0
        self._renew: asyncio.Task[None] | None = None
        self._unlocked = False
        self.bad = 0

    # ------------------------------------------------------------ the loop

    async def run(self) -> None:
        self.write(b"+OK mailstore POP3 ready.\r\n")
        while not self.done:
            await self.writer.drain()
            try:
                line = await asyncio.wait_for(self.reader.readuntil(b"\n"), IDLE_SECONDS)
            except asyncio.LimitOverrunError:
                self.write(b"-ERR Line too long.\r\n")
                return
            except (asyncio.IncompleteReadError, TimeoutError):
                return
            if len(line) > MAX_LINE:
                self.write(b"-ERR Line too long.\r\n")
                return
            self.commands += 1
            if self.drop is None and self.bad >= MAX_BAD_COMMANDS:
                self.write(b"-ERR Too many invalid bad commands.\r\n")
                return
            try:
                await self.command(line.rstrip(b"\r\n"))
            except Pop3Error as exc:
                if self.drop is None and exc.code not in ("AUTH", "IN-USE", "LOGIN-DELAY"):
                    self.bad += 1
                self.write(exc.line())
                if exc.close:
                    return
            except StoreUnavailable:
                self.write(b"-ERR [SYS/TEMP] Mail storage is unavailable; try again later.\r\n")
                return
        await self.writer.drain()

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def command(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        name, _, arg = text.partition(" ")
        name = name.upper()
        handler: Callable[[str], Awaitable[None]] | None = getattr(self, f"do_{name.lower()}", None) \
            if name.isalpha() else None
        allowed = _AUTH_STATE if self.drop is None else _TRANSACTION_STATE
        if handler is None or name not in allowed:  # (Dovecot's words, in each state)
            raise Pop3Error("Unknown command." if self.drop is None else f"Unknown command: {name[:32]}")
        await handler(arg)

    # ------------------------------------------------------------ AUTHORIZATION

    async def do_capa(self, arg: str) -> None:
        caps = ["CAPA", "TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE"]
        if self.drop is None:
            if self.ctx.tls is not None and not self.secure:
                caps.append("STLS")
            caps += ["USER", "SASL PLAIN"]
        self.write(b"+OK\r\n" + "".join(f"{c}\r\n" for c in caps).encode() + b".\r\n")

    async def do_stls(self, arg: str) -> None:
        if self.ctx.tls is None:
            raise Pop3Error("TLS support isn't enabled.")
        if self.secure:
            raise Pop3Error("TLS is already active.")
        self.write(b"+OK Begin TLS negotiation now.\r\n")
        await self.writer.drain()
        await self.writer.start_tls(self.ctx.tls)
        self.secure = True

    async def do_user(self, arg: str) -> None:
        self.user_arg = arg  # (an empty one too, as Dovecot: PASS then fails)
        self.write(b"+OK\r\n")

    async def do_pass(self, arg: str) -> None:
        if self.user_arg is None:
            raise Pop3Error("No username given.")
        user, self.user_arg = self.user_arg, None
        await self._login(user, arg, "USER")

    async def do_auth(self, arg: str) -> None:
        mechanism, _, initial = arg.partition(" ")
        if not mechanism:  # RFC 1734's listing, as Dovecot answers it
            self.write(b"+OK\r\nPLAIN\r\n.\r\n")
            return
        if mechanism.upper() != "PLAIN":
            raise Pop3Error("Unsupported authentication mechanism.")
        if not initial:
            self.write(b"+ \r\n")
            await self.writer.drain()
            initial = (await self.reader.readuntil(b"\n")).decode("ascii", "replace").strip()
            if initial == "*":
                raise Pop3Error("Authentication aborted by client.")
        try:
            _, user, password = base64.b64decode(initial if initial != "=" else "", validate=True).split(b"\0")
        except ValueError:
            raise Pop3Error("Invalid base64 data in continued response") from None
        await self._login(user.decode("utf-8", "replace"), password.decode("utf-8", "replace"), "PLAIN")

    async def do_apop(self, arg: str) -> None:
        raise Pop3Error("APOP not enabled.")  # (it needs passwords kept in plain text: never here)

    async def _login(self, user: str, password: str, method: str) -> None:
        ctx = self.ctx
        try:
            name = await password_login(ctx.meta, ctx.policy, ctx.throttle, ctx.fs, user=user, password=password,
                                        peer=self.peer, service="pop3", method=method, session=self.session_id,
                                        metrics=ctx.metrics)
        except LoginRefused as exc:
            text, code, close = _REFUSALS[exc.kind]
            raise Pop3Error(text, code, close) from None
        self._unlocked = mail_crypt_of(ctx.fs) is not None
        self.user = name
        if not await asyncio.to_thread(ctx.meta.pop3_lock, name, self.holder, LOCK_SECONDS):
            logs.event(auth_log, logging.INFO, "login refused", remote=self.peer or "-", user=name, service="pop3",
                       method=method, session=self.session_id, reason="maildrop locked")
            raise Pop3Error("Mailbox is locked by another POP3 session.", "IN-USE", close=True)
        self._renew = asyncio.ensure_future(self._keep_lock(name))
        self.drop = await asyncio.to_thread(self._open_drop, name)
        logged_in("pop3", name, peer=self.peer, method=method, session=self.session_id, tls=self.secure,
                  messages=len(self.drop.uids))
        if ctx.metrics is not None:
            ctx.metrics.logins.inc()
        self.write(b"+OK Logged in.\r\n")

    def _open_drop(self, user: str) -> Drop:
        box = self.ctx.meta.mailbox(user, "INBOX")
        if box is None:
            return Drop([], [], [], [], 0)
        rows = self.ctx.meta.pop3_listing(box.id)
        return Drop([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                    [r[3] or f"{r[0]:08x}{box.uidvalidity:08x}" for r in rows], box.id)

    async def _keep_lock(self, user: str) -> None:
        while True:
            await asyncio.sleep(LOCK_SECONDS / 3)
            try:
                await asyncio.to_thread(self.ctx.meta.pop3_lock, user, self.holder, LOCK_SECONDS)
            except StoreUnavailable:
                continue

    # ------------------------------------------------------------ TRANSACTION

    def _number(self, arg: str, *, deleted_ok: bool = False, more: bool = False) -> int:
        """The message number `arg` names (`more`: other arguments may follow it)."""
        assert self.drop is not None
        word, _, rest = arg.partition(" ")
        if not word.isdigit():
            raise Pop3Error(f"Invalid message number: {word[:32]}")
        if rest and not more:
            raise Pop3Error(f"Noise after message number: {arg[len(word):][:32]}")
        n = int(word)
        if not 1 <= n <= len(self.drop.uids):
            raise Pop3Error(f"There's no message {n}.")
        if n in self.drop.deleted and not deleted_ok:
            raise Pop3Error("Message is deleted.")
        return n

    async def do_stat(self, arg: str) -> None:
        assert self.drop is not None
        live = self.drop.live()
        self.write(f"+OK {len(live)} {sum(self.drop.sizes[n - 1] for n in live)}\r\n".encode())

    async def do_list(self, arg: str) -> None:
        assert self.drop is not None
        if arg:
            n = self._number(arg)
            self.write(f"+OK {n} {self.drop.sizes[n - 1]}\r\n".encode())
            return
        live = self.drop.live()
        lines = "".join(f"{n} {self.drop.sizes[n - 1]}\r\n" for n in live)
        self.write(f"+OK {len(live)} messages:\r\n{lines}.\r\n".encode())

    async def do_uidl(self, arg: str) -> None:
        assert self.drop is not None
        if arg:
            n = self._number(arg)
            self.write(f"+OK {n} {self.drop.uidls[n - 1]}\r\n".encode())
            return
        lines = "".join(f"{n} {self.drop.uidls[n - 1]}\r\n" for n in self.drop.live())
        self.write(f"+OK\r\n{lines}.\r\n".encode())

    async def _body(self, n: int) -> bytes:
        assert self.drop is not None
        try:
            body, _ = await self.ctx.fs.get(self.drop.keys[n - 1])
        except NotFound:  # expunged (over IMAP) since this session began: Dovecot's words
            raise Pop3Error(f"Message {n} expunged.") from None
        except FsError as exc:
            log.warning("POP3 %s: reading message %d (%s) failed: %s", self.user, n, self.drop.keys[n - 1], exc)
            raise Pop3Error("Error reading the message; try again later.", "SYS/TEMP") from None
        return body

    async def do_retr(self, arg: str) -> None:
        assert self.drop is not None
        n = self._number(arg)
        data = stuffed(await self._body(n))
        self.drop.read.add(n)
        if self.ctx.metrics is not None:
            self.ctx.metrics.retrieved.inc()
        self.write(f"+OK {self.drop.sizes[n - 1]} octets\r\n".encode() + data)

    async def do_top(self, arg: str) -> None:
        n = self._number(arg, more=True)
        _, _, size = arg.partition(" ")
        if not size:
            raise Pop3Error("Noise after message number: ")  # (what Dovecot says to a TOP without its size)
        if not size.isdigit():
            raise Pop3Error(f"Invalid size: {size[:32]}")
        self.write(b"+OK\r\n" + stuffed(top(await self._body(n), int(size))))

    async def do_dele(self, arg: str) -> None:
        assert self.drop is not None
        n = self._number(arg)
        self.drop.deleted.add(n)
        self.write(b"+OK Marked to be deleted.\r\n")

    async def do_rset(self, arg: str) -> None:
        assert self.drop is not None
        self.drop.deleted.clear()
        self.drop.read.clear()  # what RETR sent is not marked \Seen either (as Dovecot)
        self.write(b"+OK\r\n")

    async def do_noop(self, arg: str) -> None:
        self.write(b"+OK\r\n")

    async def do_quit(self, arg: str) -> None:
        self.done = True
        if self.drop is None:
            self.write(b"+OK Logging out\r\n")  # (no full stop before a login: Dovecot's pop3-login)
            return
        drop, user = self.drop, self.user
        assert user is not None
        gone = sorted(drop.uids[n - 1] for n in drop.deleted)
        seen = sorted(drop.uids[n - 1] for n in drop.read - drop.deleted)
        try:
            if seen:
                await asyncio.to_thread(folders.store_flags, self.ctx.meta, drop.mailbox_id, seen, "+FLAGS",
                                        ["\\Seen"])
            if gone:
                _, keys = await asyncio.to_thread(folders.expunge, self.ctx.meta, user, drop.mailbox_id, gone,
                                                  deleted_only=False)
                await self._drop_objects(keys)
        except StoreUnavailable:
            raise Pop3Error("Couldn't delete the messages; try again later.", "SYS/TEMP", close=True) from None
        if self.ctx.metrics is not None:
            self.ctx.metrics.deleted.inc(len(gone))
        self.write(b"+OK Logging out, messages deleted.\r\n" if gone else b"+OK Logging out.\r\n")

    async def _drop_objects(self, keys: list[str]) -> None:
        if keys:  # metadata is gone already: objects last (an orphan is gc's; a dangling row would not be)
            try:
                await self.ctx.fs.delete_many(keys)
            except (FsError, OSError) as exc:
                log.warning("deleting %d objects after POP3 DELE failed (gc will): %s", len(keys), exc)

    # ------------------------------------------------------------ the end

    async def close(self) -> None:
        if self._renew is not None:
            self._renew.cancel()
        if self.user is not None:
            if self.drop is not None:
                try:
                    await asyncio.to_thread(self.ctx.meta.pop3_unlock, self.user, self.holder)
                except StoreUnavailable:
                    pass  # the lease runs out
            crypt = mail_crypt_of(self.ctx.fs)
            if crypt is not None and self._unlocked:
                crypt.release(self.user)


_AUTH_STATE = {"CAPA", "USER", "PASS", "AUTH", "APOP", "STLS", "QUIT"}
_TRANSACTION_STATE = {"CAPA", "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL", "QUIT"}


async def serve_client(ctx: Pop3Context, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       implicit_tls: bool = False) -> None:
    await connection.serve(Session(ctx, reader, writer, implicit_tls), writer, log, ctx.metrics,
                           b"-ERR [SYS/TEMP] Internal error, closing.\r\n", "quit")


async def start_pop3(ctx: Pop3Context, host: str, port: int, *, implicit_tls: bool = False) -> asyncio.Server:
    """A listener: plain (with STLS when ctx.tls is set) or implicit TLS (995-style)."""
    return await asyncio.start_server(lambda r, w: serve_client(ctx, r, w, implicit_tls), host, port,
                                      limit=MAX_LINE, ssl=ctx.tls if implicit_tls else None)
