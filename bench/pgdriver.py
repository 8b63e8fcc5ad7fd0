"""Which PostgreSQL driver for the mail metadata (issue 15): psycopg 3 or asyncpg, measured.

The same work through each, against one private PostgreSQL (runtime/postgres.py):
the delivery transaction the shim commits for every message (take the next UID of
a mailbox with its row locked, insert the message row, move HIGHESTMODSEQ on) and
the point read IMAP makes most (a message's flags by UID).  8 concurrent workers,
a fixed number of operations each, three rounds, median; ops/s and the client's
CPU-µs per operation (the server's share is the same for all).

    ./dev bench pgdriver [--ops 400] [--workers 8]

Drivers: psycopg (sync, one connection per worker thread, as the SQLite code runs
in worker threads today), psycopg's asyncio API, and asyncpg.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from bench.lmtp import free_port
from runtime.postgres import PrivatePostgres

SCHEMA = """
DROP TABLE IF EXISTS bench_messages; DROP TABLE IF EXISTS bench_mailboxes;
CREATE TABLE bench_mailboxes(id bigint PRIMARY KEY, uidnext bigint NOT NULL, highestmodseq bigint NOT NULL);
CREATE TABLE bench_messages(mailbox_id bigint NOT NULL, uid bigint NOT NULL, flags text NOT NULL,
                            modseq bigint NOT NULL, object_key text NOT NULL, PRIMARY KEY(mailbox_id, uid));
INSERT INTO bench_mailboxes SELECT g, 1, 1 FROM generate_series(1, 16) g;
"""
RESERVE = "UPDATE bench_mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1 WHERE id = {} " \
          "RETURNING uidnext - 1, highestmodseq"
INSERT = "INSERT INTO bench_messages VALUES ({}, {}, '', {}, {})"
READ = "SELECT flags, modseq FROM bench_messages WHERE mailbox_id = {} AND uid = {}"


def sql(template: str, style: str) -> str:
    n = template.count("{}")
    return template.format(*(["%s"] * n if style == "psycopg" else [f"${i + 1}" for i in range(n)]))


def run_sync(url: str, workers: int, ops: int, kind: str) -> float:
    def worker(n: int) -> None:
        with psycopg.connect(url, autocommit=True) as c:  # as asyncpg: a statement outside BEGIN commits itself
            for i in range(ops):
                box = (n + i) % 16 + 1
                if kind == "deliver":
                    with c.transaction():
                        uid, modseq = c.execute(sql(RESERVE, "psycopg"), (box,)).fetchone()  # type: ignore[misc]
                        c.execute(sql(INSERT, "psycopg"), (box, uid, modseq, f"k{n}-{i}"))
                else:
                    c.execute(sql(READ, "psycopg"), (box, i % 50 + 1)).fetchone()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


async def _psycopg_async(url: str, workers: int, ops: int, kind: str) -> None:
    async def worker(n: int) -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
            for i in range(ops):
                box = (n + i) % 16 + 1
                if kind == "deliver":
                    async with c.transaction():
                        cur = await c.execute(sql(RESERVE, "psycopg"), (box,))
                        uid, modseq = await cur.fetchone()  # type: ignore[misc]
                        await c.execute(sql(INSERT, "psycopg"), (box, uid, modseq, f"k{n}-{i}"))
                else:
                    await (await c.execute(sql(READ, "psycopg"), (box, i % 50 + 1))).fetchone()
    await asyncio.gather(*(worker(n) for n in range(workers)))


async def _asyncpg(url: str, workers: int, ops: int, kind: str) -> None:
    import asyncpg

    async def worker(n: int) -> None:
        c = await asyncpg.connect(url)
        try:
            for i in range(ops):
                box = (n + i) % 16 + 1
                if kind == "deliver":
                    async with c.transaction():
                        uid, modseq = await c.fetchrow(sql(RESERVE, "asyncpg"), box)
                        await c.execute(sql(INSERT, "asyncpg"), box, uid, modseq, f"k{n}-{i}")
                else:
                    await c.fetchrow(sql(READ, "asyncpg"), box, i % 50 + 1)
        finally:
            await c.close()
    await asyncio.gather(*(worker(n) for n in range(workers)))


def timed_async(fn: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    asyncio.run(fn(*args))  # type: ignore[arg-type]
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=400, help="operations per worker and round")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    pg = PrivatePostgres(Path(tempfile.mkdtemp(prefix="mailstore-pgbench-")), free_port())
    pg.start()
    try:
        url = pg.url()
        drivers: dict[str, Callable[[str], float]] = {
            "psycopg (threads)": lambda kind: run_sync(url, args.workers, args.ops, kind),
            "psycopg (asyncio)": lambda kind: timed_async(_psycopg_async, url, args.workers, args.ops, kind),
            "asyncpg": lambda kind: timed_async(_asyncpg, url, args.workers, args.ops, kind),
        }
        total = args.workers * args.ops
        print(f"{'driver':20} {'work':8} {'ops/s':>8} {'client CPU-µs/op':>17}   (median of {args.rounds})")
        results: dict[tuple[str, str], float] = {}
        for kind in ("deliver", "read"):
            for name, run in drivers.items():
                rates, cpus = [], []
                for _ in range(args.rounds):
                    with psycopg.connect(url, autocommit=True) as c:
                        for stmt in SCHEMA.split(";"):
                            if stmt.strip():
                                c.execute(stmt)
                        if kind == "read":
                            c.execute("INSERT INTO bench_messages SELECT b, u, '', 1, 'k' "
                                      "FROM generate_series(1, 16) b, generate_series(1, 50) u")
                    cpu = time.process_time()
                    elapsed = run(kind)
                    cpus.append((time.process_time() - cpu) / total * 1e6)
                    rates.append(total / elapsed)
                results[(name, kind)] = statistics.median(rates)
                print(f"{name:20} {kind:8} {statistics.median(rates):8.0f} {statistics.median(cpus):17.0f}")
        for kind in ("deliver", "read"):
            base = results[("psycopg (threads)", kind)]
            print(f"{kind}: asyncpg / psycopg (threads) = {results[('asyncpg', kind)] / base:.2f}x, "
                  f"psycopg (asyncio) / psycopg (threads) = {results[('psycopg (asyncio)', kind)] / base:.2f}x")
    finally:
        pg.remove()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
