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
import logging
from typing import ClassVar

from runtime import logs

from ..db import StoreUnavailable
from . import response as R
from .append import AppendCommands
from .auth import AuthCommands
from .fetch import FetchCommands
from .mailboxes import MailboxCommands
from .notify import NotifyCommands
from .reader import Command, SequenceSet
from .search import SearchCommands
from .state import ImapBad, ImapContext, ImapNo, Reply, SelectedView
from .store import StoreCommands

log = logging.getLogger("mailstore.imap")

__all__ = ["ImapBad", "ImapContext", "ImapNo", "Reply", "SelectedView", "Session"]


class Session(AuthCommands, MailboxCommands, AppendCommands, FetchCommands, StoreCommands, SearchCommands,
              NotifyCommands):
    """One connection's session: dispatch to `do_<command>` of the command families, the state machine."""

    async def handle(self, cmd: Command) -> bytes:
        out = await self._handle(cmd)
        self.commands += 1
        words = out.rsplit(b"\r\n", 2)[-2].split(b" ", 2)  # the tagged line: TAG OK|NO|BAD ...
        result = words[1].decode() if len(words) > 1 and words[1] in (b"OK", b"NO", b"BAD") else "continue"
        if self.ctx.metrics is not None:
            self.ctx.metrics.commands.labels(cmd.name, result).inc()
        if result == "BAD" or (result == "NO" and words[2].startswith((b"[SERVERBUG]", b"[UNAVAILABLE]"))):
            logs.event(log, logging.WARNING if result == "NO" else logging.INFO, "command failed",
                       session=self.session_id, user=self.user or "-", remote=self.peer or "-", command=cmd.name,
                       result=result, text=words[2].decode("utf-8", "replace")[:200])
        return out

    async def _handle(self, cmd: Command) -> bytes:
        name = cmd.name.replace(" ", "_").lower()
        handler = getattr(self, f"do_{name}", None)
        try:
            if handler is None:
                raise ImapBad(f"{cmd.name} is not supported")
            self._check_state(cmd.name)
            if self.utf8:
                for key in ("mailbox", "old", "new"):
                    if key in cmd.args:
                        cmd.args[key] = self.name_in(cmd.args[key])
            lines, text = await handler(cmd)
            if self.pending_auth is not None:
                return b"+ \r\n"  # AUTHENTICATE: the client's next line is the response
            if cmd.name not in ("SELECT", "EXAMINE"):  # those answer from the snapshot they just took
                more = await self.refresh(expunges=cmd.name not in ("FETCH", "STORE", "SEARCH", "SORT", "THREAD"))
                if self.qresync and self.view is not None and not text.startswith("[") and any(
                        line.startswith(b"* VANISHED ") for line in more):
                    text = f"[HIGHESTMODSEQ {self.view.modseq}] {text}"  # where the client's resync starts
                lines += more
            if self.notify is not None and cmd.name != "NOTIFY":  # RFC 5465: other mailboxes too
                lines += self.other_notifications()
            return b"".join(lines) + f"{cmd.tag} OK {text}\r\n".encode()
        except ImapNo as exc:
            code = f"[{exc.code}] " if exc.code else ""
            return b"".join(exc.lines) + f"{cmd.tag} NO {code}{exc.text}\r\n".encode()
        except ImapBad as exc:
            return b"".join(exc.lines) + f"{cmd.tag} BAD {exc}\r\n".encode()
        except StoreUnavailable as exc:  # PostgreSQL away: a temporary failure, not a bug
            log.warning("%s: metadata unavailable: %s", cmd.name, exc)
            return f"{cmd.tag} NO [UNAVAILABLE] Mail metadata temporarily unavailable\r\n".encode()
        except Exception:  # a bug must not cost the client its connection
            log.exception("%s failed", cmd.name)
            return f"{cmd.tag} NO [SERVERBUG] Internal error\r\n".encode()

    _ANY: ClassVar[frozenset[str]] = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "ID", "ENABLE"})
    _NOT_AUTH: ClassVar[frozenset[str]] = frozenset({"LOGIN", "AUTHENTICATE", "STARTTLS"})
    _SELECTED: ClassVar[frozenset[str]] = frozenset({"CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "SORT",
                                                     "THREAD", "FETCH", "CANCELUPDATE",
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

    async def notifications(self, *, quiet: bool) -> list[bytes]:
        """NOTIFY's updates (RFC 5465). `quiet`: the client is between commands, so the selected
        mailbox's changes come only if a SELECTED group asked for them, and no EXPUNGE."""
        lines: list[bytes] = []
        selected = self.selected_group()
        if quiet and self.view is not None and selected is not None and selected.events:
            before = set(self.view.uids)
            lines += await self.refresh(expunges=False)
            new = [u for u in self.view.uids if u not in before]
            if new and selected.fetch:  # MessageNew (fetch-att ...): the new messages' attributes
                fetch = Command("*", "UID FETCH", {"set": SequenceSet(tuple((u, u) for u in new)),
                                                   "attributes": list(selected.fetch)})
                lines += (await self._fetch(fetch, uid=True))[0]
        return lines + self.other_notifications()

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
        # What changed, and what the expunge log says was removed, without counting the mailbox;
        # a session the log no longer reaches counts the mailbox to tell what vanished.
        logged = self._read(self.ctx.meta.changes_with_expunges, v.box_id, v.modseq)
        count: int | None = None
        removed: set[int] = set()
        if logged is None:
            changed, count = self._read(self.ctx.meta.changes_since, v.box_id, v.modseq)
        else:
            changed, removed = logged
        lines: list[bytes] = []
        recent_before = len(v.recent)
        last = v.uids[-1] if v.uids else 0
        new = [u for u, _ in changed if u not in v.flags and u > last]
        gone: set[int] = set()
        if expunges:
            if count is None:
                gone = removed & v.flags.keys()
            elif count != len(v.uids) + len(new):  # something vanished
                gone = self._read(self.ctx.meta.vanished, v.box_id, v.modseq, v.flags, count - len(new))
        if gone:
            lines += self.context_removals(sorted(gone))  # RFC 5267: before the numbers shift
            for u in sorted(gone, reverse=True):  # highest first: numbers stay valid
                i = v.seq_of(u)
                if not self.qresync:
                    lines.append(f"* {i} EXPUNGE\r\n".encode())
                del v.uids[i - 1]
                del v.flags[u]
                v.recent.discard(u)
            if gone and self.qresync:  # UIDs, not numbers (RFC 7162 §3.2.10)
                lines.append(f"* VANISHED {R.uid_set(sorted(gone))}\r\n".encode())
        lines += v.new_keywords([f for _, flags in changed for f in flags])
        flagged = [(u, flags) for u, flags in changed if u in v.flags and flags != v.flags[u]]
        modseqs = {}
        if flagged and v.condstore:  # RFC 7162 §3.1: with UID and MODSEQ once CONDSTORE is on
            modseqs = {u: m.modseq for u, m in
                       self._read(self.ctx.meta.messages_by_uid, v.box_id, [u for u, _ in flagged]).items()}
        for u, flags in flagged:
            v.flags[u] = flags
            extra = f" UID {u} MODSEQ ({modseqs[u]})" if u in modseqs else ""
            lines.append(f"* {v.seq_of(u)} FETCH (FLAGS ".encode() + R.flag_list(v.flags_of(u, flags))
                         + f"{extra})\r\n".encode())
        if new:
            v.uids += new
            for u, flags in changed:
                if u in new:
                    v.flags[u] = flags
            lines.append(f"* {len(v.uids)} EXISTS\r\n".encode())
            if not v.readonly:
                first = await asyncio.to_thread(self.ctx.meta.claim_recent, v.box_id, new[-1] + 1)
                v.recent.update(u for u in new if u >= first)
        lines += await self.context_changes([u for u, _ in flagged] + new)
        if len(v.recent) != recent_before and v.show_recent:  # RECENT when the count changed (RFC 3501 §7.3.2)
            lines.append(f"* {len(v.recent)} RECENT\r\n".encode())
        if expunges:  # withheld EXPUNGEs must be found again next time
            v.modseq = highest
        return lines
