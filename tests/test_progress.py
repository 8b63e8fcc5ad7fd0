"""Long admin operations report progress: a bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import io
import os
import pty
import subprocess

from runtime.progress import Progress
from conftest import BIN, create_key


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal_and_lines_elsewhere():
    tty, plain = Tty(), io.StringIO()
    for stream in (tty, plain):
        p = Progress("fsck", "segments", stream=stream)
        for done in range(0, 11):
            p(done, 10)
        p.close()
    assert tty.getvalue().startswith("\r\x1b[Kfsck [") and "10/10 segments" in tty.getvalue()
    assert tty.getvalue().endswith("\n") and "[" + "#" * 30 + "] 100%" in tty.getvalue()
    lines = plain.getvalue().splitlines()
    assert lines[0] == "fsck: 0/10 segments (0%)" and lines[-1] == "fsck: 10/10 segments (100%)"
    assert "\r" not in plain.getvalue() and len(lines) <= 3  # at most one a second, and the last


def test_fsck_and_compact_show_it(tmp_path):
    data = tmp_path / "data"
    create_key(data)
    out = subprocess.run([str(BIN / "mailstore"), "fsck", "--data-dir", str(data)], capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr.splitlines()[-1].startswith("fsck: 1/1 segments (100%)")
    # on a terminal: the bar, drawn in place
    leader, follower = pty.openpty()
    proc = subprocess.Popen([str(BIN / "mailstore"), "compact", "--data-dir", str(data)], stdout=subprocess.PIPE,
                            stderr=follower)
    os.close(follower)
    proc.wait(timeout=60)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert proc.returncode == 0 and b"\r\x1b[Kcompact [" in shown and b"0/0 segments" in shown
