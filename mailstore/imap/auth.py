"""Commands valid in any state, and logging in (RFC 3501 §6.1, §6.2; SASL-IR, ID, ENABLE)."""

from __future__ import annotations

import base64

from ..login import LoginRefused, logged_in, password_login
from .reader import Command
from .state import ImapBad, ImapNo, Reply, SessionBase

_REFUSALS = {  # LoginRefused.kind: IMAP's words and response code
    "throttled": ("Too many login attempts; try again later", "UNAVAILABLE"),
    "failed": ("Authentication failed", "AUTHENTICATIONFAILED"),
    "key": ("Your mail key does not open with this password; ask the operator", "UNAVAILABLE"),
    "unavailable": ("Mail storage is unavailable; try again later", "UNAVAILABLE"),
}


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
        ctx = self.ctx
        try:
            name = await password_login(ctx.meta, ctx.policy, ctx.throttle, ctx.fs, user=user,
                                        password=password.decode("utf-8", "replace"), peer=self.peer,
                                        service="imap", method=method, session=self.session_id, metrics=ctx.metrics)
        except LoginRefused as exc:
            raise ImapNo(*_REFUSALS[exc.kind]) from None
        self.user = name
        logged_in("imap", name, peer=self.peer, method=method, session=self.session_id, tls=self.secure)

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
