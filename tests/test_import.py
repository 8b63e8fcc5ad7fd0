"""`mailstore import`: from a real Dovecot CE over IMAP (aioimaplib), from a
Maildir and from an mbox; compared folder by folder over IMAP (Dovecot's
and ours): same folders, same bytes, same flags, same dates."""

from __future__ import annotations

import imaplib
import json
import mailbox
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from bench.lmtp import start_dovecot, stop_all
from conftest import BIN
from mailstore.importing import import_lock
from mailstore.sources import ImapUrl
from conftest import new_metadata
from mailstore.db import MetaStore
from test_lmtp import Shim

SRC, DST = "src@example.com", "dst@example.com"
FOLDERS = ["INBOX", "Sent", "Work", "Work.Projects", "Work.Projects.2026", "Caf&AOk-", "Archive"]
KEYWORDS = ["$Label1", "$Forwarded", "Important"]


def varied_message(i: int, rng: random.Random) -> bytes:
    kind = i % 5
    subject = f"message {i}"
    if kind == 0:  # plain ASCII
        return (f"From: a{i}@example.org\r\nTo: {SRC}\r\nSubject: {subject}\r\nMessage-ID: <m{i}@example.org>\r\n"
                f"Date: Mon, 2 Nov 2026 10:{i % 60:02d}:00 +0000\r\n\r\nplain body {i}\r\n").encode()
    if kind == 1:  # 8-bit body and a raw 8-bit header
        return (f"From: b{i}@example.org\r\nSubject: caf\u00e9 {i}\r\nMessage-ID: <m{i}@example.org>\r\n"
                "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
                f"\r\nGr\u00fc\u00dfe, \u00e7a va? {i}\r\n").encode()
    if kind == 2:  # MIME with an attachment
        m = EmailMessage()
        m["From"], m["Subject"], m["Message-ID"] = f"c{i}@example.org", subject, f"<m{i}@example.org>"
        m.set_content(f"see attached {i}")
        m.add_attachment(rng.randbytes(2000 + i * 10), maintype="application", subtype="octet-stream",
                         filename=f"f{i}.bin")
        return m.as_bytes(policy=m.policy.clone(linesep="\r\n"))
    if kind == 3:  # no Message-ID, folded header
        return (f"From: d{i}@example.org\r\nSubject: {subject}\r\n  continued\r\n\r\n" + "line\r\n" * (i % 40)).encode()
    return (f"From: e{i}@example.org\r\nSubject: {subject}\r\nMessage-ID: <m{i}@example.org>\r\n\r\n"
            + "x" * (i * 37 % 5000) + "\r\n").encode()


def random_flags(rng: random.Random) -> tuple[str, ...]:
    pool = ["\\Seen", "\\Flagged", "\\Answered", "\\Draft", *KEYWORDS]
    return tuple(f for f in pool if rng.random() < 0.3)


def imap_snapshot(port: int, user: str) -> dict[str, list[tuple[bytes, frozenset[str], str]]]:
    """Every folder (our names, "/" between levels): sorted (body, flags, INTERNALDATE)."""
    m = imaplib.IMAP4("127.0.0.1", port)
    m.login(user, "pw")
    typ, lines = m.list()
    out: dict[str, list[tuple[bytes, frozenset[str], str]]] = {}
    for line in lines:
        match = re.match(rb'\((?P<attrs>[^)]*)\) "(?P<d>.)" (?P<name>.+)$', line)  # type: ignore[arg-type]
        assert match, line
        if b"\\Noselect" in match.group("attrs"):
            continue
        wire = match.group("name").decode().strip('"')
        name = wire.replace(match.group("d").decode(), "/")
        typ, _ = m.select(f'"{wire}"', readonly=True)
        assert typ == "OK"
        typ, data = m.uid("FETCH", "1:*", "(FLAGS INTERNALDATE BODY.PEEK[])")
        items = []
        for part in data:
            if isinstance(part, tuple):
                head = part[0].decode()
                flags = frozenset(re.search(r"FLAGS \(([^)]*)\)", head).group(1).split()) - {"\\Recent"}  # type: ignore[union-attr]
                date = re.search(r'INTERNALDATE "([^"]+)"', head).group(1)  # type: ignore[union-attr]
                items.append((part[1], flags, date))
        out[name] = sorted(items, key=lambda t: (t[0], sorted(t[1]), t[2]))
    m.logout()
    return out


class Source:
    """A private Dovecot CE filled over IMAP."""

    def __init__(self, work: Path) -> None:
        (self.lmtp, self.port), self.conf = start_dovecot(work, [SRC], imap=True)
        self.work = work
        self.rng = random.Random(7)
        self.n = 0

    def client(self) -> imaplib.IMAP4:
        m = imaplib.IMAP4("127.0.0.1", self.port)
        m.login(SRC, "pw")
        return m

    def fill(self, folder: str, count: int, big: bool = False) -> None:
        m = self.client()
        m.create(folder)
        for _ in range(count):
            self.n += 1
            flags = random_flags(self.rng)
            date = imaplib.Time2Internaldate(1700000000 + self.n * 3607)
            m.append(folder, f"({' '.join(flags)})" if flags else None, date, varied_message(self.n, self.rng))
        if big:  # a 10 MB attachment
            msg = EmailMessage()
            msg["From"], msg["Subject"], msg["Message-ID"] = "big@example.org", "big one", "<big@example.org>"
            msg.set_content("ten megabytes attached")
            msg.add_attachment(self.rng.randbytes(10 * 1024 * 1024), maintype="application", subtype="zip",
                               filename="big.zip")
            m.append(folder, "(\\Seen)", None, msg.as_bytes(policy=msg.policy.clone(linesep="\r\n")))
        m.logout()

    def url(self) -> str:
        return f"imap://{SRC.replace('@', '%40')}:pw@127.0.0.1:{self.port}"

    def maildir(self, folder: str = "") -> Path:
        base = self.work / "dovecot" / "mail" / SRC / "Maildir"
        return base / f".{folder}" if folder else base

    def stop(self) -> None:
        stop_all([], self.conf, self.work / "nothing")


def run_import(shim: Shim, *args: str, user: str = DST) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    out = subprocess.run([str(BIN / "mailstore"), "import", *args, "--to", user, "--db", str(shim.db),
                          "--fs", shim.fs], capture_output=True, text=True, timeout=600)
    last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "{}"
    return out.returncode, json.loads(last), out.stderr


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def env(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    # Dovecot's unprivileged processes must reach their files: not under pytest's 0700 base
    work = Path(tempfile.mkdtemp(prefix="mailstore-import-"))
    source = Source(work)
    base = tmp_path_factory.mktemp("import")
    shim = Shim(base / "shim", metadata=new_metadata(request, base))
    shim.add_user(DST)
    proc, info = shim.start_imap()
    yield source, shim, info["port"]
    proc.send_signal(signal.SIGINT)
    proc.wait()
    shim.stop()
    source.stop()
    shutil.rmtree(work, ignore_errors=True)


def ours(snapshot: dict) -> dict:  # type: ignore[type-arg]
    """Our side without the folders we make for every user and the source lacks."""
    return {k: v for k, v in snapshot.items() if v or k not in ("Drafts", "Trash", "Junk", "Archive", "Sent")}


def dovecot_side(source: Source) -> dict:  # type: ignore[type-arg]
    return imap_snapshot(source.port, SRC)  # names as on the wire: Caf&AOk- on both sides


def test_imap_import_then_incremental_then_resume(env):
    source, shim, our_port = env
    for i, folder in enumerate(FOLDERS):
        source.fill(folder, [60, 40, 10, 30, 20, 25, 15][i], big=folder == "Work")
    code, summary, err = run_import(shim, "imap", "--from", source.url())
    assert code == 0, err
    total = summary["total"]
    assert total["copied"] == 201 and total["failed"] == {} and total["skipped"] == 0
    assert "folder" in err and "Work/Projects/2026" in err  # the per-folder report
    expected = dovecot_side(source)
    assert ours(imap_snapshot(our_port, DST)) == expected
    with imaplib.IMAP4("127.0.0.1", our_port) as m:  # special use kept, hierarchy mapped
        m.login(DST, "pw")
        listed = b"\n".join(m.list()[1])  # type: ignore[arg-type]
        assert b'(\\HasNoChildren \\Sent) "/" "Sent"' in listed and b'"/" "Work/Projects/2026"' in listed

    # flags changed and mail added on the source: only the difference moves
    m = source.client()
    m.select("INBOX")
    m.store("1:10", "+FLAGS", "(\\Flagged Important)")
    m.store("11:15", "-FLAGS", "(\\Seen)")
    m.logout()
    source.fill("INBOX", 5)
    source.fill("New.Folder", 3)
    code, summary, err = run_import(shim, "imap", "--from", source.url())
    assert code == 0, err
    assert summary["total"]["copied"] == 8 and summary["total"]["skipped"] == 201
    assert summary["total"]["flags_updated"] >= 5
    assert ours(imap_snapshot(our_port, DST)) == dovecot_side(source)

    # killed midway, then resumed: nothing missing, nothing twice. (300 messages and a 5 ms watch
    # on one connection: a run once finished 150 between two looks of the old 50 ms one.)
    source.fill("Bulk", 300)
    proc = subprocess.Popen([str(BIN / "mailstore"), "import", "imap", "--from", source.url(), "--to", DST,
                             "--db", str(shim.db), "--fs", shim.fs, "--connections", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    watch = MetaStore(shim.db).conn()
    while imported(shim, "Bulk", watch) < 40:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    watch.close()
    assert 40 <= imported(shim, "Bulk") < 300
    code, summary, err = run_import(shim, "imap", "--from", source.url())
    assert code == 0, err
    assert summary["folders"]["Bulk"]["copied"] + summary["folders"]["Bulk"]["skipped"] == 300
    assert ours(imap_snapshot(our_port, DST)) == dovecot_side(source)


def imported(shim: Shim, folder: str, conn=None) -> int:  # type: ignore[no-untyped-def]
    c = conn if conn is not None else MetaStore(shim.db).conn()  # either backend
    return c.execute("SELECT count(*) FROM import_map WHERE folder=?", (folder,)).fetchone()[0]  # type: ignore[no-any-return]


def test_uidvalidity_change_matches_by_message_id_and_size(env):
    source, shim, our_port = env
    source.fill("Renumbered", 12)
    code, summary, _ = run_import(shim, "imap", "--from", source.url())
    assert code == 0 and summary["folders"]["Renumbered"]["copied"] == 12
    # Dovecot renumbers a Maildir folder whose UID list is lost: new UIDVALIDITY, new UIDs
    for f in source.maildir("Renumbered").glob("dovecot*"):
        f.unlink()
    code, summary, err = run_import(shim, "imap", "--from", source.url())
    assert code == 0, err
    r = summary["folders"]["Renumbered"]
    without_id = sum(1 for i in range(source.n - 11, source.n + 1) if i % 5 == 3)  # kind 3 has no Message-ID
    assert r["skipped"] == 12 - without_id and r["copied"] == without_id


def test_maildir_import_of_dovecots_own_files(env):
    source, shim, our_port = env
    shim.add_user("maildir@example.com")
    code, summary, err = run_import(shim, "maildir", str(source.maildir()), user="maildir@example.com")
    assert code == 0, err
    src = dovecot_side(source)
    got = ours(imap_snapshot(our_port, "maildir@example.com"))
    assert got.keys() == src.keys()
    for name in src:  # Maildir carries bytes, flags and keywords; dates are the files' mtimes, as Dovecot's
        assert got[name] == src[name], name


def test_mbox_import_with_from_quoting_flags_and_bad_messages(env, tmp_path):
    source, shim, our_port = env
    box = mailbox.mbox(tmp_path / "old.mbox")
    plain = b"From: x@example.org\nSubject: quoted\nMessage-ID: <q@x>\n\nFrom the start of a line\nend\n"
    for data, status, xstatus in ((plain, "RO", "F"), (b"Subject: two\n\nsecond\n", "O", "A"),
                                  (b"Subject: big\n\n" + b"y" * 3000 + b"\n", "", "")):
        msg = mailbox.mboxMessage(data)
        msg.set_from("sender@example.org", time.gmtime(1700000000))
        if status:
            msg["Status"] = status
        if xstatus:
            msg["X-Status"] = xstatus
        box.add(msg)
    box.flush()
    shim.add_user("mbox@example.com")
    code, summary, err = run_import(shim, "mbox", str(tmp_path / "old.mbox"), "--folder", "Old", "--max-size", "2K",
                                    user="mbox@example.com")
    assert code == 1  # one message failed: reported, not fatal
    assert summary["folders"]["Old"] == {"copied": 2, "skipped": 0, "flags_updated": 0, "bytes": summary[
        "folders"]["Old"]["bytes"], "failed": {"over the size limit (2048 bytes)": 1}}
    got = imap_snapshot(our_port, "mbox@example.com")["Old"]
    bodies = {b.split(b"\r\n\r\n", 1)[1]: (flags, date) for b, flags, date in got}
    assert bodies[b"From the start of a line\r\nend\r\n"] == (  # written as ">From the start"
        frozenset({"\\Seen", "\\Flagged"}), "14-Nov-2023 22:13:20 +0000")
    assert bodies[b"second\r\n"][0] == frozenset({"\\Answered"})
    # again: nothing new
    code, summary, _ = run_import(shim, "mbox", str(tmp_path / "old.mbox"), "--folder", "Old", "--max-size", "2K",
                                  user="mbox@example.com")
    assert summary["folders"]["Old"]["copied"] == 0 and summary["folders"]["Old"]["skipped"] == 2


def test_quota_stops_the_import_unless_ignored(env, tmp_path):
    source, shim, our_port = env
    shim.add_user("small@example.com", "--quota", "20K")
    code, summary, err = run_import(shim, "imap", "--from", source.url(), "--connections", "1", user="small@example.com")
    assert code == 3 and "would go over quota" in err and "--ignore-quota" in err
    assert 0 < summary["total"]["copied"] < 50
    code, summary, err = run_import(shim, "maildir", str(source.maildir("Sent")), "--ignore-quota",
                                    user="small@example.com")
    assert code == 0, err


def test_hand_made_maildir_flags_keywords_and_malformed_messages(env, tmp_path):
    source, shim, our_port = env
    root = tmp_path / "Maildir"
    for d in ("cur", "new", "tmp", ".Lists.Python/cur", ".Lists.Python/new", ".Lists.Python/tmp"):
        (root / d).mkdir(parents=True)
    (root / "dovecot-keywords").write_text("0 $Label1\n1 Work\n")
    good = b"From: a@example.org\nSubject: flagged\n\nbody\n"
    (root / "cur" / "1700000000.1.host:2,FSab").write_bytes(good)
    (root / "cur" / "1700000001.2.host:2,RP").write_bytes(b"Subject: replied\n\nr\n")
    (root / "new" / "1700000002.3.host").write_bytes(b"Subject: new\n\nunseen, not yet in cur\n")
    (root / "cur" / "1700000003.4.host:2,S").write_bytes(b"Subject: nul\n\nbad \0 byte\n")
    (root / "cur" / "1700000004.5.host:2,").write_bytes(b"")
    (root / ".Lists.Python" / "cur" / "1700000005.6.host:2,S").write_bytes(b"Subject: py\n\nlist mail\n")
    for i, f in enumerate(sorted(root.rglob("*.host*"))):
        os.utime(f, (1700000000 + i * 86400, 1700000000 + i * 86400))
    shim.add_user("hand@example.com")
    code, summary, err = run_import(shim, "maildir", str(root), user="hand@example.com")
    assert code == 1  # two malformed messages: reported, skipped, the rest imported
    assert summary["folders"]["INBOX"]["copied"] == 3 and summary["folders"]["INBOX"]["failed"] == {
        "malformed: NUL bytes": 1, "malformed: empty message": 1}
    assert summary["folders"]["Lists/Python"]["copied"] == 1
    assert "malformed: NUL bytes" in err
    snap = imap_snapshot(our_port, "hand@example.com")
    inbox = {body.split(b"\r\n", 1)[0]: flags for body, flags, _ in snap["INBOX"]}
    assert inbox == {b"From: a@example.org": frozenset({"\\Flagged", "\\Seen", "$Label1", "Work"}),
                     b"Subject: replied": frozenset({"\\Answered", "$Forwarded"}),
                     b"Subject: new": frozenset()}
    assert snap["INBOX"][0][0].endswith(b"\r\n") and b"\n" not in snap["INBOX"][0][0].replace(b"\r\n", b"")
    assert len(snap["Lists/Python"]) == 1


def test_ctrl_c_and_a_gateway_restart_midway_then_resume(env):
    source, shim, our_port = env
    source.fill("Outage", 120)
    # one import per user and source at a time
    lock = import_lock(MetaStore(shim.db), DST, ImapUrl.parse(source.url()).id)  # a flock, or PostgreSQL's
    assert lock.acquire()
    code, _, err = run_import(shim, "imap", "--from", source.url())
    lock.release()
    assert code == 75 and "another import" in err
    cmd = [str(BIN / "mailstore"), "import", "imap", "--from", source.url(), "--to", DST, "--db", str(shim.db),
           "--fs", shim.fs, "--connections", "1"]
    # Ctrl-C: the run stops, says how to resume, and still reports what it did
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while imported(shim, "Outage") < 10:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "run the same command again to resume" in err
    assert json.loads(out.strip().splitlines()[-1])["folders"]["Outage"]["copied"] >= 10
    # the gateway restarts under a running import: what could not be stored is reported, not lost
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start = imported(shim, "Outage")
    while imported(shim, "Outage") < start + 10:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    assert shim.gateway is not None
    shim.gateway.stop()
    time.sleep(1.0)
    shim.start_gateway()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, 1), err  # 1: some messages failed on storage, reported
    code, summary, err = run_import(shim, "imap", "--from", source.url())
    assert code == 0, err
    assert imported(shim, "Outage") == 120
    assert ours(imap_snapshot(our_port, DST))["Outage"] == dovecot_side(source)["Outage"]
