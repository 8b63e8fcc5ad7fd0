"""NOTIFY (RFC 5465): the client names the mailboxes and events it wants to hear about, and
the server tells it as they happen, without IDLE and without polling.

Events for the selected mailbox are the updates `refresh` already makes (EXISTS,
EXPUNGE or VANISHED, FETCH FLAGS), plus a FETCH of the attributes MessageNew asked
for.  For other mailboxes the session keeps what it last reported (by GUID, so a
RENAME is told apart from a DELETE and a CREATE) and compares it with the store:
new or removed messages and flag changes come as `* STATUS`, a created, deleted
or renamed mailbox as `* LIST` (with `\\NonExistent`, or `("OLDNAME" (...))`), a
subscription change as `* LIST` with or without `\\Subscribed`.  The I/O loop asks
for them after every command, during IDLE, and every second while the client is
quiet (server.py); EXPUNGE still waits for a command or IDLE (RFC 3501 §7.4.1).
"""

from __future__ import annotations

from .. import folders
from . import response as R
from .reader import Command, EventGroup
from .state import ImapBad, ImapNo, NotifyState, Reply, SessionBase, WatchedBox

SUPPORTED = ("MessageNew", "MessageExpunge", "FlagChange", "MailboxName", "SubscriptionChange")
_SUPPORTED = {e.upper() for e in SUPPORTED}


class NotifyCommands(SessionBase):
    async def do_notify(self, cmd: Command) -> Reply:
        groups: list[EventGroup] | None = cmd.args["groups"]
        if groups is None:
            self.notify = None
            return [], "NOTIFY completed"
        for g in groups:
            unknown = {e for e in g.events if e not in _SUPPORTED}
            if unknown:
                raise ImapNo("Event not supported", f"BADEVENT ({' '.join(SUPPORTED)})")
            message = g.events & {"MESSAGENEW", "MESSAGEEXPUNGE"}
            if len(message) == 1:  # RFC 5465 §5: each needs the other
                raise ImapBad("MessageNew and MessageExpunge go together")
            if "FLAGCHANGE" in g.events and not message:
                raise ImapBad("FlagChange needs MessageNew and MessageExpunge")
            if g.fetch and g.filter not in ("SELECTED", "SELECTED-DELAYED"):
                raise ImapBad("MessageNew fetch attributes are for the selected mailbox only")
        groups = [EventGroup(g.filter, tuple(self.name_in(n) for n in g.mailboxes), g.events, g.fetch)
                  for g in groups]
        state = NotifyState(groups)
        state.boxes = self._notify_boxes()
        state.subscribed = self._read(folders.subscriptions, self.ctx.meta, self.authed)
        self.notify = state
        lines: list[bytes] = []
        if cmd.args["status"]:  # RFC 5465 §3: where things stand now, for every mailbox watched
            for box in sorted(state.boxes.values(), key=lambda b: b.name):
                events = self._events_for(box.name, state)
                if events & {"MESSAGENEW", "MESSAGEEXPUNGE", "FLAGCHANGE"} and not self._selected(box):
                    lines.append(self._notify_status(box))
        return lines, "NOTIFY completed"

    def _notify_boxes(self) -> dict[str, WatchedBox]:
        rows = self._meta().conn().execute(
            "SELECT guid, name, uidvalidity, uidnext, highestmodseq, id FROM mailboxes WHERE user_name=?",
            (self.authed,))
        return {guid: WatchedBox(name, validity, uidnext, modseq, box_id)
                for guid, name, validity, uidnext, modseq, box_id in rows}

    def _events_for(self, name: str, state: NotifyState) -> frozenset[str]:
        """The events the first group that covers this (not selected) mailbox asks for."""
        for g in state.groups:
            if g.filter in ("SELECTED", "SELECTED-DELAYED"):
                continue
            if (g.filter == "PERSONAL" or (g.filter == "INBOXES" and name == "INBOX")
                    or (g.filter == "SUBSCRIBED" and name in state.subscribed)
                    or (g.filter == "MAILBOXES" and name in g.mailboxes)
                    or (g.filter == "SUBTREE" and any(name == m or name.startswith(m + "/") for m in g.mailboxes))):
                return g.events
        return frozenset()

    def _selected(self, box: WatchedBox) -> bool:
        return self.view is not None and self.view.box_id == box.box_id

    def _notify_status(self, box: WatchedBox) -> bytes:
        messages, unseen = self._meta().conn().execute(
            "SELECT count(*), coalesce(sum(CASE WHEN ' ' || flags || ' ' LIKE '% \\Seen %' ESCAPE '!' "
            "THEN 0 ELSE 1 END), 0) FROM messages WHERE mailbox_id=?", (box.box_id,)).fetchone()
        return (b"* STATUS " + R.astring(self.name_out(box.name))
                + f" (MESSAGES {messages} UIDNEXT {box.uidnext} UIDVALIDITY {box.uidvalidity} UNSEEN {unseen}"
                  f" HIGHESTMODSEQ {box.highestmodseq})\r\n".encode())

    def selected_group(self) -> EventGroup | None:
        if self.notify is None:
            return None
        return next((g for g in self.notify.groups if g.filter in ("SELECTED", "SELECTED-DELAYED")), None)

    def other_notifications(self) -> list[bytes]:
        """What changed in the other mailboxes since the last report, as far as NOTIFY asked."""
        state = self.notify
        if state is None:
            return []
        lines: list[bytes] = []
        now = self._notify_boxes()
        subscribed = self._read(folders.subscriptions, self.ctx.meta, self.authed)
        old = state.boxes
        for guid, box in sorted(now.items(), key=lambda kv: kv[1].name):
            was = old.get(guid)
            events = self._events_for(box.name, state)
            if was is None:
                if "MAILBOXNAME" in events:
                    lines.append(R.list_line("LIST", (), self.name_out(box.name)))
            elif was.name != box.name and "MAILBOXNAME" in events | self._events_for(was.name, state):
                oldname = b' ("OLDNAME" (' + R.astring(self.name_out(was.name)) + b"))"  # RFC 5465 §5.4
                lines.append(R.list_line("LIST", (), self.name_out(box.name), oldname))
            if (was is not None and was.highestmodseq != box.highestmodseq and not self._selected(box)
                    and events & {"MESSAGENEW", "MESSAGEEXPUNGE", "FLAGCHANGE"}):
                lines.append(self._notify_status(box))
        for guid, was in sorted(old.items(), key=lambda kv: kv[1].name):
            if guid not in now and "MAILBOXNAME" in self._events_for(was.name, state):
                lines.append(R.list_line("LIST", ("\\NonExistent",), self.name_out(was.name)))
        for name in sorted(subscribed ^ state.subscribed):
            if "SUBSCRIPTIONCHANGE" in self._events_for(name, state) | self._events_for(name, NotifyState(
                    state.groups, subscribed=subscribed)):
                lines.append(R.list_line("LIST", ("\\Subscribed",) if name in subscribed else (), self.name_out(name)))
        state.boxes, state.subscribed = now, subscribed
        return lines
