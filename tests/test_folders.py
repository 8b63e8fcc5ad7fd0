"""Mailbox and message operations on the metadata store (what the IMAP server will call)."""

from __future__ import annotations

import pytest

from mailstore import folders
from mailstore.db import MetaStore
from mailstore.users import hash_password


@pytest.fixture
def meta(metadata):  # type: ignore[no-untyped-def]
    m = MetaStore(metadata)  # each test on SQLite and on PostgreSQL
    m.add_user("u@x", hash_password("pw"))
    return m


def deliver(meta: MetaStore, key: str, box: str = "INBOX", size: int = 100) -> int:
    b, uid = meta.reserve_uid("u@x", box)
    meta.commit_message("u@x", b.id, uid, key, f"obj/{key}", size, 0.0, 0.0, [], [])
    return uid


def test_new_users_get_special_use_mailboxes(meta):
    boxes = {b.name: b.special_use for b in meta.mailboxes("u@x")}
    assert boxes == {"INBOX": None, "Drafts": "\\Drafts", "Sent": "\\Sent", "Trash": "\\Trash",
                     "Junk": "\\Junk", "Archive": "\\Archive"}


def test_create_rename_delete(meta):
    folders.create_mailbox(meta, "u@x", "Work")
    folders.create_mailbox(meta, "u@x", "Work/2026")
    with pytest.raises(folders.MailboxExists):
        folders.create_mailbox(meta, "u@x", "Work")
    deliver(meta, "w1", "Work/2026")
    folders.rename_mailbox(meta, "u@x", "Work", "Jobs")
    names = {b.name for b in meta.mailboxes("u@x")}
    assert {"Jobs", "Jobs/2026"} <= names and "Work" not in names and "Work/2026" not in names
    assert len(meta.messages(meta.mailbox("u@x", "Jobs/2026").id)) == 1  # type: ignore[union-attr]
    freed = folders.delete_mailbox(meta, "u@x", "Jobs/2026")
    assert freed == ["obj/w1"]
    with pytest.raises(folders.CannotDelete):
        folders.delete_mailbox(meta, "u@x", "INBOX")
    with pytest.raises(folders.NoSuchMailbox):
        folders.delete_mailbox(meta, "u@x", "Nope")


def test_rename_inbox_moves_messages_and_leaves_inbox_empty(meta):
    for k in ("a", "b"):
        deliver(meta, k)
    folders.rename_mailbox(meta, "u@x", "INBOX", "Old Mail")
    assert meta.messages(meta.mailbox("u@x", "INBOX").id) == []  # type: ignore[union-attr]
    moved = meta.messages(meta.mailbox("u@x", "Old Mail").id)  # type: ignore[union-attr]
    assert [m.uid for m in moved] == [1, 2]
    assert deliver(meta, "c") == 3  # INBOX keeps counting: UIDs are never reused


def test_flags_modseq_and_unchangedsince(meta):
    box = meta.mailbox("u@x", "INBOX")
    assert box is not None
    uids = [deliver(meta, k) for k in ("a", "b", "c")]
    done, refused = folders.store_flags(meta, box.id, uids[:2], "+FLAGS", ["\\Seen", "$Work"])
    assert done[1][0] == ("\\Seen", "$Work") and not refused
    ms = done[1][1]
    done, _ = folders.store_flags(meta, box.id, [1], "-FLAGS", ["$Work"])
    assert done[1][0] == ("\\Seen",) and done[1][1] > ms
    done, refused = folders.store_flags(meta, box.id, [1, 2], "FLAGS", ["\\Flagged"], unchangedsince=ms)
    assert refused == [1] and done[2][0] == ("\\Flagged",)  # 1 changed after ms: CONDSTORE refuses it
    changed, count = meta.changes_since(box.id, ms)
    assert [u for u, _ in changed] == [1, 2] and count == 3


def test_copy_shares_objects_and_expunge_frees_only_unreferenced(meta):
    inbox = meta.mailbox("u@x", "INBOX")
    assert inbox is not None
    for k in ("a", "b", "c"):
        deliver(meta, k)
    validity, pairs, _ = folders.copy_messages(meta, "u@x", inbox.id, [1, 3], "Archive")
    assert pairs == [(1, 1), (3, 2)]
    archive = meta.mailbox("u@x", "Archive")
    assert archive is not None and archive.uidvalidity == validity
    keys = {m.object_key for m in meta.messages(archive.id)}
    assert keys == {"obj/a", "obj/c"}  # the same objects: no bytes duplicated
    folders.store_flags(meta, inbox.id, [1, 2], "+FLAGS", ["\\Deleted"])
    expunged, freed = folders.expunge(meta, "u@x", inbox.id)
    assert expunged == [1, 2] and freed == ["obj/b"]  # obj/a lives on in Archive
    _, pairs, _ = folders.copy_messages(meta, "u@x", inbox.id, [3], "Trash", move=True)
    assert pairs == [(3, 1)] and meta.messages(inbox.id) == []
    folders.store_flags(meta, archive.id, [1], "+FLAGS", ["\\Deleted"])
    assert folders.expunge(meta, "u@x", archive.id, uids=[2]) == ([], [])  # UID EXPUNGE: only the named UIDs
    assert folders.expunge(meta, "u@x", archive.id, uids=[1]) == ([1], ["obj/a"])
