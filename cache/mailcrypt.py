"""The `mail-crypt:` fs wrapper: each user's mail encrypted to that user's own key pair, as
Dovecot's mail_crypt plugin does with folder keys: `mail-crypt:<parent URL>`.

- Every user has an X25519 key pair, kept in the bucket beside the mail as the object
  `<hash>/<user>/mail-crypt/key`: the public key in the clear, the private key sealed with
  AES-256-GCM under a key derived from the user's password by scrypt. Neither the appliance
  nor the operator keeps the password; without it the private key does not open.
- A message is written encrypted to its user's public key (no password needed: LMTP delivery):
  an ephemeral X25519 key agreement with the user's public key gives, through HKDF-SHA256, a
  fresh data key, and the body is sealed with it in chunked AES-256-GCM (runtime/sealing.py);
  the object holds MAGIC, the user key's id, the ephemeral public key, the body's size and the
  sealed body. Reading needs the user's private key, opened by `unlock(user, password)` (an
  IMAP login does it) and dropped again by `release` when the user's last session ends.
- Which user an object belongs to is its key's: `<hash>/<user>/...` (mailstore/layout.py). An
  object whose key names no user is refused; an object stored without encryption reads as it is.
- The key pair is made with the password the first time it is needed (`mailstore user add --fs`,
  or the user's first login); until then a delivery for that user fails (LMTP answers 4.3.0 and
  the MTA retries), so no message is ever stored in plaintext.
- A password change reseals the private key (`change_password` needs the old password); a
  reset without it makes a new key pair and the mail before it stays unreadable.

What an operator can read: object names, sizes, times and the x-amz-meta-dovecot-* metadata
(user, mailbox and message GUIDs), and the metadata database (flags, envelope, preview, search
index). What the operator cannot read from the stored objects: any message's headers or body.
A root user of a shim host can read the memory of a process while the user is logged in.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
from collections.abc import Mapping

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from runtime import sealing

from .s3client import FsError, NotFound
from .store import Store, Transforming

MAGIC = b"MSCRYPT1"
HEADER = len(MAGIC) + 8 + 32 + 8  # magic, key id, ephemeral public key, plaintext size
KEY_OBJECT = "mail-crypt/key"
SCRYPT = {"n": 1 << 15, "r": 8, "p": 1}
ON_LOOP = 256 << 10
_USER_KEY = re.compile(r"([0-9a-f]{8})/([^/]+)/")


class KeyLocked(FsError):
    """The user's private key is not open here (no login with the password yet)."""


class NoMailKey(FsError):
    """The user has no key pair yet: nothing can be written for them."""


class WrongPassword(FsError):
    """The password does not open the user's private key."""


class CorruptObject(FsError):
    """An encrypted object that does not open: never served."""


def user_of(key: str) -> str:
    """The user an object key belongs to (`<hash>/<user>/...`, the hash being md5(user)'s first 8 hex)."""
    m = _USER_KEY.match(key)
    if m is None or hashlib.md5(m.group(2).encode()).hexdigest()[:8] != m.group(1):
        raise FsError(f"mail-crypt: {key!r} names no user (<hash>/<user>/...)", code="NoUser")
    return m.group(2)


def key_object(user: str) -> str:
    return f"{hashlib.md5(user.encode()).hexdigest()[:8]}/{user}/{KEY_OBJECT}"


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: bytes) -> bytes:
    return hashlib.sha256(public).digest()[:8]


def _data_key(shared: bytes, ephemeral: bytes, public: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, ephemeral + public, b"mailstore mail-crypt v1").derive(shared)


def _password_key(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=128 << 20, dklen=32)


def new_key_pair(user: str, password: str) -> tuple[X25519PrivateKey, bytes]:
    """A key pair and its stored form (JSON), the private key sealed under the password."""
    private = X25519PrivateKey.generate()
    salt = secrets.token_bytes(16)
    return private, _stored(user, private, password, salt)


def _stored(user: str, private: X25519PrivateKey, password: str, salt: bytes) -> bytes:
    raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    box = sealing.SecretBox(_password_key(password, salt, **SCRYPT))
    return json.dumps({"v": 1, "alg": "x25519", "public": base64.b64encode(_raw(private.public_key())).decode(),
                       "kdf": "scrypt", **SCRYPT, "salt": base64.b64encode(salt).decode(),
                       "private": box.seal(raw, f"mail-crypt private key of {user}")}).encode()


def open_private(user: str, stored: bytes, password: str) -> X25519PrivateKey:
    d = json.loads(stored)
    box = sealing.SecretBox(_password_key(password, base64.b64decode(d["salt"]), d["n"], d["r"], d["p"]))
    try:
        raw = box.open(d["private"], f"mail-crypt private key of {user}")
    except sealing.SealError:
        raise WrongPassword(f"mail-crypt: the password does not open {user}'s private key",
                            code="WrongPassword") from None
    return X25519PrivateKey.from_private_bytes(raw)


def encrypt(public: bytes, data: bytes) -> bytes:
    eph = X25519PrivateKey.generate()
    eph_pub = _raw(eph.public_key())
    data_key = _data_key(eph.exchange(X25519PublicKey.from_public_bytes(public)), eph_pub, public)
    return MAGIC + key_id(public) + eph_pub + len(data).to_bytes(8, "big") + sealing.seal(data_key, data)


def decrypt(private: X25519PrivateKey, data: bytes, key: str) -> bytes:
    if not data.startswith(MAGIC):
        return data  # written before mail-crypt was on: as it is
    public = _raw(private.public_key())
    if len(data) < HEADER or data[8:16] != key_id(public):
        raise CorruptObject(f"{key}: encrypted to another key", code="CorruptObject")
    eph_pub, size = data[16:48], int.from_bytes(data[48:56], "big")
    data_key = _data_key(private.exchange(X25519PublicKey.from_public_bytes(eph_pub)), eph_pub, public)
    try:
        return sealing.open_all(data_key, data[HEADER:], size)
    except sealing.SealError:
        raise CorruptObject(f"{key}: the encrypted body does not open", code="CorruptObject") from None


class MailCrypt(Transforming):
    """The Fs calls of `parent`, each user's bodies encrypted to that user's key pair (the stored
    size from `stat`; a copy keeps the bytes, so only within one user's mail)."""

    def __init__(self, parent: Store) -> None:
        self.parent = parent
        self._public: dict[str, bytes] = {}
        self._private: dict[str, tuple[X25519PrivateKey, int]] = {}  # user -> (key, sessions holding it)

    def _root(self) -> Store:
        """Key objects are read and written on the S3 store itself, never through a cache."""
        store: Store = self.parent
        while hasattr(store, "parent"):
            store = store.parent
        return store

    async def _stored_key(self, user: str) -> bytes | None:
        try:
            body, _ = await self._root().get(key_object(user))
        except NotFound:
            return None
        return body

    async def public_key(self, user: str) -> bytes:
        if user not in self._public:
            stored = await self._stored_key(user)
            if stored is None:
                raise NoMailKey(f"mail-crypt: {user} has no key pair yet (made at `mailstore user add --fs` or the "
                                "first login)", code="NoMailKey")
            self._public[user] = base64.b64decode(json.loads(stored)["public"])
        return self._public[user]

    async def create_key(self, user: str, password: str) -> bool:
        """The user's key pair, made under `password`; False when the user has one already."""
        if await self._stored_key(user) is not None:
            return False
        private, stored = await asyncio.to_thread(new_key_pair, user, password)
        if not await _put_new(self._root(), key_object(user), stored):
            return False  # made meanwhile (another login): that one is the user's
        self._public[user] = _raw(private.public_key())
        return True

    async def unlock(self, user: str, password: str, *, create: bool = True) -> None:
        """Open the user's private key for this process (a session begins): made first when the user
        has none (`create`; else NoMailKey). WrongPassword when it does not open."""
        held = self._private.get(user)
        stored = await self._stored_key(user)
        if stored is None and not create:
            raise NoMailKey(f"mail-crypt: {user} has no key pair", code="NoMailKey")
        if stored is None:
            await self.create_key(user, password)
            stored = await self._stored_key(user)
            assert stored is not None
        private = await asyncio.to_thread(open_private, user, stored, password)
        self._private[user] = (private, (held[1] if held else 0) + 1)

    def release(self, user: str) -> None:
        """A session of the user ended: the private key is dropped with the last one."""
        held = self._private.get(user)
        if held is None:
            return
        if held[1] <= 1:
            del self._private[user]
        else:
            self._private[user] = (held[0], held[1] - 1)

    async def change_password(self, user: str, old: str, new: str) -> None:
        stored = await self._stored_key(user)
        if stored is None:
            await self.create_key(user, new)
            return
        private = await asyncio.to_thread(open_private, user, stored, old)
        restored = await asyncio.to_thread(_stored, user, private, new, secrets.token_bytes(16))
        await self._root().put(key_object(user), restored, None, "application/json")

    async def reset_key(self, user: str, password: str) -> None:
        """A new key pair under `password`: what was written for the old one no longer opens."""
        private, stored = await asyncio.to_thread(new_key_pair, user, password)
        await self._root().put(key_object(user), stored, None, "application/json")
        self._public[user] = _raw(private.public_key())
        self._private.pop(user, None)

    async def forget(self, user: str) -> None:
        """The user's key pair removed (the user is deleted)."""
        await self._root().delete(key_object(user))
        self._public.pop(user, None)
        self._private.pop(user, None)

    # ------------------------------------------------------------ the Fs calls

    def _private_of(self, key: str) -> X25519PrivateKey:
        user = user_of(key)
        held = self._private.get(user)
        if held is None:
            raise KeyLocked(f"mail-crypt: {user}'s private key is not open here (log in first)", code="KeyLocked")
        return held[0]

    async def _out(self, data: bytes, key: str) -> bytes:
        if not data.startswith(MAGIC):
            user_of(key)
            return data
        private = self._private_of(key)
        return decrypt(private, data, key) if len(data) <= ON_LOOP else \
            await asyncio.to_thread(decrypt, private, data, key)

    async def _in(self, data: bytes, key: str) -> bytes:
        public = await self.public_key(user_of(key))
        return encrypt(public, data) if len(data) <= ON_LOOP else await asyncio.to_thread(encrypt, public, data)

    async def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None) -> None:
        if user_of(src) != user_of(dst):
            raise FsError("mail-crypt: an object is copied within its user's mail only", code="CrossUserCopy")
        await self.parent.copy(src, dst, metadata)  # still encrypted to the same key



async def _put_new(store: Store, key: str, data: bytes) -> bool:
    """Write `key` only if it is absent (If-None-Match: *); False when it exists."""
    put_new = getattr(store, "put_new", None)
    if put_new is None:
        raise FsError("mail-crypt needs an s3: store beneath it", code="Unsupported")
    return bool(await put_new(key, data, "application/json"))


def mail_crypt_of(fs: object) -> MailCrypt | None:
    """The mail-crypt layer of an fs stack, if it has one."""
    while fs is not None:
        if isinstance(fs, MailCrypt):
            return fs
        fs = getattr(fs, "parent", None)
    return None
