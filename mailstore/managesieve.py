"""ManageSieve (RFC 5804): users upload, check, activate and remove their Sieve scripts from
their mail client's filter editor (Thunderbird, Roundcube, sieve-connect).

- Scripts live in the metadata store (sieve/scripts.py), so LMTP on every shim host runs the
  one a user activated here. Only scripts that compile are stored; PUTSCRIPT and CHECKSCRIPT
  answer with Pigeonhole's errors, line numbers and words (sieve/checks.py), as Dovecot's
  managesieved does, and every other answer is worded as Dovecot's.
- STARTTLS (when a certificate is configured), AUTHENTICATE PLAIN, and the login throttle and
  auth log shared with IMAP and POP3 (login.py).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import secrets
import ssl
from dataclasses import dataclass, field
from typing import Any

from runtime import logs

from . import connection
from .db import MetaError, MetaStore, StoreUnavailable
from .login import LoginRefused, logged_in, password_login
from .sieve import scripts
from .sieve.checks import EXTENSIONS
from .throttle import LoginLimiter
from .users import AddressPolicy

log = logging.getLogger("mailstore.managesieve")

MAX_LINE = 8192
MAX_LITERAL = scripts.MAX_SCRIPT_BYTES + 4096  # a larger literal closes the connection
IDLE_SECONDS = 1800.0
MAX_BAD_COMMANDS = 3  # invalid commands before a login; the last is answered with BYE (as Dovecot)
_ATOM = re.compile(rb"[A-Za-z]+")
_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"')
_LITERAL = re.compile(rb"\{(\d{1,10})\+?\}$")
_NUMBER = re.compile(rb"\d{1,10}")


class _Invalid:
    """Where a command's arguments stopped making sense (answered "Invalid arguments.")."""


INVALID = _Invalid()
Arg = bytes | int | _Invalid


@dataclass
class SieveContext:
    meta: MetaStore
    policy: AddressPolicy
    throttle: LoginLimiter = field(default_factory=LoginLimiter)
    tls: ssl.SSLContext | None = None
    metrics: Any = None  # mailstore.metrics.ManageSieveMetrics, when /metrics is served


class Refused(Exception):
    """NO [(code)] "text" (or NO {n} with `text` as a literal when it spans lines)."""

    def __init__(self, text: str, code: str = "", bad: bool = False) -> None:
        super().__init__(text)
        self.text, self.code = text, code
        self.bad = bad  # an invalid command (not a refused request): counted before a login


def _invalid(text: str) -> Refused:
    return Refused(text, bad=True)


class Bye(Exception):
    pass


def quoted(s: str) -> bytes:
    """A string as ManageSieve sends it: quoted, or a literal when it holds a line break."""
    if "\r" in s or "\n" in s or "\0" in s:
        data = s.encode()
        return b"{%d}\r\n" % len(data) + data
    return b'"' + s.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'


def response(kind: str, text: str, code: str = "") -> bytes:
    head = f"{kind}{f' ({code})' if code else ''} ".encode()
    return head + quoted(text) + b"\r\n"


class Session:
    def __init__(self, ctx: SieveContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.ctx, self.reader, self.writer = ctx, reader, writer
        peer = writer.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        self.session_id = secrets.token_urlsafe(9)
        self.secure = False
        self.user: str | None = None
        self.done = False
        self.commands = 0
        self.bad = 0

    async def close(self) -> None:
        pass  # (nothing held beyond the connection)

    # ------------------------------------------------------------ reading

    async def read_command(self) -> tuple[str, list[Arg]] | None:
        """One command: its name and its arguments (strings as bytes, numbers as int); None at EOF.
        A literal ({n+} or {n}) is read where it stands (RFC 5804 §4)."""
        args: list[Arg] = []
        name = ""
        while True:
            line = await asyncio.wait_for(self.reader.readuntil(b"\n"), IDLE_SECONDS)
            if len(line) > MAX_LINE:
                raise Bye("Line too long.")
            line = line.rstrip(b"\r\n")
            pos = 0
            if not name:
                m = _ATOM.match(line)
                if m is None:
                    return "", [INVALID]
                name, pos = m.group(0).decode().upper(), m.end()
            literal = None
            while pos < len(line):
                if line[pos:pos + 1] != b" ":
                    return name, [*args, INVALID]
                pos += 1
                c = line[pos:pos + 1]
                if c == b'"':
                    m = _QUOTED.match(line, pos)
                    if m is None:
                        return name, [*args, INVALID]
                    args.append(re.sub(rb"\\(.)", rb"\1", m.group(1)))
                    pos = m.end()
                elif c == b"{":
                    m = _LITERAL.match(line, pos)
                    if m is None:
                        return name, [*args, INVALID]
                    literal = int(m.group(1))
                    pos = len(line)
                elif c.isdigit():
                    m = _NUMBER.match(line, pos)
                    assert m is not None
                    args.append(int(m.group(0)))
                    pos = m.end()
                else:
                    return name, [*args, INVALID]
            if literal is None:
                return name, args
            if literal > MAX_LITERAL:
                raise Bye("Literal too large.")
            args.append(await self.reader.readexactly(literal))

    # ------------------------------------------------------------ the loop

    async def run(self) -> None:
        self.writer.write(self.capabilities() + response("OK", "mailstore ready."))
        while not self.done:
            await self.writer.drain()
            try:
                got = await self.read_command()
            except (asyncio.IncompleteReadError, TimeoutError):
                return
            except asyncio.LimitOverrunError:
                self.writer.write(response("BYE", "Line too long."))
                return
            except Bye as exc:
                self.writer.write(response("BYE", str(exc)))
                return
            if got is None:
                return
            self.commands += 1
            name, args = got
            try:
                await self.command(name, args)
            except Refused as exc:
                if self.user is None and exc.bad:
                    self.bad += 1
                    if self.bad >= MAX_BAD_COMMANDS:  # (instead of the answer, as Dovecot's login does)
                        self.writer.write(response("BYE", "Too many invalid MANAGESIEVE commands."))
                        return
                self.writer.write(self._refusal(exc))
            except StoreUnavailable:
                self.writer.write(response("NO", "Mail storage is unavailable; try again later.", "TRYLATER"))
        await self.writer.drain()

    @staticmethod
    def _refusal(exc: Refused) -> bytes:
        if "\n" in exc.text:  # (a script's errors: one per line, as a literal)
            data = exc.text.encode()
            return f"NO {f'({exc.code}) ' if exc.code else ''}".encode() + b"{%d}\r\n" % len(data) + data + b"\r\n"
        return response("NO", exc.text, exc.code)

    async def command(self, name: str, args: list[Arg]) -> None:
        allowed = _AUTHENTICATED if self.user is not None else _NOT_AUTHENTICATED
        if name not in allowed:
            if self.user is None:  # (Dovecot's managesieve-login has one answer for all of these)
                raise _invalid("Error in MANAGESIEVE command received by server.")
            raise _invalid(f"Error in MANAGESIEVE command {name[:32]}: Unknown command.")
        want, optional = _ARGUMENTS[name]
        if name == "HAVESPACE" and len(args) == 2 and not isinstance(args[1], int):
            raise Refused("Invalid scriptsize argument.")
        if any(isinstance(a, _Invalid) for a in args):
            raise _invalid(f"Error in MANAGESIEVE command {name}: Invalid arguments.")
        if len(args) < len(want):
            raise _invalid(f"Error in MANAGESIEVE command {name}: Missing arguments.")
        if len(args) > len(want) + optional:
            raise _invalid(f"Error in MANAGESIEVE command {name}: Too many command arguments.")
        for a, kind in zip(args, want + "s" * optional, strict=False):
            if (kind == "s") != isinstance(a, bytes) and name != "HAVESPACE":
                raise _invalid(f"Error in MANAGESIEVE command {name}: Invalid arguments.")
        if self.ctx.metrics is not None:
            self.ctx.metrics.commands.labels(name).inc()
        await getattr(self, f"do_{name.lower()}")(args)

    def capabilities(self) -> bytes:
        lines: list[tuple[str, str | None]] = [("IMPLEMENTATION", "mailstore"), ("SIEVE", " ".join(EXTENSIONS))]
        if self.user is None:
            lines.append(("SASL", "PLAIN"))
            if self.ctx.tls is not None and not self.secure:
                lines.append(("STARTTLS", None))
        lines.append(("VERSION", "1.0"))
        return b"".join(quoted(k) + (b" " + quoted(v) if v is not None else b"") + b"\r\n" for k, v in lines)

    # ------------------------------------------------------------ any state

    async def do_capability(self, args: list[Arg]) -> None:
        self.writer.write(self.capabilities() + response("OK", "Capability completed."))

    async def do_noop(self, args: list[Arg]) -> None:
        if args:
            tag = _text(args[0])
            self.writer.write(b"OK (TAG " + quoted(tag) + b') "Done"\r\n')
        else:
            self.writer.write(response("OK", "NOOP Completed"))

    async def do_logout(self, args: list[Arg]) -> None:
        self.done = True
        self.writer.write(response("OK", "Logout completed."))

    # ------------------------------------------------------------ not authenticated

    async def do_starttls(self, args: list[Arg]) -> None:
        if self.ctx.tls is None:
            raise Refused("TLS support isn't enabled.")
        if self.secure:
            raise Refused("TLS is already active.")
        self.writer.write(response("OK", "Begin TLS negotiation now."))
        await self.writer.drain()
        await self.writer.start_tls(self.ctx.tls)
        self.secure = True
        # RFC 5804 §2.2: the capabilities again, now that they may differ.
        self.writer.write(self.capabilities() + response("OK", "TLS negotiation successful."))

    async def do_authenticate(self, args: list[Arg]) -> None:
        mechanism = _text(args[0]).upper()
        if mechanism != "PLAIN":
            raise Refused("Unsupported authentication mechanism.")
        if len(args) > 1:
            initial = _text(args[1])
        else:  # a challenge, and the client's answer (a string, or "*" to give up)
            self.writer.write(b'""\r\n')
            await self.writer.drain()
            line = (await asyncio.wait_for(self.reader.readuntil(b"\n"), IDLE_SECONDS)).strip()
            if line == b"*" or line == b'"*"':
                raise Refused("Authentication aborted by client.")
            m = re.fullmatch(rb'"([^"]*)"|\{(\d{1,5})\+?\}', line)
            if m is None:
                raise Refused("Invalid base64 data in continued response.")
            if m.group(2) is not None:  # a literal, then the end of its line
                data = await self.reader.readexactly(int(m.group(2)))
                await self.reader.readuntil(b"\n")
            else:
                data = m.group(1)
            initial = data.decode("ascii", "replace").strip()
        try:
            _, user, password = base64.b64decode(initial, validate=True).split(b"\0")
        except ValueError:
            raise Refused("Invalid base64 data in continued response.") from None
        ctx = self.ctx
        try:
            name = await password_login(ctx.meta, ctx.policy, ctx.throttle, None, user=user.decode("utf-8", "replace"),
                                        password=password.decode("utf-8", "replace"), peer=self.peer,
                                        service="managesieve", method="PLAIN", session=self.session_id,
                                        metrics=ctx.metrics)
        except LoginRefused as exc:
            if exc.kind == "throttled":
                raise Refused("Too many login attempts; try again later.", "TRYLATER") from None
            raise Refused("Authentication failed.") from None
        self.user = name
        self.bad = 0
        logged_in("managesieve", name, peer=self.peer, method="PLAIN", session=self.session_id, tls=self.secure)
        if ctx.metrics is not None:
            ctx.metrics.logins.inc()
        self.writer.write(response("OK", "Logged in."))

    # ------------------------------------------------------------ authenticated

    async def _store(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, self.ctx.meta, self.user, *args)
        except scripts.ScriptError as exc:
            raise Refused(str(exc), exc.code) from None
        except MetaError as exc:  # (StoreUnavailable is not one: run() answers it)
            raise Refused(str(exc)) from None

    async def _checked(self, text: str, prefix: str, done: str) -> bytes:
        """The OK for a script that compiles (with its warnings, as Pigeonhole gives them);
        Refused with its errors when it does not."""
        names = {s.name for s in await self._store(scripts.listing)}  # (for `include`'s warning)
        lines, stage = scripts.diagnose(text, names.__contains__)
        if stage:
            raise Refused("".join(f"{prefix}{line}\r\n" for line in [*lines, f"error: {stage} failed."]))
        if lines:
            data = "".join(f"{prefix}{line}\r\n" for line in lines).encode()
            return b"OK (WARNINGS) {%d}\r\n" % len(data) + data + b"\r\n"
        return response("OK", done)

    async def do_havespace(self, args: list[Arg]) -> None:
        name, size = _text(args[0]), args[1]
        if not isinstance(size, int):
            raise Refused("Invalid scriptsize argument.")
        if not scripts.valid_name(name):
            raise Refused(f"Invalid Sieve script name `{name}'.")
        if size > scripts.MAX_SCRIPT_BYTES:
            raise Refused(f"Script is too large (max {scripts.MAX_SCRIPT_BYTES} bytes).", "QUOTA/MAXSIZE")
        await self._store(scripts.check_room, name)
        self.writer.write(response("OK", "Putscript would succeed."))

    async def do_putscript(self, args: list[Arg]) -> None:
        name, text = _text(args[0]), _script(args[1])
        if not scripts.valid_name(name):
            raise Refused(f"Invalid Sieve script name `{name}'.")
        if len(text.encode()) > scripts.MAX_SCRIPT_BYTES:
            raise Refused(f"Script is too large (max {scripts.MAX_SCRIPT_BYTES} bytes).", "QUOTA/MAXSIZE")
        ok = await self._checked(text, f"{name}: ", "PUTSCRIPT completed.")
        await self._store(scripts.put, name, text)
        logs.event(log, logging.INFO, "script stored", user=self.user, script=name, bytes=len(text.encode()),
                   session=self.session_id)
        self.writer.write(ok)

    async def do_checkscript(self, args: list[Arg]) -> None:
        self.writer.write(await self._checked(_script(args[0]), "", "Script checked successfully."))

    async def do_listscripts(self, args: list[Arg]) -> None:
        listed = await self._store(scripts.listing)
        self.writer.write(b"".join(quoted(s.name) + (b" ACTIVE" if s.active else b"") + b"\r\n" for s in listed)
                          + response("OK", "Listscripts completed."))

    async def do_getscript(self, args: list[Arg]) -> None:
        text = await self._store(scripts.get, _text(args[0]))
        data = text.encode()
        self.writer.write(b"{%d}\r\n" % len(data) + data + b"\r\n" + response("OK", "Getscript completed."))

    async def do_setactive(self, args: list[Arg]) -> None:
        name = _text(args[0])
        before = await self._store(scripts.activate, name)
        if not name:
            self.writer.write(response("OK", "Active script is now deactivated." if before is not None
                                       else "No scripts currently active."))
            return
        self.writer.write(response("OK", "Script is already active." if before == name else "Setactive completed."))

    async def do_deletescript(self, args: list[Arg]) -> None:
        await self._store(scripts.delete, _text(args[0]))
        self.writer.write(response("OK", "Deletescript completed."))

    async def do_renamescript(self, args: list[Arg]) -> None:
        await self._store(scripts.rename, _text(args[0]), _text(args[1]))
        self.writer.write(response("OK", "Renamescript completed."))


def _text(a: Arg) -> str:
    return a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a)


def _script(a: Arg) -> str:
    assert isinstance(a, bytes)  # (command() let only strings through)
    try:
        return a.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused("Script is not valid UTF-8.") from None


# name: (the arguments it must have: "s" a string, "n" a number; how many more strings it may have)
_ARGUMENTS: dict[str, tuple[str, int]] = {
    "CAPABILITY": ("", 0), "NOOP": ("", 1), "LOGOUT": ("", 0), "STARTTLS": ("", 0), "AUTHENTICATE": ("s", 1),
    "HAVESPACE": ("sn", 0), "PUTSCRIPT": ("ss", 0), "CHECKSCRIPT": ("s", 0), "LISTSCRIPTS": ("", 0),
    "GETSCRIPT": ("s", 0), "SETACTIVE": ("s", 0), "DELETESCRIPT": ("s", 0), "RENAMESCRIPT": ("ss", 0),
}
_NOT_AUTHENTICATED = {"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "AUTHENTICATE"}
_AUTHENTICATED = {"CAPABILITY", "NOOP", "LOGOUT", "HAVESPACE", "PUTSCRIPT", "CHECKSCRIPT", "LISTSCRIPTS",
                  "GETSCRIPT", "SETACTIVE", "DELETESCRIPT", "RENAMESCRIPT"}


async def serve_client(ctx: SieveContext, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await connection.serve(Session(ctx, reader, writer), writer, log, ctx.metrics,
                           response("BYE", "Internal error, closing."), "logout")


async def start_managesieve(ctx: SieveContext, host: str, port: int) -> asyncio.Server:
    return await asyncio.start_server(lambda r, w: serve_client(ctx, r, w), host, port, limit=MAX_LINE)
