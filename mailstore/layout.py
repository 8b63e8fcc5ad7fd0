"""Where a message lives in the shared bucket, the way Dovecot obox lays it out.

    <hash>/<user>/mailboxes/<mailbox-guid>/<object-id>

hash = the first 8 hex digits of md5(user); GUIDs are 32 hex digits; the
object id is the message GUID, so every object name is unique and nothing is
ever overwritten.  Each object carries obox's x-amz-meta-dovecot-* metadata,
plus what a rebuild needs that obox keeps in its index bundles (the mailbox
name, UIDVALIDITY and the message's UID, as x-amz-meta-mailstore-*).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from urllib.parse import quote, unquote


def user_hash(user: str) -> str:
    return hashlib.md5(user.encode()).hexdigest()[:8]


def user_prefix(user: str) -> str:
    return f"{user_hash(user)}/{user}/"


def mailboxes_prefix(user: str) -> str:
    return f"{user_prefix(user)}mailboxes/"


def message_key(user: str, mailbox_guid: str, object_id: str) -> str:
    return f"{mailboxes_prefix(user)}{mailbox_guid}/{object_id}"


@dataclass(frozen=True, slots=True)
class MessageMeta:
    user: str
    guid: str
    size: int
    received: int  # epoch seconds
    saved: int
    mailbox: str
    mailbox_guid: str
    uidvalidity: int
    uid: int
    pop3_uidl: str = ""  # a POP3 UIDL kept from where the message was imported ("": the usual one)

    def to_headers(self) -> dict[str, str]:
        """The metadata (names without x-amz-meta-) stored on the object."""
        return ({"dovecot-pop3-uidl": self.pop3_uidl} if self.pop3_uidl else {}) | {
            "dovecot-username": self.user, "dovecot-guid": self.guid, "dovecot-size": str(self.size),
            "dovecot-received": str(self.received), "dovecot-saved": str(self.saved),
            "dovecot-origbox": self.mailbox_guid, "dovecot-mailbox-guid": self.mailbox_guid,
            "mailstore-mailbox": quote(self.mailbox, safe=""), "mailstore-uidvalidity": str(self.uidvalidity),
            "mailstore-uid": str(self.uid),
        }

    @classmethod
    def from_headers(cls, meta: dict[str, str]) -> MessageMeta:
        return cls(meta["dovecot-username"], meta["dovecot-guid"], int(meta["dovecot-size"]),
                   int(meta["dovecot-received"]), int(meta["dovecot-saved"]),
                   unquote(meta["mailstore-mailbox"]), meta["dovecot-mailbox-guid"],
                   int(meta["mailstore-uidvalidity"]), int(meta["mailstore-uid"]), meta.get("dovecot-pop3-uidl", ""))
