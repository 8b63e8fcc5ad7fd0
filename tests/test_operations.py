"""Running the appliance as an operator does (issue 18): `mailstore init` and the systemd units'
own command lines, TLS from mailstore.toml with a renewed certificate taken on reload, and
the command-line traps, each with its message and exit code."""

from __future__ import annotations

import email.message
import hashlib
import imaplib
import json
import os
import shlex
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from appliance.config import default_text
from conftest import BIN, ROOT, make_tls_cert, mailstore
from test_appliance import free_ports

UNITS = sorted((ROOT / "packaging" / "systemd").glob("mailstore-*.service"))
PORT_NAMES = ("s3", "gw1", "gw2", "stats", "lmtp", "imap", "lmtp_metrics", "imap_metrics", "dashboard", "postgres")


def write_config(data: Path, extra: dict[str, str] | None = None) -> dict[str, int]:
    """DATA_DIR/mailstore.toml on free ports; `extra`: lines replaced (key = value), as an operator edits."""
    ports = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES))))
    text = default_text(ports).replace("interval = 5 ", "interval = 1 ")
    for old, new in (extra or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    (data / "mailstore.toml").write_text(text)
    (data / "mailstore.toml").chmod(0o600)
    return ports


class Units:
    """The units' ExecStart lines, run by hand as systemd would (paths moved to the test's)."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def command(self, line: str, instance: str = "") -> list[str]:
        line = line.replace("/opt/mailstore/venv/bin/mailstore", str(BIN / "mailstore"))
        line = line.replace("/var/lib/mailstore", str(self.data)).replace("%i", instance)
        return shlex.split(line)

    def start_all(self) -> None:
        for path in UNITS:
            text = path.read_text()
            start = next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("ExecStart="))
            for instance in (("1", "2") if "@" in path.name else ("",)):
                name = path.name.replace(".service", "").replace("@", instance)
                log = open(self.data.parent / f"{name}.out", "w")  # noqa: SIM115
                proc = subprocess.Popen(self.command(start, instance), stdout=subprocess.PIPE, stderr=log,
                                        text=True)
                self.procs[name] = proc
                if "haproxy" not in name:
                    assert proc.stdout is not None
                    line = proc.stdout.readline()
                    assert json.loads(line)["event"] == "listening", (name, self.log(name))

    def log(self, name: str) -> str:
        return (self.data.parent / f"{name}.out").read_text()

    def reload(self, name: str) -> None:
        """The unit's ExecReload lines, $MAINPID being the process started (exec: the part itself)."""
        path = next(p for p in UNITS if p.name == f"{name}.service")
        for line in path.read_text().splitlines():
            if line.startswith("ExecReload="):
                cmd = line.split("=", 1)[1].replace("$MAINPID", str(self.procs[name].pid))
                subprocess.run(self.command(cmd), check=True, timeout=60)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT if "gateway" in str(proc.args) else signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def fingerprint(der: bytes | None) -> str:
    assert der
    return hashlib.sha256(der).hexdigest()


def served_certificates(ports: dict[str, int], https: int, imaps: int) -> dict[str, str]:
    """What each TLS place serves now: HTTPS, IMAPS, IMAP STARTTLS, LMTP STARTTLS."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    seen = {}
    for name, port in (("https", https), ("imaps", imaps)):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as s:
            seen[name] = fingerprint(s.getpeercert(binary_form=True))
    m = imaplib.IMAP4("127.0.0.1", ports["imap"])
    m.starttls(ctx)
    seen["imap starttls"] = fingerprint(m.sock.getpeercert(binary_form=True))  # type: ignore[union-attr]
    m.logout()
    lmtp = smtplib.LMTP("127.0.0.1", ports["lmtp"], timeout=10)
    lmtp.ehlo("test")
    lmtp.starttls(context=ctx)
    seen["lmtp starttls"] = fingerprint(lmtp.sock.getpeercert(binary_form=True))  # type: ignore[union-attr]
    lmtp.quit()
    return seen


def test_init_then_the_systemd_units_serve_mail_s3_and_tls_and_take_a_renewed_certificate(tmp_path):
    data = tmp_path / "var-lib-mailstore"
    cert, key = make_tls_cert(tmp_path / "tls")
    https, imaps = free_ports(2)
    ports = write_config(data, {'https = ""': f'https = "127.0.0.1:{https}"',
                                'imaps = ""': f'imaps = "127.0.0.1:{imaps}"',
                                'cert = ""': f'cert = "{cert}"', 'key = ""': f'key = "{key}"'})
    made = mailstore("init", "--data-dir", str(data)).stdout
    assert "made: admin key" in made and "made: bucket mail" in made and "made: secrets.json" in made
    again = mailstore("init", "--data-dir", str(data)).stdout  # idempotent: nothing new, nothing replaced
    assert "made:" not in again and "kept: admin key" in again
    for f in ("secrets.json", "shim-fs.url", "mailstore.toml", "meta.db", "engine/master.key"):
        assert oct((data / f).stat().st_mode & 0o777) == "0o600", f
    for d in ("", "engine", "logs", "run", "cache"):
        assert oct((data / d).stat().st_mode & 0o777) == "0o700", d
    sec = json.loads((data / "secrets.json").read_text())
    mailstore("user", "add", "--data-dir", str(data), "ann@example.com", "--password", "pw")
    units = Units(data)
    try:
        units.start_all()
        # mail in over LMTP with STARTTLS, out over IMAPS
        ctx = ssl.create_default_context(cafile=str(cert))
        msg = email.message.EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "bob@example.org", "ann@example.com", "by the units"
        msg.set_content("hello\n")
        lmtp = smtplib.LMTP("127.0.0.1", ports["lmtp"], timeout=30)
        lmtp.ehlo("test")
        lmtp.starttls(context=ctx)
        assert lmtp.send_message(msg) == {}
        lmtp.quit()
        m = imaplib.IMAP4_SSL("127.0.0.1", imaps, ssl_context=ctx)
        m.login("ann@example.com", "pw")
        m.select("INBOX")
        typ, got = m.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK" and b"by the units" in got[0][1]  # type: ignore[index]
        m.logout()
        # S3 over HTTPS through the units' HAProxy, with the admin key `init` made
        deadline = time.monotonic() + 30
        s3 = boto3.client("s3", endpoint_url=f"https://127.0.0.1:{https}", verify=str(cert),
                          aws_access_key_id=sec["admin"]["access_key"],
                          aws_secret_access_key=sec["admin"]["secret_key"], region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
        while True:
            try:
                listed = s3.list_objects_v2(Bucket="mail")
                break
            except Exception:
                assert time.monotonic() < deadline, units.log("mailstore-haproxy")
                time.sleep(0.2)
        assert listed["KeyCount"] == 1 and "/ann@example.com/" in listed["Contents"][0]["Key"]
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['dashboard']}/login") as r:
            assert r.status == 200
        # lines in the journal (stderr) and a copy in DATA_DIR/logs
        assert "delivered" in (data / "logs" / "lmtp.log").read_text()
        assert "delivered" in units.log("mailstore-lmtp")
        # the certificate renewed in place, then `systemctl reload` of the units
        before = served_certificates(ports, https, imaps)
        assert len(set(before.values())) == 1
        fresh_cert, fresh_key = make_tls_cert(tmp_path / "renewed")
        shutil.copy(fresh_cert, cert)
        shutil.copy(fresh_key, key)
        for name in ("mailstore-imap", "mailstore-lmtp", "mailstore-haproxy"):
            units.reload(name)
        deadline = time.monotonic() + 30
        want = fingerprint(ssl.PEM_cert_to_DER_cert(fresh_cert.read_text()))
        while set((after := served_certificates(ports, https, imaps)).values()) != {want}:
            assert time.monotonic() < deadline, after
            time.sleep(0.2)
        assert "certificate reloaded" in (data / "logs" / "imap.log").read_text()
    finally:
        units.stop()


def test_a_unit_refuses_a_directory_init_did_not_make(tmp_path):
    out = mailstore("part", "lmtp", "--data-dir", str(tmp_path / "nothing"), check=False)
    assert out.returncode == 2 and "mailstore init --data-dir" in out.stderr and "Traceback" not in out.stderr


# ------------------------------------------------------------------ command-line traps

@pytest.fixture(scope="module")
def appliance_dir(tmp_path_factory):  # type: ignore[no-untyped-def]
    data = tmp_path_factory.mktemp("ops") / "data"
    write_config(data)
    mailstore("init", "--data-dir", str(data))
    return data


def test_admin_commands_find_the_engine_in_the_appliance_directory(appliance_dir):
    keys = [json.loads(line) for line in mailstore("key", "list", "--data-dir", str(appliance_dir)).stdout.splitlines()]
    sec = json.loads((appliance_dir / "secrets.json").read_text())
    assert sec["admin"]["access_key"] in {k["AccessKeyId"] for k in keys}
    assert mailstore("bucket", "list", "--data-dir", str(appliance_dir)).stdout.split() == ["mail"]
    assert mailstore("bucket", "list", "--data-dir", str(appliance_dir / "engine")).stdout.split() == ["mail"]
    assert mailstore("user", "list", "--data-dir", str(appliance_dir)).returncode == 0


@pytest.mark.parametrize("argv", [["key", "list"], ["key", "create", "--name", "x"], ["bucket", "list"],
                                  ["account", "list"], ["usage"], ["fsck"], ["compact"]])
def test_a_directory_without_an_engine_is_refused_and_left_alone(argv, tmp_path):
    where = tmp_path / "typo"
    out = mailstore(*argv, "--data-dir", str(where), check=False)
    assert out.returncode == 2, out.stderr
    assert f"{where} holds no engine" in out.stderr and "mailstore init" in out.stderr
    assert "Traceback" not in out.stderr and not where.exists()


@pytest.mark.parametrize("argv", [["user", "list"], ["user", "add", "a@example.com", "--password", "p"],
                                  ["gc", "--fs", "s3:http://k:s@127.0.0.1:9/?bucket=mail"]])
def test_a_metadata_file_that_does_not_exist_is_refused(argv, tmp_path):
    out = mailstore(*argv, "--db", str(tmp_path / "meta.db"), check=False)
    assert out.returncode == 2 and "no metadata store at" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "meta.db").exists()
    out = mailstore(*argv, "--data-dir", str(tmp_path), check=False)
    assert out.returncode == 2 and "not an appliance's directory" in out.stderr


def test_admin_commands_over_the_admin_api(appliance_dir):
    """`bucket list --endpoint` (and the rest) against a running gateway, with the admin key."""
    from conftest import GatewayProcess

    gw = GatewayProcess(appliance_dir)  # the appliance's directory: its engine is found
    try:
        sec = json.loads((appliance_dir / "secrets.json").read_text())
        env = {**os.environ, "MAILSTORE_ACCESS_KEY": sec["admin"]["access_key"],
               "MAILSTORE_SECRET_KEY": sec["admin"]["secret_key"]}
        run = [str(BIN / "mailstore"), "bucket"]
        out = subprocess.run([*run, "create", "--endpoint", gw.endpoint, "second"], env=env, capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stderr
        out = subprocess.run([*run, "list", "--endpoint", gw.endpoint], env=env, capture_output=True, text=True)
        assert out.stdout.split() == ["mail", "second"]
        out = subprocess.run([*run, "delete", "--endpoint", gw.endpoint, "second"], env=env, capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stderr
        out = subprocess.run([*run, "list", "--endpoint", gw.endpoint], capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if not k.startswith("MAILSTORE_")})
        assert out.returncode == 2 and "administrator key" in out.stderr
    finally:
        gw.stop()


def test_a_second_up_on_busy_ports_says_so(appliance_dir):
    ports = {}
    for line in (appliance_dir / "mailstore.toml").read_text().splitlines():
        if line.startswith("imap = "):
            ports["imap"] = int(line.split('"')[1].rpartition(":")[2])
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", ports["imap"]))
        s.listen()
        out = mailstore("up", "--data-dir", str(appliance_dir), check=False)
    assert out.returncode == 3 and "Traceback" not in out.stderr
    assert f"address 127.0.0.1:{ports['imap']} is in use: is another appliance running?" in out.stderr


def test_a_lost_master_key_is_an_error_not_a_new_key(tmp_path):
    from conftest import new_engine

    engine = tmp_path / "engine"
    new_engine(engine)
    mailstore("key", "create", "--data-dir", str(engine), "--name", "k")
    (engine / "master.key").unlink()
    out = mailstore("key", "list", "--data-dir", str(engine), check=False)
    assert out.returncode == 2 and "master.key is missing" in out.stderr and "Traceback" not in out.stderr
    assert not (engine / "master.key").exists()


def test_every_option_has_help_text():
    import argparse

    from appliance.cli import parser

    missing = []

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    walk(parser(), "mailstore")
    assert not missing, missing


# ------------------------------------------------------------------ backup and restore

def _imap_state(port: int, user: str, password: str) -> dict[str, dict[bytes, frozenset[str]]]:
    """Per mailbox: each message's Subject line -> its flags."""
    import re

    m = imaplib.IMAP4("127.0.0.1", port)
    m.login(user, password)
    state: dict[str, dict[bytes, frozenset[str]]] = {}
    for line in m.list()[1]:
        name = line.decode().rsplit(' "/" ', 1)[1].strip('"')  # type: ignore[union-attr]
        typ, data = m.select(f'"{name}"')
        assert typ == "OK"
        state[name] = {}
        if int(data[0]) == 0:  # type: ignore[arg-type]
            continue
        typ, got = m.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        for item in got:
            if isinstance(item, tuple):
                flags = re.search(rb"FLAGS \(([^)]*)\)", item[0]).group(1).decode().split()  # type: ignore[union-attr]
                state[name][item[1].strip()] = frozenset(f for f in flags if f != "\\Recent")
    m.logout()
    return state


def test_restore_drill_every_message_acknowledged_before_and_after_the_backup_comes_back_with_its_flags(tmp_path):
    """With the mail bucket encrypted by default (SSE-S3): the backup's master key brings back
    the store key that opens every message, those of before the backup and of after it."""
    from test_appliance import Appliance

    data = tmp_path / "data"
    a = Appliance(data, edits={"state_record_interval = 300": "state_record_interval = 1"})
    a.s3().put_bucket_encryption(Bucket="mail", ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    # The other gateway takes a bucket's default encryption up within 2 s (its read cache; the
    # IMAP server's state records, every second here, keep it warm): wait until both apply it.
    import boto3
    from botocore.config import Config
    for endpoint in a.endpoints["gateways"]:
        gw = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=a.endpoints["s3"]["access_key"],
                          aws_secret_access_key=a.endpoints["s3"]["secret_key"], region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}))
        deadline = time.monotonic() + 10
        while True:
            gw.put_object(Bucket="mail", Key="probe", Body=b"p")
            if gw.head_object(Bucket="mail", Key="probe").get("ServerSideEncryption") == "AES256":
                break
            assert time.monotonic() < deadline, "the default encryption never held"
            time.sleep(0.2)
        gw.delete_object(Bucket="mail", Key="probe")
    user = a.endpoints["user"]
    imap_port, lmtp_port = a.endpoints["imap"]["port"], a.endpoints["lmtp"]["port"]

    def deliver(*subjects: str) -> None:
        with smtplib.LMTP("127.0.0.1", lmtp_port, timeout=30) as lmtp:
            for subject in subjects:
                msg = email.message.EmailMessage()
                msg["From"], msg["To"], msg["Subject"] = "x@example.org", user["name"], subject
                msg.set_content(f"{subject}\n")
                assert lmtp.send_message(msg) == {}

    def imap() -> imaplib.IMAP4:
        m = imaplib.IMAP4("127.0.0.1", imap_port)
        m.login(user["name"], user["password"])
        return m

    def recorded(mailbox: str, flag: str) -> None:
        """Until the IMAP server's state record (every second) shows `mailbox` and `flag`."""
        import gzip

        from mailstore.staterecord import record_key
        s3 = a.s3()
        deadline = time.monotonic() + 120
        while True:
            try:
                doc = json.loads(gzip.decompress(s3.get_object(Bucket="mail", Key=record_key(user["name"]))[
                    "Body"].read()))
                if mailbox in {b["name"] for b in doc["mailboxes"]} and \
                        any(flag in row[5].split() for row in doc["messages"]):
                    return
            except s3.exceptions.NoSuchKey:
                pass
            assert time.monotonic() < deadline, "no state record"
            time.sleep(0.2)

    try:
        deliver("a1", "a2", "a3")
        m = imap()
        m.create("Archive")
        m.select("INBOX")
        m.uid("STORE", "1", "+FLAGS", "(\\Flagged)")
        m.uid("STORE", "2", "+FLAGS", "($Work)")
        m.uid("COPY", "3", "Archive")
        m.logout()
        recorded("Archive", "$Work")
        out = mailstore("backup", "--data-dir", str(data), "--to", str(tmp_path / "backup.tar"))
        assert oct((tmp_path / "backup.tar").stat().st_mode & 0o777) == "0o600"
        assert {"engine/index.db", "engine/master.key", "meta.db", "secrets.json"} <= set(json.loads(out.stdout)["files"])
        deliver("b1", "b2")  # after the backup
        m = imap()
        m.select("INBOX")
        m.uid("STORE", "1", "+FLAGS", "(\\Seen)")  # a message of before, changed after
        m.uid("STORE", "4", "+FLAGS", "(\\Answered)")
        m.rename("Archive", "Old")
        m.logout()
        recorded("Old", "\\Answered")
        before = _imap_state(imap_port, user["name"], user["password"])
        assert before["INBOX"][b"Subject: a1"] == {"\\Flagged", "\\Seen"} and len(before["INBOX"]) == 5
        assert set(before["Old"]) == {b"Subject: a3"}
    finally:
        ports = a.ports
        assert a.stop() == 0
    # the host's metadata is lost: config, keys, engine index and master key, mail metadata
    for name in ("mailstore.toml", "secrets.json", "shim-fs.url", "meta.db", "meta.db-wal", "meta.db-shm",
                 "engine/index.db", "engine/index.db-wal", "engine/index.db-shm", "engine/master.key"):
        (data / name).unlink(missing_ok=True)
    refused = mailstore("restore", "--from", str(tmp_path / "backup.tar"), "--data-dir", str(data), check=False)
    assert refused.returncode == 0, refused.stderr
    again = mailstore("restore", "--from", str(tmp_path / "backup.tar"), "--data-dir", str(data), check=False)
    assert again.returncode == 2 and "--force" in again.stderr  # never over a directory's state unasked
    assert "data files" in json.loads(refused.stdout)["engine"]  # b1, b2 were in the segments only
    b = Appliance(data, ports=ports, edits={"state_record_interval = 300": "state_record_interval = 1"})
    try:
        assert b.endpoints["s3"]["access_key"] == a.endpoints["s3"]["access_key"]
        out = mailstore("reindex", "--all", "--data-dir", str(data))
        assert json.loads(out.stdout)["messages"] == 6  # five in INBOX, one copy
        after = _imap_state(imap_port, user["name"], user["password"])
        assert after == before
        s3 = b.s3()
        mail = [o["Key"] for o in s3.list_objects_v2(Bucket="mail")["Contents"] if "/mailboxes/" in o["Key"]]
        assert len(mail) == 5 and all(s3.head_object(Bucket="mail", Key=k).get("ServerSideEncryption") == "AES256"
                                      for k in mail)  # one object per delivery: the copy shares its object
    finally:
        b.stop()


def test_reindex_takes_per_message_the_later_of_the_record_and_the_database():
    """MODSEQs only grow in a mailbox: a record whose mailbox HIGHESTMODSEQ is at least the
    message's MODSEQ in the database is later, and wins; else the database does."""
    from mailstore import layout
    from mailstore.rebuild import Found, merge

    def found(uid: int) -> Found:
        meta = layout.MessageMeta("u@x", f"g{uid}", 10, 1, 2, "INBOX", "B", 7, uid)
        return Found(meta, None, None)
    objects = {f"k{uid}": found(uid) for uid in (1, 2, 3)}
    box = {"guid": "B", "name": "INBOX", "uidvalidity": 7, "uidnext": 4}
    record = {"time": 0, "mailboxes": [{**box, "highestmodseq": 10}], "keywords": [], "subscriptions": [],
              "messages": [["B", 1, "g1", "k1", 9, "\\Seen"], ["B", 2, "g2", "k2", 9, "\\Flagged"]]}
    had = {"mailboxes": [{**box, "highestmodseq": 12}], "keywords": [], "subscriptions": [],
           "messages": [["B", 1, "g1", "k1", 12, "\\Deleted"], ["B", 2, "g2", "k2", 4, ""],
                        ["B", 3, "g3", "k3", 2, ""]]}
    plan = merge(objects, record, had)
    flags = {m.uid: m.flags for m in plan.messages}
    assert flags == {1: "\\Deleted", 2: "\\Flagged", 3: ""}
    assert plan.boxes[0].highestmodseq == 13 and plan.boxes[0].uidnext == 4
    assert {m.uid: m.flags for m in merge(objects, None, {**had, "messages": [], "mailboxes": []}).messages} == \
        {1: "", 2: "", 3: ""}  # the bucket alone: no flags, as before records existed


def test_backup_and_restore_with_the_metadata_in_postgresql(request, tmp_path):
    """[metadata] on PostgreSQL: pg_dump into the archive, pg_restore --clean back, the password
    only in the passfile mailstore.toml names."""
    from conftest import new_metadata

    url = new_metadata(request, tmp_path, "postgresql")
    data = tmp_path / "data"
    write_config(data, {'url = ""': f'url = "{url}"', 'passfile = ""': f'passfile = "{os.environ["PGPASSFILE"]}"'})
    env = {k: v for k, v in os.environ.items() if k != "PGPASSFILE"}  # from mailstore.toml alone

    def run(*argv: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([str(BIN / "mailstore"), *argv], env=env, capture_output=True, text=True, timeout=300)
        assert not ok or res.returncode == 0, res.stderr
        return res
    assert "made: metadata postgresql://" not in run("init", "--data-dir", str(data)).stdout  # no file to make
    run("user", "add", "--data-dir", str(data), "kept@example.com", "--password", "pw")
    files = json.loads(run("backup", "--data-dir", str(data), "--to", str(tmp_path / "b.tar")).stdout)["files"]
    assert "meta.pgdump" in files and "meta.db" not in files
    run("user", "add", "--data-dir", str(data), "later@example.com", "--password", "pw")
    run("user", "delete", "--data-dir", str(data), "kept@example.com")
    refused = run("restore", "--from", str(tmp_path / "b.tar"), "--data-dir", str(data), ok=False)
    assert refused.returncode == 2 and "--force" in refused.stderr
    run("restore", "--from", str(tmp_path / "b.tar"), "--data-dir", str(data), "--force")
    users = run("user", "list", "--data-dir", str(data)).stdout
    assert "kept@example.com" in users and "later@example.com" not in users


def test_init_and_the_gateway_unit_on_a_ceph_cluster(rados_cluster, tmp_path):
    """[engine] kind "rados": init makes the master key, the keys and the bucket on the cluster, and
    the gateway unit's own command line serves them; the backup carries the master key."""
    args = dict(zip(rados_cluster.args[::2], rados_cluster.args[1::2], strict=True))
    data = tmp_path / "data"
    ports = write_config(data, {
        'kind = "local"': 'kind = "rados"', 'ceph_conf = ""': f'ceph_conf = "{args["--ceph-conf"]}"',
        'ceph_user = "client.mailstore"': f'ceph_user = "{args["--ceph-user"]}"',
        'keyring = ""': f'keyring = "{args["--keyring"]}"', 'data_pool = "mailstore-data"': 'data_pool = "gw-data"',
        'index_pool = "mailstore-index"': 'index_pool = "gw-index"', 'meta_pool = "mailstore-meta"': 'meta_pool = "gw-meta"',
        'namespace = ""': 'namespace = "init-unit"'})
    made = mailstore("init", "--data-dir", str(data)).stdout
    assert "made: admin key" in made and "made: bucket mail" in made and "engine/" not in made
    assert oct((data / "master.key").stat().st_mode & 0o777) == "0o600"
    assert "kept: admin key" in mailstore("init", "--data-dir", str(data)).stdout
    sec = json.loads((data / "secrets.json").read_text())
    units = Units(data)
    gateway = next(p for p in UNITS if p.name == "mailstore-gateway@.service")
    start = next(line.split("=", 1)[1] for line in gateway.read_text().splitlines() if line.startswith("ExecStart="))
    proc = subprocess.Popen(units.command(start, "1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["engine"] == "rados" and info["port"] == ports["gw1"]
        s3 = boto3.client("s3", endpoint_url=info["endpoint"], aws_access_key_id=sec["admin"]["access_key"],
                          aws_secret_access_key=sec["admin"]["secret_key"], region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}))
        s3.put_object(Bucket="mail", Key="k", Body=b"on ceph")
        assert s3.get_object(Bucket="mail", Key="k")["Body"].read() == b"on ceph"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    files = json.loads(mailstore("backup", "--data-dir", str(data), "--to", str(tmp_path / "b.tar")).stdout)["files"]
    assert "master.key" in files and "engine/index.db" not in files and "meta.db" in files
