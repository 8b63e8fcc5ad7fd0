"""Importing mail into a local user: the store side, whatever the source.

A source (mailstore/sources.py: an IMAP server, a Maildir, an mbox file)
yields folders and, per folder, messages with a stable item id, flags and an
INTERNALDATE.  Each message goes in the way LMTP delivery goes: a UID is
reserved, the object is stored, and one transaction commits the message row
*and* an `import_map` row naming the source item.  So:

- exactly once: a run killed between the object and the commit leaves an
  orphan object (gc removes it) and no row, so the next run stores it again;
  a run killed after the commit finds the row and skips the message;
- incremental: a second run copies only items without a row, and brings the
  flags of the others up to date;
- a source folder whose UIDVALIDITY changed is matched by Message-ID and
  size instead, and its rows are moved to the new UIDs;
- a message that cannot be stored (empty, NUL bytes, over the size limit) is
  reported and skipped; over quota the import stops, unless told to ignore it.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from cache import Fs, FsError

from . import folders, layout, message
from .db import MetaStore, MetaWriter, NewMessage
from .sqlbackend import Conn, PostgresBackend

DEFAULT_MAX_SIZE = 50 * 1024 * 1024


@dataclass
class SourceMessage:
    item: str  # stable within the source folder: an IMAP UID, a Maildir base name, an mbox digest
    flags: tuple[str, ...]
    internal_date: float
    size: int
    message_id: str | None = None
    data: bytes | None = None  # None: fetched by the source's `load` when the message is needed
    path: Path | None = None  # where an offline source reads it from
    pop3_uidl: str | None = None  # the UIDL a POP3 client knew it by there (Dovecot's uidlist, X-UIDL)


@dataclass
class SourceFolder:
    name: str  # local name, "/" between levels
    special_use: str | None
    validity: str  # UIDVALIDITY (IMAP) or "" (offline sources: items never change meaning)
    wire: str = ""  # the name as the source spells it (IMAP: for EXAMINE)
    selectable: bool = True  # False for an IMAP \Noselect parent


class SourceReader(Protocol):
    """One connection's worth of reading (sources.py has an IMAP, a Maildir and an mbox one)."""

    async def messages(self, folder: SourceFolder) -> list[SourceMessage]: ...

    def load(self, folder: SourceFolder, wanted: list[SourceMessage]) -> AsyncIterator[SourceMessage]: ...

    async def close(self) -> None: ...


class Source(Protocol):
    """Where mail comes from: its folders, and readers (one per parallel connection)."""

    @property
    def id(self) -> str: ...  # names the source in import_map rows and the run lock

    async def folders(self) -> list[SourceFolder]: ...

    async def reader(self) -> SourceReader: ...


@dataclass
class FolderReport:
    copied: int = 0
    skipped: int = 0  # already imported
    flags_updated: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # reason -> count
    bytes: int = 0


class OverQuota(Exception):
    pass


class ImportLock:
    """One import per (user, source) at a time: two at once could each copy a message
    before either committed its import_map row.  A flock next to the database; the
    kernel releases it when the process dies, so a killed run never blocks the resume."""

    def __init__(self, db: Path, user: str, source: str) -> None:
        tag = hashlib.sha256(f"{user}\0{source}".encode()).hexdigest()[:16]
        self.path = db.parent / f"{db.name}.import-{tag}.lock"
        self.fd: int | None = None

    def acquire(self) -> bool:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            return False
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class PgImportLock:
    """ImportLock on PostgreSQL: a session advisory lock, on its own connection, held for the
    run; PostgreSQL lets go of it when the connection (the process, the host) is gone."""

    def __init__(self, url: str, user: str, source: str) -> None:
        self.url = url
        self.key = int.from_bytes(hashlib.sha256(f"import\0{user}\0{source}".encode()).digest()[:8], "big",
                                  signed=True)
        self.conn: Any = None

    def acquire(self) -> bool:
        import psycopg
        self.conn = psycopg.connect(self.url, autocommit=True)
        got = self.conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0]
        if not got:
            self.release()
        return bool(got)

    def release(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def import_lock(meta: MetaStore, user: str, source: str) -> ImportLock | PgImportLock:
    """One import per (user, source) at a time, wherever the metadata is."""
    if meta.path is None:
        assert isinstance(meta.backend, PostgresBackend)
        return PgImportLock(meta.backend.url, user, source)
    return ImportLock(meta.path, user, source)


class ImportProgress:
    """Folders, messages, bytes, rate and ETA: a line redrawn on a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self.folders_total = self.folders_done = 0
        self.messages_total = self.messages_done = 0
        self.bytes = 0
        self._last = 0.0

    def show(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < (0.2 if self.tty else 2.0)):
            return
        self._last = now
        elapsed = max(now - self.start, 1e-6)
        rate = self.messages_done / elapsed
        eta = ""
        if rate > 0 and self.messages_total > self.messages_done:
            left = (self.messages_total - self.messages_done) / rate
            eta = f", ETA {int(left) // 60}:{int(left) % 60:02d}"
        text = (f"import: folders {self.folders_done}/{self.folders_total}, messages {self.messages_done}/"
                f"{self.messages_total}, {self.bytes / 1e6:.1f} MB, {rate:.0f} msg/s, "
                f"{self.bytes / 1e6 / elapsed:.1f} MB/s{eta}")
        self.stream.write(f"\r\x1b[K{text}" if self.tty else text + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.show(force=True)
        if self.enabled and self.tty:
            self.stream.write("\n")


class Importer:
    def __init__(self, meta: MetaStore, fs: Fs, user: str, source: str, *,
                 max_size: int = DEFAULT_MAX_SIZE, ignore_quota: bool = False, parallel: int = 8,
                 progress: ImportProgress | None = None) -> None:
        self.meta, self.user, self.source = meta, user, source
        # Straight to S3, not through the fscache: a bulk import would evict what readers use.
        self.fs = getattr(fs, "parent", fs)
        # Reservations and commits of messages stored in parallel share transactions (one fsync
        # per batch), as LMTP deliveries do.
        self.writer = MetaWriter(meta)
        self.max_size, self.ignore_quota = max_size, ignore_quota
        self.parallel = asyncio.Semaphore(parallel)
        self.progress = progress or ImportProgress(enabled=False)
        self.reports: dict[str, FolderReport] = {}

    # ------------------------------------------------------------------ folders

    async def ensure_folder(self, folder: SourceFolder) -> int:
        """The local mailbox for a source folder (made with its special use); its id."""
        box = await asyncio.to_thread(self.meta.mailbox, self.user, folder.name)
        if box is None:
            try:
                await asyncio.to_thread(folders.create_mailbox, self.meta, self.user, folder.name, folder.special_use)
            except folders.MailboxExists:  # made meanwhile by a parallel connection
                pass
            box = await asyncio.to_thread(self.meta.mailbox, self.user, folder.name)
        assert box is not None
        return box.id

    async def plan(self, folder: SourceFolder, messages: list[SourceMessage],
                   load_ids: Callable[[list[SourceMessage]], Awaitable[None]] | None = None) -> list[SourceMessage]:
        """Which messages are new; flags of the known ones brought up to date.  Counts the skips."""
        report = self.reports.setdefault(folder.name, FolderReport())
        box_id = await self.ensure_folder(folder)
        rows = await asyncio.to_thread(self._rows, folder.name)
        if rows and any(r[0] != folder.validity for r in rows.values()) and load_ids is not None:
            # UIDVALIDITY changed: the old UIDs mean nothing; Message-ID + size still do
            await load_ids(messages)
            by_content = {(r[3], r[4]): item for item, r in rows.items() if r[3]}
            moved: list[tuple[str, str, SourceMessage]] = []
            for m in messages:
                old = by_content.pop((m.message_id, m.size), None) if m.message_id else None
                if old is not None:
                    moved.append((old, m.item, m))
            await asyncio.to_thread(self._remap, folder, moved)
            rows = await asyncio.to_thread(self._rows, folder.name)
        new: list[SourceMessage] = []
        updates: dict[tuple[str, ...], list[int]] = {}  # wanted flags -> UIDs to set them on
        local_flags = dict(await asyncio.to_thread(self.meta.uid_flags, box_id))
        for m in messages:
            row = rows.get(m.item)
            if row is None or row[0] != folder.validity:
                new.append(m)
                continue
            report.skipped += 1
            uid = row[2]
            if row[1] == box_id and uid in local_flags and set(local_flags[uid]) != set(m.flags):
                updates.setdefault(tuple(sorted(set(m.flags))), []).append(uid)
        for want, uids in updates.items():
            await asyncio.to_thread(folders.store_flags, self.meta, box_id, uids, "FLAGS", list(want))
            report.flags_updated += len(uids)
        return new

    def _rows(self, folder: str) -> dict[str, tuple[str, int, int, str | None, int]]:
        """item -> (validity, mailbox id, uid, message-id, size) of what this source already gave this folder."""
        rows = self.meta.conn().execute(
            "SELECT item, validity, mailbox_id, uid, message_id, size FROM import_map "
            "WHERE user_name=? AND source=? AND folder=?", (self.user, self.source, folder))
        return {r[0]: (r[1], r[2], r[3], r[4], r[5]) for r in rows}

    def _remap(self, folder: SourceFolder, moved: list[tuple[str, str, SourceMessage]]) -> None:
        with self.meta._write() as c:
            for old, new, _ in moved:
                c.execute("UPDATE import_map SET item=?, validity=? WHERE user_name=? AND source=? AND folder=? "
                          "AND item=?", (new, folder.validity, self.user, self.source, folder.name, old))

    # ------------------------------------------------------------------ messages

    def _refusal(self, m: SourceMessage, data: bytes) -> str | None:
        if not data:
            return "malformed: empty message"
        if b"\0" in data:
            return "malformed: NUL bytes"
        if len(data) > self.max_size:
            return f"over the size limit ({self.max_size} bytes)"
        return None

    async def _check_quota(self, size: int) -> None:
        if self.ignore_quota:
            return
        u = await asyncio.to_thread(self.meta.get_user, self.user)
        if u is not None and u.quota_bytes and u.used_bytes + size > u.quota_bytes:
            raise OverQuota(f"{self.user} would go over quota ({u.used_bytes} of {u.quota_bytes} bytes used, "
                            f"the next message has {size}); import stopped (--ignore-quota to go on)")

    async def store(self, folder: SourceFolder, m: SourceMessage) -> None:
        """Object first, then the message row and its import_map row in one transaction."""
        report = self.reports.setdefault(folder.name, FolderReport())
        data = m.data or b""
        reason = self._refusal(m, data)
        if reason is not None:
            report.failed[reason] = report.failed.get(reason, 0) + 1
            self.progress.messages_done += 1
            return
        await self._check_quota(len(data))
        async with self.parallel:
            env, bs = await asyncio.to_thread(message.parse, data)
            (box, uid), = await self.writer.run(MetaStore.reserve_uids_tx, [(self.user, folder.name)])
            guid = uuid.uuid4().hex
            now = time.time()
            key = layout.message_key(self.user, box.guid, guid)
            meta = layout.MessageMeta(self.user, guid, len(data), int(m.internal_date), int(now), box.name, box.guid,
                                      box.uidvalidity, uid, m.pop3_uidl or "")
            try:
                await self.fs.put(key, data, meta.to_headers(), "message/rfc822")
            except (FsError, OSError) as exc:  # storage failed: nothing committed, the next run tries again
                await self.writer.run(MetaStore.commit_messages_tx, [], [(box.id, uid)])
                why = f"storage: {type(exc).__name__}"
                report.failed[why] = report.failed.get(why, 0) + 1
                self.progress.messages_done += 1
                return
            commit = self.writer.run(self._commit, folder, m, box.id, uid, guid, key, len(data), now, env, bs)
            try:
                await asyncio.shield(commit)
            finally:
                if not commit.done():  # interrupted: the batch commits regardless, so wait and count it
                    await asyncio.wait([commit])
                if not commit.cancelled() and commit.exception() is None:
                    report.copied += 1
                    report.bytes += len(data)
                    self.progress.messages_done += 1
                    self.progress.bytes += len(data)
        self.progress.show()

    def _commit(self, c: Conn, folder: SourceFolder, m: SourceMessage, box_id: int, uid: int,
                guid: str, key: str, size: int, now: float, env: object, bs: object) -> None:
        """In the writer's transaction: the message row, and the source item it came from."""
        flags = tuple(f for f in m.flags if f != "\\Recent")
        MetaStore.commit_one(c, NewMessage(self.user, box_id, uid, guid, key, size, m.internal_date, now, env, bs,
                                           flags, m.pop3_uidl))
        c.execute("INSERT INTO import_map(user_name, source, folder, item, validity, mailbox_id, uid, message_id,"
                  " size) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(user_name, source, folder, item) DO UPDATE SET "
                  "validity=excluded.validity, mailbox_id=excluded.mailbox_id, uid=excluded.uid, "
                  "message_id=excluded.message_id, size=excluded.size",
                  (self.user, self.source, folder.name, m.item, folder.validity, box_id, uid, m.message_id, size))

    async def store_all(self, folder: SourceFolder, messages: AsyncIterator[SourceMessage]) -> None:
        """Store a folder's new messages, several at a time; an over-quota stop cancels the rest."""
        pending: set[asyncio.Task[None]] = set()
        try:
            async for m in messages:
                pending.add(asyncio.ensure_future(self.store(folder, m)))
                if len(pending) >= 32:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for t in done:
                        t.result()
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    t.result()
        finally:  # stopped (Ctrl-C, over quota): the rest end before the writer closes, so the report is exact
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    def close(self) -> None:
        self.writer.close()

    # ------------------------------------------------------------------ report

    def summary(self) -> dict[str, object]:
        total = FolderReport()
        for r in self.reports.values():
            total.copied += r.copied
            total.skipped += r.skipped
            total.flags_updated += r.flags_updated
            total.bytes += r.bytes
            for k, v in r.failed.items():
                total.failed[k] = total.failed.get(k, 0) + v
        return {"user": self.user, "source": self.source,
                "folders": {name: vars(r) for name, r in sorted(self.reports.items())}, "total": vars(total)}

    def table(self) -> str:
        lines = [f"{'folder':<30}{'copied':>8}{'skipped':>9}{'flags':>7}{'failed':>8}  reasons"]
        for name, r in sorted(self.reports.items()):
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(r.failed.items()))
            lines.append(f"{name:<30}{r.copied:>8}{r.skipped:>9}{r.flags_updated:>7}{sum(r.failed.values()):>8}  "
                         f"{reasons}")
        return "\n".join(lines)


async def run(importer: Importer, source: Source, connections: int = 4) -> None:
    """Every folder of `source` into the importer's user, `connections` folders at a time."""
    progress = importer.progress
    found = await source.folders()
    progress.folders_total = len(found)
    queue: asyncio.Queue[SourceFolder] = asyncio.Queue()
    for f in found:
        queue.put_nowait(f)

    async def worker() -> None:
        reader = await source.reader()
        try:
            while not queue.empty():
                folder = queue.get_nowait()
                progress.folders_done += 1
                if not folder.selectable:  # a \Noselect parent: its children carry the name
                    continue
                messages = await reader.messages(folder)
                progress.messages_total += len(messages)
                new = await importer.plan(folder, messages, getattr(reader, "message_ids", None))
                progress.messages_done += len(messages) - len(new)
                await importer.store_all(folder, reader.load(folder, new))
                progress.show()
        finally:
            await reader.close()

    await asyncio.gather(*(worker() for _ in range(max(1, min(connections, len(found))))))
