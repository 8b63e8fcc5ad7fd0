"""Sieve at LMTP delivery (issue 21), side by side with Dovecot CE's LMTP running Pigeonhole:
the same script for a user on both servers, the same messages delivered over LMTP, then every
folder's messages (subject and flags, over IMAP) compared.

Two differences of Dovecot's LMTP that are not Sieve's are kept out of the scripts: it adds a
Received header (ours adds Return-Path and Delivered-To only), so `size` thresholds sit well clear
of that, and it gives the script the recipient without its +detail, where RFC 5228 and 5233 ask
for the RCPT TO address (envelope :detail is compared with sieve-test in test_sieve.py)."""

from __future__ import annotations

import imaplib
import os
import pwd
import re
import shutil
import smtplib
import tempfile
from pathlib import Path

import pytest

from bench.lmtp import start_dovecot, stop_all
from conftest import mailstore
from test_lmtp import DOMAIN, Shim

MESSAGES = [
    ("alice+news@example.com", "Subject: [list] weekly news\r\nFrom: Alice <alice+news@example.com>\r\n"
                               "To: bob@example.com\r\n\r\nnews body\r\n"),
    ("spammer@example.net", "Subject: cheap stuff\r\nFrom: spammer@example.net\r\nX-Spam: yes\r\n\r\nbuy\r\n"),
    ("carol@example.org", "Subject: lunch?\r\nFrom: Carol <carol@example.org>\r\nTo: bob@example.com\r\n"
                          "Cc: dave@example.com, erin@example.com\r\n\r\nunsubscribe? no, lunch\r\n"),
    ("dave@example.com", "Subject: Re: [LIST] weekly news\r\nFrom: dave@example.com\r\n\r\n" + "long line\r\n" * 50),
]

SCRIPTS = [
    'require ["fileinto", "imap4flags", "variables"];\n'
    'if header :matches "subject" "*[list]*" { fileinto :flags "\\\\Seen" "Lists"; stop; }\n'
    'if exists "x-spam" { discard; stop; }\n'
    'if address :domain :is "from" "example.org" { addflag "\\\\Flagged"; }\n',

    'require ["fileinto", "copy", "mailbox", "envelope"];\n'
    'if envelope :is "from" "carol@example.org" { fileinto :create "Work"; }\n'
    'if header :contains "subject" "lunch" { fileinto :copy "Social"; }\n'  # (no such folder: kept in INBOX)
    'if size :over 500 { fileinto "Junk"; }\n',

    'require ["fileinto", "relational", "comparator-i;ascii-numeric", "body"];\n'
    'if address :count "ge" :comparator "i;ascii-numeric" ["to", "cc"] "3" { fileinto "Crowd"; }\n'
    'elsif body :text :contains "buy" { fileinto "Junk"; }\n'
    'else { keep; }\n',

    'require ["fileinto", "variables", "mailbox"];\n'
    'if header :matches "from" "*<*@*>*" { set "who" "${2}"; fileinto :create "People/${who}"; }\n',
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):  # type: ignore[no-untyped-def]
    users = [f"s{n}@{DOMAIN}" for n in range(len(SCRIPTS))]
    work = Path(tempfile.mkdtemp(prefix="mailstore-sievediff-"))  # (Dovecot's mail user must reach it)
    (lmtp_port, imap_port), conf = start_dovecot(work, users, imap=True, like_ours=True, sieve=True)
    mail = pwd.getpwnam("mail")
    shim = Shim(tmp_path_factory.mktemp("sievediff"))
    imap, info = shim.start_imap()
    try:
        for user, script in zip(users, SCRIPTS, strict=True):
            home = work / "dovecot" / "mail" / user
            home.mkdir(parents=True, exist_ok=True)
            (home / ".dovecot.sieve").write_text(script)
            for p in (home, home / ".dovecot.sieve"):
                os.chown(p, mail.pw_uid, mail.pw_gid)
            shim.add_user(user)
            f = shim.base / f"{user}.sieve"
            f.write_text(script)
            mailstore("sieve", "put", "--db", str(shim.db), user, "main", str(f), "--activate")
        yield {"dovecot": (lmtp_port, imap_port), "ours": (shim.port, int(info["port"])), "users": users}
    finally:
        imap.terminate()
        imap.wait(timeout=30)
        shim.stop()
        stop_all([], conf, work)
        shutil.rmtree(work, ignore_errors=True)


def folders(port: int, user: str) -> dict[str, list[tuple[str, str]]]:
    """Every folder with messages: (subject, flags without \\Recent), sorted."""
    m = imaplib.IMAP4("127.0.0.1", port)
    m.login(user, "pw")
    out: dict[str, list[tuple[str, str]]] = {}
    for line in m.list()[1]:
        name = line.decode().rsplit(' "/" ', 1)[-1].strip('"')
        typ, count = m.select(f'"{name}"', readonly=True)
        if typ != "OK" or count[0] in (b"0", None):
            continue
        got = []
        typ, data = m.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        if typ != "OK":
            continue
        for item in data:
            if isinstance(item, tuple):
                flags = re.search(rb"FLAGS \(([^)]*)\)", item[0]).group(1).decode()  # type: ignore[union-attr]
                flags = " ".join(sorted(f for f in flags.split() if f != "\\Recent"))
                got.append((item[1].decode().strip(), flags))
        if got:
            out[name] = sorted(got)
    m.logout()
    return out


@pytest.mark.parametrize("n", range(len(SCRIPTS)))
def test_delivery_files_as_dovecot(servers, n):
    user = servers["users"][n]
    replies = {}
    for name in ("dovecot", "ours"):
        lmtp_port = servers[name][0]
        with smtplib.LMTP("127.0.0.1", lmtp_port) as lmtp:
            got = []
            for sender, text in MESSAGES:
                got.append(lmtp.sendmail(sender, [user], text.encode()))
            replies[name] = got
    assert replies["ours"] == replies["dovecot"] == [{}] * len(MESSAGES)
    theirs = folders(servers["dovecot"][1], user)
    ours = folders(servers["ours"][1], user)
    assert ours == theirs, SCRIPTS[n]


def test_reject_discard_failures_and_the_command_line(tmp_path):
    """Ours alone: reject answers 550 5.7.1 with the reason; discard stores nothing; a script
    that fails at run time, and one that redirects (not carried out yet), keep the message in
    INBOX; `mailstore sieve` keeps only scripts that compile, one active, the active one not
    deleted."""
    shim = Shim(tmp_path / "shim")
    user = f"cli@{DOMAIN}"
    shim.add_user(user)
    imap, info = shim.start_imap()

    def put(name: str, script: str, *extra: str) -> object:
        f = tmp_path / f"{name}.sieve"
        f.write_text(script)
        return mailstore("sieve", "put", "--db", str(shim.db), user, name, str(f), *extra, check=False)

    def deliver(subject: str) -> object:
        with smtplib.LMTP("127.0.0.1", shim.port) as lmtp:
            try:
                return lmtp.sendmail("a@example.com", [user], f"Subject: {subject}\r\n\r\nbody\r\n".encode())
            except smtplib.SMTPDataError as exc:
                return exc.smtp_code, exc.smtp_error

    try:
        bad = put("bad", 'fileinto "x";')
        assert bad.returncode == 1 and "unknown command 'fileinto'" in bad.stderr  # type: ignore[attr-defined]
        assert put("main", 'require ["reject", "regex", "variables"];\n'
                   'if header :contains "subject" "no" { reject text:\nnot here,\nsorry\n.\n; }\n'
                   'if header :contains "subject" "drop" { discard; }\n'
                   'if header :contains "subject" "far" { redirect "else@example.com"; }\n'
                   'if header :contains "subject" "regex" {\n'
                   '  set "r" "["; if header :regex "subject" "${r}" { discard; } }\n',  # (a bad regex at run time)
                   "--activate").returncode == 0  # type: ignore[attr-defined]
        assert deliver("no thanks") == (550, b"5.7.1 not here, sorry")
        assert deliver("drop me") == {}
        assert deliver("go far") == {}  # kept: redirect is not carried out yet
        assert deliver("regex breaks") == {}  # an invalid regex fails at run time: kept
        m = imaplib.IMAP4("127.0.0.1", int(info["port"]))
        m.login(user, "pw")
        m.select("INBOX", readonly=True)
        subjects = sorted(d[1].decode().strip() for d in m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[1]
                          if isinstance(d, tuple))
        assert subjects == ["Subject: go far", "Subject: regex breaks"]
        m.logout()
        listed = [line for line in mailstore("sieve", "list", "--db", str(shim.db), user).stdout.splitlines()]
        assert listed == ['{"name": "main", "active": true}']
        refused = mailstore("sieve", "delete", "--db", str(shim.db), user, "main", check=False)
        assert refused.returncode == 1 and "Active script" in refused.stderr
        mailstore("sieve", "deactivate", "--db", str(shim.db), user)
        mailstore("sieve", "delete", "--db", str(shim.db), user, "main")
        assert deliver("no thanks") == {}  # no script: delivered
    finally:
        imap.terminate()
        imap.wait(timeout=30)
        shim.stop()
