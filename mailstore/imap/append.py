"""APPEND (RFC 3501 §6.3.11, UIDPLUS APPENDUID): object first, then the message row."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from cache import FsError

from .. import layout
from ..db import Mailbox
from ..message import parse as parse_message
from .reader import Command
from .state import ImapNo, Reply, SessionBase


class AppendCommands(SessionBase):
    async def do_append(self, cmd: Command) -> Reply:
        assert self.user is not None
        data: bytes = cmd.args["message"]
        if len(data) > self.ctx.max_append:
            raise ImapNo("Message too big", "TOOBIG")
        box = await self._box(cmd.args["mailbox"], missing="TRYCREATE")
        u = self._read(self.ctx.meta.get_user, self.user)
        if u is not None and u.quota_bytes and u.used_bytes + len(data) > u.quota_bytes:
            raise ImapNo("Over quota", "OVERQUOTA")
        when = cmd.args["date"].timestamp() if cmd.args["date"] else time.time()
        env, bs, (box, uid) = await asyncio.to_thread(self._parse_and_reserve, data, box.name)
        guid = uuid.uuid4().hex
        now = time.time()
        key = layout.message_key(self.user, box.guid, guid)
        meta = layout.MessageMeta(self.user, guid, len(data), int(when), int(now), box.name, box.guid,
                                  box.uidvalidity, uid)
        try:
            await self.ctx.fs.put(key, data, meta.to_headers(), "message/rfc822")
        except (FsError, OSError):
            await asyncio.to_thread(self.ctx.meta.release_uid, box.id, uid)
            raise ImapNo("Storage temporarily unavailable", "UNAVAILABLE") from None
        flags = tuple(f for f in cmd.args["flags"] if f != "\\Recent")
        await asyncio.to_thread(self.ctx.meta.commit_message, self.user, box.id, uid, guid, key, len(data),
                                when, now, env, bs, flags)
        return [], f"[APPENDUID {box.uidvalidity} {uid}] APPEND completed"

    def _parse_and_reserve(self, data: bytes, mailbox: str) -> tuple[list[Any], list[Any], tuple[Mailbox, int]]:
        """Blocking: one trip to a worker thread for both."""
        env, bs = parse_message(data)
        return env, bs, self.ctx.meta.reserve_uid(self.authed, mailbox)
