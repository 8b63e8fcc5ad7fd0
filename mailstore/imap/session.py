"""One IMAP session: a state machine from parsed commands to response bytes (RFC 3501 §3, §6).

States: not authenticated -> authenticated -> selected -> logout.  Every
command handler is a `do_<name>` coroutine returning the untagged lines;
`handle` adds the tagged completion and maps typed errors once:

    ImapNo(code, text)   -> "<tag> NO [code] text"
    ParseError / ImapBad -> "<tag> BAD text"

The selected mailbox is a `SelectedView`: the UIDs this client knows, in
message-sequence order, with their flags and the modseq it has seen.  Before
each command completes, `refresh` compares it with the store and reports
what other sessions (or LMTP) changed: EXISTS for new mail, FETCH FLAGS for
flag changes, and EXPUNGE for removed messages, except while FETCH, STORE or
SEARCH run, so sequence numbers never shift under a client mid-command
(RFC 3501 §7.4.1).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from fnmatch import fnmatchcase
from typing import Any, ClassVar, TypeVar

from cache import Fs, FsError

from .. import folders, layout
from ..db import Mailbox, Message, MetaStore
from ..message import parse as parse_message
from ..throttle import Busy, LoginLimiter
from ..users import AddressPolicy, resolve, verify_password
from . import response as R
from .parser import Command, FetchAttribute, SearchKey, Section, SequenceSet

T = TypeVar("T")
Reply = tuple[list[bytes], str]  # untagged lines, and the text of the tagged OK

log = logging.getLogger("mailstore.imap")

CAPABILITIES = ("IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UNSELECT UIDPLUS MOVE CHILDREN "
                "SPECIAL-USE CONDSTORE QUOTA APPENDLIMIT={limit}")


class ImapNo(Exception):
    def __init__(self, text: str, code: str = "") -> None:
        super().__init__(text)
        self.text, self.code = text, code


class ImapBad(Exception):
    pass


@dataclass
class SelectedView:
    box_id: int
    name: str
    readonly: bool
    uids: list[int] = field(default_factory=list)
    flags: dict[int, tuple[str, ...]] = field(default_factory=dict)
    modseq: int = 0
    condstore: bool = False
    recent: set[int] = field(default_factory=set)  # \Recent in this session (RFC 3501 §2.3.2)

    def seq_of(self, uid: int) -> int:
        """The message sequence number of a UID (uids is sorted: a bisection, not a scan)."""
        return bisect.bisect_left(self.uids, uid) + 1


@dataclass
class ImapContext:
    meta: MetaStore
    fs: Fs
    policy: AddressPolicy
    max_append: int = 50 * 1024 * 1024
    throttle: LoginLimiter = field(default_factory=LoginLimiter)
    tls: Any = None  # ssl.SSLContext for STARTTLS (and the implicit-TLS listener), or None
    metrics: Any = None  # mailstore.metrics.ImapMetrics, when /metrics is served
    # mailbox id -> (modseq, [(uid, flags)]): the last (uid, flags) list any session of
    # this process loaded, brought up to date by modseq deltas instead of reloaded.
    snapshots: dict[int, tuple[int, list[tuple[int, tuple[str, ...]]]]] = field(default_factory=dict)

    def snapshot(self, box_id: int, highest: int) -> list[tuple[int, tuple[str, ...]]]:
        """Blocking (call from a thread): the visible (uid, flags) of a mailbox as of `highest`."""
        cached = self.snapshots.get(box_id)
        if cached is not None and cached[0] == highest:
            return list(cached[1])
        if cached is not None:
            changed, count = self.meta.changes_since(box_id, cached[0])
            items = dict(cached[1])
            items.update(changed)
            if len(items) != count:  # some vanished
                for u in self.meta.vanished(box_id, cached[0], items, count):
                    del items[u]
            if len(items) == count:  # otherwise a message is pending or a race moved on: reload
                fresh = sorted(items.items())
                self.snapshots[box_id] = (highest, fresh)
                return list(fresh)
        fresh = self.meta.uid_flags(box_id)
        self.snapshots[box_id] = (highest, fresh)
        return list(fresh)


class Session:
    def __init__(self, ctx: ImapContext, peer: str = "") -> None:
        self.ctx = ctx
        self.peer = peer
        self.pending_auth: str | None = None  # tag of an AUTHENTICATE waiting for "+ " data
        self.secure = False  # on TLS (implicit, or after STARTTLS)
        self.start_tls = False  # the I/O loop upgrades the connection after this OK
        self.user: str | None = None
        self.view: SelectedView | None = None
        self.logout = False
        self.condstore = False

    @property
    def authed(self) -> str:
        """The logged-in user: every command past the state check (_check_state) has one."""
        if self.user is None:
            raise ImapBad("Authentication needed first")
        return self.user

    # ------------------------------------------------------------------ dispatch

    def greeting(self) -> bytes:
        return b"* OK [CAPABILITY " + self._caps().encode() + b"] mailstore IMAP ready\r\n"

    def _caps(self) -> str:
        caps = CAPABILITIES.format(limit=self.ctx.max_append)
        if self.ctx.tls is not None and not self.secure and self.user is None:
            caps += " STARTTLS"
        return caps + (" AUTH=PLAIN" if self.user is None else "")

    async def handle(self, cmd: Command) -> bytes:
        out = await self._handle(cmd)
        if self.ctx.metrics is not None:
            words = out.rsplit(b"\r\n", 2)[-2].split(b" ", 2)  # the tagged line: TAG OK|NO|BAD ...
            result = words[1].decode() if len(words) > 1 and words[1] in (b"OK", b"NO", b"BAD") else "continue"
            self.ctx.metrics.commands.labels(cmd.name, result).inc()
        return out

    async def _handle(self, cmd: Command) -> bytes:
        name = cmd.name.replace(" ", "_").lower()
        handler = getattr(self, f"do_{name}", None)
        try:
            if handler is None:
                raise ImapBad(f"{cmd.name} is not supported")
            self._check_state(cmd.name)
            lines, text = await handler(cmd)
            if self.pending_auth is not None:
                return b"+ \r\n"  # AUTHENTICATE: the client's next line is the response
            if cmd.name not in ("SELECT", "EXAMINE"):  # those answer from the snapshot they just took
                lines += await self.refresh(expunges=cmd.name not in ("FETCH", "STORE", "SEARCH"))
            return b"".join(lines) + f"{cmd.tag} OK {text}\r\n".encode()
        except ImapNo as exc:
            code = f"[{exc.code}] " if exc.code else ""
            return f"{cmd.tag} NO {code}{exc.text}\r\n".encode()
        except ImapBad as exc:
            return f"{cmd.tag} BAD {exc}\r\n".encode()
        except Exception:  # a bug must not cost the client its connection
            log.exception("%s failed", cmd.name)
            return f"{cmd.tag} NO [SERVERBUG] Internal error\r\n".encode()

    _ANY: ClassVar[frozenset[str]] = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "ID", "ENABLE"})
    _NOT_AUTH: ClassVar[frozenset[str]] = frozenset({"LOGIN", "AUTHENTICATE", "STARTTLS"})
    _SELECTED: ClassVar[frozenset[str]] = frozenset({"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH",
                                                     "STORE", "COPY", "MOVE"})

    def _check_state(self, name: str) -> None:
        base = name.split(" ")[-1]
        if name in self._ANY:
            return
        if name in self._NOT_AUTH:
            if self.user is not None:
                raise ImapBad("Already authenticated")
            return
        if self.user is None:
            raise ImapBad(f"{name} needs authentication first")
        if (base in self._SELECTED or name.startswith("UID ")) and self.view is None:
            raise ImapBad(f"{name} needs a selected mailbox")

    # ------------------------------------------------------------------ any state

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
        enabled = [c for c in cmd.args["capabilities"] if c == "CONDSTORE"]
        if enabled:
            self.condstore = True
        return [f"* ENABLED {' '.join(enabled)}\r\n".encode()], "ENABLE completed"

    # ------------------------------------------------------------------ authentication

    async def _login(self, user: str, password: bytes) -> None:
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
            raise ImapNo("Too many login attempts; try again later", "UNAVAILABLE") from None
        if not ok:
            if self.ctx.metrics is not None:
                self.ctx.metrics.auth_failures.inc()
            raise ImapNo("Authentication failed", "AUTHENTICATIONFAILED")
        self.user = name

    async def do_login(self, cmd: Command) -> Reply:
        await self._login(cmd.args["user"], cmd.args["password"])
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
        await self._login(user.decode("utf-8", "replace"), password)
        return [], f"[CAPABILITY {self._caps()}] AUTHENTICATE completed"

    async def do_starttls(self, cmd: Command) -> Reply:
        if self.ctx.tls is None:
            raise ImapNo("STARTTLS is not configured on this listener", "CANNOT")
        if self.secure:
            raise ImapBad("TLS is already active")
        self.start_tls = True
        return [], "Begin TLS negotiation now"

    # ------------------------------------------------------------------ mailboxes

    def _meta(self) -> MetaStore:
        return self.ctx.meta

    @staticmethod
    def _read(fn: Callable[..., T], *args: Any) -> T:
        """A read-only metadata query, made on the event loop.

        Indexed SQLite reads in WAL mode never wait on a writer and take tens of
        microseconds; a hop to a worker thread (two wake-ups, two GIL handoffs)
        costs more than the query.  Writes, and scrypt, still leave the loop.
        """
        return fn(*args)

    async def _box(self, name: str) -> Mailbox:
        assert self.user is not None
        box = self._read(self.ctx.meta.mailbox, self.user, name)
        if box is None:
            raise ImapNo(f"No mailbox {name}", "NONEXISTENT")
        return box

    async def _select(self, cmd: Command, readonly: bool) -> Reply:
        self.view = None
        box = await self._box(cmd.args["mailbox"])
        msgs = self._read(self.ctx.snapshot, box.id, box.highestmodseq)
        condstore = cmd.args.get("condstore") or self.condstore
        self.view = SelectedView(box.id, box.name, readonly, [u for u, _ in msgs], dict(msgs),
                                 box.highestmodseq, condstore)
        if not readonly:
            last = msgs[-1][0] + 1 if msgs else 1
            first = await asyncio.to_thread(self.ctx.meta.claim_recent, box.id, last)
            self.view.recent = {u for u, _ in msgs if u >= first}
        unseen = next((i + 1 for i, (_, f) in enumerate(msgs) if "\\Seen" not in f), None)
        lines = [b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n",
                 b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted\r\n",
                 f"* {len(msgs)} EXISTS\r\n".encode(), f"* {len(self.view.recent)} RECENT\r\n".encode(),
                 f"* OK [UIDVALIDITY {box.uidvalidity}] UIDs valid\r\n".encode(),
                 f"* OK [UIDNEXT {box.uidnext}] Predicted next UID\r\n".encode(),
                 f"* OK [HIGHESTMODSEQ {box.highestmodseq}] Highest\r\n".encode()]
        if unseen:
            lines.append(f"* OK [UNSEEN {unseen}] First unseen\r\n".encode())
        mode = "READ-ONLY" if readonly else "READ-WRITE"
        return lines, f"[{mode}] {cmd.name} completed"

    async def do_select(self, cmd: Command) -> Reply:
        return await self._select(cmd, readonly=False)

    async def do_examine(self, cmd: Command) -> Reply:
        return await self._select(cmd, readonly=True)

    async def _op(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except folders.MailboxExists:
            raise ImapNo("Mailbox exists", "ALREADYEXISTS") from None
        except folders.NoSuchMailbox:
            raise ImapNo("No such mailbox", "NONEXISTENT") from None
        except folders.CannotDelete as exc:
            raise ImapNo(str(exc), "CANNOT") from None

    async def do_create(self, cmd: Command) -> Reply:
        name = cmd.args["mailbox"].rstrip("/")
        use = cmd.args["use"][0] if cmd.args["use"] else None
        await self._op(folders.create_mailbox, self.ctx.meta, self.user, name, use)
        return [], "CREATE completed"

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
        rows = self.ctx.meta.conn().execute(
            "SELECT name, special_use, subscribed FROM mailboxes WHERE user_name=? ORDER BY name",
            (self.user,)).fetchall()
        names = {r[0] for r in rows}
        subscribed_only = "SUBSCRIBED" in cmd.args["selection"]
        out = []
        for name, special, subscribed in rows:
            if subscribed_only and not subscribed:
                continue
            if not any(_match(ref + p, name) for p in patterns):
                continue
            attrs = ["\\HasChildren" if any(n.startswith(name + "/") for n in names) else "\\HasNoChildren"]
            if special:
                attrs.append(special)
            out.append(f'* {verb} ({" ".join(attrs)}) "/" '.encode() + R.astring(name) + b"\r\n")
        return out, f"{verb} completed"

    async def do_list(self, cmd: Command) -> Reply:
        return await self._list(cmd, "LIST")

    async def do_lsub(self, cmd: Command) -> Reply:
        return await self._list(cmd, "LSUB")

    async def do_namespace(self, cmd: Command) -> Reply:
        return [b'* NAMESPACE (("" "/")) NIL NIL\r\n'], "NAMESPACE completed"

    async def do_status(self, cmd: Command) -> Reply:
        box = await self._box(cmd.args["mailbox"])
        msgs = self._read(self.ctx.meta.messages, box.id)
        first = self.ctx.meta.conn().execute("SELECT first_recent FROM mailboxes WHERE id=?", (box.id,)).fetchone()[0]
        values = {"MESSAGES": len(msgs), "RECENT": sum(m.uid >= first for m in msgs), "UIDNEXT": box.uidnext,
                  "UIDVALIDITY": box.uidvalidity,
                  "UNSEEN": sum("\\Seen" not in m.flags for m in msgs), "HIGHESTMODSEQ": box.highestmodseq,
                  "SIZE": sum(m.size for m in msgs)}
        items = " ".join(f"{i} {values[i]}" for i in cmd.args["items"])
        return [b"* STATUS " + R.astring(box.name) + f" ({items})\r\n".encode()], "STATUS completed"

    async def do_getquotaroot(self, cmd: Command) -> Reply:
        await self._box(cmd.args["mailbox"])
        lines = [b"* QUOTAROOT " + R.astring(cmd.args["mailbox"]) + b' ""\r\n'] + await self._quota()
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

    async def do_append(self, cmd: Command) -> Reply:
        assert self.user is not None
        data: bytes = cmd.args["message"]
        if len(data) > self.ctx.max_append:
            raise ImapNo("Message too big", "TOOBIG")
        box = await self._box(cmd.args["mailbox"])
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

    # ------------------------------------------------------------------ selected state

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

    async def _drop_objects(self, keys: list[str]) -> None:
        if keys:  # metadata is already gone: objects last (orphans are fine, dangling rows are not)
            try:
                if len(keys) == 1:  # a plain DELETE: no XML either side
                    await self.ctx.fs.delete(keys[0])
                else:
                    await self.ctx.fs.delete_many(keys)
            except (FsError, OSError) as exc:  # the objects are left for `mailstore gc`
                log.warning("deleting %d expunged objects failed (gc will): %s", len(keys), exc)

    def _uids(self, s: SequenceSet, *, uid: bool) -> list[int]:
        assert self.view is not None
        v = self.view
        if not v.uids:
            return []
        n = len(v.uids)
        picked: set[int] = set()
        for a, b in s.ranges:  # ranges map to slices of the sorted UID list: no scan of the mailbox
            if uid:
                lo, hi = (v.uids[-1] if a is None else a), (v.uids[-1] if b is None else b)
                lo, hi = min(lo, hi), max(lo, hi)
                picked.update(v.uids[bisect.bisect_left(v.uids, lo):bisect.bisect_right(v.uids, hi)])
            else:
                lo, hi = (n if a is None else a), (n if b is None else b)
                if lo > n or hi > n:
                    raise ImapBad("Invalid message sequence number")
                lo, hi = min(lo, hi), max(lo, hi)
                picked.update(v.uids[lo - 1:hi])
        return sorted(picked)

    async def _messages(self, uids: list[int]) -> dict[int, Message]:
        assert self.view is not None
        return self._read(self.ctx.meta.messages_by_uid, self.view.box_id, uids)

    async def _fetch(self, cmd: Command, uid: bool) -> Reply:
        assert self.view is not None
        atts: list[FetchAttribute] = list(cmd.args["attributes"])
        if uid and not any(a.name == "UID" for a in atts):
            atts.insert(0, FetchAttribute("UID"))
        if cmd.args.get("changedsince") is not None and not any(a.name == "MODSEQ" for a in atts):
            atts.append(FetchAttribute("MODSEQ"))
        uids = self._uids(cmd.args["set"], uid=uid)
        msgs = await self._messages(uids)
        parsed: dict[int, tuple[str, str]] = {}
        if any(a.name in ("ENVELOPE", "BODYSTRUCTURE") or (a.name == "BODY" and a.section is None) for a in atts):
            c = self._meta().conn()
            for i in range(0, len(uids), 500):
                chunk = uids[i:i + 500]
                for r in c.execute("SELECT uid, envelope, bodystructure FROM messages WHERE mailbox_id=? AND uid IN "
                                   f"({','.join('?' * len(chunk))})", (self.view.box_id, *chunk)):
                    parsed[r[0]] = (r[1], r[2])
        lines = []
        seen_set: list[int] = []
        bodies: dict[int, bytes] = {}
        if any(a.section is not None or (a.name.startswith("RFC822") and a.name != "RFC822.SIZE") for a in atts):
            wanted = [u for u in uids if u in msgs]
            got = await self.ctx.fs.get_many([msgs[u].object_key for u in wanted])  # one cache batch
            bodies = dict(zip(wanted, got, strict=True))
        for u in uids:
            m = msgs.get(u)
            if m is None:
                continue
            if cmd.args.get("changedsince") is not None and m.modseq <= cmd.args["changedsince"]:
                continue
            body: bytes | None = bodies.get(u)
            items: list[bytes] = []
            for a in atts:
                if a.name == "UID":
                    items.append(f"UID {m.uid}".encode())
                elif a.name == "FLAGS":
                    shown = self.view.flags.get(u, m.flags)
                    if u in self.view.recent:
                        shown = (*shown, "\\Recent")
                    items.append(b"FLAGS " + R.flag_list(shown))
                elif a.name == "INTERNALDATE":
                    items.append(b"INTERNALDATE " + R.internal_date(m.internal_date))
                elif a.name == "RFC822.SIZE":
                    items.append(f"RFC822.SIZE {m.size}".encode())
                elif a.name == "MODSEQ":
                    items.append(f"MODSEQ ({m.modseq})".encode())
                elif a.name == "ENVELOPE":
                    import json
                    items.append(b"ENVELOPE " + R.envelope(json.loads(parsed[u][0])))
                elif a.name in ("BODYSTRUCTURE",) or (a.name == "BODY" and a.section is None):
                    import json
                    items.append(a.name.encode() + b" " + R.bodystructure(json.loads(parsed[u][1]),
                                                                       extended=a.name == "BODYSTRUCTURE"))
                else:
                    if body is None:
                        body = (await self.ctx.fs.get(m.object_key))[0]
                    from .parser import Section
                    if a.name == "RFC822":
                        part, label, marks = body, "RFC822", True
                    elif a.name == "RFC822.HEADER":
                        part, label, marks = R.section_bytes(body, Section(text="HEADER")), "RFC822.HEADER", False
                    elif a.name == "RFC822.TEXT":
                        part, label, marks = R.section_bytes(body, Section(text="TEXT")), "RFC822.TEXT", True
                    else:
                        assert a.section is not None
                        sec = a.section
                        spec = ".".join(str(p) for p in sec.parts)
                        if sec.text:
                            spec = f"{spec}.{sec.text}" if spec else sec.text
                        if sec.fields:
                            spec += " (" + " ".join(sec.fields) + ")"
                        part = R.partial(R.section_bytes(body, sec), a.partial)
                        label = f"BODY[{spec}]" + (f"<{a.partial[0]}>" if a.partial else "")
                        marks = not a.peek
                    items.append(label.encode() + b" " + R.literal(part))
                    if marks and not self.view.readonly and "\\Seen" not in self.view.flags.get(u, m.flags):
                        seen_set.append(u)
            lines.append(f"* {self.view.seq_of(u)} FETCH (".encode() + b" ".join(items) + b")\r\n")
        if seen_set:  # RFC 3501 §6.4.5: BODY[...] (not .PEEK) sets \Seen
            await asyncio.to_thread(folders.store_flags, self.ctx.meta, self.view.box_id, seen_set, "+FLAGS",
                                    ["\\Seen"])
        return lines, f"{cmd.name} completed"

    async def do_fetch(self, cmd: Command) -> Reply:
        return await self._fetch(cmd, uid=False)

    async def do_uid_fetch(self, cmd: Command) -> Reply:
        return await self._fetch(cmd, uid=True)

    async def _store(self, cmd: Command, uid: bool) -> Reply:
        assert self.view is not None
        if self.view.readonly:
            raise ImapNo("Mailbox is read-only", "READ-ONLY")
        uids = self._uids(cmd.args["set"], uid=uid)
        done, refused = await asyncio.to_thread(folders.store_flags, self.ctx.meta, self.view.box_id, uids,
                                                cmd.args["action"], cmd.args["flags"], cmd.args["unchangedsince"])
        lines = []
        for u, (flags, modseq) in sorted(done.items()):
            self.view.flags[u] = flags
            if not cmd.args["silent"] or cmd.args["unchangedsince"] is not None:
                extra = f" UID {u}" if uid else ""
                ms = f" MODSEQ ({modseq})" if self.view.condstore or cmd.args["unchangedsince"] is not None else ""
                lines.append(f"* {self.view.seq_of(u)} FETCH (FLAGS ".encode() + R.flag_list(flags)
                             + f"{extra}{ms})\r\n".encode())
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
        if cmd.args["mailbox"] == self.view.name and move:
            raise ImapNo("Cannot move a message into its own mailbox", "CANNOT")
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

    async def _search(self, cmd: Command, uid: bool) -> Reply:
        assert self.view is not None
        charset = cmd.args.get("charset")
        if charset not in (None, "UTF-8", "US-ASCII"):
            raise ImapNo(f"Charset {charset} is not supported", "BADCHARSET (UTF-8 US-ASCII)")
        if _flags_only(cmd.args["keys"]):  # flags and numbers: the view knows enough, no rows, no awaits
            v = self.view
            largest = v.uids[-1] if v.uids else 0
            test = _flag_test(cmd.args["keys"], len(v.uids), largest)
            hits = [u if uid else i for i, u in enumerate(v.uids, 1) if test(i, u, v.flags[u], u in v.recent)]
            return [f"* SEARCH{''.join(f' {h}' for h in hits)}\r\n".encode()], f"{cmd.name} completed"
        msgs = await self._messages(list(self.view.uids))
        hits = []
        for i, u in enumerate(self.view.uids, 1):
            m = msgs.get(u)
            if m is not None and await self._matches(cmd.args["keys"], m, i):
                hits.append(u if uid else i)
        return [f"* SEARCH{''.join(f' {h}' for h in hits)}\r\n".encode()], f"{cmd.name} completed"

    async def _matches(self, key: SearchKey, m: Message, seq: int) -> bool:
        assert self.view is not None
        n = key.name
        flags = set(self.view.flags.get(m.uid, m.flags))
        recent = m.uid in self.view.recent
        simple = {"ALL": True, "ANSWERED": "\\Answered" in flags, "DELETED": "\\Deleted" in flags,
                  "DRAFT": "\\Draft" in flags, "FLAGGED": "\\Flagged" in flags, "SEEN": "\\Seen" in flags,
                  "UNANSWERED": "\\Answered" not in flags, "UNDELETED": "\\Deleted" not in flags,
                  "UNDRAFT": "\\Draft" not in flags, "UNFLAGGED": "\\Flagged" not in flags,
                  "UNSEEN": "\\Seen" not in flags, "NEW": recent and "\\Seen" not in flags,
                  "RECENT": recent, "OLD": not recent}
        if n in simple:
            return simple[n]
        if n == "AND":
            for k in key.args:
                if not await self._matches(k, m, seq):
                    return False
            return True
        if n == "OR":
            return await self._matches(key.args[0], m, seq) or await self._matches(key.args[1], m, seq)
        if n == "NOT":
            return not await self._matches(key.args[0], m, seq)
        if n in ("SEQSET", "UID"):
            ranges: SequenceSet = key.args[0]
            if n == "SEQSET":
                return ranges.contains(seq, len(self.view.uids))
            return ranges.contains(m.uid, self.view.uids[-1] if self.view.uids else 0)
        if n in ("KEYWORD", "UNKEYWORD"):
            return (key.args[0] in flags) == (n == "KEYWORD")
        if n in ("LARGER", "SMALLER", "MODSEQ"):
            bound: int = key.args[0]
            return {"LARGER": m.size > bound, "SMALLER": m.size < bound, "MODSEQ": m.modseq >= bound}[n]
        if n in ("BEFORE", "ON", "SINCE"):
            day = datetime.fromtimestamp(m.internal_date, UTC).date()
            return _date_cmp(n, day, key.args[0].date())
        body = (await self.ctx.fs.get(m.object_key))[0]
        _, text = R._split(body)
        if n in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            import email.utils
            date_line = R.section_bytes(body, _fields_section(("DATE",))).decode("utf-8", "replace")
            try:
                sent = email.utils.parsedate_to_datetime(date_line.split(":", 1)[1].strip()).date()
            except (IndexError, TypeError, ValueError):
                return False
            return _date_cmp(n[4:], sent, key.args[0].date())
        needle = key.args[-1].decode("utf-8", "replace").lower() if isinstance(key.args[-1], bytes) else ""
        if n in ("FROM", "TO", "CC", "BCC", "SUBJECT"):
            field_bytes = R.section_bytes(body, _fields_section((n,)))
            return needle in field_bytes.decode("utf-8", "replace").lower()
        if n == "HEADER":
            field_bytes = R.section_bytes(body, _fields_section((key.args[0].upper(),)))
            return bool(field_bytes.strip()) and needle in field_bytes.decode("utf-8", "replace").lower()
        if n == "BODY":
            return needle in text.decode("utf-8", "replace").lower()
        if n == "TEXT":
            return needle in body.decode("utf-8", "replace").lower()
        raise ImapBad(f"Unsupported search key {n}")

    async def do_search(self, cmd: Command) -> Reply:
        return await self._search(cmd, uid=False)

    async def do_uid_search(self, cmd: Command) -> Reply:
        return await self._search(cmd, uid=True)

    # ------------------------------------------------------------------ updates from other sessions

    async def refresh(self, *, expunges: bool = True) -> list[bytes]:
        """Untagged updates for changes made elsewhere since this client last looked."""
        v = self.view
        if v is None:
            return []
        # Every change (delivery, flags, expunge, copy in) bumps HIGHESTMODSEQ:
        # when it has not moved, nothing changed and one small query was enough.
        highest = self._read(self.ctx.meta.highestmodseq, v.box_id)
        if highest == v.modseq:
            return []
        changed, count = self._read(self.ctx.meta.changes_since, v.box_id, v.modseq)
        lines: list[bytes] = []
        last = v.uids[-1] if v.uids else 0
        new = [u for u, _ in changed if u not in v.flags and u > last]
        if expunges and count != len(v.uids) + len(new):  # something vanished
            gone = self._read(self.ctx.meta.vanished, v.box_id, v.modseq, v.flags, count - len(new))
            for u in sorted(gone, reverse=True):  # highest first: numbers stay valid
                i = v.seq_of(u)
                lines.append(f"* {i} EXPUNGE\r\n".encode())
                del v.uids[i - 1]
                del v.flags[u]
                v.recent.discard(u)
        for u, flags in changed:
            if u in v.flags and flags != v.flags[u]:
                v.flags[u] = flags
                lines.append(f"* {v.seq_of(u)} FETCH (FLAGS ".encode() + R.flag_list(flags) + b")\r\n")
        if new:
            v.uids += new
            for u, flags in changed:
                if u in new:
                    v.flags[u] = flags
            lines.append(f"* {len(v.uids)} EXISTS\r\n".encode())
            if not v.readonly:
                first = await asyncio.to_thread(self.ctx.meta.claim_recent, v.box_id, new[-1] + 1)
                v.recent.update(u for u in new if u >= first)
                lines.append(f"* {len(v.recent)} RECENT\r\n".encode())
        if expunges:  # withheld EXPUNGEs must be found again next time
            v.modseq = highest
        return lines


_FLAG_KEYS = {"ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "SEEN", "UNANSWERED", "UNDELETED", "UNDRAFT",
              "UNFLAGGED", "UNSEEN", "NEW", "RECENT", "OLD", "KEYWORD", "UNKEYWORD", "SEQSET", "UID"}


def _flags_only(key: SearchKey) -> bool:
    if key.name in ("AND", "OR", "NOT"):
        return all(_flags_only(k) for k in key.args)
    return key.name in _FLAG_KEYS


_SYSTEM = {"ANSWERED": "\\Answered", "DELETED": "\\Deleted", "DRAFT": "\\Draft", "FLAGGED": "\\Flagged",
           "SEEN": "\\Seen"}
FlagTest = Callable[[int, int, tuple[str, ...], bool], bool]  # (seq, uid, flags, recent) -> matches


def _flag_presence(key: SearchKey) -> tuple[str, bool] | None:
    """(flag, wanted) when the key asks only whether one flag is set (SEEN, UNSEEN, KEYWORD x, ...)."""
    name = key.name
    if name in ("KEYWORD", "UNKEYWORD"):
        return key.args[0], name == "KEYWORD"
    if name in _SYSTEM:
        return _SYSTEM[name], True
    if name.startswith("UN") and name[2:] in _SYSTEM:
        return _SYSTEM[name[2:]], False
    return None


def _flag_test(key: SearchKey, n: int, largest: int) -> FlagTest:
    """Compile a flags-and-numbers search key once; the mailbox is then one cheap call per message."""
    name = key.name
    if name in ("AND", "OR"):
        parts = [_flag_test(k, n, largest) for k in key.args]
        if len(parts) == 1:
            return parts[0]
        if name == "AND":
            return lambda seq, uid, flags, recent: all(t(seq, uid, flags, recent) for t in parts)
        return lambda seq, uid, flags, recent: any(t(seq, uid, flags, recent) for t in parts)
    if name == "NOT":
        inner = _flag_test(key.args[0], n, largest)
        return lambda seq, uid, flags, recent: not inner(seq, uid, flags, recent)
    if name == "SEQSET":
        seqs = key.args[0]
        return lambda seq, uid, flags, recent: seqs.contains(seq, n)
    if name == "UID":
        uids = key.args[0]
        return lambda seq, uid, flags, recent: uids.contains(uid, largest)
    presence = _flag_presence(key)
    if presence is not None:
        flag, wanted = presence
        if not wanted:
            return lambda seq, uid, flags, recent: flag not in flags
        return lambda seq, uid, flags, recent: flag in flags
    if name == "ALL":
        return lambda seq, uid, flags, recent: True
    if name == "RECENT":
        return lambda seq, uid, flags, recent: recent
    if name == "OLD":
        return lambda seq, uid, flags, recent: not recent
    assert name == "NEW", name
    return lambda seq, uid, flags, recent: recent and "\\Seen" not in flags


def _match(pattern: str, name: str) -> bool:
    """LIST wildcards: * matches anything, % anything but the hierarchy separator."""
    if pattern.upper() == "INBOX":
        return name == "INBOX"
    if "%" in pattern:
        return fnmatchcase(name, pattern.replace("%", "*")) and name.count("/") == pattern.count("/")
    return fnmatchcase(name, pattern)


def _date_cmp(op: str, day: date, ref: date) -> bool:
    return {"BEFORE": day < ref, "ON": day == ref, "SINCE": day >= ref}[op]


def _fields_section(names: tuple[str, ...]) -> Section:
    return Section((), "HEADER.FIELDS", names)
