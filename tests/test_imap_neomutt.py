"""An interactive IMAP client, driven as a user would: NeoMutt (Debian's) in a private tmux.

A forwarded message whose attached message has an attachment of its own is
delivered over LMTP; NeoMutt opens it over IMAP, shows the attached message,
and saves both attachments (one top-level, one inside the attached message);
the saved files must be the original bytes.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import smtplib
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from test_lmtp import DOMAIN, Shim

USER = f"mutt@{DOMAIN}"
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"
PNG = bytes(range(256))[::-1] * 7


def b64(data: bytes) -> str:
    text = base64.b64encode(data).decode()
    return "\r\n".join(text[i:i + 76] for i in range(0, len(text), 76))


INNER = ("From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: the original\r\nMIME-Version: 1.0\r\n"
         'Content-Type: multipart/mixed; boundary="in"\r\n\r\n--in\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n'
         "plain text of the original\r\n--in\r\nContent-Type: image/png\r\n"
         'Content-Disposition: attachment; filename="chart.png"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
         + b64(PNG) + "\r\n--in--\r\n")
FORWARDED = ("From: Bob <bob@example.org>\r\nTo: " + USER + "\r\nSubject: Fwd: the original\r\nMIME-Version: 1.0\r\n"
             'Content-Type: multipart/mixed; boundary="out"\r\n\r\n--out\r\nContent-Type: text/plain\r\n\r\n'
             'see below\r\n--out\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment; '
             'filename="orig.eml"\r\n\r\n' + INNER + '\r\n--out\r\nContent-Type: application/pdf; name="report.pdf"\r\n'
             'Content-Disposition: attachment; filename="report.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
             + b64(PDF) + "\r\n--out--\r\n")


class Tmux:
    """One private tmux server (its own socket), stopped by its PID."""

    def __init__(self, env: dict[str, str]) -> None:
        self.socket = f"mailstore-{uuid.uuid4().hex[:8]}"
        self.env = env
        self.pid: int | None = None

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], env=self.env, check=True,
                              capture_output=True, text=True).stdout

    def start(self, command: str) -> None:
        self.run("new-session", "-d", "-s", "t", "-x", "160", "-y", "48", command)
        self.pid = int(self.run("display-message", "-p", "-t", "t", "#{pid}").strip())

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", "t")

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "t", *keys)

    def wait(self, pattern: str, timeout: float = 30) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            text = self.screen()
            if re.search(pattern, text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} never appeared; the screen:\n{self.screen()}")

    def stop(self) -> None:
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


@pytest.fixture
def mailbox(tmp_path):  # type: ignore[no-untyped-def]
    shim = Shim(tmp_path / "shim")
    shim.add_user(USER)
    proc, info = shim.start_imap()
    c = smtplib.LMTP("127.0.0.1", shim.port)
    c.sendmail("bob@example.org", [USER], FORWARDED.encode())
    c.quit()
    yield info["port"]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    shim.stop()


def test_neomutt_shows_a_forwarded_message_and_saves_its_attachments(mailbox, tmp_path):  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    muttrc = home / "muttrc"
    muttrc.write_text(f'set folder="imap://{USER}@127.0.0.1:{mailbox}/"\nset spoolfile="+INBOX"\n'
                      'set imap_pass="pw"\nset ssl_starttls=no\nset ssl_force_tls=no\nset wait_key=no\n'
                      'set quit=yes\nset header_cache=""\nset message_cachedir=""\n')
    muttrc.chmod(0o600)  # the password is in a file, never on a command line
    saved = tmp_path / "saved"
    saved.mkdir()
    tmux = Tmux(dict(os.environ, HOME=str(home), TERM="xterm-256color"))
    try:
        tmux.start(f"neomutt -n -F {muttrc}")
        tmux.wait(r"Fwd: the original")
        tmux.keys("Enter")
        tmux.wait(r"see below")
        tmux.keys("v")  # the attachment menu: the attached message's own parts are listed inside it
        menu = tmux.wait(r"report\.pdf")
        assert re.search(r"the original\s+\[message/rfc822", menu), menu
        assert re.search(r"chart\.png\s+\[image/png, base64", menu), menu

        def entry(name: str) -> str:
            m = re.search(r"^\s*\S*\s+(\d+) .*" + re.escape(name), tmux.screen(), re.M)
            assert m, tmux.screen()
            return m.group(1)

        tmux.keys(entry("the original"))  # jump to the attached message and view it
        tmux.wait("Jump to")
        tmux.keys("Enter", "Enter")
        shown = tmux.wait(r"plain text of the original")
        assert "Subject: the original" in shown and "Alice" in shown
        tmux.keys("q")
        tmux.wait("Attachments")
        for name, want in (("report.pdf", PDF), ("chart.png", PNG)):
            tmux.keys(entry(name))
            tmux.wait("Jump to")
            tmux.keys("Enter", "s")
            tmux.wait("Save to file")
            tmux.keys("C-u")
            tmux.keys("-l", str(saved / name))
            tmux.keys("Enter")
            tmux.wait("Attachment saved")
            assert (saved / name).read_bytes() == want, name
        tmux.keys("q", "q")
    finally:
        tmux.stop()
