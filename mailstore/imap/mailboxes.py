"""Mailboxes: SELECT/EXAMINE, CREATE/DELETE/RENAME, (UN)SUBSCRIBE, LIST/LSUB, NAMESPACE, STATUS,
QUOTA (RFC 3501 §6.3, RFC 9208)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

from .. import folders
from ..db import Mailbox
from . import response as R
from .reader import Command, SequenceSet
from .state import ImapBad, ImapNo, Reply, SelectedView, SessionBase, flag_lines


class MailboxCommands(SessionBase):
    async def _select(self, cmd: Command, readonly: bool) -> Reply:
        # Selecting closes what was selected, whatever comes of it (RFC 7162 §3.2.11)
        closed = [b"* OK [CLOSED] Previous mailbox closed\r\n"] if self.view is not None else []
        self.view = None
        qresync = cmd.args.get("qresync")
        if qresync is not None and not self.qresync:
            raise ImapBad("QRESYNC is not enabled", closed)
        try:
            box = await self._box(cmd.args["mailbox"])
        except ImapNo as exc:
            exc.lines[:0] = closed
            raise
        msgs = self._read(self.ctx.snapshot, box.id, box.highestmodseq)
        condstore = bool(cmd.args.get("condstore") or self.condstore or qresync)
        self.condstore = condstore  # a CONDSTORE enabling command (RFC 7162 §3.1)
        self.view = SelectedView(box.id, box.name, readonly, [u for u, _ in msgs], dict(msgs),
                                 box.highestmodseq, condstore, show_recent=not self.rev2)
        last = msgs[-1][0] + 1 if msgs else 1
        if readonly:  # EXAMINE shows \Recent without claiming it (RFC 3501 §6.3.2)
            first = self._read(self.ctx.meta.first_recent, box.id)
        else:
            first = await asyncio.to_thread(self.ctx.meta.claim_recent, box.id, last)
        self.view.recent = {u for u, _ in msgs if u >= first}
        self.view.keywords = self._read(self.ctx.meta.keywords, box.id) | {
            f for _, flags in msgs for f in flags if not f.startswith("\\")}
        unseen = next((i + 1 for i, (_, f) in enumerate(msgs) if "\\Seen" not in f), None)
        lines = [*flag_lines(self.view.keywords, readonly), f"* {len(msgs)} EXISTS\r\n".encode()]
        if not self.rev2:  # RFC 9051 Appendix E: no RECENT, no UNSEEN; a LIST of the mailbox instead
            lines.append(f"* {len(self.view.recent)} RECENT\r\n".encode())
        lines += [f"* OK [UIDVALIDITY {box.uidvalidity}] UIDs valid\r\n".encode(),
                 f"* OK [UIDNEXT {box.uidnext}] Predicted next UID\r\n".encode(),
                 f"* OK [HIGHESTMODSEQ {box.highestmodseq}] Highest\r\n".encode(),
                 f"* OK [MAILBOXID ({R.mailbox_id(box.guid)})] Ok\r\n".encode()]
        if unseen and not self.rev2:
            lines.append(f"* OK [UNSEEN {unseen}] First unseen\r\n".encode())
        if self.rev2:  # RFC 9051 §6.3.2: the mailbox's LIST, with accurate attributes
            boxes = dict(self._meta().conn().execute(
                "SELECT name, special_use FROM mailboxes WHERE user_name=?", (self.user,)).fetchall())
            attrs = _listed(boxes, lambda n: n == box.name).get(box.name, [])
            lines.append(R.list_line("LIST", attrs, self.name_out(box.name)))
        if qresync is not None and qresync["uidvalidity"] == box.uidvalidity:
            lines += self._resync(box.uidnext, qresync["modseq"], qresync["known"])
        mode = "READ-ONLY" if readonly else "READ-WRITE"
        return closed + lines, f"[{mode}] {cmd.name} completed"

    def _resync(self, uidnext: int, modseq: int, known: SequenceSet | None) -> list[bytes]:
        """What changed since the client's MODSEQ: VANISHED (EARLIER) for the UIDs it may hold
        that are gone, then FETCH (UID FLAGS MODSEQ) for the messages changed (RFC 7162 §3.2.5)."""
        v = self.view
        assert v is not None
        ranges = self._ranges(known, uidnext - 1) if known is not None else [(1, uidnext - 1)]
        lines = self.vanished_earlier(modseq, ranges)
        changed, _ = self._read(self.ctx.meta.changes_since, v.box_id, modseq)
        msgs = self._read(self.ctx.meta.messages_by_uid, v.box_id, [u for u, _ in changed if u in v.flags])
        for u, m in sorted(msgs.items()):
            lines.append(f"* {v.seq_of(u)} FETCH (UID {u} FLAGS ".encode() + R.flag_list(v.flags_of(u, m.flags))
                         + f" MODSEQ ({m.modseq}))\r\n".encode())
        return lines

    async def do_select(self, cmd: Command) -> Reply:
        return await self._select(cmd, readonly=False)

    async def do_examine(self, cmd: Command) -> Reply:
        return await self._select(cmd, readonly=True)

    async def do_create(self, cmd: Command) -> Reply:
        name = cmd.args["mailbox"].rstrip("/")
        use = cmd.args["use"][0] if cmd.args["use"] else None
        guid = await self._op(folders.create_mailbox, self.ctx.meta, self.user, name, use)
        return [], f"[MAILBOXID ({R.mailbox_id(guid)})] CREATE completed"  # RFC 8474 §4.1

    async def do_delete(self, cmd: Command) -> Reply:
        keys = await self._op(folders.delete_mailbox, self.ctx.meta, self.user, cmd.args["mailbox"])
        await self._drop_objects(keys)
        return [], "DELETE completed"

    async def do_rename(self, cmd: Command) -> Reply:
        await self._op(folders.rename_mailbox, self.ctx.meta, self.user, cmd.args["old"], cmd.args["new"])
        return [], "RENAME completed"

    async def do_subscribe(self, cmd: Command) -> Reply:
        await self._op(folders.set_subscribed, self.ctx.meta, self.user, cmd.args["mailbox"], True)
        return [], "SUBSCRIBE completed"

    async def do_unsubscribe(self, cmd: Command) -> Reply:
        await self._op(folders.set_subscribed, self.ctx.meta, self.user, cmd.args["mailbox"], False)
        return [], "UNSUBSCRIBE completed"

    async def _list(self, cmd: Command, verb: str) -> Reply:
        assert self.user is not None
        ref, patterns = cmd.args["reference"], cmd.args["patterns"]
        if patterns == [""]:
            return [f'* {verb} (\\Noselect) "/" ""\r\n'.encode()], f"{verb} completed"
        boxes = {self.name_out(name): special for name, special in self.ctx.meta.conn().execute(
            "SELECT name, special_use FROM mailboxes WHERE user_name=?", (self.user,))}
        # Names are matched as the client spells them: UTF-8 once it asked for UTF-8 (RFC 9051, RFC 9755)
        wanted = [_pattern(ref + p) for p in patterns]

        def matches(name: str) -> bool:
            return any(w.fullmatch(name) for w in wanted)

        subs = {self.name_out(name) for name in self._read(folders.subscriptions, self.ctx.meta, self.user)}
        if cmd.args.get("extended"):
            return await self._list_extended(cmd, boxes, subs, matches), "LIST completed"
        found = _subscribed(subs, boxes, matches) if verb == "LSUB" else _listed(boxes, matches)
        out = [R.list_line(verb, attrs, name) for name, attrs in sorted(found.items())]
        return out, f"{verb} completed"

    async def _list_extended(self, cmd: Command, boxes: dict[str, str | None], subs: set[str],
                             matches: Callable[[str], bool]) -> list[bytes]:
        """LIST with selection or return options (RFC 5258 LIST-EXTENDED, RFC 5819 LIST-STATUS,
        RFC 6154 SPECIAL-USE): attributes only as asked, \\NonExistent for names that are not
        mailboxes, CHILDINFO for RECURSIVEMATCH, a STATUS after each selectable mailbox."""
        selection, returns = set(cmd.args["selection"]), set(cmd.args["return"])
        subscribed_only, special_only = "SUBSCRIBED" in selection, "SPECIAL-USE" in selection
        show_subscribed = subscribed_only or "SUBSCRIBED" in returns
        show_special = special_only or "SPECIAL-USE" in returns
        parents = {a for name in boxes for a in _ancestors(name)}
        names = set(subs) if subscribed_only else boxes.keys() | parents
        childinfo: set[str] = set()
        if subscribed_only and "RECURSIVEMATCH" in selection:
            for name in subs:
                if not matches(name):
                    childinfo.update(a for a in _ancestors(name) if matches(a))
            names |= childinfo
        out: list[bytes] = []
        for name in sorted(names):
            if not matches(name):
                continue
            special = boxes.get(name)
            if special_only and not special:
                continue
            attrs = [] if name in boxes else ["\\NonExistent"]
            if show_subscribed and name in subs:
                attrs.append("\\Subscribed")
            if "CHILDREN" in returns:
                attrs.append("\\HasChildren" if name in parents else "\\HasNoChildren")
            if show_special and special:
                attrs.append(special)
            extra = b' (CHILDINFO ("SUBSCRIBED"))' if name in childinfo else b""
            out.append(R.list_line("LIST", attrs, name, extra))
            if cmd.args.get("status") and name in boxes:
                box = self._read(self.ctx.meta.mailbox, self.authed, self.name_in(name))
                if box is not None:
                    out.append(self._status_line(box, cmd.args["status"]))
        return out

    async def do_list(self, cmd: Command) -> Reply:
        return await self._list(cmd, "LIST")

    async def do_lsub(self, cmd: Command) -> Reply:
        return await self._list(cmd, "LSUB")

    async def do_namespace(self, cmd: Command) -> Reply:
        return [b'* NAMESPACE (("" "/")) NIL NIL\r\n'], "NAMESPACE completed"

    async def do_status(self, cmd: Command) -> Reply:
        box = await self._box(cmd.args["mailbox"])
        line = self._status_line(box, cmd.args["items"])
        if self.view is not None and self.view.box_id == box.id:  # RFC 9051 §6.3.11: not on the selected one
            return [line], "[CLIENTBUG] STATUS on the selected mailbox completed"
        return [line], "STATUS completed"

    def _status_line(self, box: Mailbox, wanted: list[str]) -> bytes:
        msgs = self._read(self.ctx.meta.messages, box.id)
        first = self.ctx.meta.conn().execute("SELECT first_recent FROM mailboxes WHERE id=?", (box.id,)).fetchone()[0]
        values = {"MESSAGES": len(msgs), "RECENT": sum(m.uid >= first for m in msgs), "UIDNEXT": box.uidnext,
                  "UIDVALIDITY": box.uidvalidity,
                  "UNSEEN": sum("\\Seen" not in m.flags for m in msgs), "HIGHESTMODSEQ": box.highestmodseq,
                  "SIZE": sum(m.size for m in msgs), "MAILBOXID": f"({R.mailbox_id(box.guid)})",
                  "DELETED": sum("\\Deleted" in m.flags for m in msgs)}  # RFC 9051 §6.3.11
        items = " ".join(f"{i} {values[i]}" for i in wanted)
        return b"* STATUS " + R.astring(self.name_out(box.name)) + f" ({items})\r\n".encode()

    async def do_getquotaroot(self, cmd: Command) -> Reply:
        await self._box(cmd.args["mailbox"])
        lines = [b"* QUOTAROOT " + R.astring(self.name_out(cmd.args["mailbox"])) + b' ""\r\n'] + await self._quota()
        return lines, "GETQUOTAROOT completed"

    async def do_getquota(self, cmd: Command) -> Reply:
        if cmd.args["root"] != "":
            raise ImapNo("No such quota root", "NONEXISTENT")
        return await self._quota(), "GETQUOTA completed"

    async def _quota(self) -> list[bytes]:
        assert self.user is not None
        u = self._read(self.ctx.meta.get_user, self.user)
        if u is None or not u.quota_bytes:
            return [b'* QUOTA "" ()\r\n']
        return [f'* QUOTA "" (STORAGE {u.used_bytes // 1024} {u.quota_bytes // 1024})\r\n'.encode()]


def _pattern(pattern: str) -> re.Pattern[str]:
    """A LIST pattern as a regex: "*" matches anything, "%" anything but the hierarchy
    separator; every other character, "[" and "?" included, is itself (RFC 3501 §6.3.8).
    INBOX is case-insensitive, also as the first level of its children."""
    if pattern[:5].upper() == "INBOX" and (len(pattern) == 5 or pattern[5] in "/*%"):
        pattern = "INBOX" + pattern[5:]
    return re.compile("".join(".*" if c == "*" else "[^/]*" if c == "%" else re.escape(c) for c in pattern))


def _ancestors(name: str) -> list[str]:
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _listed(boxes: dict[str, str | None], matches: Callable[[str], bool]) -> dict[str, list[str]]:
    """LIST: mailboxes, and the levels above a mailbox that are not mailboxes themselves
    (\\Noselect: a client needs them to show the tree)."""
    parents = {a for name in boxes for a in _ancestors(name)}
    found: dict[str, list[str]] = {}
    for name in boxes.keys() | parents:
        if not matches(name):
            continue
        children = name in parents
        if name not in boxes:
            found[name] = ["\\Noselect", "\\HasChildren"]
            continue
        attrs = ["\\HasChildren" if children else "\\HasNoChildren"]
        if boxes[name]:
            attrs.append(str(boxes[name]))
        found[name] = attrs
    return found


def _subscribed(subs: set[str], boxes: dict[str, str | None],
                matches: Callable[[str], bool]) -> dict[str, list[str]]:
    """LSUB: subscribed names (special-use attributes only, as Dovecot), and an unsubscribed
    level above a subscribed name that the pattern reaches with "%" as \\Noselect (§6.3.9)."""
    found: dict[str, list[str]] = {}
    for name in subs:
        if matches(name):
            special = boxes.get(name)
            found[name] = [special] if special else []
            continue
        for a in _ancestors(name):  # the pattern stops above the subscribed name ("%")
            if a not in subs and matches(a):
                found.setdefault(a, ["\\Noselect"])
    return found
