"""Delivering one message to its recipients: object first, then metadata.

For each accepted recipient: check the quota, reserve the mailbox's next UID,
store the object (Return-Path and Delivered-To added) through the fs stack,
commit the message row.  Only then is the recipient's 250 sent: durable
before acknowledged.  Every failure is that recipient's alone and maps, in
one table, to its LMTP reply (RFC 2033, RFC 3463 enhanced codes):

    unknown user         550 5.1.1      (at RCPT)
    over quota           552 5.2.2
    message too big      552 5.3.4
    storage unreachable  451 4.3.0      (the MTA retries later; nothing lost)

An object stored whose metadata commit then failed is an orphan: the
recipient got 451, and `mailstore gc` removes the object after a grace period.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from cache import Fs, FsError
from runtime import logs

from . import layout, message
from .db import Mailbox, MetaStore, MetaWriter, NewMessage, StoreUnavailable, User
from .sieve import deliver as sieve_deliver
from .sieve.outbound import Relay
from .users import AddressPolicy, resolve

log = logging.getLogger("mailstore.delivery")


def _parsed_json(data: bytes) -> tuple[str, str]:
    """ENVELOPE and BODYSTRUCTURE as JSON text, once per message (not per recipient)."""
    env, body = message.parse(data)
    return json.dumps(env), json.dumps(body)


class DeliveryError(Exception):
    reply = "451 4.3.0 Temporary failure"


class UnknownUser(DeliveryError):
    reply = "550 5.1.1 User unknown"


class OverQuota(DeliveryError):
    reply = "552 5.2.2 Mailbox full"


class TooBig(DeliveryError):
    reply = "552 5.3.4 Message too big for system"


class Rejected(DeliveryError):
    """The user's Sieve script rejected the message (RFC 5429: 550 5.7.1 and its reason)."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


class StorageUnavailable(DeliveryError):
    reply = "451 4.3.0 Storage temporarily unavailable, try again later"


@dataclass
class DeliveryStats:
    """Per recipient; failures by reason (the DeliveryError class name)."""
    accepted: int = 0
    temp_failed: dict[str, int] = field(default_factory=dict)
    perm_failed: dict[str, int] = field(default_factory=dict)


class Deliverer:
    def __init__(self, meta: MetaStore, fs: Fs, policy: AddressPolicy, max_size: int,
                 relay: Relay | None = None) -> None:
        self.meta = meta
        self.relay = relay  # where Sieve's redirects and vacation replies are submitted (None: not sent)
        self.writer = MetaWriter(meta)
        self.fs = fs
        self.policy = policy
        self.max_size = max_size
        self.stats = DeliveryStats()

    def _lookup(self, address: str) -> tuple[str | None, User | None]:
        user = resolve(self.meta, self.policy, address)
        return user, (self.meta.get_user(user) if user is not None else None)

    async def recipient(self, address: str) -> str:
        """The user of an RCPT TO address (raises UnknownUser, OverQuota or StorageUnavailable)."""
        try:
            user, u = await asyncio.to_thread(self._lookup, address)
        except StoreUnavailable as exc:  # the metadata database is away: the MTA retries later
            log.warning("recipient lookup for %s: %s", address, exc)
            self._count(StorageUnavailable())
            raise StorageUnavailable() from None
        if user is None:
            self._count(UnknownUser())
            raise UnknownUser()
        if u is not None and u.quota_bytes and u.used_bytes >= u.quota_bytes:
            self._count(OverQuota())
            raise OverQuota()
        return user

    def _count(self, exc: DeliveryError) -> None:
        counts = self.stats.temp_failed if exc.reply.startswith("4") else self.stats.perm_failed
        name = type(exc).__name__
        counts[name] = counts.get(name, 0) + 1

    async def deliver(self, mail_from: str, recipients: list[tuple[str, str]], data: bytes,
                      trace: Mapping[str, str] | None = None) -> list[str]:
        """One LMTP reply per (address, user), in RCPT order.

        Per message, not per recipient: one transaction reserves every
        recipient's UID, the objects are stored in parallel, one transaction
        commits every row that was stored (and releases the rest).  A user
        named twice (the same address, or two that resolve to one mailbox)
        gets one copy, and each RCPT still gets its reply (RFC 2033 §4.2):
        a thousand RCPTs of one user must not store a thousand messages.
        """
        first: dict[str, int] = {}
        unique: list[tuple[str, str]] = []
        where: list[int] = []
        for address, user in recipients:
            if user not in first:
                first[user] = len(unique)
                unique.append((address, user))
            where.append(first[user])
        trace = trace or {}
        if len(unique) < len(recipients):
            replies = await self._deliver(mail_from, unique, data, trace)
            # Each reply names its own RCPT address (the copy was stored under the first one).
            out = []
            for i, (address, user) in zip(where, recipients, strict=True):
                out.append(replies[i].replace(f"<{unique[i][0]}>", f"<{address}>", 1))
                if address != unique[i][0]:
                    _log_result(trace, address, user, out[-1], same_as=f"<{unique[i][0]}>")
            return out
        return await self._deliver(mail_from, recipients, data, trace)

    async def _deliver(self, mail_from: str, recipients: list[tuple[str, str]], data: bytes,
                       trace: Mapping[str, str]) -> list[str]:
        replies = await self._replies(mail_from, recipients, data)
        for (address, user), (reply, row) in zip(recipients, replies, strict=True):
            _log_result(trace, address, user, reply, row)
        return [reply for reply, _ in replies]

    async def _replies(self, mail_from: str, recipients: list[tuple[str, str]],
                       data: bytes) -> list[tuple[str, NewMessage | None]]:
        """Each recipient's reply, and the row stored for each one delivered."""
        if len(data) > self.max_size:
            for _ in recipients:
                self._count(TooBig())
            return [(TooBig.reply, None)] * len(recipients)
        env, body = await asyncio.to_thread(_parsed_json, data)
        replies: list[str | None] = [None] * len(recipients)
        saved: list[NewMessage | None] = [None] * len(recipients)  # each delivered recipient's row
        wanted: list[int] = []
        try:
            users = await asyncio.to_thread(self.meta.get_users, [u for _, u in recipients])
        except StoreUnavailable as exc:
            log.warning("quota lookup: %s", exc)
            return [(self._fail(StorageUnavailable()), None) for _ in recipients]
        for i, (_, user) in enumerate(recipients):
            u = users.get(user)
            size = len(message.stored_bytes(data, mail_from, recipients[i][0]))
            if u is None:
                replies[i] = self._fail(UnknownUser())
            elif u.quota_bytes and u.used_bytes + size > u.quota_bytes:
                replies[i] = self._fail(OverQuota())
            else:
                wanted.append(i)
        targets: dict[int, list[tuple[str, tuple[str, ...]]]] = {i: [("INBOX", ())] for i in wanted}
        if wanted:
            try:
                await self._sieve(mail_from, recipients, data, wanted, targets, replies)
            except StoreUnavailable as exc:
                log.warning("Sieve scripts: %s", exc)
                for i in wanted:
                    replies[i] = self._fail(StorageUnavailable())
                return [(r or DeliveryError.reply, None) for r in replies]
            wanted = [i for i in wanted if replies[i] is None]
        if wanted:
            places = [(i, folder, flags) for i in wanted for folder, flags in targets[i]]
            try:
                reserved = await self.writer.run(MetaStore.reserve_uids_tx,
                                                 [(recipients[i][1], folder) for i, folder, _ in places])
            except Exception:
                log.exception("reserving UIDs failed")
                for i in wanted:
                    replies[i] = self._fail(StorageUnavailable())
                return [(r or DeliveryError.reply, None) for r in replies]
            by_recipient: dict[int, list[tuple[Mailbox, int, tuple[str, ...]]]] = {}
            for (i, _, flags), (box, uid) in zip(places, reserved, strict=True):
                by_recipient.setdefault(i, []).append((box, uid, flags))
            now = time.time()
            stored = await asyncio.gather(*(self._put(mail_from, recipients[i][0], recipients[i][1], data,
                                                      by_recipient[i][0][0], by_recipient[i][0][1], now, (env, body))
                                            for i in wanted))
            rows: list[NewMessage] = []
            released: list[tuple[int, int]] = []
            for i, row in zip(wanted, stored, strict=True):
                for box, uid, flags in by_recipient[i]:  # one object; a row in each folder (as COPY)
                    if row is None:
                        released.append((box.id, uid))
                    else:
                        rows.append(dataclasses.replace(row, mailbox_id=box.id, uid=uid, flags=flags))
            try:
                await self.writer.run(MetaStore.commit_messages_tx, rows, released)
                committed = True
            except Exception:  # the stored objects are orphans now; gc removes them
                log.exception("metadata commit failed; %d objects orphaned", len(rows))
                committed = False
            for i, row in zip(wanted, stored, strict=True):
                if row is None or not committed:
                    replies[i] = self._fail(StorageUnavailable())
                else:
                    self.stats.accepted += 1
                    replies[i] = f"250 2.0.0 <{recipients[i][0]}> {row.guid} Saved"
                    saved[i] = row
        return [(r or DeliveryError.reply, row) for r, row in zip(replies, saved, strict=True)]

    async def _sieve(self, mail_from: str, recipients: list[tuple[str, str]], data: bytes, wanted: list[int],
                     targets: dict[int, list[tuple[str, tuple[str, ...]]]], replies: list[str | None]) -> None:
        """Each recipient with an active Sieve script: where its copy goes (`targets`), or its
        reply when the script rejects or discards it (`replies`). One query for all recipients;
        nothing more for users without a script."""
        scripts = await asyncio.to_thread(sieve_deliver.active_scripts, self.meta, [recipients[i][1] for i in wanted])
        for i in wanted:
            address, user = recipients[i]
            if user not in scripts:
                continue
            plan = await asyncio.to_thread(sieve_deliver.plan, self.meta, user, address, mail_from,
                                           message.stored_bytes(data, mail_from, address), scripts[user], self.relay)
            if plan.reject is not None:
                reason = " ".join(plan.reject.split())[:400] or "Rejected"
                replies[i] = self._fail(Rejected(f"550 5.7.1 {reason}"))
            elif not plan.targets:
                self.stats.accepted += 1
                replies[i] = f"250 2.0.0 <{address}> Discarded by Sieve"
            else:
                targets[i] = plan.targets

    def _fail(self, exc: DeliveryError) -> str:
        self._count(exc)
        return exc.reply

    async def _put(self, mail_from: str, address: str, user: str, data: bytes, box: Mailbox, uid: int,
                   now: float, parsed: tuple[str, str]) -> NewMessage | None:
        """Store one recipient's object; the row to commit, or None when storage failed."""
        stored = message.stored_bytes(data, mail_from, address)
        guid = uuid.uuid4().hex
        meta = layout.MessageMeta(user, guid, len(stored), int(now), int(now), box.name, box.guid,
                                  box.uidvalidity, uid)
        key = layout.message_key(user, box.guid, guid)
        try:
            await self.fs.put(key, stored, meta.to_headers(), "message/rfc822")
        except FsError as exc:
            log.warning("storing %s for %s failed: %s", key, user, exc)
            return None
        return NewMessage(user, box.id, uid, guid, key, len(stored), now, now, *parsed)


def _log_result(trace: Mapping[str, str], address: str, user: str, reply: str, row: NewMessage | None = None,
                **more: str) -> None:
    """One line per recipient: delivered (2xx), deferred (4xx, the MTA retries) or rejected (5xx),
    with the reply's codes, and the object and size of what was stored."""
    outcome = {"2": "delivered", "4": "deferred"}.get(reply[:1], "rejected")
    fields: dict[str, object] = {**trace, "rcpt": f"<{address}>", "user": user or "-", "result": reply[:9]}
    if row is not None:
        fields.update(object=row.object_key, size=row.size)
    elif reply[:1] != "2":
        fields["reason"] = reply[10:].split(": ", 1)[-1]
    fields.update(more)
    logs.event(log, logging.INFO if outcome == "delivered" else logging.WARNING, outcome, **fields)
