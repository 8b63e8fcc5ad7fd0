"""What every IMAP command handler shares: the session's state, the context, and typed errors.

Each command family (auth.py, mailboxes.py, append.py, fetch.py, store.py,
search.py) is a mixin over `SessionBase`; session.py composes them around the
dispatch and the state machine.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cache import Fs, FsError, NotFound

from .. import folders
from ..db import Mailbox, Message, MetaStore
from ..message import parse as parse_message
from ..throttle import LoginLimiter
from ..users import AddressPolicy
from . import mutf7
from .headers import HeaderCache
from .reader import EventGroup, SearchKey, SequenceSet
from .response import uid_set

T = TypeVar("T")
Reply = tuple[list[bytes], str]  # untagged lines, and the text of the tagged OK

log = logging.getLogger("mailstore.imap")

CAPABILITIES = ("IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UNSELECT UIDPLUS MOVE CHILDREN "
                "SPECIAL-USE CONDSTORE QRESYNC QUOTA APPENDLIMIT={limit} ESEARCH ESORT SEARCHRES WITHIN SORT "
                "SORT=DISPLAY LIST-EXTENDED LIST-STATUS STATUS=SIZE SAVEDATE THREAD=ORDEREDSUBJECT THREAD=REFERENCES "
                "THREAD=REFS BINARY MULTIAPPEND CATENATE PREVIEW OBJECTID COMPRESS=DEFLATE UTF8=ACCEPT "
                "CONTEXT=SEARCH NOTIFY")


class ImapNo(Exception):
    """A tagged NO; `lines` are untagged data still sent before it (RFC 2180 §4.1.2)."""

    def __init__(self, text: str, code: str = "", lines: list[bytes] | None = None) -> None:
        super().__init__(text)
        self.text, self.code, self.lines = text, code, lines or []


class ImapBad(Exception):
    """A tagged BAD; `lines` are untagged data sent before it (SELECT's [CLOSED])."""

    def __init__(self, text: str, lines: list[bytes] | None = None) -> None:
        super().__init__(text)
        self.lines = lines or []


@dataclass
class WatchedBox:
    """A mailbox as NOTIFY last reported it."""

    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    box_id: int


@dataclass
class NotifyState:
    """NOTIFY SET (RFC 5465): what the client asked for, and what it was last told (notify.py)."""

    groups: list[EventGroup]
    boxes: dict[str, WatchedBox] = field(default_factory=dict)  # guid -> what was last reported
    subscribed: set[str] = field(default_factory=set)


@dataclass
class SearchContext:
    """A SEARCH RETURN (UPDATE) the client keeps (RFC 5267 §4): its result, kept up to date."""

    keys: SearchKey
    uid: bool  # UID SEARCH: updates name UIDs, else sequence numbers
    uids: set[int]


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
    keywords: set[str] = field(default_factory=set)  # announced in * FLAGS to this client
    saved: set[int] = field(default_factory=set)  # UIDs of SEARCH RETURN (SAVE): "$" (RFC 5182)
    contexts: dict[str, SearchContext] = field(default_factory=dict)  # SEARCH RETURN (UPDATE), by tag

    show_recent: bool = True  # IMAP4rev2 has no \\Recent and no RECENT (RFC 9051 Appendix E)

    def flags_of(self, uid: int, flags: tuple[str, ...]) -> tuple[str, ...]:
        """Flags as this client sees them: \\Recent added where this session holds it."""
        return (*flags, "\\Recent") if uid in self.recent and self.show_recent else flags

    def new_keywords(self, flags: tuple[str, ...] | list[str]) -> list[bytes]:
        """A new * FLAGS (and PERMANENTFLAGS) before a keyword this client has not seen
        is used: RFC 3501 §7.2.6 (a client may not know a keyword FLAGS never listed)."""
        fresh = {f for f in flags if not f.startswith("\\")} - self.keywords
        if not fresh:
            return []
        self.keywords |= fresh
        return flag_lines(self.keywords, self.readonly)

    def seq_of(self, uid: int) -> int:
        """The message sequence number of a UID (uids is sorted: a bisection, not a scan)."""
        return bisect.bisect_left(self.uids, uid) + 1


SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


def flag_lines(keywords: set[str], readonly: bool = False) -> list[bytes]:
    """* FLAGS and the PERMANENTFLAGS response code: the system flags, the mailbox's
    keywords, and \\* (clients may make new keywords); none is permanent read-only."""
    names = " ".join((*SYSTEM_FLAGS, *sorted(keywords)))
    permanent = "" if readonly else f"{names} \\*"
    return [f"* FLAGS ({names})\r\n".encode(),
            f"* OK [PERMANENTFLAGS ({permanent})] Flags permitted\r\n".encode()]


@dataclass
class ImapContext:
    meta: MetaStore
    fs: Fs
    policy: AddressPolicy
    max_append: int = 50 * 1024 * 1024
    throttle: LoginLimiter = field(default_factory=LoginLimiter)
    tls: Any = None  # ssl.SSLContext for STARTTLS (and the implicit-TLS listener), or None
    metrics: Any = None  # mailstore.metrics.ImapMetrics, when /metrics is served
    changes: Any = None  # mailstore.changes.ChangeFeed: when to look again during IDLE (None: poll)
    headers: HeaderCache = field(default_factory=HeaderCache)  # header blocks by object key (headers.py)
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


class SessionBase:
    def __init__(self, ctx: ImapContext, peer: str = "") -> None:
        self.ctx = ctx
        self.peer = peer
        self.session_id = secrets.token_urlsafe(9)  # in every log line of this connection
        self.commands = 0
        self.pending_auth: str | None = None  # tag of an AUTHENTICATE waiting for "+ " data
        self.secure = False  # on TLS (implicit, or after STARTTLS)
        self.start_tls = False  # the I/O loop upgrades the connection after this OK
        self.start_deflate = False  # ... compresses it after this OK (RFC 4978)
        self.compressed = False
        self.user: str | None = None
        self.view: SelectedView | None = None
        self.logout = False
        self.condstore = False  # CONDSTORE enabled: FETCH responses carry UID and MODSEQ (RFC 7162 §3.1)
        self.qresync = False  # QRESYNC enabled: VANISHED instead of EXPUNGE (RFC 7162 §3.2)
        self.notify: NotifyState | None = None  # NOTIFY SET (RFC 5465): notify.py
        self.rev2 = False  # ENABLE IMAP4rev2: RFC 9051's answers (RFC 9051 §6.3.1)
        self.utf8_accept = False  # ENABLE UTF8=ACCEPT (RFC 9755)

    @property
    def utf8(self) -> bool:
        """Mailbox names go both ways as UTF-8, not modified UTF-7 (IMAP4rev2, or UTF8=ACCEPT)."""
        return self.rev2 or self.utf8_accept

    def name_in(self, wire: str) -> str:
        """A mailbox name from the client as the store keeps it (modified UTF-7, RFC 3501 §5.1.3)."""
        if wire.upper() == "INBOX" or not self.utf8:
            return "INBOX" if wire.upper() == "INBOX" else wire
        return mutf7.encode(wire)

    def name_out(self, stored: str) -> str:
        """A stored mailbox name as this client reads it."""
        if not self.utf8:
            return stored
        try:
            return mutf7.decode(stored)
        except mutf7.MailboxNameError:  # made by a client that sent it raw: shown as it is
            return stored

    @property
    def authed(self) -> str:
        """The logged-in user: every command past the state check (_check_state) has one."""
        if self.user is None:
            raise ImapBad("Authentication needed first")
        return self.user

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

    async def _box(self, name: str, *, missing: str = "NONEXISTENT") -> Mailbox:
        """The mailbox; `missing` is the response code when there is none (TRYCREATE
        where the client may create it and retry: APPEND, COPY, MOVE; RFC 3501 §6.3.11)."""
        assert self.user is not None
        box = self._read(self.ctx.meta.mailbox, self.user, name)
        if box is None:
            raise ImapNo(f"No mailbox {name}", missing)
        return box

    async def _parsed(self, uids: list[int], msgs: dict[int, Message]) -> dict[int, tuple[str, str]]:
        """uid -> (ENVELOPE, BODYSTRUCTURE) JSON of these messages; one never parsed (or parsed by
        an older version, migration 10) is parsed from its object now and stored.  A message
        expunged meanwhile is absent."""
        assert self.view is not None
        out: dict[int, tuple[str, str]] = {}
        stale: list[int] = []
        c = self._meta().conn()
        for i in range(0, len(uids), 500):
            chunk = uids[i:i + 500]
            for u, env, bs in c.execute("SELECT uid, envelope, bodystructure FROM messages WHERE mailbox_id=? AND "
                                        f"uid IN ({','.join('?' * len(chunk))})", (self.view.box_id, *chunk)):
                if env is None or bs is None:
                    stale.append(u)
                else:
                    out[u] = (env, bs)
        for u in stale:
            if u not in msgs:
                continue
            try:
                body = (await self.ctx.fs.get(msgs[u].object_key))[0]
            except NotFound:
                continue
            env_v, bs_v = await asyncio.to_thread(parse_message, body)
            out[u] = (json.dumps(env_v), json.dumps(bs_v))
            await asyncio.to_thread(self.ctx.meta.set_parsed, self.view.box_id, u, *out[u])
        return out

    def _uids(self, s: SequenceSet, *, uid: bool) -> list[int]:
        assert self.view is not None
        v = self.view
        if not v.uids:
            return []
        if s.last_result:  # "$": the saved result, less what was expunged since (RFC 5182 §2.1)
            return sorted(u for u in v.saved if u in v.flags)
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

    def _ranges(self, s: SequenceSet, top: int) -> list[tuple[int, int]]:
        """A UID set as inclusive ranges, "*" standing for `top` (the UIDs need not exist)."""
        out = []
        for a, b in s.ranges:
            lo, hi = (top if a is None else a), (top if b is None else b)
            out.append((min(lo, hi), max(lo, hi)))
        return out

    def vanished_earlier(self, modseq: int, ranges: list[tuple[int, int]]) -> list[bytes]:
        """* VANISHED (EARLIER) for the UIDs in `ranges` gone since `modseq` (QRESYNC)."""
        assert self.view is not None
        gone = self._read(self.ctx.meta.vanished_since, self.view.box_id, modseq, ranges)
        return [f"* VANISHED (EARLIER) {uid_set(gone)}\r\n".encode()] if gone else []

    async def _messages(self, uids: list[int]) -> dict[int, Message]:
        assert self.view is not None
        return self._read(self.ctx.meta.messages_by_uid, self.view.box_id, uids)

    def greeting(self) -> bytes:
        return b"* OK [CAPABILITY " + self._caps().encode() + b"] mailstore IMAP ready\r\n"

    def _caps(self) -> str:
        caps = CAPABILITIES.format(limit=self.ctx.max_append)
        if self.ctx.tls is not None and not self.secure and self.user is None:
            caps += " STARTTLS"
        return caps + (" AUTH=PLAIN" if self.user is None else "")

    async def context_changes(self, uids: list[int]) -> list[bytes]:
        """ESEARCH ADDTO/REMOVEFROM for kept searches these changed messages enter or leave (search.py)."""
        return []

    def context_removals(self, gone: list[int]) -> list[bytes]:
        """ESEARCH REMOVEFROM for kept searches that held these expunged messages (search.py)."""
        return []

    async def _drop_objects(self, keys: list[str]) -> None:
        if keys:  # metadata is already gone: objects last (orphans are fine, dangling rows are not)
            try:
                if len(keys) == 1:  # a plain DELETE: no XML either side
                    await self.ctx.fs.delete(keys[0])
                else:
                    await self.ctx.fs.delete_many(keys)
            except (FsError, OSError) as exc:  # the objects are left for `mailstore gc`
                log.warning("deleting %d expunged objects failed (gc will): %s", len(keys), exc)

    async def _op(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except folders.MailboxExists:
            raise ImapNo("Mailbox exists", "ALREADYEXISTS") from None
        except folders.NoSuchMailbox:
            raise ImapNo("No such mailbox", "NONEXISTENT") from None
        except folders.CannotDelete as exc:
            raise ImapNo(str(exc), "CANNOT") from None
