"""IMAP import benchmark: `mailstore import imap` from a private Dovecot CE, one run.

    python -m bench.import_imap [--messages 2000] [--folders 4] [--connections 4] [--size 8192]

Dovecot is filled over IMAP (APPEND) with --messages messages of about --size
bytes spread over --folders folders; then the import runs into a fresh local
user through a gateway and the fscache, as an operator would run it.  Prints
messages/s, MB/s and the CPU the importer, the gateway and Dovecot used, for
1 connection and for --connections.
"""

from __future__ import annotations

import argparse
import imaplib
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .lmtp import cpu_seconds, dovecot_pids, start_dovecot, stop_all, start_ours
from .s3 import BIN

SRC = "src@example.com"


def fill(port: int, messages: int, folders: int, size: int) -> int:
    rng = random.Random(1)
    m = imaplib.IMAP4("127.0.0.1", port)
    m.login(SRC, "pw")
    names = ["INBOX"] + [f"Folder{i}" for i in range(1, folders)]
    for name in names[1:]:
        m.create(name)
    total = 0
    for i in range(messages):
        body = (f"From: a{i}@example.org\r\nTo: {SRC}\r\nSubject: message {i}\r\nMessage-ID: <{i}@bench>\r\n\r\n"
                .encode() + (b"y" * 76 + b"\r\n") * max(1, (size + rng.randint(-size // 2, size // 2)) // 78))
        m.append(names[i % folders], "(\\Seen)" if i % 2 else None, None, body)
        total += len(body)
    m.logout()
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--folders", type=int, default=4)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--size", type=int, default=8192, help="average message size in bytes")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mailstore-importbench-"))
    procs: list[subprocess.Popen] = []  # type: ignore[type-arg]
    conf = None
    rows = []
    try:
        _, procs = start_ours(work, [])
        gw = procs[0]
        lmtp_cmd = subprocess.run(["ps", "-o", "args=", "-p", str(procs[1].pid)], capture_output=True, text=True).stdout
        fs = lmtp_cmd.split("--fs ", 1)[1].split(" ", 1)[0]
        db = work / "meta.db"
        (_, d_imap), conf = start_dovecot(work, [SRC], imap=True)
        total = fill(d_imap, args.messages, args.folders, args.size)
        for conns in sorted({1, args.connections}):
            user = f"dst{conns}@example.com"
            subprocess.run([str(BIN / "mailstore"), "user", "add", "--db", str(db), user, "--password-stdin"],
                           input="pw\n", text=True, check=True, capture_output=True)
            c0 = {"gateway": cpu_seconds([gw.pid]), "dovecot": cpu_seconds(dovecot_pids(conf))}
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            out = subprocess.run([str(BIN / "mailstore"), "import", "imap", "--from",
                                  f"imap://{SRC.replace('@', '%40')}:pw@127.0.0.1:{d_imap}", "--to", user, "--db",
                                  str(db), "--fs", fs, "--connections", str(conns), "--quiet"],
                                 capture_output=True, text=True)
            secs = time.perf_counter() - t0
            summary = json.loads(out.stdout.strip().splitlines()[-1])
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # the import process, reaped
            user_s, sys_s = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
            copied = summary["total"]["copied"]
            rows.append((conns, copied, secs, copied / secs, total / 1e6 / secs, user_s + sys_s,
                         cpu_seconds([gw.pid]) - c0["gateway"], cpu_seconds(dovecot_pids(conf)) - c0["dovecot"]))
    finally:
        stop_all(procs, conf, work)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.messages} messages, {total / 1e6:.1f} MB in {args.folders} folders (Dovecot CE over IMAP)")
    print(f"{'connections':<12}{'copied':>8}{'seconds':>9}{'msg/s':>8}{'MB/s':>7}{'importer CPU-s':>16}"
          f"{'gateway CPU-s':>15}{'dovecot CPU-s':>15}")
    for conns, copied, secs, rate, mbs, imp, gwc, dvc in rows:
        print(f"{conns:<12}{copied:>8}{secs:>9.1f}{rate:>8.0f}{mbs:>7.1f}{imp:>16.1f}{gwc:>15.1f}{dvc:>15.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
