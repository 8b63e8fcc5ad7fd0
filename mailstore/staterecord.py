"""What only the metadata knows, recorded in the bucket: flags, keywords, mailbox names, copies.

Every message object names its user, mailbox, UIDVALIDITY and UID (layout.MessageMeta), so
`reindex` restores messages from the bucket alone; but flags and keywords change after
delivery, mailboxes get renamed and messages copied, and all of that lives only in the
metadata store.  As Dovecot obox uploads its index bundles, the IMAP server writes each
changed user's state to one object, `<hash>/<user>/index/state.json.gz`, every
`interval` seconds (a user is changed when a mailbox's HIGHESTMODSEQ, UIDNEXT or name
moved).  `reindex` then restores that state as of the last record: so the flags of a host
that lost its metadata are at most one interval old (README "Backup and restore").

Which state wins at reindex, per message: the record's when its mailbox's HIGHESTMODSEQ
is at least the message's MODSEQ in the database being rebuilt (a backup restored
before), the database's otherwise.  MODSEQs only grow in one mailbox, so the later state wins.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import logging
import time
from typing import Any

from cache import Fs
from cache.s3client import FsError, NotFound
from runtime import logs

from . import layout
from .db import MetaStore

log = logging.getLogger("mailstore.staterecord")
VERSION = 1


def record_key(user: str) -> str:
    return f"{layout.user_prefix(user)}index/state.json.gz"


def signatures(meta: MetaStore) -> dict[str, str]:
    """Per user, what moves when anything recorded changes (one scan of the mailboxes table)."""
    rows = meta.conn().execute("SELECT user_name, guid, name, highestmodseq, uidnext FROM mailboxes "
                               "ORDER BY user_name, guid").fetchall()
    per: dict[str, Any] = {}
    for user, guid, name, hms, uidnext in rows:
        per.setdefault(user, hashlib.sha256()).update(f"{guid}\0{name}\0{hms}\0{uidnext}\n".encode())
    return {user: h.hexdigest()[:32] for user, h in per.items()}


def snapshot(meta: MetaStore, user: str, everything: bool = False) -> dict[str, Any]:
    """The user's state as recorded: messages with flags, and copies (`everything`: every
    message, for reindex to weigh the database it rebuilds against a record)."""
    c = meta.conn()
    boxes = c.execute("SELECT id, guid, name, uidvalidity, uidnext, highestmodseq FROM mailboxes WHERE user_name=?",
                      (user,)).fetchall()
    by_id = {row[0]: row[1] for row in boxes}
    messages = []
    for box_id, uid, guid, key, modseq, flags in c.execute(
            "SELECT m.mailbox_id, m.uid, m.guid, m.object_key, m.modseq, m.flags FROM messages m "
            "JOIN mailboxes b ON b.id = m.mailbox_id WHERE b.user_name=? ORDER BY m.mailbox_id, m.uid", (user,)):
        own = key.rsplit("/", 2)[-2] == by_id[box_id]  # a copy lives in another mailbox than its object
        if flags or not own or everything:
            messages.append([by_id[box_id], uid, guid, key, modseq, flags])
    keywords = c.execute("SELECT b.guid, k.name FROM keywords k JOIN mailboxes b ON b.id = k.mailbox_id "
                         "WHERE b.user_name=?", (user,)).fetchall()
    subscriptions = [r[0] for r in c.execute("SELECT name FROM subscriptions WHERE user_name=?", (user,))]
    return {"version": VERSION, "user": user, "time": time.time(),
            "mailboxes": [{"guid": g, "name": n, "uidvalidity": v, "uidnext": u, "highestmodseq": h}
                          for _, g, n, v, u, h in boxes],
            "messages": messages, "keywords": [list(k) for k in keywords], "subscriptions": subscriptions}


async def write(fs: Fs, user: str, doc: dict[str, Any], signature: str = "") -> int:
    """Store a snapshot as the user's record; the object's size."""
    body = gzip.compress(json.dumps(doc, separators=(",", ":")).encode(), 6)
    await fs.put(record_key(user), body, {"mailstore-signature": signature}, "application/gzip")
    return len(body)


def _floor(doc: dict[str, Any] | None) -> dict[str, int]:
    return {b["guid"]: b["highestmodseq"] for b in doc["mailboxes"]} if doc else {}


async def read(fs: Fs, user: str) -> dict[str, Any] | None:
    try:
        body, _ = await fs.get(record_key(user))
    except NotFound:
        return None
    doc: dict[str, Any] = json.loads(gzip.decompress(body))
    if doc.get("version") != VERSION or doc.get("user") != user:
        raise ValueError(f"{record_key(user)} is not a state record of {user}")
    return doc


class Recorder:
    """The IMAP server's background task: each changed user's state, every `interval` seconds."""

    def __init__(self, meta: MetaStore, fs: Fs, interval: float) -> None:
        self.meta, self.fs, self.interval = meta, fs, interval
        self.recorded: dict[str, str] = {}  # user -> signature written (or found written)
        self.floor: dict[str, dict[str, int]] = {}  # user -> mailbox guid -> HIGHESTMODSEQ last recorded
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        """Stop; a server that stops cleanly records what changed since the last round first
        (storage is still up then: `mailstore up` stops the shim before the gateways)."""
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        try:
            await asyncio.wait_for(self.once(), 10)
        except (FsError, OSError, TimeoutError) as exc:
            logs.event(log, logging.WARNING, "state record not written at stop", error=str(exc))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.once()
            except (FsError, OSError) as exc:  # storage away: the next round tries again
                logs.event(log, logging.WARNING, "state record not written", error=str(exc))

    async def once(self) -> int:
        """Write every user whose state moved since it was last recorded; how many were written.

        Never over a later record: a database restored from a backup is behind the record
        (a mailbox's HIGHESTMODSEQ there is lower than the record's) until `reindex` has
        merged the two, and writing its state would throw away what only the record knows."""
        now = await asyncio.to_thread(signatures, self.meta)
        written = 0
        for user, sig in now.items():
            if self.recorded.get(user) == sig:
                continue
            if user not in self.floor:  # first time this process writes the user: what is there?
                try:
                    st = await self.fs.stat(record_key(user))
                except NotFound:
                    self.floor[user] = {}
                else:
                    if st.metadata.get("mailstore-signature") == sig:
                        self.recorded[user] = sig
                        continue
                    self.floor[user] = _floor(await read(self.fs, user))
            doc = await asyncio.to_thread(snapshot, self.meta, user)
            behind = [b["name"] for b in doc["mailboxes"] if b["highestmodseq"] < self.floor[user].get(b["guid"], 0)]
            if behind:
                logs.event(log, logging.WARNING, "metadata behind the state record in the bucket; not overwriting it "
                           "(run mailstore reindex)", user=user, mailboxes=",".join(sorted(behind)))
                self.recorded[user] = sig
                continue
            await write(self.fs, user, doc, sig)
            self.floor[user] = _floor(doc)
            self.recorded[user] = sig
            written += 1
        return written
