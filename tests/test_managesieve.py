"""ManageSieve (RFC 5804, issue 21), side by side with Dovecot CE's managesieved (Pigeonhole):
the same conversations, byte for byte, sent to both, and every response compared after taking
out what names the server (IMPLEMENTATION, the greeting's words, the SIEVE extension list, which
is checked on its own, and NOTIFY/MAXREDIRECTS, for extensions we do not have). LISTSCRIPTS is
compared as a set: Dovecot lists in directory order.

Then a real client, sieve-connect (Debian), uploads, activates and fetches a script, and LMTP
runs it; STARTTLS with a real certificate; scripts on one store reach every host."""

from __future__ import annotations

import base64
import json
import re
import select
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import BIN, mailstore, make_tls_cert
from test_sieve import CORPUS

from bench.lmtp import start_dovecot, stop_all
from mailstore.db import MetaStore
from mailstore.sieve.checks import EXTENSIONS

DOMAIN = "example.com"


def lit(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return b"{%d+}\r\n" % len(data) + data


def plain(user: str, password: str = "pw") -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


def read_response(f, challenge: bool = False) -> bytes:  # type: ignore[no-untyped-def]
    """Lines up to the OK, NO or BYE that ends a response, literals read whole (`challenge`: or
    a SASL challenge, a string alone on its line)."""
    out = []
    while True:
        line = f.readline()
        if not line:
            return b"".join(out) + b"<EOF>"
        out.append(line)
        m = re.search(rb"\{(\d+)\+?\}\r\n$", line)
        if m:
            out.append(f.read(int(m.group(1))))
            if re.match(rb"(OK|NO|BYE)\b", line):
                out.append(f.readline())
                return b"".join(out)
            continue
        if re.match(rb"(OK|NO|BYE)\b", line) or (challenge and re.fullmatch(rb'"[^"]*"\r\n', line)):
            return b"".join(out)


def talk(port: int, commands: list[bytes]) -> list[str]:
    """The greeting and each command's response, normalised (see the module's words)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        f = s.makefile("rb")
        got = [read_response(f)]
        for c in commands:
            try:
                s.sendall(c)
                got.append(read_response(f, challenge=c.upper() == b'AUTHENTICATE "PLAIN"\r\n'))
            except OSError:  # the server hung up
                got.append(b"<EOF>")
    return [normalise(r) for r in got]


def normalise(r: bytes) -> str:
    text = r.decode("utf-8", "replace")
    lines = [line for line in text.split("\r\n")
             if not re.match(r'"(IMPLEMENTATION|SIEVE|NOTIFY|MAXREDIRECTS)"', line)]
    text = "\r\n".join(lines).replace("Dovecot (Debian) ready.", "mailstore ready.")
    if text.endswith('OK "Listscripts completed."\r\n'):
        text = "\r\n".join(sorted(text.split("\r\n")))
    return text


@pytest.fixture(scope="module")
def servers(tmp_path_factory):  # type: ignore[no-untyped-def]
    users = [f"m{n}@{DOMAIN}" for n in range(8)]
    work = Path(tempfile.mkdtemp(prefix="mailstore-managesieve-"))  # (Dovecot's mail user must reach it)
    _, conf = start_dovecot(work, users, managesieve=True)
    theirs = int((work / "dovecot" / "managesieve.port").read_text())
    base = tmp_path_factory.mktemp("managesieve")
    db = base / "meta.db"
    MetaStore(str(db))  # (made, migrated)
    for u in users:
        mailstore("user", "add", "--db", str(db), u, "--password", "pw")
    log = open(base / "managesieve.log", "w")
    proc = subprocess.Popen([str(BIN / "mailstore"), "managesieve", "--db", str(db), "--listen", "127.0.0.1:0",
                             "--domain", DOMAIN], stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert proc.stdout is not None
        ours = json.loads(proc.stdout.readline())["port"]
        yield {"dovecot": theirs, "ours": ours, "users": users, "db": db, "base": base}
    finally:  # (Dovecot is stopped whatever ours does)
        try:
            proc.terminate()
            proc.wait(timeout=30)
        finally:
            log.close()
            stop_all([], conf, work)
            shutil.rmtree(work, ignore_errors=True)


def side_by_side(servers, commands: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    theirs = talk(servers["dovecot"], commands)
    ours = talk(servers["ours"], commands)
    for c, t, o in zip([b"(greeting)", *commands], theirs, ours, strict=True):
        assert o == t, c


def test_capabilities(servers):
    """The SIEVE list is what our interpreter runs, every one of it an extension Pigeonhole has."""
    def caps(port: int) -> dict[str, str]:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
            text = read_response(s.makefile("rb")).decode()
        return {m.group(1): m.group(2) for m in re.finditer(r'^"([A-Z]+)"(?: "([^"]*)")?\r$', text, re.M)}

    ours, theirs = caps(servers["ours"]), caps(servers["dovecot"])
    assert ours["SIEVE"].split() == list(EXTENSIONS)
    assert set(ours["SIEVE"].split()) - {"ereject"} <= set(theirs["SIEVE"].split())  # (0.5.19 lacks ereject)
    assert ours["SASL"] == theirs["SASL"] == "PLAIN" and ours["VERSION"] == theirs["VERSION"] == "1.0"


def test_before_login(servers):
    user = servers["users"][0]
    side_by_side(servers, [b"CAPABILITY\r\n", b"LISTSCRIPTS\r\n", b"FOO\r\n", b'PUTSCRIPT "a" "keep;"\r\n',
                           b"NOOP\r\n"])  # (the third invalid command before a login: BYE)
    side_by_side(servers, [
        b"NOOP\r\n", b'NOOP "x"\r\n', b"STARTTLS\r\n", b'AUTHENTICATE "LOGIN"\r\n', b'AUTHENTICATE "PLAIN"\r\n',
        b"{%d+}\r\n" % len(plain(user)) + plain(user) + b"\r\n", b"CAPABILITY\r\n", b"LOGOUT\r\n",
    ])
    # (After a failed or aborted AUTHENTICATE, Dovecot fails the next ones at once: not compared.)
    side_by_side(servers, [b'AUTHENTICATE "PLAIN"\r\n', b'"*"\r\n', b"LOGOUT\r\n"])
    side_by_side(servers, [b'AUTHENTICATE "PLAIN" "' + plain(user, "wrong") + b'"\r\n', b"LOGOUT\r\n"])


def test_script_management(servers):
    user = servers["users"][1]
    side_by_side(servers, [
        b'AUTHENTICATE "PLAIN" "' + plain(user) + b'"\r\n',
        b"CAPABILITY\r\n", b"LISTSCRIPTS\r\n",
        b'PUTSCRIPT "a" ' + lit('require "fileinto";\r\nkeep;\r\nfoo;\r\nif true {\r\n') + b"\r\n",
        b'PUTSCRIPT "a" ' + lit('require "fileinto";\r\nkeep;\r\n') + b"\r\n",
        b"CHECKSCRIPT " + lit("if true {\r\n}\r\n") + b"\r\n",
        b'CHECKSCRIPT "keep;"\r\n', b'CHECKSCRIPT "fileinto \\"x\\"; bar;"\r\n',
        b'HAVESPACE "a" 1000\r\n', b'HAVESPACE "a" 100000000\r\n', b'HAVESPACE "a" x\r\n',
        b"LISTSCRIPTS\r\n", b'SETACTIVE ""\r\n', b'SETACTIVE "a"\r\n', b'SETACTIVE "a"\r\n', b'SETACTIVE "zz"\r\n',
        b"LISTSCRIPTS\r\n", b'GETSCRIPT "a"\r\n', b'GETSCRIPT "b"\r\n', b'DELETESCRIPT "a"\r\n',
        b'RENAMESCRIPT "a" "b"\r\n', b'PUTSCRIPT "c" "discard;"\r\n', b'RENAMESCRIPT "c" "b"\r\n',
        b'RENAMESCRIPT "zz" "y"\r\n', b"LISTSCRIPTS\r\n", b'SETACTIVE ""\r\n', b'DELETESCRIPT "b"\r\n',
        b'DELETESCRIPT "b"\r\n', b'PUTSCRIPT "bad\\\\name \\"q\\"" "keep;"\r\n', b'PUTSCRIPT "" "keep;"\r\n',
        b'PUTSCRIPT "u" ' + lit('require "vacation";\r\nvacation "x";\r\nredirect "a@b.c";\r\n') + b"\r\n",
        b'PUTSCRIPT "utf-8 \xc3\xa9" ' + lit("# caf\u00e9\r\nkeep;\r\n") + b"\r\n", b"LISTSCRIPTS\r\n",
        b'GETSCRIPT "utf-8 \xc3\xa9"\r\n',
        b"NOOP\r\n", b'NOOP "tag"\r\n', b"FOO\r\n", b"PUTSCRIPT\r\n", b'PUTSCRIPT "x" "keep;" "extra"\r\n',
        b"GETSCRIPT a\r\n", b'getscript "u"\r\n', b"STARTTLS\r\n", b'AUTHENTICATE "PLAIN" "x"\r\n',
        b"LOGOUT\r\n",
    ])


def test_include_at_upload(servers):
    """RFC 6609's include, return and global as Pigeonhole checks them at upload: a personal
    script that does not exist is a warning (it may come later), :global is unavailable (no
    global scripts here), names and location tags are checked, a global may not follow a local."""
    user = servers["users"][4]

    def put(name: str, text: str) -> bytes:
        return f'PUTSCRIPT "{name}" '.encode() + lit(text) + b"\r\n"

    side_by_side(servers, [
        b'AUTHENTICATE "PLAIN" "' + plain(user) + b'"\r\n',
        put("main", 'require "include";\r\ninclude :personal "other";\r\nkeep;\r\n'),
        put("m2", 'require "include";\r\ninclude :optional "other";\r\n'),
        put("m3", 'require "include";\r\ninclude :global "g";\r\n'),
        put("m4", 'require "include";\r\ninclude :once :optional "x";\r\nreturn;\r\n'),
        put("m5", 'require ["include", "variables"];\r\nglobal "a";\r\nset "a" "1";\r\ninclude "m5";\r\n'),
        put("m6", 'require ["include"];\r\nglobal "a";\r\ninclude "bad/name";\r\ninclude "";\r\n'),
        put("m7", 'require ["include"];\r\ninclude :personal :global "x";\r\ninclude "a" "b";\r\nreturn "x";\r\n'),
        put("m8", 'require ["include", "variables"];\r\nset "x" "y";\r\nglobal "x";\r\n'),
        put("other", 'require "fileinto";\r\nfileinto "X";\r\n'),
        put("main", 'require "include";\r\ninclude :personal "other";\r\nkeep;\r\n'),
        b"CHECKSCRIPT " + lit('require "include";\r\ninclude :personal "other";\r\nkeep;\r\n') + b"\r\n",
        put("bad", "foo;\r\n"), put("m9", 'require "include";\r\ninclude "bad";\r\n'),
        b'SETACTIVE "main"\r\n', b'DELETESCRIPT "other"\r\n', b'RENAMESCRIPT "m2" "a/b"\r\n',
        put("a/b", "keep;\r\n"), b"LISTSCRIPTS\r\n", b"LOGOUT\r\n",
    ])


def test_errors_of_every_corpus_script(servers):
    """PUTSCRIPT and CHECKSCRIPT of every script of the sievec corpus (tests/sieve): the same
    verdict, and the same error literal (lines, words, and the stage that failed)."""
    user = servers["users"][2]
    commands = [b'AUTHENTICATE "PLAIN" "' + plain(user) + b'"\r\n']
    for script in CORPUS:  # (one name: each that compiles replaces the last)
        text = script.replace("\r\n", "\n").replace("\n", "\r\n")
        commands += [b'PUTSCRIPT "s" ' + lit(text) + b"\r\n", b"CHECKSCRIPT " + lit(text) + b"\r\n"]
    side_by_side(servers, [*commands, b"LISTSCRIPTS\r\n", b"LOGOUT\r\n"])


def test_sieve_connect_uploads_and_lmtp_runs_it(servers, tmp_path):
    """A real client: sieve-connect uploads, lists, activates and downloads a script; LMTP (on
    the same metadata) then files by it."""
    assert shutil.which("sieve-connect"), "sieve-connect is installed by ./dev"
    user = servers["users"][3]
    script = tmp_path / "filter.sieve"
    script.write_text('require ["fileinto", "mailbox"];\nif header :contains "subject" "[ci]" '
                      '{ fileinto :create "CI"; }\n')
    pw = tmp_path / "pw"
    pw.write_text("pw\n")

    def sc(*args: str) -> subprocess.CompletedProcess[str]:
        with open(pw) as stdin:
            return subprocess.run(["sieve-connect", "--server", "127.0.0.1", "--port", str(servers["ours"]),
                                   "--user", user, "--notlsverify", "--nosslverify", "--passwordfd", "0",
                                   "--authmech", "PLAIN", *args], stdin=stdin, capture_output=True, text=True,
                                  timeout=60)

    up = sc("--upload", "--localsieve", str(script), "--remotesieve", "ci")
    assert up.returncode == 0, up.stderr
    assert sc("--activate", "--remotesieve", "ci").returncode == 0
    listed = sc("--list")
    assert listed.returncode == 0 and listed.stdout.splitlines() == ['"ci" ACTIVE'], listed.stdout
    down = tmp_path / "down.sieve"
    got = sc("--download", "--remotesieve", "ci", "--localsieve", str(down))
    assert got.returncode == 0 and down.read_text() == script.read_text()
    bad = tmp_path / "bad.sieve"
    bad.write_text("fileinto \"x\";\n")
    refused = sc("--upload", "--localsieve", str(bad), "--remotesieve", "bad")
    assert refused.returncode != 0 and "unknown command 'fileinto'" in refused.stdout + refused.stderr
    import smtplib

    from test_lmtp import Shim  # LMTP on the same metadata runs the script sieve-connect activated
    shim = Shim(tmp_path / "shim", metadata=str(servers["db"]))
    try:
        with smtplib.LMTP("127.0.0.1", shim.port) as lmtp:
            assert lmtp.sendmail("a@example.org", [user], b"Subject: [ci] green\r\n\r\nok\r\n") == {}
        assert [r[0] for r in shim.rows(user)] == ["CI"]
    finally:
        shim.stop()


def test_starttls_and_throttle(tmp_path):
    """STARTTLS with a real certificate: the capabilities again after it (RFC 5804 §2.2), without
    STARTTLS; a login through it. Failed logins are throttled and logged for fail2ban."""
    cert, key = make_tls_cert(tmp_path)
    db = tmp_path / "meta.db"
    MetaStore(str(db))  # (made, migrated)
    mailstore("user", "add", "--db", str(db), f"t@{DOMAIN}", "--password", "pw")
    log = tmp_path / "ms.log"
    proc = subprocess.Popen([str(BIN / "mailstore"), "managesieve", "--db", str(db), "--listen", "127.0.0.1:0",
                             "--domain", DOMAIN, "--tls-cert", str(cert), "--tls-key", str(key), "--log-file",
                             str(log)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = json.loads(proc.stdout.readline())["port"]
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
            f = s.makefile("rb")
            assert b'"STARTTLS"\r\n' in read_response(f)
            s.sendall(b"STARTTLS\r\n")
            assert read_response(f) == b'OK "Begin TLS negotiation now."\r\n'
            ctx = ssl.create_default_context(cafile=str(cert))
            with ctx.wrap_socket(s, server_hostname="localhost") as t:
                tf = t.makefile("rb")
                again = read_response(tf)
                assert b'"SASL" "PLAIN"' in again and b"STARTTLS" not in again
                t.sendall(b'AUTHENTICATE "PLAIN" "' + plain(f"t@{DOMAIN}") + b'"\r\n')
                assert read_response(tf) == b'OK "Logged in."\r\n'
                t.sendall(b"LOGOUT\r\n")
                assert read_response(tf) == b'OK "Logout completed."\r\n'
        # Twelve wrong passwords at once: each waits for the one before it (a growing pause);
        # past eight waiting, the rest are refused at once (without looking at the password).
        # Which connection gets which answer is the server's order: the answers are counted.
        socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(12)]
        for s in socks:
            read_response(s.makefile("rb"))
            s.sendall(b'AUTHENTICATE "PLAIN" "' + plain(f"t@{DOMAIN}", "nope") + b'"\r\n')
        answers: dict[socket.socket, bytes] = {}
        failed, later = b'NO "Authentication failed."\r\n', b'NO (TRYLATER) "Too many login attempts; try again later."\r\n'

        def enough() -> bool:
            got = list(answers.values())
            return got.count(failed) >= 1 and got.count(later) >= 3

        deadline = time.monotonic() + 20  # (the first answers at once, the refused at once, then 1 s, 2 s...)
        while time.monotonic() < deadline and not enough():
            ready, _, _ = select.select([s for s in socks if s not in answers], [], [], 0.5)
            for s in ready:
                answers[s] = s.recv(4096)
        for s in socks:
            s.close()
        assert enough(), sorted(answers.values())
        assert set(answers.values()) <= {failed, later}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert "service=managesieve" in text and "reason=password" in text and "reason=throttled" in text


def test_what_a_careless_or_hostile_client_sends(tmp_path):
    """Ours alone (no reference needed for refusing garbage): each answer is a precise NO or BYE,
    never a traceback, and the server keeps serving the next client."""
    db = tmp_path / "meta.db"
    MetaStore(str(db))  # (made, migrated)
    user = f"h@{DOMAIN}"
    mailstore("user", "add", "--db", str(db), user, "--password", "pw")
    log = tmp_path / "ms.log"
    proc = subprocess.Popen([str(BIN / "mailstore"), "managesieve", "--db", str(db), "--listen", "127.0.0.1:0",
                             "--domain", DOMAIN, "--log-file", str(log)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = json.loads(proc.stdout.readline())["port"]
        auth = b'AUTHENTICATE "PLAIN" "' + plain(user) + b'"\r\n'
        got = talk(port, [b'AUTHENTICATE "PLAIN" "%%%not base64"\r\n', b'AUTHENTICATE "PLAIN" "' +
                          base64.b64encode(b"no separators") + b'"\r\n', auth,
                          b'PUTSCRIPT "bin" {4+}\r\n\xff\xfe\x00k\r\n', b'PUTSCRIPT "nul\x01" "keep;"\r\n',
                          b'HAVESPACE "a" 99999999999\r\n', b'GETSCRIPT "' + b"x" * 600 + b'"\r\n',
                          b'RENAMESCRIPT "a" ""\r\n', b"\x00\xff garbage\r\n", b'PUTSCRIPT "unterminated\r\n',
                          b"LOGOUT\r\n"])
        assert got[1:] == [
            'NO "Invalid base64 data in continued response."\r\n',
            'NO "Invalid base64 data in continued response."\r\n',
            'OK "Logged in."\r\n',
            'NO "Script is not valid UTF-8."\r\n',
            "NO \"Invalid Sieve script name `nul\x01'.\"\r\n",
            'NO "Error in MANAGESIEVE command HAVESPACE: Invalid arguments."\r\n',
            'NO (NONEXISTENT) "Sieve script `' + "x" * 600 + "' not found\"\r\n",
            'NO "Invalid new Sieve script name `\'."\r\n',
            'NO "Error in MANAGESIEVE command : Unknown command."\r\n',
            'NO "Error in MANAGESIEVE command PUTSCRIPT: Invalid arguments."\r\n',
            'OK "Logout completed."\r\n']
        # a literal larger than any script, and a line longer than any command: BYE, and closed
        assert talk(port, [auth, b'PUTSCRIPT "big" {99999999+}\r\n'])[2] == 'BYE "Literal too large."\r\n'
        assert talk(port, [b"NOOP " + b"x" * 20000 + b"\r\n"])[1].startswith("BYE ")
        assert talk(port, [auth, b"LISTSCRIPTS\r\n"])[2].strip() == 'OK "Listscripts completed."'  # still serving
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert "Traceback" not in text and "failed" not in text.replace("login failed", "")
