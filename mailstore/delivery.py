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
import logging
import time
import uuid
from dataclasses import dataclass, field

from cache import FsError

from . import layout, message
from .db import MetaStore
from .users import AddressPolicy, resolve

log = logging.getLogger("mailstore.delivery")


class DeliveryError(Exception):
    reply = "451 4.3.0 Temporary failure"


class UnknownUser(DeliveryError):
    reply = "550 5.1.1 User unknown"


class OverQuota(DeliveryError):
    reply = "552 5.2.2 Mailbox full"


class TooBig(DeliveryError):
    reply = "552 5.3.4 Message too big for system"


class StorageUnavailable(DeliveryError):
    reply = "451 4.3.0 Storage temporarily unavailable, try again later"


@dataclass
class DeliveryStats:
    accepted: int = 0
    temp_failed: int = 0
    perm_failed: dict[str, int] = field(default_factory=dict)


class Deliverer:
    def __init__(self, meta: MetaStore, fs, policy: AddressPolicy, max_size: int) -> None:  # type: ignore[no-untyped-def]
        self.meta = meta
        self.fs = fs
        self.policy = policy
        self.max_size = max_size
        self.stats = DeliveryStats()

    async def recipient(self, address: str) -> str:
        """The user of an RCPT TO address (raises UnknownUser or OverQuota)."""
        user = await asyncio.to_thread(resolve, self.meta, self.policy, address)
        if user is None:
            self._count(UnknownUser())
            raise UnknownUser()
        u = await asyncio.to_thread(self.meta.get_user, user)
        if u is not None and u.quota_bytes and u.used_bytes >= u.quota_bytes:
            self._count(OverQuota())
            raise OverQuota()
        return user

    def _count(self, exc: DeliveryError) -> None:
        if exc.reply.startswith("4"):
            self.stats.temp_failed += 1
        else:
            name = type(exc).__name__
            self.stats.perm_failed[name] = self.stats.perm_failed.get(name, 0) + 1

    async def deliver(self, mail_from: str, recipients: list[tuple[str, str]], data: bytes) -> list[str]:
        """One LMTP reply per (address, user), in RCPT order."""
        if len(data) > self.max_size:
            return [TooBig.reply] * len(recipients)
        env, body = await asyncio.to_thread(message.parse, data)
        results = await asyncio.gather(*(self._one(mail_from, addr, user, data, env, body)
                                         for addr, user in recipients))
        return list(results)

    async def _one(self, mail_from: str, address: str, user: str, data: bytes, env, body) -> str:  # type: ignore[no-untyped-def]
        try:
            guid = await self._store(mail_from, address, user, data, env, body)
        except DeliveryError as exc:
            self._count(exc)
            return exc.reply
        except Exception:
            log.exception("delivery to %s failed", address)
            self._count(DeliveryError())
            return DeliveryError.reply
        self.stats.accepted += 1
        return f"250 2.0.0 <{address}> {guid} Saved"

    async def _store(self, mail_from: str, address: str, user: str, data: bytes, env, body) -> str:  # type: ignore[no-untyped-def]
        stored = message.stored_bytes(data, mail_from, address)
        u = await asyncio.to_thread(self.meta.get_user, user)
        if u is None:
            raise UnknownUser()
        if u.quota_bytes and u.used_bytes + len(stored) > u.quota_bytes:
            raise OverQuota()
        box, uid = await asyncio.to_thread(self.meta.reserve_uid, user, "INBOX")
        guid = uuid.uuid4().hex
        now = time.time()
        meta = layout.MessageMeta(user, guid, len(stored), int(now), int(now), box.name, box.guid,
                                  box.uidvalidity, uid)
        key = layout.message_key(user, box.guid, guid)
        try:
            await self.fs.put(key, stored, meta.to_headers(), "message/rfc822")
        except FsError as exc:
            await asyncio.to_thread(self.meta.release_uid, box.id, uid)
            log.warning("storing %s for %s failed: %s", key, user, exc)
            raise StorageUnavailable() from exc
        try:
            await asyncio.to_thread(self.meta.commit_message, user, box.id, uid, guid, key, len(stored),
                                    now, now, env, body)
        except Exception as exc:  # the object is an orphan now; gc removes it
            log.error("metadata commit for %s failed (object %s orphaned): %s", user, key, exc)
            raise StorageUnavailable() from exc
        return guid
