"""Access keys: who may sign requests, their policies, their secrets (encrypted).

Keys are shared engine records (api.Engine.record), so every gateway of a store
sees the same keys.  A secret is stored encrypted with AES-256-GCM under the
store's master key (local engine: the data directory's `master.key`, 32 random
bytes, mode 0600, made on first use; RADOS: a file every gateway host holds), with
the access key id as associated data so a ciphertext cannot be moved to another
key.  The
secret is shown once, at creation.

A key belongs to an account (accounts.py; "" is the operator's) and is either an
administrator of it (may do everything with the account's buckets; the operator's may also
manage accounts and keys) or limited by its policy (deny by default).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from runtime.sealing import SecretBox

from .engine.api import Engine
from .policy import Policy

NAMESPACE = "key"  # the engine records that hold access keys (local engine: ~sys "key/<id>")


@dataclass(frozen=True, slots=True)
class AccessKey:
    access_key: str
    secret: str
    name: str
    admin: bool
    created: float
    policy: Policy | None = None
    account: str = ""  # the operator's account

    @property
    def operator(self) -> bool:
        """An administrator of the operator's account: may manage accounts and keys."""
        return self.admin and not self.account

    def describe(self) -> dict[str, object]:
        """What an operator may see of a key (never the secret)."""
        out: dict[str, object] = {"AccessKeyId": self.access_key, "Name": self.name, "Admin": self.admin,
                                  "Created": int(self.created)}
        if self.account:
            out["Account"] = self.account
        if self.policy is not None:
            import json
            out["Policy"] = json.loads(self.policy.text)
        return out


class KeyStore:
    """Access keys as shared engine records (namespace "key"), changed by compare-and-swap."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._box = SecretBox(engine.master_key())

    def _seal(self, akid: str, secret: str) -> str:
        return self._box.seal(secret.encode(), akid)

    def _open(self, akid: str, sealed: str) -> str:
        return self._box.open(sealed, akid).decode()

    def _from_fields(self, akid: str, u: dict[str, str]) -> AccessKey:
        secret = self._open(akid, u["secret_enc"]) if "secret_enc" in u else u["secret"]
        policy = Policy.parse(u["policy"]) if u.get("policy") else None
        return AccessKey(akid, secret, u.get("name", ""), u.get("admin") == "1", float(u["created"]), policy,
                         u.get("account", ""))

    async def get(self, akid: str) -> AccessKey | None:
        fields = await self.engine.record(NAMESPACE, akid)
        return self._from_fields(akid, fields) if fields is not None else None

    async def list(self) -> list[AccessKey]:
        return [self._from_fields(akid, fields) for akid, fields in await self.engine.records(NAMESPACE)]

    def _fields(self, akid: str, secret: str, name: str, admin: bool, policy: Policy | None,
                created: float, account: str) -> dict[str, str]:
        fields = {"secret_enc": self._seal(akid, secret), "name": name, "admin": "1" if admin else "0",
                  "created": repr(created)}
        if account:
            fields["account"] = account
        if policy is not None:
            fields["policy"] = policy.text
        return fields

    async def create(self, name: str, *, admin: bool = True, policy: Policy | None = None,
                     account: str = "") -> AccessKey:
        """A new key of `account` (which the caller has checked exists)."""
        if not admin and policy is None:
            raise ValueError("a key that is not an administrator needs a policy")
        while True:
            akid = "MS" + secrets.token_hex(9).upper()
            secret = secrets.token_urlsafe(30)
            now = time.time()
            if await self.engine.swap_record(NAMESPACE, akid, None,
                                             self._fields(akid, secret, name, admin, policy, now, account)):
                return AccessKey(akid, secret, name, admin, now, policy, account)

    async def set_policy(self, akid: str, policy: Policy | None, admin: bool) -> AccessKey:
        """The key's new policy (or administrator); KeyError when the key is gone."""
        while True:
            current = await self.engine.record(NAMESPACE, akid)
            if current is None:
                raise KeyError(akid)
            key = self._from_fields(akid, current)
            fields = self._fields(akid, key.secret, key.name, admin, policy, key.created, key.account)
            if await self.engine.swap_record(NAMESPACE, akid, current, fields):
                return AccessKey(akid, key.secret, key.name, admin, key.created, policy, key.account)

    async def delete(self, akid: str) -> bool:
        """True when the key existed."""
        while True:
            current = await self.engine.record(NAMESPACE, akid)
            if current is None:
                return False
            if await self.engine.swap_record(NAMESPACE, akid, current, None):
                return True
