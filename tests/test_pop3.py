"""POP3 (issue 21): the same sessions against Dovecot CE's pop3d and ours, answer by answer;
the maildrop lock across two servers; UIDLs that hold across sessions and servers; DELE and
RETR as IMAP sees them afterwards; and a real client (fetchmail) that downloads and leaves
nothing behind."""

from __future__ import annotations

import base64
import imaplib
import json
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from bench.lmtp import start_dovecot, stop_all
from conftest import BIN
from test_lmtp import DOMAIN, Shim

USER = f"pop@{DOMAIN}"
MULTILINE = {"CAPA", "LIST", "UIDL", "RETR", "TOP", "AUTH"}  # (LIST and UIDL without an argument; AUTH without one)


class Pop:
    """A raw POP3 client: a command, and its whole answer as bytes (multi-line when the command
    and its +OK say so)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.f = self.sock.makefile("rb")
        self.greeting = self.f.readline()

    def cmd(self, line: str) -> bytes:
        self.sock.sendall(line.encode() + b"\r\n")
        first = self.f.readline()
        name, _, arg = line.partition(" ")
        multi = name.upper() in MULTILINE and first.startswith(b"+OK") and not (
            name.upper() in ("LIST", "UIDL") and arg) and not (name.upper() == "AUTH" and arg)
        if not multi:
            return first
        out = first
        while True:
            piece = self.f.readline()
            out += piece
            if piece == b".\r\n" or not piece:
                return out

    def close(self) -> None:
        self.f.close()
        self.sock.close()


def start_pop3(shim: Shim, *extra: str) -> tuple[subprocess.Popen, int]:  # type: ignore[type-arg]
    log = open(shim.base / f"pop3-{time.monotonic_ns()}.log", "w")
    proc = subprocess.Popen([str(BIN / "mailstore"), "pop3", "--db", str(shim.db), "--fs", shim.fs, "--listen",
                             "127.0.0.1:0", "--domain", DOMAIN, *extra], stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    return proc, int(json.loads(proc.stdout.readline())["port"])


MESSAGES = [
    b"From: a@example.com\r\nTo: pop@example.com\r\nSubject: one\r\n\r\nfirst line\r\n.a line with a dot\r\n"
    b"..two dots\r\n.\r\nlast\r\n",
    b"From: b@example.com\r\nSubject: two\r\nX-Long: " + b"x" * 300 + b"\r\n\r\n" + b"body line\r\n" * 40,
    b"Subject: three\r\n\r\nno final newline",
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):  # type: ignore[no-untyped-def]
    """Dovecot CE (IMAP and POP3, the maildrop lock on) and ours, each with USER holding
    MESSAGES, appended over IMAP so both store the same bytes."""
    work = Path(tempfile.mkdtemp(prefix="mailstore-pop3diff-"))  # (Dovecot's mail user must reach it)
    (_, dovecot_imap), conf = start_dovecot(work, [USER], imap=True, pop3=True)
    dovecot_pop3 = int((work / "dovecot" / "pop3.port").read_text())
    shim = Shim(tmp_path_factory.mktemp("pop3diff"))
    shim.add_user(USER)
    imap, info = shim.start_imap()
    pop3, port = start_pop3(shim)
    try:
        for imap_port in (dovecot_imap, int(info["port"])):
            m = imaplib.IMAP4("127.0.0.1", imap_port)
            m.login(USER, "pw")
            for body in MESSAGES:
                m.append("INBOX", None, None, body)
            m.logout()
        yield {"dovecot": dovecot_pop3, "ours": port, "shim": shim, "imap": int(info["port"]),
               "dovecot_imap": dovecot_imap}
    finally:
        for p in (imap, pop3):
            p.terminate()
            p.wait(timeout=30)
        shim.stop()
        stop_all([], conf, work)


def normal(answer: bytes) -> bytes:
    """What may differ between the two servers: the greeting's name, and the UIDVALIDITY half of
    each UIDL (Dovecot's %08Xu%08Xv on mailboxes made at different times)."""
    answer = re.sub(rb"^\+OK .* ready\.\r\n$", b"+OK ready.\r\n", answer)
    return re.sub(rb"\b([0-9a-f]{8})[0-9a-f]{8}\b", rb"\1<uidvalidity>", answer)


def both(servers, script: list[str]) -> None:  # type: ignore[no-untyped-def]
    clients = {name: Pop(servers[name]) for name in ("dovecot", "ours")}
    try:
        assert normal(clients["ours"].greeting) == normal(clients["dovecot"].greeting)
        for line in script:
            theirs, ours = clients["dovecot"].cmd(line), clients["ours"].cmd(line)
            assert normal(ours) == normal(theirs), (line, theirs, ours)
            if b"Too many" in theirs:
                assert clients["ours"].f.read() == b""  # hung up, as Dovecot does
                break
    finally:
        for c in clients.values():
            c.close()


def test_sessions_answer_as_dovecot(servers):
    plain = base64.b64encode(f"\0{USER}\0pw".encode()).decode()
    both(servers, ["CAPA", "AUTH", "XYZ", "STAT", "LIST", "USER"])  # the 4th refused command: "Too many", closed
    both(servers, ["USER", "PASS pw", "NOOP", "APOP x y", "QUIT"])
    both(servers, ["USER " + USER, "PASS pw", "CAPA", "STAT", "LIST", "LIST 2", "LIST 9", "LIST x", "LIST 1 2",
                   "UIDL", "UIDL 3", "UIDL 0", "TOP 1 0", "TOP 1 2", "TOP 2 1", "TOP 3 5", "TOP 1", "TOP 1 x",
                   "TOP 9 1", "RETR 1", "RETR 2", "RETR 3", "RETR 4", "DELE 1", "DELE 1", "RETR 1", "LIST 1",
                   "UIDL 1", "STAT", "LIST", "UIDL", "RSET", "STAT", "USER x", "PASS y", "FOO", "NOOP", "QUIT"])
    both(servers, ["AUTH PLAIN " + plain, "STAT", "UIDL", "TOP 1 1", "RETR 2", "QUIT"])
    # what the sessions left: what RETR sent is \Seen at QUIT, unless RSET came after it
    flags = {}
    for name, port in (("dovecot", servers["dovecot_imap"]), ("ours", servers["imap"])):
        m = imaplib.IMAP4("127.0.0.1", port)
        m.login(USER, "pw")
        m.select("INBOX")
        flags[name] = sorted(re.sub(rb" ?\\Recent", b"", d) for d in m.fetch("1:*", "(FLAGS)")[1] if d)
        m.store("1:*", "-FLAGS", "(\\Seen)")
        m.logout()
    assert flags["ours"] == flags["dovecot"] == [b"1 (FLAGS ())", b"2 (FLAGS (\\Seen))", b"3 (FLAGS ())"]


def test_expunged_meanwhile_and_pipelining_as_dovecot(servers):
    """A message expunged over IMAP during a POP3 session, and commands sent all at once."""
    clients = {name: Pop(servers[name]) for name in ("dovecot", "ours")}
    imaps = {"dovecot": servers["dovecot_imap"], "ours": servers["imap"]}
    answers: dict[str, list[bytes]] = {"dovecot": [], "ours": []}
    try:
        for name, c in clients.items():
            c.cmd(f"USER {USER}")
            c.cmd("PASS pw")
            m = imaplib.IMAP4("127.0.0.1", imaps[name])
            m.login(USER, "pw")
            m.select("INBOX")
            m.append("INBOX", None, None, b"Subject: soon gone\r\n\r\nbye\r\n")
            m.store("1", "+FLAGS", "(\\Deleted)")
            m.expunge()
            m.logout()
            for line in ("STAT", "RETR 1", "TOP 1 0", "DELE 1", "RETR 2", "QUIT"):
                answers[name].append(normal(c.cmd(line)))
        assert answers["ours"] == answers["dovecot"]
        assert answers["ours"][1] == b"-ERR Message 1 expunged.\r\n"
    finally:
        for c in clients.values():
            c.close()
    piped = {}
    for name in ("dovecot", "ours"):
        s = socket.create_connection(("127.0.0.1", servers[name]), timeout=30)
        f = s.makefile("rb")
        f.readline()
        s.sendall(f"USER {USER}\r\nPASS pw\r\nSTAT\r\nUIDL 1\r\nLIST 1\r\nQUIT\r\n".encode())
        piped[name] = normal(f.read())
        f.close()
        s.close()
    assert piped["ours"] == piped["dovecot"] and piped["ours"].count(b"+OK") == 6


def test_lock_uidl_dele_and_seen(servers):
    """One session per user, also across two servers on one database (two hosts); UIDLs the
    same everywhere; DELE takes effect at QUIT only, as IMAP then sees; RETR marks \\Seen."""
    shim: Shim = servers["shim"]
    m = imaplib.IMAP4("127.0.0.1", servers["imap"])  # (what the tests before left: nothing \Seen)
    m.login(USER, "pw")
    m.select("INBOX")
    m.store("1:*", "-FLAGS", "(\\Seen)")
    m.logout()
    other, other_port = start_pop3(shim)
    try:
        first = Pop(servers["ours"])
        assert first.cmd(f"USER {USER}") == b"+OK\r\n" and first.cmd("PASS pw") == b"+OK Logged in.\r\n"
        uidl = first.cmd("UIDL")
        for port in (servers["ours"], other_port):
            second = Pop(port)
            second.cmd(f"USER {USER}")
            assert second.cmd("PASS pw") == b"-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n"
            second.close()
        size = int(first.cmd("LIST 2").split()[2])
        first.cmd("RETR 2")
        first.cmd("DELE 3")
        first.close()  # no QUIT: nothing changes, the lock goes with the session
        time.sleep(0.5)
        again = Pop(other_port)
        again.cmd(f"USER {USER}")
        assert again.cmd("PASS pw") == b"+OK Logged in.\r\n"
        assert again.cmd("UIDL") == uidl  # the same UIDLs in another session on another server
        assert again.cmd("STAT").startswith(b"+OK 3 ")
        again.cmd("RETR 2")
        assert again.cmd("DELE 3") == b"+OK Marked to be deleted.\r\n"
        assert again.cmd("QUIT") == b"+OK Logging out, messages deleted.\r\n"
        again.close()
        m = imaplib.IMAP4("127.0.0.1", servers["imap"])
        m.login(USER, "pw")
        m.select("INBOX")
        typ, data = m.fetch("1:*", "(UID FLAGS RFC822.SIZE)")
        rows = [d for d in data if d]
        assert len(rows) == 2 and b"\\Seen" in rows[1] and b"\\Seen" not in rows[0]
        assert f"RFC822.SIZE {size}".encode() in rows[1]
        m.logout()
        last = Pop(servers["ours"])
        last.cmd(f"USER {USER}")
        last.cmd("PASS pw")
        assert last.cmd("UIDL") == b"\r\n".join(uidl.split(b"\r\n")[:3]) + b"\r\n.\r\n"
        last.cmd("QUIT")
    finally:
        other.terminate()
        other.wait(timeout=30)


def test_fetchmail_downloads_and_leaves_nothing(tmp_path):
    shim = Shim(tmp_path / "shim")
    user = f"fm@{DOMAIN}"
    shim.add_user(user)
    pop3, port = start_pop3(shim)
    try:
        import smtplib
        with smtplib.LMTP("127.0.0.1", shim.port) as lmtp:
            for i in range(5):
                lmtp.sendmail("a@example.com", [user], f"Subject: fetch {i}\r\n\r\nbody {i}\r\n.line\r\n".encode())
        out = tmp_path / "out"
        out.mkdir()
        rc = tmp_path / "fetchmailrc"
        rc.write_text(f'poll 127.0.0.1 service {port} protocol pop3 uidl auth password:\n'
                      f'  user "{user}" password "pw" is root here\n'
                      f'  mda "/bin/sh -c \'cat > {out}/msg.$$\'" nokeep sslproto ""\n')
        rc.chmod(0o600)
        done = subprocess.run(["fetchmail", "-f", str(rc), "--nodetach", "--nosyslog", "-i", str(tmp_path / "ids"),
                               "--pidfile", str(tmp_path / "fm.pid")], capture_output=True, text=True,
                              timeout=120, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, done.stdout + done.stderr
        got = sorted(p.read_bytes() for p in out.iterdir())
        assert len(got) == 5 and all(b"\n.line\n" in g or b"\r\n.line\r\n" in g for g in got)
        again = subprocess.run(["fetchmail", "-f", str(rc), "--nodetach", "--nosyslog", "-i", str(tmp_path / "ids"),
                                "--pidfile", str(tmp_path / "fm.pid")], capture_output=True, text=True,
                               timeout=120, env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
        assert again.returncode == 1, again.stdout + again.stderr  # 1: no mail
        assert shim.rows(user) == []  # nothing left behind
    finally:
        pop3.terminate()
        pop3.wait(timeout=30)
        shim.stop()


def test_imported_uidls_are_kept(tmp_path):
    """A Maildir whose dovecot-uidlist keeps POP3 UIDLs (P fields, as a migration from another POP3
    server leaves them) and an mbox whose messages carry X-UIDL: POP3 clients see the same UIDLs
    after `mailstore import`, and after a reindex from the bucket (the object keeps its UIDL)."""
    from conftest import mailstore

    shim = Shim(tmp_path / "shim")
    user = f"moved@{DOMAIN}"
    shim.add_user(user)
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "cur" / "1700000000.M1P1.host:2,S").write_bytes(b"Subject: a\n\nkept a\n")
    (maildir / "cur" / "1700000001.M2P2.host:2,").write_bytes(b"Subject: b\n\nkept b\n")
    (maildir / "new" / "1700000002.M3P3.host").write_bytes(b"Subject: c\n\nno uidl of its own\n")
    (maildir / "dovecot-uidlist").write_text("3 V1700000000 N4 G0123\n1 P0b1f4e7a11 :1700000000.M1P1.host\n"
                                             "2 W30 Puidl-from-old-server :1700000001.M2P2.host:2,\n")
    mailstore("import", "maildir", "--db", shim.db, "--fs", shim.fs, "--to", user, "--quiet", str(maildir))
    mbox = tmp_path / "mbox"
    mbox.write_bytes(b"From a@b Mon Jan  1 00:00:00 2024\nX-UIDL: mbox-uidl-1\nSubject: d\n\nfrom the mbox\n\n")
    mailstore("import", "mbox", "--db", shim.db, "--fs", shim.fs, "--to", user, "--quiet", str(mbox))
    pop3, port = start_pop3(shim)
    try:
        def uidls() -> list[str]:
            p = Pop(port)
            p.cmd(f"USER {user}")
            assert p.cmd("PASS pw") == b"+OK Logged in.\r\n"
            lines = p.cmd("UIDL").decode().split("\r\n")[1:-2]
            p.cmd("QUIT")
            p.close()
            return [line.split(" ", 1)[1] for line in lines]

        got = uidls()
        kept = {"0b1f4e7a11", "uidl-from-old-server", "mbox-uidl-1"}  # (imported in parallel: in any order)
        assert len(got) == 4 and kept <= set(got)
        (made,) = set(got) - kept  # no UIDL of its own: the usual one
        assert re.fullmatch(r"0000000[1-4][0-9a-f]{8}", made)
        mailstore("reindex", "--db", shim.db, "--fs", shim.fs, user)
        assert uidls() == got
    finally:
        pop3.terminate()
        pop3.wait(timeout=30)
        shim.stop()


def test_stls_and_mail_crypt(tmp_path):
    """STLS with a real certificate (poplib), and a mail-crypt: store: the POP3 login opens the
    user's key, RETR serves the plaintext of what is stored encrypted."""
    import poplib
    import smtplib
    import ssl

    from conftest import make_tls_cert, mailstore
    cert, key = make_tls_cert(tmp_path)
    shim = Shim(tmp_path / "shim", outer="mail-crypt:")
    user = f"tls@{DOMAIN}"
    mailstore("user", "add", "--db", shim.db, "--fs", shim.fs, user, "--password", "pw")
    pop3, port = start_pop3(shim, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        with smtplib.LMTP("127.0.0.1", shim.port) as lmtp:
            lmtp.sendmail("a@example.com", [user], b"Subject: sealed\r\n\r\nonly the user reads this\r\n")
        p = poplib.POP3("127.0.0.1", port)
        assert "STLS" in p.capa()
        ctx = ssl.create_default_context(cafile=str(cert))
        p.stls(ctx)
        assert "STLS" not in p.capa()  # (not twice)
        p.user(user)
        p.pass_("pw")
        lines = p.retr(1)[1]
        assert lines[-1] == b"only the user reads this"
        p.quit()
    finally:
        pop3.terminate()
        pop3.wait(timeout=30)
        shim.stop()
