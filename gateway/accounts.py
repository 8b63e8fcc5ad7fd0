"""Accounts: who owns buckets (issue 17).

An account is a name, a canonical id (64 hex digits, as AWS's canonical user id) and a time
of creation, kept as a shared engine record (namespace "account"), so every gateway sees it
at once. Every access key belongs to one account. A key made without one belongs to the
operator's account (the name ""). That account also owns every bucket made before accounts
existed, whose owner field names an access key rather than an account.

An account's keys see and use only that account's buckets (deny by default: another
account's bucket is AccessDenied, and absent from ListBuckets). The operator's
administrator keys manage accounts and keys through the admin API and the CLI, and own
only the operator account's buckets.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from .engine.api import Engine

NAMESPACE = "account"
OPERATOR = ""  # the operator's account: keys made without --account
OWNER_PREFIX = "account:"  # a bucket's owner field: "account:<name>"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
OPERATOR_ID = hashlib.sha256(b"mailstore operator account").hexdigest()


def owner_field(account: str) -> str:
    """What a bucket made by `account` records as its owner."""
    return OWNER_PREFIX + account


def account_of(owner: str) -> str:
    """The account a bucket's owner field names (an access key id, from before accounts: the
    operator's)."""
    return owner[len(OWNER_PREFIX):] if owner.startswith(OWNER_PREFIX) else OPERATOR


def valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    canonical_id: str
    created: float

    @property
    def display(self) -> str:
        return self.name or "operator"

    @property
    def principals(self) -> frozenset[str]:
        """How a bucket policy's Principal may name it."""
        return frozenset({self.display, self.canonical_id})

    def describe(self) -> dict[str, object]:
        return {"Name": self.display, "CanonicalId": self.canonical_id, "Created": int(self.created)}


OPERATOR_ACCOUNT = Account(OPERATOR, OPERATOR_ID, 0.0)


class AccountError(ValueError):
    """An account that cannot be made or removed; the message says why."""


class AccountStore:
    """Accounts as shared engine records. An account never changes once made, so what was
    read is kept (a name deleted and made again gets a new canonical id; a gateway that
    still holds the old one shows it in Owner fields until it restarts)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._known: dict[str, Account] = {OPERATOR: OPERATOR_ACCOUNT}

    def cached(self, name: str) -> Account | None:
        """The account if already read, without awaiting (every request asks)."""
        return self._known.get(name)

    async def get(self, name: str) -> Account | None:
        if name in self._known:
            return self._known[name]
        fields = await self.engine.record(NAMESPACE, name)
        if fields is None:
            return None
        account = self._known[name] = Account(name, fields["id"], float(fields["created"]))
        return account

    async def known(self, name: str) -> Account:
        """The account a key or bucket names; a record gone meanwhile still has its name."""
        return await self.get(name) or Account(name, hashlib.sha256(name.encode()).hexdigest(), 0.0)

    async def list(self) -> list[Account]:
        return [OPERATOR_ACCOUNT] + sorted(
            (Account(name, f["id"], float(f["created"])) for name, f in await self.engine.records(NAMESPACE)),
            key=lambda a: a.name)

    async def create(self, name: str) -> Account:
        if not valid_name(name):
            raise AccountError(f"not a valid account name: {name!r} (1-63 of a-z 0-9 . _ -, "
                               "beginning with a letter or digit)")
        account = Account(name, secrets.token_hex(32), time.time())
        if not await self.engine.swap_record(NAMESPACE, name, None,
                                             {"id": account.canonical_id, "created": repr(account.created)}):
            raise AccountError(f"account {name} exists")
        return account

    async def delete(self, name: str, *, keys: int, buckets: int) -> bool:
        """False when there is no such account; AccountError while it still has keys or buckets
        (counted by the caller)."""
        if name == OPERATOR:
            raise AccountError("the operator's account cannot be deleted")
        current = await self.engine.record(NAMESPACE, name)
        if current is None:
            return False
        if keys or buckets:
            raise AccountError(f"account {name} still has {keys} key(s) and {buckets} bucket(s)")
        self._known.pop(name, None)
        return await self.engine.swap_record(NAMESPACE, name, current, None)
