"""Dovecot's `compress:` fs wrapper: `compress:ALGORITHM:LEVEL:<parent URL>`.

Objects are written compressed with ALGORITHM (zstd, gz, bz2 or xz, each in its standard
format, so Dovecot's own fs-compress reads them and we read its) and read back by the format
their first bytes name: an object written without compression, or with another of these
algorithms, reads as it is. A compressed object that fails to decompress is an error
(CorruptObject), never bytes. Dovecot's lz4 uses a framing of its own and is refused.

Compression costs CPU: bodies above ON_LOOP bytes are (de)compressed on a worker thread.
"""

from __future__ import annotations

import asyncio
import bz2
import gzip
import lzma
import zlib
from collections.abc import Callable

import zstandard

from .s3client import FsError
from .store import Store, Transforming

ON_LOOP = 256 << 10
LEVELS = {"zstd": (1, 22), "gz": (1, 9), "bz2": (1, 9), "xz": (0, 9)}
MAGIC = (
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x1f\x8b", "gz"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
)


class CorruptObject(FsError):
    """A compressed object that does not decompress."""


def compressor(algorithm: str, level: int) -> Callable[[bytes], bytes]:
    if algorithm == "zstd":
        z = zstandard.ZstdCompressor(level=level, write_content_size=True)
        return z.compress
    if algorithm == "gz":
        return lambda data: gzip.compress(data, compresslevel=level, mtime=0)
    if algorithm == "bz2":
        return lambda data: bz2.compress(data, compresslevel=level)
    if algorithm == "xz":
        return lambda data: lzma.compress(data, preset=level)
    raise ValueError(f"unknown compression {algorithm!r}")


def detect(data: bytes) -> str | None:
    """The compression an object's first bytes name, or None (stored as it is)."""
    return next((name for magic, name in MAGIC if data.startswith(magic)), None)


def decompress(data: bytes, key: str = "") -> bytes:
    """The object as it was written: decompressed by its own header, or as it is."""
    algorithm = detect(data)
    if algorithm is None:
        return data
    try:
        if algorithm == "zstd":
            return _zstd_frames(data)
        if algorithm == "gz":
            return gzip.decompress(data)
        if algorithm == "bz2":
            return bz2.decompress(data)
        return lzma.decompress(data)
    except (zstandard.ZstdError, OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
        raise CorruptObject(f"{key}: {algorithm} data does not decompress: {exc}", code="CorruptObject") from None


def _zstd_frames(data: bytes) -> bytes:
    """Every zstd frame of `data`, each one whole (a stream cut short is an error, not less data)."""
    out = []
    rest = data
    while rest:
        d = zstandard.ZstdDecompressor().decompressobj()
        out.append(d.decompress(rest))
        if not d.eof:
            raise EOFError("the zstd frame is cut short")
        rest = d.unused_data
    return b"".join(out)


class Compressed(Transforming):
    """The Fs calls of `parent`, with bodies compressed on the way in and out (the stored,
    compressed size from `stat`, as Dovecot's fs-compress; copies of the compressed bytes)."""

    def __init__(self, parent: Store, algorithm: str, level: int) -> None:
        self.parent = parent
        self.algorithm, self.level = algorithm, level
        self._compress = compressor(algorithm, level)

    async def _in(self, data: bytes, key: str) -> bytes:
        return self._compress(data) if len(data) <= ON_LOOP else await asyncio.to_thread(self._compress, data)

    async def _out(self, data: bytes, key: str) -> bytes:
        return decompress(data, key) if len(data) <= ON_LOOP else await asyncio.to_thread(decompress, data, key)
