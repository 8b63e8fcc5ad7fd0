"""Rebuilding metadata from the bucket (reindex) and removing orphans (gc).

reindex: the bucket is the truth.  Every message object carries its mailbox
name and GUID, UIDVALIDITY and UID (layout.MessageMeta), so listing a user's
prefix and reading each object restores the same mailboxes, UIDs and message
set, with ENVELOPE/BODYSTRUCTURE recomputed from the bytes.  Flags, keywords,
mailbox renames and copies come from the user's state record in the bucket
(staterecord.py) or from the database being rebuilt, whichever is later per
message; UIDNEXT and HIGHESTMODSEQ never go back, so clients resynchronise.

gc: an object no message row refers to, older than the grace period, is an
orphan (its delivery failed after the PUT, and the MTA retried); it is deleted.
Younger ones may belong to a delivery still in flight and are left alone.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cache import Fs
from cache.mailcrypt import KeyLocked

from . import layout, message, staterecord
from .db import MetaStore, Rebuilt, RebuiltBox, RebuiltMessage
from .users import hash_password

Progress = Callable[[int, int], None]  # (done, total)


async def reindex(meta: MetaStore, fs: Fs, user: str,
                  progress: Progress = lambda done, total: None) -> dict[str, int]:
    created = False
    if await asyncio.to_thread(meta.get_user, user) is None:
        await asyncio.to_thread(meta.add_user, user, hash_password(secrets.token_urlsafe(24)))
        created = True
    keys = [e.key async for e in fs.list(layout.mailboxes_prefix(user)) if not e.is_prefix]
    found: dict[str, Found] = {}
    skipped = done = 0
    sem = asyncio.Semaphore(16)
    progress(0, len(keys))

    async def one(key: str) -> None:
        nonlocal skipped, done
        async with sem:
            try:
                body, st = await fs.get(key)
            except KeyLocked:
                raise KeyLocked(f"{user}'s mail is encrypted (mail-crypt): reindex the user alone, with "
                                "--password-file", code="KeyLocked") from None
        done += 1
        progress(done, len(keys))
        try:
            m = layout.MessageMeta.from_headers(st.metadata)
        except (KeyError, ValueError):
            skipped += 1  # not a message object (an index bundle, a foreign object)
            return
        if m.user != user:
            skipped += 1
            return
        env, bs = await asyncio.to_thread(message.parse, body)
        found[key] = Found(m, env, bs)

    await asyncio.gather(*(one(k) for k in keys))
    record = await staterecord.read(fs, user)
    had = await asyncio.to_thread(staterecord.snapshot, meta, user, True)
    plan = merge(found, record, had)
    await asyncio.to_thread(meta.restore, user, plan)
    return {"mailboxes": len(plan.boxes), "messages": len(plan.messages), "copies": plan.copies,
            "flagged": sum(1 for r in plan.messages if r.flags), "skipped": skipped,
            "user_created": int(created), "record_age_seconds": int(time.time() - record["time"]) if record else -1}


@dataclass(frozen=True, slots=True)
class Found:
    """A message object as read from the bucket."""

    meta: layout.MessageMeta
    envelope: object
    bodystructure: object


def merge(found: dict[str, Found], record: dict[str, Any] | None, had: dict[str, Any]) -> Rebuilt:
    """The user's metadata from the objects, the state record and what the database had: see
    the module.  `record` and `had` are staterecord snapshots (`had` with every message)."""
    rec_boxes = {b["guid"]: b for b in record["mailboxes"]} if record else {}
    had_boxes = {b["guid"]: b for b in had["mailboxes"]}
    rec_rows = {(r[0], r[1]): r for r in record["messages"]} if record else {}
    had_rows = {(r[0], r[1]): r for r in had["messages"]}

    def later(box: str, uid: int) -> tuple[int, str]:
        """(modseq, flags) of the later of the record and the database, for one message."""
        mine = had_rows.get((box, uid))
        if box in rec_boxes and (mine is None or rec_boxes[box]["highestmodseq"] >= mine[4]):
            row = rec_rows.get((box, uid))
            return (row[4], row[5]) if row else (1, "")
        return (mine[4], mine[5]) if mine else (1, "")

    boxes: dict[str, RebuiltBox] = {}

    def box(guid: str, name: str, uidvalidity: int) -> RebuiltBox:
        if guid not in boxes:
            rec, db = rec_boxes.get(guid), had_boxes.get(guid)
            newest = max((b for b in (rec, db) if b), key=lambda b: b["highestmodseq"], default=None)
            boxes[guid] = RebuiltBox(newest["name"] if newest else name, guid, uidvalidity,
                                     max([b["uidnext"] for b in (rec, db) if b] + [1]),
                                     max([b["highestmodseq"] for b in (rec, db) if b] + [1]))
        return boxes[guid]

    messages: list[RebuiltMessage] = []
    taken: set[tuple[str, int]] = set()
    for key, f in found.items():
        m = f.meta
        box(m.mailbox_guid, m.mailbox, m.uidvalidity)
        modseq, flags = later(m.mailbox_guid, m.uid)
        messages.append(RebuiltMessage(m.mailbox_guid, m.uid, m.guid, key, m.size, float(m.received),
                                       float(m.saved), modseq, flags, f.envelope, f.bodystructure,
                                       m.pop3_uidl or None))
        taken.add((m.mailbox_guid, m.uid))
    copies = 0
    for rows, boxes_of in ((rec_rows, rec_boxes), (had_rows, had_boxes)):
        for (box_guid, uid), row in rows.items():
            key = row[3]
            if (box_guid, uid) in taken or key not in found or box_guid not in boxes_of:
                continue  # the object's own row, an object gone, or a mailbox that was deleted
            b = boxes_of[box_guid]
            box(box_guid, b["name"], b["uidvalidity"])
            f = found[key]
            modseq, flags = later(box_guid, uid)
            messages.append(RebuiltMessage(box_guid, uid, row[2], key, f.meta.size, float(f.meta.received),
                                           float(f.meta.saved), modseq, flags, f.envelope, f.bodystructure))
            taken.add((box_guid, uid))
            copies += 1
    for b in [*(record["mailboxes"] if record else []), *had["mailboxes"]]:  # empty mailboxes too
        box(b["guid"], b["name"], b["uidvalidity"])
    names: dict[str, str] = {}
    for b in sorted(boxes.values(), key=lambda b: -b.highestmodseq):  # two guids, one name: the later keeps it
        if b.name in names:
            b.name = f"{b.name}-{b.guid[:8]}"
        names[b.name] = b.guid
    for r in messages:
        b = boxes[r.mailbox_guid]
        b.uidnext = max(b.uidnext, r.uid + 1)
        b.highestmodseq = max(b.highestmodseq, r.modseq + 1)
    keywords = {(g, k) for g, k in [*(record["keywords"] if record else []), *had["keywords"]] if g in boxes}
    keywords |= {(r.mailbox_guid, f) for r in messages for f in r.flags.split() if not f.startswith("\\")}
    subscriptions = sorted({*(record["subscriptions"] if record else []), *had["subscriptions"]})
    messages.sort(key=lambda r: (r.mailbox_guid, r.uid))
    return Rebuilt(list(boxes.values()), messages, sorted(keywords), subscriptions, copies,
                   bool(record) or bool(had["mailboxes"]))


async def gc(meta: MetaStore, fs: Fs, grace_seconds: float, users: list[str] | None = None,
             progress: Progress = lambda done, total: None) -> dict[str, int]:
    names = users or [u.name for u in await asyncio.to_thread(meta.list_users)]
    removed = kept_young = 0
    now = time.time()
    for n, user in enumerate(names):
        progress(n, len(names))
        keys = [e.key async for e in fs.list(layout.mailboxes_prefix(user)) if not e.is_prefix]
        known = await asyncio.to_thread(meta.known_keys, keys)
        orphans = []
        for key in keys:
            if key in known:
                continue
            st = await fs.stat(key)
            if now - st.mtime >= grace_seconds:
                orphans.append(key)
            else:
                kept_young += 1
        if orphans:
            await fs.delete_many(orphans)
            removed += len(orphans)
    progress(len(names), len(names))
    return {"removed": removed, "young_orphans_kept": kept_young}
