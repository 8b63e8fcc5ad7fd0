"""Rebuilding metadata from the bucket (reindex) and removing orphans (gc).

reindex: the bucket is the truth.  Every message object carries its mailbox
name and GUID, UIDVALIDITY and UID (layout.MessageMeta), so listing a user's
prefix and reading each object restores the same mailboxes, UIDs and message
set, with ENVELOPE/BODYSTRUCTURE recomputed from the bytes.  Flags live only
in the database and start empty after a rebuild.

gc: an object no message row refers to, older than the grace period, is an
orphan (its delivery failed after the PUT, and the MTA retried); it is deleted.
Younger ones may belong to a delivery still in flight and are left alone.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable

from cache import Fs

from . import layout, message
from .db import MetaStore
from .users import hash_password

Progress = Callable[[int, int], None]  # (done, total)


async def reindex(meta: MetaStore, fs: Fs, user: str,
                  progress: Progress = lambda done, total: None) -> dict[str, int]:
    created = False
    if await asyncio.to_thread(meta.get_user, user) is None:
        await asyncio.to_thread(meta.add_user, user, hash_password(secrets.token_urlsafe(24)))
        created = True
    keys = [e.key async for e in fs.list(layout.mailboxes_prefix(user)) if not e.is_prefix]
    boxes: dict[str, tuple[str, str, int]] = {}
    rows = []
    skipped = done = 0
    sem = asyncio.Semaphore(16)
    progress(0, len(keys))

    async def one(key: str) -> None:
        nonlocal skipped, done
        async with sem:
            body, st = await fs.get(key)
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
        boxes[m.mailbox_guid] = (m.mailbox, m.mailbox_guid, m.uidvalidity)
        rows.append((m.mailbox_guid, m.uid, m.guid, key, m.size, float(m.received), float(m.saved), env, bs))

    await asyncio.gather(*(one(k) for k in keys))
    rows.sort(key=lambda r: (r[0], r[1]))
    await asyncio.to_thread(meta.restore, user, list(boxes.values()), rows)
    return {"mailboxes": len(boxes), "messages": len(rows), "skipped": skipped, "user_created": int(created)}


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
