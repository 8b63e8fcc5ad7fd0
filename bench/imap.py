"""IMAP benchmark: our IMAP server vs Dovecot CE's imapd, one run.

    python -m bench.imap [--messages 2000] [--clients 4] [--rounds 40] [--repeat 3]

Both are filled with the same 8 KB messages over their own LMTP, then C
logged-in imaplib clients each run a bounded mix per round: SELECT, FETCH
headers of 50 messages, FETCH 3 whole bodies, STORE a flag, SEARCH UNSEEN,
APPEND one message, UID STORE \\Deleted + UID EXPUNGE it (by its APPENDUID).  Prints commands/s and
commands per server CPU-second (all server processes: our IMAP server and
gateway; Dovecot's master and its imap processes), and the ratio.  The servers
take turns, --repeat times, and the medians are compared: this machine is shared
and one run's CPU figures swing by a third.  Then (--per-command) each command
type runs alone on one connection, and the table gives server CPU milliseconds
per command for both servers: which commands the gap comes from.
"""

from __future__ import annotations

import argparse
import imaplib
import json
import random
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .lmtp import MESSAGE, cpu_seconds, dovecot_pids, postgres_pids, start_dovecot, start_ours, start_postgres, stop_all
from .s3 import BIN

USER = "user0@example.com"


def fill(port: int, n: int) -> None:
    c = smtplib.LMTP("127.0.0.1", port)
    for i in range(n):
        c.sendmail("sender@example.org", [USER], MESSAGE % i)
    c.quit()


def client_run(port: int, rounds: int, seed: int) -> int:
    rng = random.Random(seed)
    m = imaplib.IMAP4("127.0.0.1", port)
    m.login(USER, "pw")
    commands = 1
    for _ in range(rounds):
        typ, data = m.select("INBOX")
        total = int(data[0])
        start = rng.randint(1, max(1, total - 50))
        m.fetch(f"{start}:{start + 49}", "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])")
        for _ in range(3):
            m.fetch(str(rng.randint(1, total)), "(BODY.PEEK[])")
        m.store(str(rng.randint(1, total)), "+FLAGS", "(\\Flagged)")
        m.search(None, "UNSEEN")
        typ, data = m.append("INBOX", None, None, MESSAGE % rng.randint(0, 10**9))
        uid = data[0].split(b"APPENDUID ", 1)[1].split()[1].rstrip(b"]").decode()  # RFC 4315 UIDPLUS
        m.uid("STORE", uid, "+FLAGS", "(\\Deleted)")
        m.uid("EXPUNGE", uid)
        commands += 9
    m.logout()
    return commands + 1


def per_command(port: int, pids, rounds: int, seed: int = 1) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Server CPU milliseconds per command, one command type at a time on one connection:
    where the mix's CPU goes (the clock ticks are 10 ms, hence the many repetitions)."""
    rng = random.Random(seed)
    m = imaplib.IMAP4("127.0.0.1", port)
    m.login(USER, "pw")
    total = int(m.select("INBOX")[1][0] or 0)

    def fetch_headers() -> None:
        start = rng.randint(1, max(1, total - 50))
        m.fetch(f"{start}:{start + 49}", "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])")

    def append_and_expunge() -> None:
        data = m.append("INBOX", None, None, MESSAGE % rng.randint(0, 10**9))[1]
        uid = data[0].split(b"APPENDUID ", 1)[1].split()[1].rstrip(b"]").decode()
        m.uid("STORE", uid, "+FLAGS", "(\\Deleted)")
        m.uid("EXPUNGE", uid)

    commands = {
        "SELECT": lambda: m.select("INBOX"),
        "FETCH 50 headers": fetch_headers,
        "FETCH 1 body": lambda: m.fetch(str(rng.randint(1, total)), "(BODY.PEEK[])"),
        "STORE 1 flag": lambda: m.store(str(rng.randint(1, total)), "+FLAGS", "(\\Flagged)"),
        "SEARCH UNSEEN": lambda: m.search(None, "UNSEEN"),
        "APPEND+STORE+EXPUNGE": append_and_expunge,
        "NOOP": lambda: m.noop(),
    }
    out = {}
    for name, run in commands.items():
        run()
        c0 = cpu_seconds(pids())
        for _ in range(rounds):
            run()
        out[name] = (cpu_seconds(pids()) - c0) / rounds * 1000
    m.logout()
    return out


def run_load(ports: list[int], clients: int, rounds: int, pids) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """`clients` imaplib clients, spread over `ports` (several shim hosts) in turn."""
    c0 = cpu_seconds(pids())
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(lambda i: client_run(ports[i % len(ports)], rounds, i), range(clients)))
    secs = time.perf_counter() - t0
    return total / secs, total / max(cpu_seconds(pids()) - c0, 1e-6)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=3, help="load runs per server, taking turns")
    ap.add_argument("--metadata", choices=["sqlite", "postgresql"], default="sqlite",
                    help="where our mail metadata lives (PostgreSQL: a private cluster; its CPU counts as ours)")
    ap.add_argument("--hosts", choices=["1", "2", "both"], default="1",
                    help="our IMAP servers on the one PostgreSQL, clients spread over them (needs postgresql)")
    ap.add_argument("--per-command", type=int, default=100, metavar="N",
                    help="also time each command type alone, N times per server (0: skip)")
    args = ap.parse_args()
    counts = [1, 2] if args.hosts == "both" else [int(args.hosts)]
    if counts != [1] and args.metadata != "postgresql":
        ap.error("--hosts 2 needs --metadata postgresql (several hosts share one PostgreSQL)")
    work = Path(tempfile.mkdtemp(prefix="mailstore-imapbench-"))
    procs: list[subprocess.Popen] = []  # type: ignore[type-arg]
    conf = None
    pg = None
    try:
        db = str(work / "meta.db")
        if args.metadata == "postgresql":
            pg = start_postgres(work)
            db = f"postgresql://{pg.user}@127.0.0.1:{pg.port}/{pg.database}"
        lmtp_ports, procs = start_ours(work, [USER], db)
        gw = procs[0]
        lmtp_cmd = subprocess.run(["ps", "-o", "args=", "-p", str(procs[1].pid)], capture_output=True, text=True).stdout
        fs = lmtp_cmd.split("--fs ", 1)[1].split(" ", 1)[0]
        imaps, our_ports = [], []
        for n in range(max(counts)):  # host n+1: its own IMAP server and cache
            host_fs = fs if n == 0 else fs.replace(str(work / "cache"), str(work / f"cache{n + 1}"), 1)
            imap = subprocess.Popen([str(BIN / "mailstore"), "imap", "--db", db, "--fs", host_fs, "--listen",
                                     "127.0.0.1:0", "--domain", "example.com"], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True)
            procs.append(imap)
            assert imap.stdout is not None
            our_ports.append(json.loads(imap.stdout.readline())["port"])
            imaps.append(imap)
        dport, conf = start_dovecot(work, [USER], imap=True)
        d_lmtp, d_imap = dport
        fill(lmtp_ports[0], args.messages)
        fill(d_lmtp, args.messages)
        servers = [(f"mailstore x{n}" if len(counts) > 1 or n > 1 else "mailstore", our_ports[:n],
                    lambda n=n: [*(p.pid for p in imaps[:n]), gw.pid, *postgres_pids(pg)]) for n in counts]
        servers.append(("dovecot", [d_imap], lambda: dovecot_pids(conf)))
        for _, ports, pids in servers:
            run_load(ports, 1, 3, pids)  # warm caches and connections
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in servers}
        for _ in range(args.repeat):  # the servers take turns: a noisy minute hits both
            for name, ports, pids in servers:
                runs[name].append(run_load(ports, args.clients, args.rounds, pids))
        costs: dict[str, list[dict[str, float]]] = {}
        for _ in range(2 if args.per_command else 0):  # twice, taking turns; the lower figure is kept
            for name, ports, pids in servers:
                costs.setdefault(name, []).append(per_command(ports[0], pids, args.per_command))
    finally:
        if pg is not None:
            pg.stop()
        stop_all(procs, conf, work)
    print(f"{'server':<14}{'commands/s':>12}{'commands/CPU-s':>16}   (median of {args.repeat}; each run's per-CPU)")
    medians = {}
    for name, rs in runs.items():
        rate, per_cpu = statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)
        medians[name] = per_cpu
        print(f"{name:<14}{rate:>12.0f}{per_cpu:>16.0f}   {' '.join(f'{r[1]:.0f}' for r in rs)}")
    if costs:
        ours = next(n for n in costs if n != "dovecot")
        print(f"\n{'server CPU ms per command':<28}{ours:>12}{'dovecot':>10}{'ratio':>8}")
        for cmd in costs[ours][0]:
            a, b = (min(c[cmd] for c in costs[n]) for n in (ours, "dovecot"))
            print(f"{cmd:<28}{a:>12.2f}{b:>10.2f}{(f'{a / b:.1f}x' if b else '-'):>8}")
    for name in runs:
        if name == "dovecot":
            continue
        ratios = [a[1] / b[1] for a, b in zip(runs[name], runs["dovecot"])]
        print(f"\n{name} / dovecot: {medians[name] / medians['dovecot']:.2f}x commands per server CPU-second "
              f"({args.clients} clients, {args.messages} messages; turn by turn "
              f"{' '.join(f'{r:.2f}' for r in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
