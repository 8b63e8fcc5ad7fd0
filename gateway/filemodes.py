"""Who may read what the appliance writes: everything it creates is 0600 (files) or 0700 (dirs).

Each process sets a 0077 umask at start (appliance.cli), so files made by
libraries (SQLite, diskcache) follow too.  `too_open` finds what an older
version, a restore or an operator left readable by others, for fsck and the
start-up warning.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077


def too_open(root: Path, limit: int = 20) -> list[str]:
    """Paths under `root` (itself included) that group or others may read, write or enter."""
    found: list[str] = []
    if not root.exists():
        return found
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [""] + dirnames + filenames:
            path = os.path.join(dirpath, name) if name else dirpath
            if name == "" and dirpath != str(root):
                continue  # each directory is seen once, as its parent's entry
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(mode) or stat.S_ISSOCK(mode):
                continue
            if mode & 0o077:
                want = "0700" if stat.S_ISDIR(mode) else "0600"
                found.append(f"{path} is mode {stat.S_IMODE(mode):04o} (want {want})")
                if len(found) >= limit:
                    return found
    return found
