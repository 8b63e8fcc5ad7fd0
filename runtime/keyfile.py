"""Secret key files: made once, whole, private."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_new_key(path: Path, size: int = 32) -> None:
    """`size` random bytes in a new file of mode 0600, synced; FileExistsError if `path` exists
    (a key is never replaced: what it sealed would be lost)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        data = secrets.token_bytes(size)
        written = 0
        while written < size:
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def read_secret(path: str | Path) -> str:
    """A secret kept in a file (so that it is never on a command line): its first line. A file
    others may read is refused (ValueError), as ssh refuses such a key."""
    p = Path(path)
    if p.stat().st_mode & 0o077:
        raise ValueError(f"{p} holds a secret but others may read it: chmod 600 {p}")
    return p.read_text().split("\n", 1)[0]
