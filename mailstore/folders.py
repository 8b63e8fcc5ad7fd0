"""Mailbox and message operations IMAP needs, on the metadata store (one transaction each).

Rules:
- Metadata first: an expunge removes rows, and only then may the caller delete
  objects; it gets back the keys no remaining row refers to.
- COPY and MOVE never duplicate bytes: the new rows refer to the same
  immutable object (RFC 4315 COPYUID pairs are returned).
- Every change bumps the mailbox's HIGHESTMODSEQ and the changed rows' modseq
  (RFC 7162), so other sessions find what changed since they last looked;
  every removal from a mailbox (expunge, move, renaming INBOX) is logged in
  `expunged` at that MODSEQ, so they find what left without a UID comparison.
- INBOX cannot be deleted; renaming INBOX moves its messages to the new name
  and leaves INBOX empty (RFC 3501 §6.3.5).  Renaming a mailbox renames its
  children ("a/b" follows "a").
"""

from __future__ import annotations

import time
import uuid

from .db import SPECIAL_USE, Mailbox, MetaError, MetaStore, next_uidvalidity
from .sqlbackend import Conn

SEPARATOR = "/"


class MailboxExists(MetaError):
    pass


class NoSuchMailbox(MetaError):
    pass


class CannotDelete(MetaError):
    pass


def _box(c: Conn, user: str, name: str) -> Mailbox:
    row = c.execute("SELECT id, user_name, name, guid, uidvalidity, uidnext, highestmodseq, special_use "
                    "FROM mailboxes WHERE user_name=? AND name=?", (user, name)).fetchone()
    if row is None:
        raise NoSuchMailbox(name)
    return Mailbox(*row)


def create_mailbox(meta: MetaStore, user: str, name: str, special_use: str | None = None) -> str:
    """Create the mailbox; returns its GUID."""
    guid = uuid.uuid4().hex
    with meta._write() as c:
        if c.execute("SELECT 1 FROM mailboxes WHERE user_name=? AND name=?", (user, name)).fetchone():
            raise MailboxExists(name)
        c.execute("INSERT INTO mailboxes(user_name, name, guid, uidvalidity, special_use, subscribed) "
                  "VALUES (?,?,?,?,?,0)",
                  (user, name, guid, next_uidvalidity(c, user), special_use or SPECIAL_USE.get(name)))
    return guid


def delete_mailbox(meta: MetaStore, user: str, name: str) -> list[str]:
    """Remove a mailbox and its messages; returns object keys nothing refers to any more."""
    if name == "INBOX":
        raise CannotDelete("INBOX cannot be deleted")
    with meta._write() as c:
        box = _box(c, user, name)
        keys = [r[0] for r in c.execute("SELECT DISTINCT object_key FROM messages WHERE mailbox_id=?", (box.id,))]
        freed = c.execute("SELECT coalesce(sum(size), 0) FROM messages WHERE mailbox_id=?", (box.id,)).fetchone()[0]
        c.execute("DELETE FROM messages WHERE mailbox_id=?", (box.id,))
        c.execute("DELETE FROM expunged WHERE mailbox_id=?", (box.id,))
        c.execute("DELETE FROM pending WHERE mailbox_id=?", (box.id,))
        c.execute("DELETE FROM keywords WHERE mailbox_id=?", (box.id,))
        c.execute("DELETE FROM mailboxes WHERE id=?", (box.id,))
        _release_quota(c, user, freed)
        return _unreferenced(c, keys)


def rename_mailbox(meta: MetaStore, user: str, old: str, new: str) -> None:
    with meta._write() as c:
        src = _box(c, user, old)
        if c.execute("SELECT 1 FROM mailboxes WHERE user_name=? AND name=?", (user, new)).fetchone():
            raise MailboxExists(new)
        if old == "INBOX":
            c.execute("INSERT INTO mailboxes(user_name, name, guid, uidvalidity, uidnext, highestmodseq) "
                      "VALUES (?,?,?,?,?,?)", (user, new, uuid.uuid4().hex, next_uidvalidity(c, user), src.uidnext,
                                               src.highestmodseq))
            dst = _box(c, user, new)
            moved = [u for u, in c.execute("SELECT uid FROM messages WHERE mailbox_id=?", (src.id,))]
            c.execute("UPDATE messages SET mailbox_id=? WHERE mailbox_id=?", (dst.id, src.id))
            MetaStore.log_expunged(c, src.id, MetaStore.bump_modseq(c, src.id), moved)
            return
        c.execute("UPDATE mailboxes SET name=? WHERE id=?", (new, src.id))
        prefix = old + SEPARATOR
        for child_id, child in c.execute("SELECT id, name FROM mailboxes WHERE user_name=? AND substr(name, 1, ?)=?",
                                         (user, len(prefix), prefix)).fetchall():
            c.execute("UPDATE mailboxes SET name=? WHERE id=?", (new + SEPARATOR + child[len(prefix):], child_id))


def set_subscribed(meta: MetaStore, user: str, name: str, subscribed: bool) -> None:
    """Subscriptions are names (RFC 3501 §6.3.6): SUBSCRIBE needs the mailbox, as Dovecot
    does; the name stays subscribed after the mailbox is deleted, until UNSUBSCRIBE."""
    with meta._write() as c:
        if subscribed:
            _box(c, user, name)
            c.execute("INSERT INTO subscriptions(user_name, name) VALUES (?,?) ON CONFLICT DO NOTHING", (user, name))
        else:
            c.execute("DELETE FROM subscriptions WHERE user_name=? AND name=?", (user, name))


def subscriptions(meta: MetaStore, user: str) -> set[str]:
    rows = meta.conn().execute("SELECT name FROM subscriptions WHERE user_name=?", (user,))
    return {name for name, in rows}


def store_flags(meta: MetaStore, mailbox_id: int, uids: list[int], action: str, flags: list[str],
                unchangedsince: int | None = None) -> tuple[dict[int, tuple[tuple[str, ...], int]], list[int]]:
    """FLAGS / +FLAGS / -FLAGS on the given UIDs.

    Returns ({uid: (flags, modseq)} for every stored message, [uids not stored
    because they changed after UNCHANGEDSINCE]).
    """
    done: dict[int, tuple[tuple[str, ...], int]] = {}
    refused: list[int] = []
    with meta._write_flags() as c:
        if action != "-FLAGS":
            MetaStore.define_keywords(c, mailbox_id, flags)
        modseq = None
        for uid in uids:
            row = c.execute("SELECT flags, modseq FROM messages WHERE mailbox_id=? AND uid=?",
                            (mailbox_id, uid)).fetchone()
            if row is None:
                continue
            current = [f for f in row[0].split() if f]
            if unchangedsince is not None and row[1] > unchangedsince:
                refused.append(uid)
                continue
            if action == "FLAGS":
                new = list(dict.fromkeys(flags))
            elif action == "+FLAGS":
                new = current + [f for f in flags if f not in current]
            else:
                new = [f for f in current if f not in flags]
            if new == current:
                done[uid] = (tuple(current), row[1])
                continue
            if modseq is None:
                modseq = MetaStore.bump_modseq(c, mailbox_id)
            c.execute("UPDATE messages SET flags=?, modseq=? WHERE mailbox_id=? AND uid=?",
                      (" ".join(new), modseq, mailbox_id, uid))
            done[uid] = (tuple(new), modseq)
    return done, refused


def expunge(meta: MetaStore, user: str, mailbox_id: int, uids: list[int] | None = None,
            *, deleted_only: bool = True) -> tuple[list[int], list[str]]:
    """Remove \\Deleted messages (only those in `uids` when given; not `deleted_only`: every one
    of `uids`, flagged or not, as POP3's DELE).

    Returns (expunged UIDs in ascending order, object keys no row refers to any
    more: the caller deletes those objects, after this commit).
    """
    with meta._write() as c:
        if uids is None:
            rows = c.execute("SELECT uid, object_key, size, flags FROM messages WHERE mailbox_id=? "
                             "AND ' ' || flags || ' ' LIKE '% \\Deleted %' ESCAPE '!' ORDER BY uid",
                             (mailbox_id,)).fetchall()
        else:  # UID EXPUNGE: look at those rows only, not every \\Deleted one in the mailbox
            rows = []
            for i in range(0, len(uids), 500):
                chunk = uids[i:i + 500]
                rows += c.execute("SELECT uid, object_key, size, flags FROM messages WHERE mailbox_id=? AND uid IN "
                                  f"({','.join('?' * len(chunk))})", (mailbox_id, *chunk)).fetchall()
            rows.sort()
        chosen = [(uid, key, size) for uid, key, size, flags in rows
                  if not deleted_only or "\\Deleted" in flags.split()]
        for uid, _, _ in chosen:
            c.execute("DELETE FROM messages WHERE mailbox_id=? AND uid=?", (mailbox_id, uid))
        if chosen:
            MetaStore.log_expunged(c, mailbox_id, MetaStore.bump_modseq(c, mailbox_id), [u for u, _, _ in chosen])
            _release_quota(c, user, sum(s for _, _, s in chosen))
        return [u for u, _, _ in chosen], _unreferenced(c, list({k for _, k, _ in chosen}))


def copy_messages(meta: MetaStore, user: str, src_id: int, uids: list[int], dst_name: str,
                  move: bool = False) -> tuple[int, list[tuple[int, int]], list[str]]:
    """COPY (or MOVE) UIDs to another mailbox, sharing the objects.

    Returns (destination UIDVALIDITY, [(source uid, new uid)], keys freed by a
    move: always empty, the objects live on in the destination).
    """
    with meta._write() as c:
        dst = _box(c, user, dst_name)
        pairs: list[tuple[int, int]] = []
        next_uid = dst.uidnext
        modseq = MetaStore.bump_modseq(c, dst.id)
        added = 0
        saved = time.time()  # saved into this mailbox now (RFC 8514 SAVEDATE)
        for uid in sorted(uids):
            row = c.execute("SELECT guid, object_key, size, internal_date, saved, flags, envelope, bodystructure "
                            "FROM messages WHERE mailbox_id=? AND uid=?", (src_id, uid)).fetchone()
            if row is None:
                continue
            c.execute("INSERT INTO messages(mailbox_id, uid, guid, object_key, size, internal_date, saved, flags,"
                      " modseq, envelope, bodystructure) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                      (dst.id, next_uid, row[0], row[1], row[2], row[3], saved, row[5], modseq, row[6], row[7]))
            pairs.append((uid, next_uid))
            added += row[2]
            next_uid += 1
        c.execute("UPDATE mailboxes SET uidnext=? WHERE id=?", (next_uid, dst.id))
        c.execute("INSERT INTO keywords(mailbox_id, name) SELECT ?, name FROM keywords WHERE mailbox_id=? "
                  "ON CONFLICT DO NOTHING",
                  (dst.id, src_id))
        if move and pairs:
            for uid, _ in pairs:
                c.execute("DELETE FROM messages WHERE mailbox_id=? AND uid=?", (src_id, uid))
            MetaStore.log_expunged(c, src_id, MetaStore.bump_modseq(c, src_id), [u for u, _ in pairs])
        elif added:
            c.execute("UPDATE users SET used_bytes=used_bytes+? WHERE name=?", (added, user))
        return dst.uidvalidity, pairs, []


def _release_quota(c: Conn, user: str, freed: int) -> None:
    c.execute("UPDATE users SET used_bytes = CASE WHEN used_bytes > ? THEN used_bytes - ? ELSE 0 END WHERE name=?",
              (freed, freed, user))


def _unreferenced(c: Conn, keys: list[str]) -> list[str]:
    return [k for k in keys if not c.execute("SELECT 1 FROM messages WHERE object_key=? LIMIT 1", (k,)).fetchone()]
