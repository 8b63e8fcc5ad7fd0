"""What the dashboard reads from the parts' logs: failed logins by address, deferred deliveries
by reason (the panels operators look at first when something is wrong).

The files in DATA_DIR/logs are read as the parts append to them, from where the last read
stopped; a file that was rotated (a new inode, or shorter than before) is read from its
start.  The first read of a file takes at most its last MiB.  Lines are parsed with
runtime/logs.parse_line, so text and JSON logs both work, and counted over the last hour
by the time each line carries.
"""

from __future__ import annotations

import calendar
import os
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from runtime.logs import parse_line

WINDOW = 3600.0
FIRST_READ = 1 << 20
MAX_READ = 8 << 20  # per file and poll


def _seconds(stamp: object) -> float | None:
    """2026-11-30T23:50:02.004Z -> seconds since the epoch."""
    if not isinstance(stamp, str) or len(stamp) < 19:
        return None
    try:
        return calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) + float("0" + stamp[19:23])
    except ValueError:
        return None


class LogEvents:
    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self._at: dict[str, tuple[int, int]] = {}  # file -> (inode, offset read to)
        self._partial: dict[str, bytes] = {}
        self.failed_logins: deque[tuple[float, str, str]] = deque()  # (t, address, service)
        self.deferred: deque[tuple[float, str]] = deque()  # (t, reason)

    def poll(self) -> None:
        if self.directory is None or not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.log")):
            if path.name.startswith(("imap", "pop3", "managesieve", "lmtp", "dashboard")):
                self._read(path)

    def _read(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        try:
            st = os.fstat(fd)
            inode, offset = self._at.get(path.name, (-1, -1))
            if inode != st.st_ino or st.st_size < offset:  # new, or rotated: from its start
                offset = max(0, st.st_size - FIRST_READ) if inode == -1 else 0
                self._partial.pop(path.name, None)
            chunk = os.pread(fd, min(MAX_READ, st.st_size - offset), offset)
        finally:
            os.close(fd)
        self._at[path.name] = (st.st_ino, offset + len(chunk))
        data = self._partial.pop(path.name, b"") + chunk
        lines = data.split(b"\n")
        if lines[-1]:
            self._partial[path.name] = lines[-1]  # a line still being written
        for raw in lines[:-1]:
            self._count(raw.decode("utf-8", "replace"))

    def _count(self, line: str) -> None:
        doc = parse_line(line)
        if doc is None:
            return
        t = _seconds(doc.get("time"))
        if t is None:
            return
        if doc.get("logger") == "mailstore.auth" and doc.get("message") == "login failed":
            self.failed_logins.append((t, str(doc.get("remote", "?")), str(doc.get("service", doc.get("part", "")))))
        elif doc.get("logger") in ("mailstore.delivery", "mailstore.lmtp") and doc.get("message") == "deferred":
            self.deferred.append((t, str(doc.get("reason") or doc.get("result") or "?")))

    def summary(self, now: float) -> dict[str, Any]:
        """The last hour: failed logins per address (with the services), deferrals per reason."""
        for q in (self.failed_logins, self.deferred):
            while q and q[0][0] < now - WINDOW:
                q.popleft()
        by_address = Counter(addr for _, addr, _ in self.failed_logins)
        services: dict[str, set[str]] = {}
        for _, addr, service in self.failed_logins:
            services.setdefault(addr, set()).add(service)
        reasons = Counter(reason for _, reason in self.deferred)
        return {"failed_logins": [{"address": a, "count": n, "services": sorted(services[a])}
                                  for a, n in by_address.most_common(10)],
                "deferred_reasons": [{"reason": r, "count": n} for r, n in reasons.most_common(10)]}
