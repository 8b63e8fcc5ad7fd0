"""Changing the selected mailbox: STORE, COPY, MOVE, EXPUNGE, CLOSE, UNSELECT, CHECK (RFC 3501 §6.4; UIDPLUS, MOVE)."""

from __future__ import annotations

import asyncio

from .. import folders
from . import response as R
from .reader import Command
from .state import ImapNo, Reply, SessionBase


class StoreCommands(SessionBase):
    async def do_check(self, cmd: Command) -> Reply:
        return [], "CHECK completed"

    async def do_close(self, cmd: Command) -> Reply:
        assert self.view is not None
        if not self.view.readonly:
            _, keys = await asyncio.to_thread(folders.expunge, self.ctx.meta, self.authed, self.view.box_id, None)
            await self._drop_objects(keys)
        self.view = None
        return [], "CLOSE completed"

    async def do_unselect(self, cmd: Command) -> Reply:
        self.view = None
        return [], "UNSELECT completed"

    async def _expunge(self, uids: list[int] | None) -> list[bytes]:
        assert self.view is not None
        if self.view.readonly:
            raise ImapNo("Mailbox is read-only", "READ-ONLY")
        _, keys = await asyncio.to_thread(folders.expunge, self.ctx.meta, self.authed, self.view.box_id, uids)
        await self._drop_objects(keys)
        return []  # refresh() reports the EXPUNGEs

    async def do_expunge(self, cmd: Command) -> Reply:
        return await self._expunge(None), "EXPUNGE completed"

    async def do_uid_expunge(self, cmd: Command) -> Reply:
        assert self.view is not None
        uids = self._uids(cmd.args["set"], uid=True)
        return await self._expunge(uids), "UID EXPUNGE completed"

    async def _store(self, cmd: Command, uid: bool) -> Reply:
        assert self.view is not None
        if self.view.readonly:
            raise ImapNo("Mailbox is read-only", "READ-ONLY")
        uids = self._uids(cmd.args["set"], uid=uid)
        done, refused = await asyncio.to_thread(folders.store_flags, self.ctx.meta, self.view.box_id, uids,
                                                cmd.args["action"], cmd.args["flags"], cmd.args["unchangedsince"])
        lines = self.view.new_keywords(cmd.args["flags"]) if cmd.args["action"] != "-FLAGS" else []
        for u, (flags, modseq) in sorted(done.items()):
            self.view.flags[u] = flags
            if not cmd.args["silent"] or cmd.args["unchangedsince"] is not None:
                extra = f" UID {u}" if uid or self.view.condstore else ""
                ms = f" MODSEQ ({modseq})" if self.view.condstore or cmd.args["unchangedsince"] is not None else ""
                lines.append(f"* {self.view.seq_of(u)} FETCH (FLAGS ".encode()
                             + R.flag_list(self.view.flags_of(u, flags)) + f"{extra}{ms})\r\n".encode())
        lines += await self.context_changes(list(done))  # kept searches hear of this client's changes too
        text = f"{cmd.name} completed"
        if refused:
            text = f"[MODIFIED {','.join(str(u if uid else self.view.seq_of(u)) for u in refused)}] " + text
        return lines, text

    async def do_store(self, cmd: Command) -> Reply:
        return await self._store(cmd, uid=False)

    async def do_uid_store(self, cmd: Command) -> Reply:
        return await self._store(cmd, uid=True)

    async def _copy(self, cmd: Command, uid: bool, move: bool) -> Reply:
        assert self.view is not None and self.user is not None
        if move and self.view.readonly:
            raise ImapNo("Mailbox is read-only", "READ-ONLY")
        uids = self._uids(cmd.args["set"], uid=uid)
        await self._box(cmd.args["mailbox"], missing="TRYCREATE")  # RFC 3501 §6.4.7
        validity, pairs, _ = await self._op(folders.copy_messages, self.ctx.meta, self.user, self.view.box_id,
                                            uids, cmd.args["mailbox"], move)
        if not pairs:
            return [], f"{cmd.name} completed"
        src = ",".join(str(a) for a, _ in pairs)
        dst = ",".join(str(b) for _, b in pairs)
        code = f"[COPYUID {validity} {src} {dst}] "
        if move:  # RFC 6851: COPYUID goes in an untagged OK, then the EXPUNGEs
            return [f"* OK {code}Moved\r\n".encode()], f"{cmd.name} completed"
        return [], f"{code}{cmd.name} completed"

    async def do_copy(self, cmd: Command) -> Reply:
        return await self._copy(cmd, uid=False, move=False)

    async def do_uid_copy(self, cmd: Command) -> Reply:
        return await self._copy(cmd, uid=True, move=False)

    async def do_move(self, cmd: Command) -> Reply:
        return await self._copy(cmd, uid=False, move=True)

    async def do_uid_move(self, cmd: Command) -> Reply:
        return await self._copy(cmd, uid=True, move=True)
