"""Sieve at LMTP delivery (issue 21), side by side with Dovecot CE's LMTP running Pigeonhole:
the same script for a user on both servers, the same messages delivered over LMTP, then every
folder's messages (subject and flags, over IMAP) compared, and every redirect and vacation reply
each server submitted (caught by an SMTP sink standing in for the relay) compared.

Two differences of Dovecot's LMTP that are not Sieve's are kept out of the scripts: it adds a
Received header (ours adds Return-Path and Delivered-To only), so `size` thresholds sit well clear
of that, and it gives the script the recipient without its +detail, where RFC 5228 and 5233 ask
for the RCPT TO address (envelope :detail is compared with sieve-test in test_sieve.py)."""

from __future__ import annotations

import email.header
import imaplib
import os
import pwd
import re
import shutil
import smtplib
import tempfile
from pathlib import Path

import pytest
from conftest import mailstore
from test_lmtp import DOMAIN, Shim, free_port, wait_for

from bench.lmtp import start_dovecot, stop_all

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

    'require ["include", "variables", "imap4flags"];\n'  # (RFC 6609: INCLUDED below, on both servers)
    'global "tag";\n'
    'include :once "spam";\ninclude :personal "lists";\ninclude :once "spam";\ninclude :optional "missing";\n'
    'if string :is "${tag}" "other" { addflag "\\\\Flagged"; }\n'
    'if string :is "${global.tag}" "list" { addflag "$Listed"; keep; }\n',
]
# Every user's other scripts, for `include`: in ~/sieve on Dovecot, stored beside the active one on ours.
INCLUDED = {
    "spam": 'if exists "x-spam" { discard; stop; }\n',
    "lists": 'require ["fileinto", "mailbox", "variables", "include"];\nglobal "tag";\n'
             'if header :matches "subject" "*[list]*" { fileinto :create "Lists"; set "tag" "list"; return; }\n'
             'set "tag" "other";\n',
}


# Scripts that send: each user's script, then the messages each user is sent ({me}: the user).
OUTBOUND = [
    'require "vacation";\nvacation :days 3 :addresses ["other@example.com"] "I am away.";\n',
    'require ["vacation"];\nvacation :subject "Abwesend: Müller" :from "Boss <boss@example.com>" '
    ':handle "h1" text:\nBack on Monday.\r\nGrüße\n.\n;\n',
    'require ["copy", "fileinto"];\nredirect "first@example.net";\n'
    'if header :contains "subject" "copy" { redirect :copy "second@example.net"; fileinto "Junk"; }\n',
    'require ["vacation"];\nvacation :mime "Content-Type: text/plain; charset=us-ascii\r\n\r\nMIME away\r\n";\n',
]
SENT = [
    ("x@example.org", "From: X <x@example.org>\r\nTo: {me}\r\nSubject: hello there\r\n"
                      "Message-ID: <m1@example.org>\r\nReferences: <m0@example.org>\r\n\r\nbody\r\n"),
    ("x@example.org", "From: X <x@example.org>\r\nTo: {me}\r\nSubject: again, copy\r\nMessage-ID: <m2@example.org>"
                      "\r\n\r\nbody\r\n"),
    ("y@example.org", "From: Y <y@example.org>\r\nTo: {me}\r\nSubject: list\r\nList-Id: <l.example.org>\r\n\r\nb\r\n"),
    ("z@example.org", "From: Z <z@example.org>\r\nTo: someone@example.com\r\nSubject: bcc\r\n\r\nb\r\n"),
    ("z@example.org", "From: Z <z@example.org>\r\nTo: other@example.com\r\nSubject: alt address\r\n\r\nb\r\n"),
    ("", "From: W <w@example.org>\r\nTo: {me}\r\nSubject: bounce\r\n\r\nbody\r\n"),
    ("q@example.org", "From: Q <q@example.org>\r\nTo: {me}\r\nSubject: prec\r\nPrecedence: bulk\r\n\r\nb\r\n"),
    ("a@example.org", "From: A <a@example.org>\r\nCc: {me}\r\nSubject: auto\r\nAuto-Submitted: auto-replied\r\n\r\nb\r\n"),
    ("{me}", "From: Me <{me}>\r\nTo: {me}\r\nSubject: self\r\n\r\nbody\r\n"),
    ("owner-list@example.org", "From: O <o@example.org>\r\nTo: {me}\r\nSubject: owner\r\n\r\nbody\r\n"),
    ("b@example.org", "From: b@example.org\r\nTo: {me}\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\r\nbody\r\n"),
    ("c@example.org", "From: C <c@example.org>\r\nTo: {me}\r\n\r\nno subject\r\n"),
]


class Sink:
    """An SMTP server standing in for the submission relay: keeps what it is given."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.got: list[tuple[str, list[str], bytes]] = []
        self.controller = Controller(self, hostname="127.0.0.1", port=free_port())
        self.controller.start()
        self.address = f"127.0.0.1:{self.controller.port}"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        self.got.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):  # type: ignore[no-untyped-def]
    users = [f"s{n}@{DOMAIN}" for n in range(len(SCRIPTS))] + [f"o{n}@{DOMAIN}" for n in range(len(OUTBOUND))]
    work = Path(tempfile.mkdtemp(prefix="mailstore-sievediff-"))  # (Dovecot's mail user must reach it)
    sinks = {"dovecot": Sink(), "ours": Sink()}
    (lmtp_port, imap_port), conf = start_dovecot(work, users, imap=True, like_ours=True, sieve=True,
                                                 submission=sinks["dovecot"].address)
    mail = pwd.getpwnam("mail")
    shim = Shim(tmp_path_factory.mktemp("sievediff"), lmtp_args=("--submission", sinks["ours"].address))
    imap, info = shim.start_imap()
    try:
        for user, script in zip(users, SCRIPTS + OUTBOUND, strict=True):
            home = work / "dovecot" / "mail" / user
            (home / "sieve").mkdir(parents=True, exist_ok=True)
            (home / ".dovecot.sieve").write_text(script)
            shim.add_user(user)
            for name, text in INCLUDED.items():
                (home / "sieve" / f"{name}.sieve").write_text(text)
                f = shim.base / f"{name}.sieve"
                f.write_text(text)
                mailstore("sieve", "put", "--db", str(shim.db), user, name, str(f))
            for p in (home, home / "sieve", home / ".dovecot.sieve", *(home / "sieve").iterdir()):
                os.chown(p, mail.pw_uid, mail.pw_gid)
            f = shim.base / f"{user}.sieve"
            f.write_text(script)
            mailstore("sieve", "put", "--db", str(shim.db), user, "main", str(f), "--activate")
        yield {"dovecot": (lmtp_port, imap_port), "ours": (shim.port, int(info["port"])), "users": users,
               "sinks": sinks}
    finally:
        for sink in sinks.values():
            sink.controller.stop()
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
    that fails at run time, and one that redirects with no submission relay configured, keep the
    message in INBOX; `mailstore sieve` keeps only scripts that compile, one active, the active one not
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
        assert deliver("go far") == {}  # kept: no relay to redirect through
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
        assert refused.returncode == 1 and "Cannot delete the active Sieve script" in refused.stderr
        mailstore("sieve", "deactivate", "--db", str(shim.db), user)
        mailstore("sieve", "delete", "--db", str(shim.db), user, "main")
        assert deliver("no thanks") == {}  # no script: delivered
    finally:
        imap.terminate()
        imap.wait(timeout=30)
        shim.stop()


def _sent(got: list[tuple[str, list[str], bytes]]) -> list[tuple[str, list[str], list[str], str]]:
    """What a server submitted, without what differs by design: the X-Sieve banner, generated
    Message-ID and Date, and the trace headers each LMTP adds (Received; Return-Path, Delivered-To).
    Encoded words are decoded (the two encoders choose B or Q differently)."""
    out = []
    for mail_from, rcpts, data in got:
        head, _, body = data.replace(b"\r\n", b"\n").partition(b"\n\n")
        fields = re.split(rb"\n(?![ \t])", head)
        kept = []
        for f in fields:
            name, _, value = f.decode().partition(":")
            if name.lower() in ("x-sieve", "message-id", "date", "received", "delivered-to", "return-path"):
                continue
            value = " ".join(value.split())
            if name.lower() in ("subject", "from"):
                value = str(email.header.make_header(email.header.decode_header(value)))
            kept.append(f"{name}: {value}")
        out.append((mail_from, rcpts, kept, body.decode()))
    return sorted(out)


@pytest.mark.parametrize("n", range(len(OUTBOUND)))
def test_redirects_and_vacation_replies_as_dovecot(servers, n):
    """Every message both servers sent on the script's behalf (to the relay), and the folders."""
    user = servers["users"][len(SCRIPTS) + n]
    for name in ("dovecot", "ours"):
        sink = servers["sinks"][name]
        sink.got.clear()
        with smtplib.LMTP("127.0.0.1", servers[name][0]) as lmtp:
            for sender, text in SENT:
                assert lmtp.sendmail(sender.format(me=user), [user], text.format(me=user).encode()) == {}
    theirs = _sent(servers["sinks"]["dovecot"].got)
    assert theirs, "Dovecot sent nothing"
    assert _sent(servers["sinks"]["ours"].got) == theirs, OUTBOUND[n]
    assert folders(servers["ours"][1], user) == folders(servers["dovecot"][1], user)


class RefusingSink(Sink):
    """A relay that answers 451 to every message while `refuse` is set."""

    refuse = True

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        if self.refuse:
            return "451 4.3.0 try later"
        return await super().handle_DATA(server, session, envelope)


def test_redirect_is_sent_once_and_kept_when_the_relay_refuses(tmp_path):
    """Ours alone: a relay that refuses the redirect leaves the message in INBOX (nothing lost);
    the same message delivered again (as an MTA retries) is forwarded once, not twice."""
    sink = RefusingSink()
    shim = Shim(tmp_path / "shim", lmtp_args=("--submission", sink.address))
    user = f"fwd@{DOMAIN}"
    shim.add_user(user)
    f = tmp_path / "fwd.sieve"
    f.write_text('redirect "away@example.net";\n')
    mailstore("sieve", "put", "--db", str(shim.db), user, "fwd", str(f), "--activate")
    text = b"Subject: forward me\r\nMessage-ID: <once@example.org>\r\n\r\nbody\r\n"
    try:
        with smtplib.LMTP("127.0.0.1", shim.port) as lmtp:
            assert lmtp.sendmail("a@example.org", [user], text) == {}
            assert [r[0] for r in shim.rows(user)] == ["INBOX"] and sink.got == []
            sink.refuse = False
            for _ in range(2):
                assert lmtp.sendmail("a@example.org", [user], text) == {}
        assert [(g[0], g[1]) for g in sink.got] == [("a@example.org", ["away@example.net"])]
        assert sink.got[0][2].startswith(b"X-Sieve: mailstore Sieve\r\nX-Sieve-Redirected-From: fwd@example.com\r\n"
                                         b"Delivered-To: fwd@example.com\r\nSubject: forward me")
        assert [r[0] for r in shim.rows(user)] == ["INBOX"]  # the two later copies went away only
        log = (tmp_path / "shim" / "lmtp.log").read_text()
        assert "redirect failed; message kept in INBOX" in log and "discarded duplicate forward" in log
    finally:
        shim.stop()
        sink.controller.stop()


def test_vacation_and_redirect_through_a_real_postfix(tmp_path):
    """Ours with a private Postfix as the submission relay (as the appliance's [mail] submission
    names the local Postfix): mail sent through Postfix to a user on vacation brings the sender
    (a user here too) one reply, delivered back through Postfix over LMTP; a redirect to a user
    here arrives the same way, marked with who forwarded it."""
    from test_lmtp import Postfix

    smtp_port = free_port()
    shim = Shim(tmp_path / "shim", lmtp_args=("--submission", f"127.0.0.1:{smtp_port}"))
    mta = Postfix(shim.port, smtp_port)
    away, fwd, bob = (f"{n}@{DOMAIN}" for n in ("away", "fwd", "bob"))
    try:
        for user, script in ((away, 'require "vacation";\nvacation :days 1 "Back on Monday.";\n'),
                             (fwd, f'redirect "{bob}";\n'), (bob, None)):
            shim.add_user(user)
            if script:
                f = tmp_path / f"{user}.sieve"
                f.write_text(script)
                mailstore("sieve", "put", "--db", str(shim.db), user, "s", str(f), "--activate")
        with smtplib.SMTP("127.0.0.1", mta.smtp_port) as s:
            for n in range(2):
                s.sendmail(bob, [away, fwd], (f"From: Bob <{bob}>\r\nTo: {away}, {fwd}\r\nSubject: plans {n}\r\n"
                                              f"Message-ID: <plans-{n}@example.com>\r\n\r\nlunch?\r\n").encode())
        # bob gets one vacation reply (the second message is a duplicate) and both forwards
        assert wait_for(lambda: len(shim.rows(bob)) == 3, 60), mta.maillog()[-3000:]
        imap, info = shim.start_imap()
        try:
            m = imaplib.IMAP4("127.0.0.1", int(info["port"]))
            m.login(bob, "pw")
            m.select("INBOX", readonly=True)
            heads = [d[1].decode() for d in m.fetch("1:*", "(BODY.PEEK[HEADER])")[1] if isinstance(d, tuple)]
            m.logout()
        finally:
            imap.terminate()
            imap.wait(timeout=30)
        replies = [h for h in heads if "Auto-Submitted: auto-replied (vacation)" in h]
        forwards = [h for h in heads if f"X-Sieve-Redirected-From: {fwd}" in h]
        assert len(replies) == 1 and len(forwards) == 2, heads
        assert "Return-Path: <>" in replies[0] and "Subject: Auto: plans 0" in replies[0]
        assert f"From: <{away}>" in replies[0] and "In-Reply-To: <plans-0@example.com>" in replies[0]
        assert all(f"Return-Path: <{bob}>" in h and "Received: from " in h for h in forwards)
    finally:
        mta.stop()
        shim.stop()
