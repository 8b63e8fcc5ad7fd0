"""Access keys: who may sign requests, their policies, their secrets (encrypted).

Keys live in the engine (namespace ~sys, "key/<access key id>"), so every
gateway on a data directory sees the same keys at once.  A secret is stored
encrypted with AES-256-GCM under the data directory's master key
(`master.key`, 32 random bytes, mode 0600, made on first use), with the access
key id as associated data so a ciphertext cannot be moved to another key.  The
secret is shown once, at creation.

A key is either an administrator (may do everything, including bucket and key
management) or limited by its policy (deny by default).
"""

from __future__ import annotations

import base64
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .engine.commit import Guard, Txn, Write
from .engine.local import LocalEngine
from .engine.model import SYS, ObjectMeta, PreconditionFailed
from .policy import Policy


@dataclass(frozen=True, slots=True)
class AccessKey:
    access_key: str
    secret: str
    name: str
    admin: bool
    created: float
    policy: Policy | None = None

    def describe(self) -> dict[str, object]:
        """What an operator may see of a key (never the secret)."""
        out: dict[str, object] = {"AccessKeyId": self.access_key, "Name": self.name, "Admin": self.admin,
                                  "Created": int(self.created)}
        if self.policy is not None:
            import json
            out["Policy"] = json.loads(self.policy.text)
        return out


def master_key(root: Path) -> bytes:
    """The data directory's master key, made once (safely, if processes race)."""
    path = root / "master.key"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        tmp = root / f".master.key.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(32))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process made it first: then use theirs
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        data = path.read_bytes()
    if len(data) != 32:
        raise ValueError(f"{path} is not a 32-byte key")
    return data


class KeyStore:
    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine
        self._aead = AESGCM(master_key(engine.data.root))

    def _seal(self, akid: str, secret: str) -> str:
        nonce = secrets.token_bytes(12)
        return base64.b64encode(nonce + self._aead.encrypt(nonce, secret.encode(), akid.encode())).decode()

    def _open(self, akid: str, sealed: str) -> str:
        raw = base64.b64decode(sealed)
        return self._aead.decrypt(raw[:12], raw[12:], akid.encode()).decode()

    def _from_user(self, akid: str, u: dict[str, str], mtime: float) -> AccessKey:
        secret = self._open(akid, u["secret_enc"]) if "secret_enc" in u else u["secret"]
        policy = Policy.parse(u["policy"]) if u.get("policy") else None
        return AccessKey(akid, secret, u.get("name", ""), u.get("admin") == "1", mtime, policy)

    def get(self, akid: str) -> AccessKey | None:
        info = self.engine.index.get(SYS, f"key/{akid}")
        return self._from_user(akid, info.meta.user, info.meta.mtime) if info else None

    def list(self) -> list[AccessKey]:
        return [self._from_user(i.key.removeprefix("key/"), i.meta.user, i.meta.mtime)
                for i in self.engine.index.scan(SYS, "key/", None, 1_000_000)]

    def _record(self, akid: str, secret: str, name: str, admin: bool, policy: Policy | None,
                created: float) -> ObjectMeta:
        user = {"secret_enc": self._seal(akid, secret), "name": name, "admin": "1" if admin else "0"}
        if policy is not None:
            user["policy"] = policy.text
        return ObjectMeta(0, '""', created, user=user)

    def create_txn(self, name: str, *, admin: bool, policy: Policy | None) -> tuple[AccessKey, Txn]:
        if not admin and policy is None:
            raise ValueError("a key that is not an administrator needs a policy")
        akid = "MS" + secrets.token_hex(9).upper()
        secret = secrets.token_urlsafe(30)
        now = time.time()
        txn = Txn([Write(SYS, f"key/{akid}", self._record(akid, secret, name, admin, policy, now))],
                  [Guard("absent", SYS, f"key/{akid}", PreconditionFailed)])
        return AccessKey(akid, secret, name, admin, now, policy), txn

    def create_sync(self, name: str, *, admin: bool = True, policy: Policy | None = None) -> AccessKey:
        key, txn = self.create_txn(name, admin=admin, policy=policy)
        self.engine.run_sync(txn)
        return key

    def set_policy_txn(self, key: AccessKey, policy: Policy | None, admin: bool) -> Txn:
        meta = self._record(key.access_key, key.secret, key.name, admin, policy, key.created)
        info = self.engine.index.get(SYS, f"key/{key.access_key}")
        assert info is not None
        return Txn([Write(SYS, f"key/{key.access_key}", meta)],
                   [Guard("seq", SYS, f"key/{key.access_key}", PreconditionFailed, info.seq)])

    @staticmethod
    def delete_txn(akid: str) -> Txn:
        return Txn([Write(SYS, f"key/{akid}", None)])
