"""Which mailboxes changed, pushed to the IMAP sessions that wait on them (issue 15).

On PostgreSQL every transaction that moves a mailbox's HIGHESTMODSEQ sends
`NOTIFY mailstore_changes, '<mailbox id>'` (a trigger, `PG_TRIGGERS` in
sqlbackend.py), delivered when it commits, to every host.  Each IMAP process
keeps one connection LISTENing and wakes the sessions in IDLE on that mailbox,
so a message delivered through another host reaches them at once, without a
query per session per poll.  The session still asks the store what changed
(refresh); the feed only says when to ask.

On SQLite there is one host: `ChangeFeed.wait` just sleeps the poll interval
(IDLE asks the store every half second, as before).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from .db import MetaStore
from .sqlbackend import PostgresBackend

log = logging.getLogger("mailstore.changes")
CHANNEL = "mailstore_changes"
POLL_SECONDS = 0.5  # SQLite, or PostgreSQL while the listener is down
SAFETY_SECONDS = 10.0  # with the listener up: ask anyway this often (a notification lost in a reconnect)


class ChangeFeed:
    def __init__(self, meta: MetaStore) -> None:
        self.url = meta.backend.url if isinstance(meta.backend, PostgresBackend) else None
        self._waiters: dict[int, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self.listening = False

    def start(self) -> None:
        if self.url is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait(self, mailbox_id: int | None) -> None:
        """Until that mailbox may have changed (or the poll interval passed)."""
        if not self.listening or mailbox_id is None:
            await asyncio.sleep(POLL_SECONDS)
            return
        event = asyncio.Event()
        self._waiters.setdefault(mailbox_id, set()).add(event)
        try:
            await asyncio.wait_for(event.wait(), SAFETY_SECONDS)
        except TimeoutError:
            pass
        finally:
            waiters = self._waiters.get(mailbox_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[mailbox_id]

    def _wake(self, mailbox_id: int) -> None:
        for event in self._waiters.get(mailbox_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for events in self._waiters.values():
            for event in events:
                event.set()

    async def _listen(self) -> None:
        import psycopg
        assert self.url is not None
        while True:
            conn: Any = None
            try:
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
                await conn.execute(f"LISTEN {CHANNEL}")
                self.listening = True
                self._wake_all()  # anything missed while the listener was down: look now
                async for note in conn.notifies():
                    if note.payload.isdigit():
                        self._wake(int(note.payload))
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                log.warning("change feed: %s; polling until it is back", exc)
            finally:
                self.listening = False
                if conn is not None:
                    with contextlib.suppress(psycopg.Error, OSError):
                        await conn.close()
            await asyncio.sleep(1.0)
