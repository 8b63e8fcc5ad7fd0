"""Per-message metadata work does not grow with the mailbox.

A delivery, a STORE, a UID EXPUNGE or a COPY of one message must cost the same
in a mailbox of 100 messages as in one of 5,000: otherwise delivery slows down
for exactly the users with the most mail, and one big INBOX holds the single
metadata writer (and every other user's delivery) for longer with each message.

The measure is SQLite's own count of virtual-machine instructions
(`set_progress_handler` called every instruction), so it is exact and the same
on every run and machine: no timing. A query whose plan walks the mailbox (an
index chosen for a condition that matches every row, a missing index) shows up
as a count that grows with the mailbox.

An IMAP refresh reads what changed and what the expunge log says was removed;
only when the log does not reach back far enough (a session idle past
EXPUNGE_LOG_MODSEQS changes) does it count the mailbox instead (changes_since),
which is not covered here.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable
from pathlib import Path

from mailstore import folders
from mailstore.db import MetaStore, NewMessage

USER = "big@example.com"
SMALL, LARGE = 100, 5000


class Steps:
    """SQLite VM instructions run on the connections it watches."""

    def __init__(self) -> None:
        self.count = 0

    def watch(self, conn: object) -> None:
        assert isinstance(conn, sqlite3.Connection)
        conn.set_progress_handler(self._tick, 1)

    def _tick(self) -> int:
        self.count += 1
        return 0

    def of(self, act: Callable[[], object]) -> int:
        before = self.count
        act()
        return self.count - before


def fill(meta: MetaStore, box_id: int, n: int, uids: itertools.count) -> None:  # type: ignore[type-arg]
    """n messages committed the way a delivery commits them, in batches."""
    for lo in range(0, n, 500):
        batch = []
        for _ in range(min(500, n - lo)):
            _, uid = meta.reserve_uid(USER, "INBOX")
            batch.append(NewMessage(USER, box_id, uid, f"g{uid}", f"k/{uid}", 1000, 0.0, 0.0, "{}", "{}"))
        meta.commit_messages(batch, [])
        next(uids)


def per_message_costs(meta: MetaStore, steps: Steps) -> dict[str, int]:
    box = meta.mailbox(USER, "INBOX")
    assert box is not None

    def deliver() -> None:
        [(b, uid)] = meta.reserve_uids([(USER, "INBOX")])
        meta.commit_messages([NewMessage(USER, b.id, uid, f"n{uid}", f"n/{uid}", 1000, 0.0, 0.0, "{}", "{}")], [])

    def failed_delivery() -> None:  # the object could not be stored: the reservation is dropped
        [(b, uid)] = meta.reserve_uids([(USER, "INBOX")])
        meta.commit_messages([], [(b.id, uid)])

    uid = box.uidnext // 2  # a message in the middle of the mailbox
    assert meta.changes_with_expunges(box.id, meta.highestmodseq(box.id)) is not None  # the log reaches back
    return {
        "deliver": steps.of(deliver),
        "failed delivery": steps.of(failed_delivery),
        "store one flag": steps.of(lambda: folders.store_flags(meta, box.id, [uid], "+FLAGS", ["\\Deleted"])),
        "uid expunge one": steps.of(lambda: folders.expunge(meta, USER, box.id, [uid])),
        "copy one": steps.of(lambda: folders.copy_messages(meta, USER, box.id, [uid + 1], "Archive")),
        "fetch one row": steps.of(lambda: meta.messages_by_uid(box.id, [uid + 2])),
        "refresh after a change": steps.of(lambda: meta.changes_with_expunges(box.id, meta.highestmodseq(box.id) - 1)),
        "expunges since": steps.of(lambda: meta.expunged_since(box.id, meta.highestmodseq(box.id) - 1)),
        "reservations": steps.of(lambda: meta.visible_uid_limit(box.id)),
    }


def test_per_message_metadata_work_is_flat_in_the_mailbox_size(tmp_path: Path) -> None:
    costs = []
    for n in (SMALL, LARGE):
        meta = MetaStore(tmp_path / f"meta{n}.db")
        meta.add_user(USER, "x")
        box = meta.mailbox(USER, "INBOX")
        assert box is not None
        fill(meta, box.id, n, itertools.count())
        steps = Steps()
        steps.watch(meta.conn())
        steps.watch(meta.flags_conn())
        costs.append(per_message_costs(meta, steps))
    small, large = costs
    grown = {op: (small[op], large[op]) for op in small if large[op] > small[op] * 1.5 + 50}
    assert not grown, f"VM instructions per operation, {SMALL} vs {LARGE} messages: {grown}"
    assert all(v > 0 for v in small.values()), small  # every operation was watched
