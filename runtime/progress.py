"""Progress of a long admin operation (fsck, compaction, reindex, gc).

On a terminal: one bar redrawn in place, with a count, a percentage and an
ETA.  Otherwise (a pipe, a log, systemd): a plain line at most once a second
and at the end, so logs stay readable.  A leaf module: every part may import it.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30


class Progress:
    def __init__(self, label: str, unit: str, *, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.label, self.unit = label, unit
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.start = time.monotonic()
        self._last = 0.0
        self._shown: tuple[int, int] | None = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        final = done >= total
        if not final and now - self._last < (0.1 if self.tty else 1.0):
            return
        self._last = now
        self._shown = (done, total)
        pct = 100.0 * done / total if total else 100.0
        if self.tty:
            filled = int(WIDTH * done / total) if total else WIDTH
            eta = ""
            if 0 < done < total:
                left = (now - self.start) * (total - done) / done
                eta = f"  ETA {int(left) // 60}:{int(left) % 60:02d}"
            self.stream.write(f"\r\x1b[K{self.label} [{'#' * filled}{'-' * (WIDTH - filled)}] {pct:3.0f}%  "
                              f"{done}/{total} {self.unit}{eta}")
        else:
            self.stream.write(f"{self.label}: {done}/{total} {self.unit} ({pct:.0f}%)\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line (a terminal) once the work is done."""
        if self.enabled and self.tty and self._shown is not None:
            self.stream.write("\n")
            self.stream.flush()
