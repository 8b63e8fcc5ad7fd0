"""runtime/sealing.py: chunked AES-256-GCM opens exactly what was sealed, any range of it, and
nothing else."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import sealing
from runtime.sealing import CHUNK, SEALED_CHUNK, TAG, SealError

KEY = bytes(32)


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 4 * CHUNK + 3), data=st.data())
def test_any_range_opens_to_the_plaintext(size, data):
    body = os.urandom(size)
    sealed = sealing.seal(KEY, body)
    assert len(sealed) == sealing.sealed_size(size) == size + TAG * max(1, -(-size // CHUNK))
    a = data.draw(st.integers(0, size))
    b = data.draw(st.integers(a, size))
    assert sealing.open_span(KEY, sealed, size, a, b) == body[a:b]


@settings(max_examples=30, deadline=None)
@given(size=st.integers(0, 3 * CHUNK), cuts=st.lists(st.integers(1, 3 * SEALED_CHUNK), max_size=6))
def test_fed_in_any_pieces(size, cuts):
    body = os.urandom(size)
    s = sealing.Sealer(KEY)
    sealed, at = b"", 0
    for n in cuts:
        sealed += s.feed(body[at:at + n])
        at += n
    sealed += s.feed(body[at:]) + s.finish()
    assert sealed == sealing.seal(KEY, body)
    o = sealing.Opener(KEY, size)
    plain, at = b"", 0
    for n in cuts:
        plain += o.feed(sealed[at:at + n])
        at += n
    plain += o.feed(sealed[at:])
    o.finish()
    assert plain == body


def test_every_changed_byte_fails():
    body = os.urandom(CHUNK + 10)
    sealed = sealing.seal(KEY, body)
    for i in list(range(0, len(sealed), 997)) + [len(sealed) - 1]:
        bad = bytearray(sealed)
        bad[i] ^= 0x80
        with pytest.raises(SealError):
            sealing.open_span(KEY, bytes(bad), len(body), 0, len(body))


def test_moved_dropped_or_foreign_chunks_fail():
    body = os.urandom(3 * CHUNK)
    sealed = sealing.seal(KEY, body)
    c = [sealed[i:i + SEALED_CHUNK] for i in range(0, len(sealed), SEALED_CHUNK)]
    with pytest.raises(SealError):  # two chunks swapped
        sealing.open_span(KEY, c[1] + c[0] + c[2], len(body), 0, len(body))
    with pytest.raises(SealError):  # the last chunk dropped: the one before is not marked last
        sealing.open_span(KEY, c[0] + c[1], 2 * CHUNK, 0, 2 * CHUNK)
    other = sealing.seal(sealing.new_key(), body)
    with pytest.raises(SealError):  # a chunk of the same plaintext under another key
        sealing.open_span(KEY, c[0] + other[SEALED_CHUNK:2 * SEALED_CHUNK] + c[2], len(body), 0, len(body))
    with pytest.raises(SealError):  # the right bytes under the wrong key
        sealing.open_span(sealing.new_key(), sealed, len(body), 0, 10)
    with pytest.raises(SealError):  # the same key, another stream (a multipart part number)
        sealing.open_span(KEY, sealed, len(body), 0, 10, stream=2)
    o = sealing.Opener(KEY, len(body))
    o.feed(sealed[:-5])
    with pytest.raises(SealError):  # truncated
        o.finish()


def test_wrapped_keys_open_only_with_their_key_and_label():
    dk = sealing.new_key()
    kek = sealing.new_key()
    w = sealing.wrap(kek, dk, b"label")
    assert sealing.unwrap(kek, w, b"label") == dk
    assert sealing.wrap(kek, dk, b"label") != w  # a fresh nonce each time
    for bad_key, label in ((sealing.new_key(), b"label"), (kek, b"other")):
        with pytest.raises(SealError):
            sealing.unwrap(bad_key, w, label)
    with pytest.raises(SealError):
        sealing.unwrap(kek, w[:-1] + bytes([w[-1] ^ 1]), b"label")
