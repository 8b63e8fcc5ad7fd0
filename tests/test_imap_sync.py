"""Real IMAP sync clients against the server: mbsync (isync) and offlineimap, both ways."""

from __future__ import annotations

import imaplib
import signal
import smtplib
import subprocess
from pathlib import Path

import pytest

from test_lmtp import DOMAIN, Shim

USER = f"sync@{DOMAIN}"
N = 150


@pytest.fixture(scope="module")
def stack(tmp_path_factory):  # type: ignore[no-untyped-def]
    shim = Shim(tmp_path_factory.mktemp("sync"))
    shim.add_user(USER)
    proc, info = shim.start_imap()
    port = info["port"]
    c = smtplib.LMTP("127.0.0.1", shim.port)
    for i in range(N):
        c.sendmail("s@example.org", [USER], (f"Subject: sync {i}\r\nFrom: s@example.org\r\nMessage-ID: <sync{i}@x>\r\n"
                                             f"\r\nbody {i}\r\n").encode())
    c.quit()
    yield shim, port
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    shim.stop()


def server_state(port: int) -> dict[str, list[tuple[bytes, bytes]]]:
    """{mailbox: sorted [(Message-ID, flags)]} as the server sees it."""
    m = imaplib.IMAP4("127.0.0.1", port)
    m.login(USER, "pw")
    out = {}
    for line in m.list()[1]:
        name = line.decode().rsplit(' "/" ', 1)[1].strip('"')
        typ, data = m.select(f'"{name}"', readonly=True)
        if int(data[0]) == 0:
            out[name] = []
            continue
        typ, data = m.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        items = []
        for d in data:
            if isinstance(d, tuple):
                flags = d[0].split(b"FLAGS (", 1)[1].split(b")", 1)[0]
                items.append((d[1].strip(), b" ".join(sorted(flags.split()))))
        out[name] = sorted(items)
    m.logout()
    return out


def maildir_state(root: Path) -> dict[str, list[tuple[bytes, bytes]]]:
    out: dict[str, list[tuple[bytes, bytes]]] = {}
    letters = {"S": b"\\Seen", "F": b"\\Flagged", "R": b"\\Answered", "T": b"\\Deleted", "D": b"\\Draft"}
    for cur in root.rglob("cur"):
        folder = str(cur.parent.relative_to(root))
        items = []
        for f in list(cur.iterdir()) + list((cur.parent / "new").iterdir()):
            mid = next((line.rstrip(b"\r") for line in f.read_bytes().split(b"\n")  # Maildir files use LF
                        if line.lower().startswith(b"message-id:")), b"")
            info = f.name.split(":2,", 1)[1] if ":2," in f.name else ""
            flags = b" ".join(sorted(letters[c] for c in info if c in letters and c != "T"))
            if "T" not in info:
                items.append((mid.strip(), flags))
        out[folder] = sorted(items)
    return out


def test_mbsync_both_ways(stack, tmp_path):
    shim, port = stack
    local = tmp_path / "mail"
    local.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(f"""
IMAPAccount ms
Host 127.0.0.1
Port {port}
User {USER}
Pass pw
SSLType None
AuthMechs LOGIN

IMAPStore remote
Account ms

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel ms
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
""")

    def sync() -> None:
        res = subprocess.run(["mbsync", "-c", str(rc), "-a"], capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]

    sync()
    inbox = local / "INBOX"
    assert len(list((inbox / "cur").iterdir()) + list((inbox / "new").iterdir())) == N
    # local changes: flag some, delete some, add one, make a folder with a message
    files = sorted((inbox / "cur").iterdir()) + sorted((inbox / "new").iterdir())
    for f in files[:10]:
        base = f.name.split(":2,")[0]
        f.rename(inbox / "cur" / f"{base}:2,FS")
    for f in files[10:15]:
        f.unlink()
    (inbox / "new" / "1700000000.local1.host").write_bytes(b"Subject: from mbsync\r\nMessage-ID: <local1@x>\r\n\r\nhi\r\n")
    work = local / "Work"
    for d in ("cur", "new", "tmp"):
        (work / d).mkdir(parents=True)
    (work / "new" / "1700000001.local2.host").write_bytes(b"Subject: work\r\nMessage-ID: <local2@x>\r\n\r\nw\r\n")
    sync()
    # server-side changes: flag on the server, one more delivery
    m = imaplib.IMAP4("127.0.0.1", port)
    m.login(USER, "pw")
    m.select("INBOX")
    m.store("20", "+FLAGS", "(\\Answered)")
    m.logout()
    c = smtplib.LMTP("127.0.0.1", shim.port)
    c.sendmail("s@example.org", [USER], b"Subject: late\r\nMessage-ID: <late@x>\r\n\r\nlate\r\n")
    c.quit()
    sync()
    sync()  # a second pass changes nothing
    server, near = server_state(port), maildir_state(local)
    assert server["INBOX"] == near["INBOX"] and len(server["INBOX"]) == N - 5 + 2
    assert server["Work"] == near["Work"] == [(b"Message-ID: <local2@x>", b"")]


def test_offlineimap_both_ways(stack, tmp_path):
    shim, port = stack
    local = tmp_path / "oi"
    rc = tmp_path / "offlineimaprc"
    rc.write_text(f"""
[general]
accounts = ms
metadata = {tmp_path}/oi-meta
ui = quiet

[Account ms]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {local}

[Repository remote]
type = IMAP
remotehost = 127.0.0.1
remoteport = {port}
remoteuser = {USER}
remotepass = pw
ssl = no
starttls = no
folderfilter = lambda name: name in ["INBOX", "Offline"]
""")

    def sync() -> None:
        res = subprocess.run(["offlineimap", "-c", str(rc), "-o", "-u", "quiet"], capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]

    m = imaplib.IMAP4("127.0.0.1", port)
    m.login(USER, "pw")
    m.create("Offline")
    m.append("Offline", "(\\Flagged)", None, b"Subject: off\r\nMessage-ID: <off1@x>\r\n\r\noff\r\n")
    m.logout()
    sync()
    inbox = local / "INBOX"
    files = sorted((inbox / "cur").iterdir()) + sorted((inbox / "new").iterdir())
    before = len(files)
    assert before == len(server_state(port)["INBOX"])
    for f in files[:3]:  # read three, delete two
        f.rename(inbox / "cur" / (f.name.split(":2,")[0] + ":2,S"))
    for f in files[3:5]:
        f.unlink()
    (inbox / "new" / "1700000002.oi.host").write_bytes(b"Subject: from offlineimap\r\nMessage-ID: <oi1@x>\r\n\r\nx\r\n")
    sync()
    sync()
    server, near = server_state(port), maildir_state(local)
    assert server["INBOX"] == near["INBOX"] and len(server["INBOX"]) == before - 2 + 1
    assert server["Offline"] == near["Offline"] == [(b"Message-ID: <off1@x>", b"\\Flagged")]
