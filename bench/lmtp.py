"""LMTP benchmark: our shim vs Dovecot CE's LMTP into Maildir, in one run.

    python -m bench.lmtp [--messages 150] [--connections 8] [--recipients 10] [--sieve]

Both servers run on 127.0.0.1: ours is `mailstore lmtp --workers 3` storing
through an fscache: stack into a gateway (every object and every metadata
commit fsynced); Dovecot CE (which forks an lmtp process per connection) (Debian's dovecot-lmtpd, a private instance) delivers
into Maildir.  The same raw LMTP client sends 8 KB messages, each to N
recipients, over C connections (bounded by a message count and 60 s), and
checks that every reply is 250.  Prints messages/s, deliveries/s, p50/p99
per message, and the servers' CPU seconds per 1,000 deliveries.

--sieve: every recipient has the same typical 10-rule Sieve script (TEN_RULES) active on both
servers (Pigeonhole on Dovecot's side), which the benchmark message runs through to the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from mailstore.db import MetaStore

from .s3 import BIN, _children, new_key

LMTP_WORKERS = 3
MESSAGE = (b"From: sender@example.org\r\nTo: list@example.com\r\nSubject: benchmark\r\n"
           b"Message-ID: <%d@bench>\r\n\r\n" + (b"x" * 78 + b"\r\n") * 100)  # about 8 KB


# A typical user's filters: lists, tags, spam, crowds, +detail, sizes, newsletters, flags. The
# benchmark message matches none of the filing rules, so every rule runs, the body is searched,
# and it is kept with \Flagged.
TEN_RULES = r"""require ["fileinto", "mailbox", "imap4flags", "variables", "relational", "comparator-i;ascii-numeric",
         "body", "envelope", "subaddress"];
if header :contains "list-id" "announce" { fileinto :create "Lists/announce"; stop; }
if header :matches "subject" "[*] *" { set "tag" "${1}"; fileinto :create "Tagged/${tag}"; stop; }
if address :domain :is "from" ["spam.example", "junk.example"] { discard; stop; }
if address :count "ge" :comparator "i;ascii-numeric" ["to", "cc"] "20" { fileinto :create "Crowd"; stop; }
if envelope :detail "to" "shop" { fileinto :create "Shopping"; stop; }
if exists "x-spam-flag" { fileinto :create "Junk"; stop; }
if header :value "gt" :comparator "i;ascii-numeric" "x-spam-score" "5" { fileinto :create "Junk"; stop; }
if size :over 5M { addflag "$Big"; }
if body :text :contains "unsubscribe" { addflag "$Newsletter"; }
if header :contains "subject" "benchmark" { addflag "\\Flagged"; }
keep;
"""
WITH_SIEVE = False  # --sieve


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        for p in [pid, *_children(pid)]:
            try:
                f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
                # utime + stime, plus cutime + cstime: children already reaped (Dovecot's
                # per-connection processes exit at LOGOUT, taking their CPU with them)
                total += sum(int(x) for x in f[11:15]) / os.sysconf("SC_CLK_TCK")
            except (FileNotFoundError, IndexError):
                pass
    return total


async def load(ports: list[int], users: list[str], messages: int, connections: int) -> tuple[float, list[float], int]:
    """`connections` LMTP clients, spread over `ports` (several shim hosts) in turn."""
    counter = iter(range(messages))
    lat: list[float] = []
    bad = 0
    deadline = time.monotonic() + 60

    async def conn(port: int) -> None:
        nonlocal bad
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readline()
        writer.write(b"LHLO bench\r\n")
        while (await reader.readline())[3:4] != b" ":
            pass
        for n in counter:
            if time.monotonic() > deadline:
                break
            t = time.perf_counter()
            cmds = b"MAIL FROM:<sender@example.org>\r\n" + b"".join(
                b"RCPT TO:<%s>\r\n" % u.encode() for u in users) + b"DATA\r\n"
            writer.write(cmds)  # pipelined (RFC 2920)
            for _ in range(len(users) + 2):
                line = await reader.readline()
                bad += line[:1] not in (b"2", b"3")
            writer.write(MESSAGE % n + b".\r\n")
            for _ in users:
                bad += not (await reader.readline()).startswith(b"250")
            lat.append(time.perf_counter() - t)
        writer.write(b"QUIT\r\n")
        await writer.drain()
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(conn(ports[i % len(ports)]) for i in range(connections)))
    return time.perf_counter() - t0, lat, bad


def start_postgres(work: Path):  # type: ignore[no-untyped-def]
    """A private PostgreSQL for the metadata (issue 15); the shim finds its password in PGPASSFILE."""
    from runtime.postgres import PrivatePostgres
    os.chmod(work, 0o755)  # the server runs as the postgres user: it must reach its directory
    pg = PrivatePostgres(work / "pg", free_port())
    pg.start()
    passfile = work / "pgpass"
    passfile.write_text(f"127.0.0.1:{pg.port}:*:{pg.user}:{pg.password}\n")
    passfile.chmod(0o600)
    os.environ["PGPASSFILE"] = str(passfile)
    return pg


def new_database(pg, name: str) -> str:  # type: ignore[no-untyped-def]
    """A fresh database in the private PostgreSQL, as a URL without the password."""
    import psycopg
    with psycopg.connect(pg.url("postgres"), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://{pg.user}@127.0.0.1:{pg.port}/{name}"


def postgres_pids(pg) -> list[int]:  # type: ignore[no-untyped-def]
    """The postmaster (its backends are its children, counted with it): the metadata's CPU is ours."""
    return _children(pg.proc.pid) if pg is not None and pg.proc is not None else []


def start_ours(work: Path, users: list[str], db: str | None = None,
               hosts: int = 1) -> tuple[list[int], list[subprocess.Popen]]:  # type: ignore[type-arg]
    """Gateway + LMTP; `db` the metadata (a postgresql:// URL), else a SQLite file in `work`.
    `hosts` > 1: more LMTP servers on the same metadata and bucket, each with its own cache (shim
    hosts, as `mailstore up --hosts 2` runs them).  Returns the LMTP ports and the processes."""
    work.mkdir(parents=True, exist_ok=True)
    data = work / "gw"
    key = new_key(data, "b")
    subprocess.run([str(BIN / "mailstore"), "bucket", "create", "--data-dir", str(data), "mail"], check=True)
    gw = subprocess.Popen([str(BIN / "mailstore"), "gateway", "--data-dir", str(data), "--listen", "127.0.0.1:0"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    procs = [gw]
    try:  # a failure on the way stops what was started (it would outlive the benchmark)
        assert gw.stdout is not None
        hostport = json.loads(gw.stdout.readline())["endpoint"].split("//", 1)[1]
        db = db or str(work / "meta.db")
        MetaStore(db)  # the schema, as the LMTP server's first start makes it (`user add` needs it)
        for u in users:
            subprocess.run([str(BIN / "mailstore"), "user", "add", "--db", str(db), u, "--password-stdin"],
                           input="pw\n", text=True, check=True, capture_output=True)
            if WITH_SIEVE:
                from mailstore.sieve import scripts

                scripts.put(MetaStore(db), u, "filters", TEN_RULES)
                scripts.activate(MetaStore(db), u, "filters")
        s3 = f"s3:http://{key['AccessKeyId']}:{quote(key['SecretAccessKey'], safe='')}@{hostport}/?bucket=mail"
        ports = []
        for n in range(hosts):
            fs = f"fscache:256M:{work / ('cache' if n == 0 else f'cache{n + 1}')}:{s3}"
            lmtp = subprocess.Popen([str(BIN / "mailstore"), "lmtp", "--db", str(db), "--fs", fs, "--listen",
                                     "127.0.0.1:0", "--workers", str(LMTP_WORKERS), "--domain", "example.com"],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            procs.append(lmtp)
            assert lmtp.stdout is not None
            ports.append(json.loads(lmtp.stdout.readline())["port"])
    except BaseException:
        for p in procs:
            p.kill()
            p.wait()
        raise
    return ports, procs


NAMESPACE = """
namespace inbox {
  inbox = yes
  separator = /
  mailbox Drafts {
    special_use = \\Drafts
    auto = subscribe
  }
  mailbox Sent {
    special_use = \\Sent
    auto = subscribe
  }
  mailbox Trash {
    special_use = \\Trash
    auto = subscribe
  }
  mailbox Junk {
    special_use = \\Junk
    auto = subscribe
  }
  mailbox Archive {
    special_use = \\Archive
    auto = subscribe
  }
}
"""


# COMPRESS=DEFLATE (RFC 4978) comes with Dovecot's imap_zlib plugin; the conformance tests compare it.
IMAP_COMPRESS = """
protocol imap {
  mail_plugins = $mail_plugins imap_zlib
}
"""


def start_dovecot(work: Path, users: list[str], imap: bool = False, like_ours: bool = False,  # type: ignore[no-untyped-def]
                  pop3: bool = False, sieve: bool = False, submission: str = "", managesieve: bool = False):
    """A private Dovecot CE: LMTP (and IMAP when asked) on loopback; returns (port or (lmtp, imap), conf).
    `pop3`: POP3 too (with the maildrop lock RFC 1939 asks for), its port in the conf's directory
    as `pop3.port`. `sieve`: LMTP runs each user's ~/.dovecot.sieve (Pigeonhole), the home being
    the conf's directory's mail/USER; `submission` ("host:port"): where redirect and vacation
    messages go. `managesieve`: ManageSieve too, its port in the conf's directory as
    `managesieve.port`.

    like_ours: the mailbox layout our server has ("/" separator, the special-use
    folders made and subscribed for a new user), for side-by-side comparison.
    """
    if shutil.which("dovecot") is None:
        raise SystemExit("dovecot not found: apt-get install dovecot-core dovecot-lmtpd")
    d = work / "dovecot"
    (d / "mail").mkdir(parents=True)
    mail = pwd.getpwnam("mail")
    os.chown(d / "mail", mail.pw_uid, mail.pw_gid)
    os.chmod(work, 0o755)
    os.chmod(d, 0o755)
    (d / "passwd").write_text("".join(f"{u}:{{PLAIN}}pw:{mail.pw_uid}:{mail.pw_gid}::{d}/mail/{u}::\n" for u in users))
    port = free_port()
    imap_port = free_port()
    pop3_port = free_port()
    (d / "pop3.port").write_text(str(pop3_port))
    sieve_port = free_port()
    (d / "managesieve.port").write_text(str(sieve_port))
    conf = d / "dovecot.conf"
    conf.write_text(f"""
base_dir = {d}/run
log_path = {d}/dovecot.log
listen = 127.0.0.1
protocols = lmtp{" imap" if imap else ""}{" pop3" if pop3 else ""}{" sieve" if managesieve else ""}
ssl = no
disable_plaintext_auth = no
mail_location = maildir:{d}/mail/%u/Maildir
first_valid_uid = {mail.pw_uid}
passdb {{
  driver = passwd-file
  args = {d}/passwd
}}
userdb {{
  driver = passwd-file
  args = {d}/passwd
}}
{NAMESPACE if like_ours else ""}
{IMAP_COMPRESS if like_ours else ""}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
}}
{POP3.format(port=pop3_port) if pop3 else ""}
{SIEVE if sieve or managesieve else ""}
{f"submission_host = {submission}" if submission else ""}
{MANAGESIEVE.format(port=sieve_port) if managesieve else ""}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
""")
    subprocess.run(["dovecot", "-c", str(conf)], check=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return ((port, imap_port) if imap else port), conf
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"dovecot did not start: {(d / 'dovecot.log').read_text()[-2000:]}")


SIEVE = """
protocol lmtp {
  mail_plugins = $mail_plugins sieve
}
plugin {
  sieve = file:~/sieve;active=~/.dovecot.sieve
}
"""

MANAGESIEVE = """
service managesieve-login {{
  inet_listener sieve {{
    address = 127.0.0.1
    port = {port}
  }}
}}
"""

POP3 = """
pop3_lock_session = yes
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"""


def stop_all(procs: list[subprocess.Popen], conf: Path | None, work: Path) -> None:  # type: ignore[type-arg]
    """Stop what a benchmark started (our processes by PID, Dovecot through doveadm) and remove its files."""
    for p in procs:
        p.send_signal(signal.SIGINT)  # a gateway drains on SIGTERM; a benchmark stops at once
        p.wait()
    if conf is not None:
        subprocess.run(["doveadm", "-c", str(conf), "stop"], capture_output=True)
    shutil.rmtree(work, ignore_errors=True)


def dovecot_pids(conf: Path) -> list[int]:
    pid_file = conf.parent / "run" / "master.pid"
    return [int(pid_file.read_text())] if pid_file.exists() else []


def pct(v: list[float], p: float) -> float:
    s = sorted(v)
    return s[min(len(s) - 1, int(len(s) * p))] * 1000 if s else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=150)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--recipients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lmtp-workers", type=int, default=3, help="mailstore lmtp --workers (Dovecot forks per connection)")
    ap.add_argument("--metadata", choices=["sqlite", "postgresql", "both"], default="sqlite",
                    help="where our mail metadata lives; both: two of ours side by side (issue 15)")
    ap.add_argument("--hosts", choices=["1", "2", "both"], default="1",
                    help="shim hosts (LMTP servers on one PostgreSQL, connections spread over them); "
                         "2 and both need PostgreSQL metadata")
    ap.add_argument("--sieve", action="store_true", help="every recipient runs TEN_RULES, on both servers")
    args = ap.parse_args()
    global LMTP_WORKERS, WITH_SIEVE
    LMTP_WORKERS = args.lmtp_workers
    WITH_SIEVE = args.sieve
    users = [f"user{i}@example.com" for i in range(args.recipients)]
    work = Path(tempfile.mkdtemp(prefix="mailstore-lmtpbench-"))
    procs: list[subprocess.Popen] = []  # type: ignore[type-arg]
    conf = None
    rows = []
    pg = None
    try:
        targets = []
        kinds = ["sqlite", "postgresql"] if args.metadata == "both" else [args.metadata]
        counts = [1, 2] if args.hosts == "both" else [int(args.hosts)]
        if counts != [1] and "postgresql" not in kinds:
            ap.error("--hosts 2 needs --metadata postgresql (several hosts share one PostgreSQL)")
        for kind, hosts in [(k, h) for k in kinds for h in counts if k == "postgresql" or h == 1]:
            url = None
            if kind == "postgresql":
                if pg is None:
                    pg = start_postgres(work)
                url = f"postgresql://{pg.user}@127.0.0.1:{pg.port}/{pg.database}"
                if hosts > 1 or len(counts) > 1:  # each setup its own database
                    url = new_database(pg, f"bench_{hosts}")
            ports, started = start_ours(work / f"{kind}{hosts}", users, url, hosts)
            procs += started
            name = "mailstore" if args.metadata != "both" else f"ms+{kind[:6]}"
            name += f" x{hosts}" if len(counts) > 1 or hosts > 1 else ""
            targets.append((name, ports, lambda started=started, kind=kind: [p.pid for p in started] + (
                postgres_pids(pg) if kind == "postgresql" else [])))
        theirs, conf = start_dovecot(work, users, sieve=WITH_SIEVE)
        if WITH_SIEVE:
            mail = pwd.getpwnam("mail")
            for u in users:
                home = work / "dovecot" / "mail" / u
                home.mkdir(parents=True, exist_ok=True)
                (home / ".dovecot.sieve").write_text(TEN_RULES)
                for p in (home, home / ".dovecot.sieve"):
                    os.chown(p, mail.pw_uid, mail.pw_gid)
        targets.append(("dovecot", [theirs], lambda: dovecot_pids(conf)))
        results: dict[str, list[tuple[float, float, float, float, int]]] = {}
        for _ in range(args.rounds):  # the servers take turns: the machine is shared and noisy
            for name, ports, pids in targets:
                c0 = cpu_seconds(pids())
                secs, lat, bad = asyncio.run(load(ports, users, args.messages, args.connections))
                cpu = cpu_seconds(pids()) - c0
                n = len(lat)
                results.setdefault(name, []).append((n / secs, pct(lat, 0.5), pct(lat, 0.99), cpu / max(n * len(users), 1) * 1000, bad))
        for name, rs in results.items():
            med = sorted(rs)[len(rs) // 2]
            rows.append((name, *med, [round(r[0]) for r in rs]))
    finally:
        if pg is not None:
            pg.stop()
        stop_all(procs, conf, work)
    print(f"{'server':<14}{'msgs/s':>8}{'deliveries/s':>14}{'p50 ms':>8}{'p99 ms':>8}{'CPU s/1k deliv':>16}{'errors':>8}  rounds")
    base = next(r[1] for r in rows if r[0] == "dovecot")
    for name, rate, p50, p99, cpu, bad, rounds in rows:
        print(f"{name:<14}{rate:>8.0f}{rate * args.recipients:>14.0f}{p50:>8.1f}{p99:>8.1f}{cpu:>16.2f}{bad:>8}  {rounds}")
    for name, mine, *_ in rows:
        if name != "dovecot":
            print(f"\n{name} / dovecot: {mine / base:.2f}x messages/s "
                  f"({args.connections} connections, {args.recipients} recipients, 8 KB"
                  f"{', a 10-rule Sieve script each' if args.sieve else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
