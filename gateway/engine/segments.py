"""Segment and blob files on disk.

Layout of a data directory:

    index.db             SQLite index (see index.py)
    sys.gen              the system namespace's generation (see Generation)
    segments/NNNNNNNNNN.seg   append-only record logs
    blobs/XX/<id>.blob   out-of-line bodies of large objects and parts

Rules:
- A segment has one writer: the process that created it, holding an exclusive
  flock on it for its whole life.  A segment whose flock can be taken has lost
  its writer and may be sealed by recovery.
- Sealed segments are never modified; compaction writes live records to a new
  segment and unlinks the old one after the index points away from it.
- A blob file is complete and fdatasync'ed before any record references it;
  blob files no live record references are orphans, removed after a grace
  period (an upload still in flight in another process is younger than that).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import secrets
import struct
import zlib
from collections.abc import Iterator
from hashlib import md5
from pathlib import Path
from typing import Self

from .model import BLOCK_SIZE, BlobRef, CorruptRecord, as_storage_error


class WriteLock:
    """The data directory's index write lock, as a blocking flock.

    SQLite's own busy handler retries a locked BEGIN IMMEDIATE by sleeping
    1, 2, 5, 10... ms, so two group committers in two processes would oversleep
    each other's sub-millisecond commits (p99 of hundreds of ms, measured).  A
    flock waiter is woken by the kernel the moment the holder lets go.  Every
    index writer takes this before BEGIN IMMEDIATE.  One instance per thread:
    flock excludes open files, not threads sharing one.
    """

    def __init__(self, root: Path) -> None:
        self.fd = os.open(root / "write.lock", os.O_RDWR | os.O_CREAT, 0o600)

    def __enter__(self) -> Self:
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self.fd)


class Generation:
    """A counter shared by every process on the data directory, in 8 bytes of a mapped file:
    it changes after every commit that changes a record of the system namespace (buckets,
    keys), so a process may keep what it parsed from those records for as long as the counter
    reads the same, and asks the index again only when it moves (a memory read instead of a
    query on every request). Bumped only under the WriteLock, after the COMMIT, and once by
    every engine that opens (a process that died between its COMMIT and its bump is replaced
    by one that bumps)."""

    def __init__(self, root: Path) -> None:
        fd = os.open(root / "sys.gen", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < 8:
                os.ftruncate(fd, 8)
            self._map = mmap.mmap(fd, 8)
        finally:
            os.close(fd)

    def read(self) -> int:
        return int(struct.unpack_from("<Q", self._map)[0])

    def bump(self) -> None:
        """Only under the data directory's WriteLock (one writer at a time)."""
        struct.pack_into("<Q", self._map, 0, self.read() + 1)

    def close(self) -> None:
        self._map.close()


class SegmentGone(Exception):
    """The segment was compacted away between the index lookup and the read."""


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DataDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.segments = root / "segments"
        self.blobs = root / "blobs"
        self.index_path = root / "index.db"

    def create(self) -> None:
        for d in (self.root, self.segments, self.blobs):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)

    def segment_path(self, seg_id: int) -> Path:
        return self.segments / f"{seg_id:010d}.seg"

    def blob_path(self, blob_id: str) -> Path:
        return self.blobs / blob_id[:2] / f"{blob_id}.blob"

    def segment_ids(self) -> list[int]:
        return sorted(int(p.stem) for p in self.segments.glob("*.seg") if p.stem.isdigit())


class SegmentReader:
    """Positional reads with a small cache of open descriptors (one per thread)."""

    def __init__(self, data: DataDir, max_open: int = 256) -> None:
        self.data = data
        self.max_open = max_open
        self._fds: dict[int, int] = {}

    def read(self, seg_id: int, offset: int, length: int) -> bytes:
        fd = self._fds.get(seg_id)
        if fd is None:
            try:
                fd = os.open(self.data.segment_path(seg_id), os.O_RDONLY)
            except FileNotFoundError:
                raise SegmentGone(seg_id) from None
            if len(self._fds) >= self.max_open:
                os.close(self._fds.pop(next(iter(self._fds))))
            self._fds[seg_id] = fd
        buf = os.pread(fd, length, offset)
        if len(buf) != length:
            raise CorruptRecord(f"segment {seg_id} is shorter than the index says")
        return buf

    def forget(self, seg_id: int) -> None:
        fd = self._fds.pop(seg_id, None)
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class SegmentWriter:
    """The one append position of a segment this process owns (flock held)."""

    def __init__(self, data: DataDir, seg_id: int) -> None:
        self.id = seg_id
        self.path = data.segment_path(seg_id)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.size = 0
        fsync_dir(data.segments)

    def append(self, buf: bytes) -> int:
        """Write at the committed end; durable only after sync()."""
        offset = self.size
        view = memoryview(buf)
        pos = 0
        while pos < len(buf):
            pos += os.pwrite(self.fd, view[pos:], offset + pos)
        return offset

    def commit_size(self, new_size: int) -> None:
        self.size = new_size

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def try_lock(path: Path) -> int | None:
    """Open and flock a segment file if no live writer holds it."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


class BlobWriter:
    """Streams one large body to a new blob file, checksumming as it goes.

    Blocking: call from a worker thread.  The caller decides from md5/crc32
    whether to keep it (commit) or discard it.
    """

    def __init__(self, data: DataDir) -> None:
        self.blob_id = secrets.token_hex(16)
        self.path = data.blob_path(self.blob_id)
        self.fd = -1
        try:
            self.path.parent.mkdir(mode=0o700, exist_ok=True)
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise as_storage_error(exc) from exc
        self.size = 0
        self.crcs: list[int] = []
        self._block_crc = 0
        self._block_fill = 0

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            room = BLOCK_SIZE - self._block_fill
            piece = view[:room]
            self._block_crc = zlib.crc32(piece, self._block_crc)
            self._block_fill += len(piece)
            if self._block_fill == BLOCK_SIZE:
                self.crcs.append(self._block_crc)
                self._block_crc = 0
                self._block_fill = 0
            view = view[room:]
        written = 0
        try:
            while written < len(chunk):
                written += os.write(self.fd, chunk[written:])
        except OSError as exc:
            raise as_storage_error(exc) from exc
        self.size += len(chunk)

    def finish(self) -> BlobRef:
        """fdatasync and close; the directory entry is synced at commit."""
        if self._block_fill:
            self.crcs.append(self._block_crc)
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            raise as_storage_error(exc) from exc
        os.close(self.fd)
        self.fd = -1
        return BlobRef(self.blob_id, self.size, tuple(self.crcs))

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.path.unlink(missing_ok=True)


def read_blob_blocks(data: DataDir, ref: BlobRef, start: int, end: int,
                     fd: int | None = None) -> Iterator[bytes]:
    """Yield the verified bytes [start, end) of a blob, one checked block at a time.

    Each block is checked against its CRC before any of its bytes leave, so a
    corrupt block stops the stream instead of reaching the client.
    """
    own = fd is None
    if own:
        try:
            fd = os.open(data.blob_path(ref.blob_id), os.O_RDONLY)
        except FileNotFoundError:
            raise CorruptRecord(f"blob {ref.blob_id} is missing") from None
    assert fd is not None
    try:
        block = start // BLOCK_SIZE
        while block * BLOCK_SIZE < end:
            off = block * BLOCK_SIZE
            want = min(BLOCK_SIZE, ref.size - off)
            buf = os.pread(fd, want, off)
            if len(buf) != want or zlib.crc32(buf) != ref.crcs[block]:
                raise CorruptRecord(f"blob {ref.blob_id} block {block} checksum mismatch")
            lo = max(start - off, 0)
            hi = min(end - off, want)
            yield buf[lo:hi]
            block += 1
    finally:
        if own:
            os.close(fd)


def verify_blob(data: DataDir, ref: BlobRef) -> None:
    for _ in read_blob_blocks(data, ref, 0, ref.size):
        pass


def blob_md5(data: DataDir, refs: tuple[BlobRef, ...]) -> str:
    h = md5()
    for ref in refs:
        for piece in read_blob_blocks(data, ref, 0, ref.size):
            h.update(piece)
    return h.hexdigest()
