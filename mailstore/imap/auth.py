"""Commands valid in any state, and logging in (RFC 3501 §6.1, §6.2; SASL-IR, ID, ENABLE)."""

from __future__ import annotations

import asyncio
import base64
import logging

from cache import FsError, mail_crypt_of
from cache.mailcrypt import WrongPassword
from runtime import logs

from ..throttle import Busy
from ..users import resolve, verify_password
from .reader import Command
from .state import ImapBad, ImapNo, Reply, SessionBase

auth_log = logging.getLogger("mailstore.auth")  # logins of every service: packaging/fail2ban reads it


class AuthCommands(SessionBase):
    async def do_capability(self, cmd: Command) -> Reply:
        return [f"* CAPABILITY {self._caps()}\r\n".encode()], "CAPABILITY completed"

    async def do_noop(self, cmd: Command) -> Reply:
        return [], "NOOP completed"

    async def do_logout(self, cmd: Command) -> Reply:
        self.logout = True
        self.view = None
        return [b"* BYE mailstore IMAP logging out\r\n"], "LOGOUT completed"

    async def do_id(self, cmd: Command) -> Reply:
        return [b'* ID ("name" "mailstore")\r\n'], "ID completed"

    async def do_enable(self, cmd: Command) -> Reply:
        enabled: list[str] = []  # each extension we know, once; named again if on already (as Dovecot)
        for name in cmd.args["capabilities"]:
            if name in (e.upper() for e in enabled):
                continue
            if name == "CONDSTORE":
                self.condstore = True
                enabled.append(name)
            elif name == "QRESYNC":  # implies CONDSTORE (RFC 7162 §3.2.3)
                self.qresync = self.condstore = True
                enabled.append(name)
            elif name == "IMAP4REV2":  # RFC 9051 §6.3.1: the client speaks IMAP4rev2 from here on
                self.rev2 = True
                enabled.append("IMAP4rev2")
            elif name == "UTF8=ACCEPT":  # RFC 9755
                self.utf8_accept = True
                enabled.append(name)
        if self.view is not None:
            self.view.condstore = self.view.condstore or self.condstore
            self.view.show_recent = not self.rev2
        if not enabled:  # nothing we know: no ENABLED line (as Dovecot)
            return [], "ENABLE completed"
        return [f"* ENABLED {' '.join(enabled)}\r\n".encode()], "ENABLE completed"

    async def _login(self, user: str, password: bytes, method: str) -> None:
        # Failed logins from this address or for this user: a growing pause, one attempt at a time.
        try:
            async with self.ctx.throttle.attempt(f"addr:{self.peer}", f"user:{user.lower()}") as attempt:
                name = await asyncio.to_thread(resolve, self.ctx.meta, self.ctx.policy, user)
                stored = await asyncio.to_thread(self.ctx.meta.password_hash, name) if name else None
                ok = stored is not None and await asyncio.to_thread(
                    verify_password, password.decode("utf-8", "replace"), stored)
                if ok:
                    attempt.succeeded()
                else:
                    attempt.failed()
        except Busy:
            logs.event(auth_log, logging.WARNING, "login failed", remote=self.peer or "-", user=user, service="imap",
                       method=method, reason="throttled", session=self.session_id)
            raise ImapNo("Too many login attempts; try again later", "UNAVAILABLE") from None
        if not ok:
            if self.ctx.metrics is not None:
                self.ctx.metrics.auth_failures.inc()
            logs.event(auth_log, logging.WARNING, "login failed", remote=self.peer or "-", user=user, service="imap",
                       method=method, reason="unknown user" if stored is None else "password",
                       session=self.session_id)
            raise ImapNo("Authentication failed", "AUTHENTICATIONFAILED")
        assert name is not None
        await self._unlock_mail(name, password.decode("utf-8", "replace"))
        self.user = name
        logs.event(auth_log, logging.INFO, "login", remote=self.peer or "-", user=name, service="imap", method=method,
                   tls=self.secure, session=self.session_id)

    async def _unlock_mail(self, name: str, password: str) -> None:
        """With a mail-crypt: fs, the user's private key opened with the password (made, the first time)."""
        crypt = mail_crypt_of(self.ctx.fs)
        if crypt is None:
            return
        try:
            await crypt.unlock(name, password)
        except WrongPassword:
            logs.event(auth_log, logging.ERROR, "login failed", remote=self.peer or "-", user=name, service="imap",
                       reason="the password does not open the user's mail-crypt key (changed without "
                              "`mailstore user passwd --fs`?)", session=self.session_id)
            raise ImapNo("Your mail key does not open with this password; ask the operator", "UNAVAILABLE") from None
        except FsError as exc:
            log_reason = f"mail-crypt key: {exc}"
            logs.event(auth_log, logging.WARNING, "login failed", remote=self.peer or "-", user=name, service="imap",
                       reason=log_reason, session=self.session_id)
            raise ImapNo("Mail storage is unavailable; try again later", "UNAVAILABLE") from None

    async def do_login(self, cmd: Command) -> Reply:
        await self._login(cmd.args["user"], cmd.args["password"], "LOGIN")
        return [], f"[CAPABILITY {self._caps()}] LOGIN completed"

    async def do_authenticate(self, cmd: Command) -> Reply:
        if cmd.args["mechanism"] != "PLAIN":
            raise ImapNo("Unsupported mechanism", "CANNOT")
        initial = cmd.args["initial"]
        if initial is None:  # the I/O loop asks with "+ " and calls finish_authenticate
            self.pending_auth = cmd.tag
            return [], ""
        return await self._plain(initial)

    async def finish_authenticate(self, tag: str, line: bytes) -> bytes:
        """The client's answer to "+ " for AUTHENTICATE PLAIN (or "*" to cancel)."""
        self.pending_auth = None
        if line.strip() == b"*":
            return f"{tag} BAD AUTHENTICATE cancelled\r\n".encode()
        try:
            _, text = await self._plain(line.strip())
        except ImapNo as exc:
            return f"{tag} NO [{exc.code}] {exc.text}\r\n".encode()
        except ImapBad as exc:
            return f"{tag} BAD {exc}\r\n".encode()
        return f"{tag} OK {text}\r\n".encode()

    async def _plain(self, initial: bytes) -> Reply:
        try:
            _, user, password = base64.b64decode(initial if initial != b"=" else b"").split(b"\0")
        except ValueError:
            raise ImapBad("Invalid PLAIN response") from None
        await self._login(user.decode("utf-8", "replace"), password, "PLAIN")
        return [], f"[CAPABILITY {self._caps()}] AUTHENTICATE completed"

    async def do_starttls(self, cmd: Command) -> Reply:
        if self.ctx.tls is None:
            raise ImapNo("STARTTLS is not configured on this listener", "CANNOT")
        if self.secure:
            raise ImapBad("TLS is already active")
        self.start_tls = True
        return [], "Begin TLS negotiation now"

    async def do_compress(self, cmd: Command) -> Reply:
        """RFC 4978: DEFLATE from the byte after this OK, both ways, to the end of the connection."""
        if self.compressed:
            raise ImapNo("Compression is already active", "COMPRESSIONACTIVE")
        if cmd.args["mechanism"] != "DEFLATE":
            raise ImapNo(f"{cmd.args['mechanism']} compression is not supported")
        self.compressed = self.start_deflate = True
        return [], "DEFLATE active"
