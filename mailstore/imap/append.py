"""APPEND (RFC 3501 §6.3.11, UIDPLUS APPENDUID): objects first, then the message rows.

One command may carry several messages (MULTIAPPEND, RFC 3502): they are
added all or none, so the rows are committed in one transaction after every
object is stored.  A message may be put together from literal text and parts
of messages already stored (CATENATE, RFC 4469), named by IMAP URLs.  Text
sent as a literal8 (RFC 3516) may hold binary parts: those are stored
base64-encoded and BINARY fetches give the bytes back (cte.py).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from cache import FsError, NotFound

from .. import cte, layout, mime
from ..db import Mailbox, NewMessage
from ..message import parse as parse_message
from . import imapurl
from . import response as R
from .reader import AppendMessage, Command
from .state import ImapBad, ImapNo, Reply, SessionBase

VISIBLE_WAIT = 10.0  # seconds an APPEND waits for a lower reservation to resolve before it answers anyway


@dataclass
class _Ready:
    data: bytes
    flags: tuple[str, ...]
    when: float


class AppendCommands(SessionBase):
    async def do_append(self, cmd: Command) -> Reply:
        assert self.user is not None
        box = await self._box(cmd.args["mailbox"], missing="TRYCREATE")
        ready = [await self._assemble(m) for m in cmd.args["messages"]]
        if any(len(r.data) > self.ctx.max_append for r in ready):
            raise ImapNo("Message too big", "TOOBIG")
        u = self._read(self.ctx.meta.get_user, self.user)
        total = sum(len(r.data) for r in ready)
        if u is not None and u.quota_bytes and u.used_bytes + total > u.quota_bytes:
            raise ImapNo("Over quota", "OVERQUOTA")
        parsed, reserved = await asyncio.to_thread(self._parse_and_reserve, [r.data for r in ready], box.name)
        box = reserved[0][0]
        now = time.time()
        rows: list[NewMessage] = []
        for r, (env, bs), (_, uid) in zip(ready, parsed, reserved, strict=True):
            guid = uuid.uuid4().hex
            key = layout.message_key(self.user, box.guid, guid)
            rows.append(NewMessage(self.user, box.id, uid, guid, key, len(r.data), r.when, now, env, bs,
                                   tuple(f for f in r.flags if f != "\\Recent")))
        stored = await asyncio.gather(*(self._put(row, box, r.data) for row, r in zip(rows, ready, strict=True)))
        if not all(stored):  # all or none: what was stored is dropped, the UIDs are let go
            await asyncio.to_thread(self.ctx.meta.commit_messages, [], [(box.id, row.uid) for row in rows])
            await self._drop_objects([row.object_key for row, ok in zip(rows, stored, strict=True) if ok])
            raise ImapNo("Storage temporarily unavailable", "UNAVAILABLE")
        await asyncio.to_thread(self.ctx.meta.commit_messages, rows, [])
        await self._until_visible(box.id, max(row.uid for row in rows))
        return [], f"[APPENDUID {box.uidvalidity} {R.uid_set([row.uid for row in rows])}] APPEND completed"

    async def _until_visible(self, box_id: int, uid: int) -> None:
        """Wait (at most VISIBLE_WAIT seconds) until readers see UID `uid`: while another delivery
        holds a lower UID's reservation the rows above it are hidden (db.VISIBLE, so UIDs appear in
        order), and a UID STORE or FETCH this client sends next, on the UID it was just given,
        would find no such message and do nothing. Reservations last as long as one upload."""
        lowest = self._read(self.ctx.meta.lowest_reservation, box_id)
        deadline = time.monotonic() + VISIBLE_WAIT
        delay = 0.002
        while lowest is not None and lowest < uid and time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            lowest = await asyncio.to_thread(self.ctx.meta.visible_uid_limit, box_id)  # reaps a dead owner's

    async def _put(self, row: NewMessage, box: Mailbox, data: bytes) -> bool:
        meta = layout.MessageMeta(row.user, row.guid, row.size, int(row.internal_date), int(row.saved), box.name,
                                  box.guid, box.uidvalidity, row.uid)
        try:
            await self.ctx.fs.put(row.object_key, data, meta.to_headers(), "message/rfc822")
        except (FsError, OSError):
            return False
        return True

    def _parse_and_reserve(self, messages: list[bytes], mailbox: str) -> tuple[list[tuple[Any, Any]],
                                                                             list[tuple[Mailbox, int]]]:
        """Blocking: one trip to a worker thread for both."""
        assert self.user is not None
        parsed = [parse_message(data) for data in messages]
        return parsed, self.ctx.meta.reserve_uids([(self.user, mailbox)] * len(messages))

    async def _assemble(self, m: AppendMessage) -> _Ready:
        """The message's bytes: its literal, or its CATENATE parts joined."""
        if m.utf8 and not self.utf8_accept:
            raise ImapBad("UTF8 (...) needs ENABLE UTF8=ACCEPT first (RFC 9755 §4)")
        pieces = [p if isinstance(p, bytes) else await self._url_bytes(p) for p in m.parts]
        data = b"".join(pieces)
        if sum(map(len, pieces)) > self.ctx.max_append:
            raise ImapNo("Message too big", "TOOBIG")
        if m.binary:
            data = await asyncio.to_thread(cte.encode_binary_parts, data)
        return _Ready(data, m.flags, m.date.timestamp() if m.date else time.time())

    async def _url_bytes(self, url: str) -> bytes:
        """What a CATENATE URL names, from this user's own mailboxes; NO [BADURL url] otherwise."""
        assert self.user is not None
        shown = url.replace("]", "%5D").replace("\r", "").replace("\n", "")  # url-resp-text has no "]"

        def bad(text: str) -> ImapNo:
            return ImapNo(text, f"BADURL {shown}")

        try:
            ref = imapurl.parse(url)
        except imapurl.BadUrl as exc:
            raise bad(f"Invalid IMAP URL: {exc}") from None
        name = ref.mailbox if ref.mailbox is not None else self.view.name if self.view is not None else None
        if name is None:
            raise bad("A relative URL needs a selected mailbox")
        box = self._read(self.ctx.meta.mailbox, self.user, name)
        if box is None:
            raise bad(f"Mailbox doesn't exist: {name}")
        if ref.uidvalidity is not None and ref.uidvalidity != box.uidvalidity:
            raise bad("Invalid UIDVALIDITY")
        msg = self._read(self.ctx.meta.messages_by_uid, box.id, [ref.uid]).get(ref.uid)
        if msg is None:
            raise bad("Message not found")
        try:
            data = (await self.ctx.fs.get(msg.object_key))[0]
        except NotFound:
            raise bad("Message not found") from None
        except (FsError, OSError):
            raise ImapNo("Storage temporarily unavailable", "UNAVAILABLE") from None
        if ref.section is not None:
            if ref.section.parts and mime.find(mime.parse(data), ref.section.parts) is None:
                raise bad("No such section in the message")  # Dovecot adds nothing here; RFC 4469 §5: BADURL
            data = R.section_bytes(data, ref.section)
        if ref.partial is not None:
            start, count = ref.partial
            data = data[start:] if count is None else data[start:start + count]
        return data
