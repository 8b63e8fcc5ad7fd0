"""Sealed bodies: AES-256-GCM over fixed-size chunks, so a range is opened by reading only the
chunks it touches, and a changed, moved, dropped or truncated chunk fails to open.

A body of n bytes is cut into chunks of CHUNK bytes (the last may be shorter; an empty body is
one empty chunk). Chunk i is sealed with the body's own data key, the 12-byte nonce
`stream (4 bytes) || i (8 bytes)` and, as associated data, one byte saying whether it is the
last chunk. A data key seals one body (or the parts of one multipart upload, each its own
stream number), so no nonce repeats under a key. What is stored is the chunks' ciphertexts
and tags back to back: n + TAG per chunk.

Data keys are random and never stored as they are: `wrap` seals one under a key-encryption key
(a store key, a customer's key) with a random nonce and a label as associated data, and
`unwrap` fails (SealError) for any other key or label.

This module knows nothing of S3 or mail: the gateway's SSE and the fs wrappers both use it.
"""

from __future__ import annotations

import base64
import functools
import os
import secrets
import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

CHUNK = 64 << 10  # plaintext bytes per chunk
TAG = 16  # GCM tag after each chunk's ciphertext
SEALED_CHUNK = CHUNK + TAG
KEY_SIZE = 32
_LAST = b"\x01"
_MORE = b"\x00"


class SealError(Exception):
    """A chunk or a wrapped key failed to open: wrong key, or the bytes were changed."""


class _Pool:
    """Fresh random bytes from the kernel (os.urandom), taken KEYS_PER_READ keys at a time: every
    SSE PUT makes a data key, and one getrandom call per key cost more than sealing a small body.
    A forked child drops what it inherited, so two processes never hand out the same key."""

    KEYS_PER_READ = 128

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.buf = b""
        self.at = 0
        os.register_at_fork(after_in_child=self.drop)

    def drop(self) -> None:
        self.buf, self.at = b"", 0

    def take(self, n: int) -> bytes:
        with self.lock:
            if self.at + n > len(self.buf):
                self.buf, self.at = os.urandom(n * self.KEYS_PER_READ), 0
            out = self.buf[self.at:self.at + n]
            self.at += n
            return out


_POOL = _Pool()


def new_key() -> bytes:
    return _POOL.take(KEY_SIZE)


def chunks(size: int) -> int:
    """How many chunks a body of `size` bytes is sealed as (at least one)."""
    return max(1, -(-size // CHUNK))


def sealed_size(size: int) -> int:
    return size + TAG * chunks(size)


def _nonce(stream: int, index: int) -> bytes:
    return stream.to_bytes(4, "big") + index.to_bytes(8, "big")


class Sealer:
    """Seals a body fed in pieces of any size; `feed` returns the sealed chunks completed so
    far, `finish` the rest (the last chunk, possibly empty)."""

    def __init__(self, key: bytes, stream: int = 0) -> None:
        self._aead = AESGCM(key)
        self._stream = stream
        self._index = 0
        self._buf = bytearray()

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        if len(self._buf) <= CHUNK:  # the last chunk is sealed by finish (it may be this one)
            return b""
        out = []
        # Keep at least one byte back: only finish knows which chunk is the last.
        while len(self._buf) > CHUNK:
            out.append(self._seal(bytes(self._buf[:CHUNK]), _MORE))
            del self._buf[:CHUNK]
        return b"".join(out)

    def finish(self) -> bytes:
        last = self._seal(bytes(self._buf), _LAST)
        self._buf.clear()
        return last

    def whole(self, data: bytes) -> bytes:
        """`data` as the whole body, sealed at once (nothing may have been fed): the usual write,
        a small object, without the piecewise buffering."""
        assert self._index == 0 and not self._buf
        last = chunks(len(data)) - 1
        out = [self._seal(data[i * CHUNK:(i + 1) * CHUNK], _LAST if i == last else _MORE) for i in range(last + 1)]
        return out[0] if len(out) == 1 else b"".join(out)

    def _seal(self, chunk: bytes, flag: bytes) -> bytes:
        sealed = self._aead.encrypt(_nonce(self._stream, self._index), chunk, flag)
        self._index += 1
        return sealed


def seal(key: bytes, data: bytes, stream: int = 0) -> bytes:
    return Sealer(key, stream).whole(data)


def span(start: int, end: int, size: int) -> tuple[int, int, int]:
    """For the plaintext bytes [start, end) of a body of `size` bytes: the sealed bytes
    [sealed_start, sealed_end) to read and the index of the first chunk they hold."""
    first = start // CHUNK
    last = max(first, (max(end, 1) - 1) // CHUNK)
    sealed_end = min((last + 1) * SEALED_CHUNK, sealed_size(size))
    return first * SEALED_CHUNK, sealed_end, first


class Opener:
    """Opens the sealed chunks of a body of `size` bytes from chunk `first` on, fed in pieces
    of any size; each call returns the plaintext of the chunks completed so far."""

    def __init__(self, key: bytes, size: int, first: int = 0, stream: int = 0) -> None:
        self._aead = AESGCM(key)
        self._stream = stream
        self._index = first
        self._last = chunks(size) - 1
        self._last_sealed = size - self._last * CHUNK + TAG  # every other chunk is SEALED_CHUNK
        self._buf = bytearray()

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = []
        while self._index <= self._last:
            need = SEALED_CHUNK if self._index < self._last else self._last_sealed
            if len(self._buf) < need:
                break
            out.append(self._open(bytes(self._buf[:need])))
            del self._buf[:need]
        if self._index > self._last and self._buf:
            raise SealError("more sealed bytes than the body has chunks")
        return b"".join(out)

    def finish(self) -> None:
        """SealError when the bytes fed ended inside a chunk."""
        if self._buf:
            raise SealError("a sealed body ended inside a chunk")

    def _open(self, sealed: bytes) -> bytes:
        flag = _LAST if self._index == self._last else _MORE
        try:
            plain = self._aead.decrypt(_nonce(self._stream, self._index), sealed, flag)
        except InvalidTag:
            raise SealError(f"chunk {self._index} failed to open") from None
        self._index += 1
        return plain


def open_all(key: bytes, sealed: bytes, size: int, stream: int = 0) -> bytes:
    """All of a sealed body of `size` bytes (the common read: a whole small object)."""
    if len(sealed) != sealed_size(size):
        raise SealError(f"a sealed body of {size} bytes is {sealed_size(size)} bytes, not {len(sealed)}")
    aead = AESGCM(key)
    last = chunks(size) - 1
    out = []
    try:
        for i in range(last + 1):
            at = i * SEALED_CHUNK
            out.append(aead.decrypt(_nonce(stream, i), sealed[at:at + SEALED_CHUNK], _LAST if i == last else _MORE))
    except InvalidTag:
        raise SealError(f"chunk {i} failed to open") from None
    return out[0] if len(out) == 1 else b"".join(out)


def open_span(key: bytes, sealed: bytes, size: int, start: int, end: int, stream: int = 0) -> bytes:
    """The plaintext bytes [start, end) of a body of `size` bytes, given all of its sealed
    bytes (`sealed`, as stored)."""
    lo, hi, first = span(start, end, size)
    if len(sealed) != sealed_size(size):
        raise SealError(f"a sealed body of {size} bytes is {sealed_size(size)} bytes, not {len(sealed)}")
    o = Opener(key, size, first, stream)
    plain = o.feed(sealed[lo:hi])
    o.finish()
    skip = start - first * CHUNK
    return plain[skip:skip + (end - start)]


class SecretBox:
    """Small secrets (access-key secrets, store keys, KMS key material) sealed under one key, the
    store's master key: base64(nonce || ciphertext || tag), with a label (what the secret
    belongs to) as associated data, so a sealed value cannot be moved to another record."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, data: bytes, label: str) -> str:
        nonce = secrets.token_bytes(12)
        return base64.b64encode(nonce + self._aead.encrypt(nonce, data, label.encode())).decode()

    def open(self, text: str, label: str) -> bytes:
        """The secret; SealError for another key or label, or a changed value."""
        try:
            raw = base64.b64decode(text)
            return self._aead.decrypt(raw[:12], raw[12:], label.encode())
        except (InvalidTag, ValueError):
            raise SealError(f"the sealed value of {label} does not open") from None


# Key-encryption keys are few (store keys, KMS key versions) and used for every object: their
# cipher contexts are kept. Data keys (one per object) are not.
_kek_cipher = functools.lru_cache(maxsize=256)(AESGCM)


def wrap(kek: bytes, data_key: bytes, label: bytes) -> bytes:
    """`data_key` sealed under `kek`: nonce || ciphertext || tag (a random nonce: KEKs seal many keys)."""
    nonce = _POOL.take(12)
    return nonce + _kek_cipher(kek).encrypt(nonce, data_key, label)


def unwrap(kek: bytes, wrapped: bytes, label: bytes) -> bytes:
    try:
        return _kek_cipher(kek).decrypt(wrapped[:12], wrapped[12:], label)
    except (InvalidTag, ValueError):
        raise SealError("the key does not open this data key") from None
