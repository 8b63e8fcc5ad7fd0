"""Reading segment files as the truth: record by record, past damage, without the index.

A segment is a run of self-describing records (records.py).  Damage can sit at
the end (a torn last batch: the process died mid-append) or in the middle (a
bit flip in a header).  `scan` reads every record with a sound prefix and
header; where a header is bad it searches forward for the next offset at which
a sound record starts, so one flipped byte costs the records it touches, never
everything after it.  Recovery and fsck decide what to do with what it finds;
this module deletes nothing.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from . import records
from .model import CorruptRecord
from .segments import DataDir, fsync_dir


@dataclass(frozen=True, slots=True)
class Found:
    """One record whose prefix and header verify.  `error` is set when only its body is bad."""

    offset: int
    raw: bytes
    record: records.Record
    error: str | None


@dataclass(frozen=True, slots=True)
class Gap:
    """Bytes [start, end) where no sound record starts."""

    start: int
    end: int
    reason: str


@dataclass
class Scan:
    records: list[Found]
    gaps: list[Gap]
    end: int  # where the last sound record ends (the sound length of the file)
    size: int  # how many bytes were read

    @property
    def torn_tail(self) -> Gap | None:
        """The damage after the last sound record, if any: a torn or uncommitted tail."""
        if self.gaps and self.gaps[-1].end == self.size and self.gaps[-1].start >= self.end:
            return self.gaps[-1]
        return None


def _record_at(data: bytes, pos: int) -> tuple[records.Prefix, bytes]:
    p = records.decode_prefix(data[pos:pos + records.PREFIX_SIZE])
    raw = data[pos:pos + p.total]
    if len(raw) != p.total:
        raise CorruptRecord("truncated record")
    records.check_header(raw, p)
    return p, raw


def _resync(data: bytes, pos: int) -> int:
    """The next offset after `pos` where a sound record starts, else len(data)."""
    i = data.find(records.MAGIC, pos + 1)
    while i >= 0:
        try:
            _record_at(data, i)
            return i
        except CorruptRecord:
            i = data.find(records.MAGIC, i + 1)
    return len(data)


def scan_bytes(data: bytes, base: int = 0) -> Scan:
    """The records in `data`, which starts at file offset `base`."""
    found: list[Found] = []
    gaps: list[Gap] = []
    pos = 0
    end = 0
    while pos < len(data):
        try:
            p, raw = _record_at(data, pos)
        except CorruptRecord as exc:
            nxt = _resync(data, pos)
            gaps.append(Gap(base + pos, base + nxt, str(exc)))
            pos = nxt
            continue
        try:
            rec, err = records.decode(raw), None
        except (CorruptRecord, ValueError, KeyError, TypeError) as exc:
            try:
                rec, err = records.decode(_without_body(raw, p)), str(exc)
            except (CorruptRecord, ValueError, KeyError, TypeError):
                # The header checksum held but its JSON does not parse: written
                # by something else.  Skip the record, say where.
                gaps.append(Gap(base + pos, base + pos + p.total, f"unreadable header: {exc}"))
                pos += p.total
                continue
        found.append(Found(base + pos, raw, rec, err))
        pos += p.total
        end = pos
    return Scan(found, gaps, base + end, base + len(data))


def scan_file(path: Path, start: int = 0, limit: int | None = None) -> Scan:
    """The records of a segment file from `start` (up to `limit` bytes from 0, if given)."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read() if limit is None else f.read(max(limit - start, 0))
    return scan_bytes(data, start)


def _without_body(raw: bytes, p: records.Prefix) -> bytes:
    """The record with its body dropped (to read a header whose body is corrupt)."""
    header = raw[records.PREFIX_SIZE:records.PREFIX_SIZE + p.hlen]
    head = struct.pack("<4sB3xQIQ", records.MAGIC, p.kind, p.seq, p.hlen, 0)
    hcrc = zlib.crc32(header, zlib.crc32(head))
    return head + struct.pack("<II", hcrc, 0) + header


def quarantine_tail(data: DataDir, seg_id: int, fd: int, start: int, why: str) -> Path | None:
    """Move the bytes of segment `seg_id` from `start` to its end into quarantine/, then cut them.

    The copy is fsynced before the cut, so nothing that was ever on disk is
    destroyed: an operator (or a later, wiser version) can still read it.
    """
    size = os.fstat(fd).st_size
    if size <= start:
        return None
    qdir = data.root / "quarantine"
    qdir.mkdir(mode=0o700, exist_ok=True)
    dest = qdir / f"segment-{seg_id:010d}-at-{start}.bin"
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        pos = start
        while pos < size:
            chunk = os.pread(fd, min(1 << 20, size - pos), pos)
            if not chunk:
                break
            os.write(out, chunk)
            pos += len(chunk)
        os.fsync(out)
    finally:
        os.close(out)
    note = dest.with_suffix(".txt")
    note.write_text(f"bytes {start}..{size} of segment {seg_id}: {why}\n")
    note.chmod(0o600)
    fsync_dir(qdir)
    os.ftruncate(fd, start)
    os.fsync(fd)
    return dest
