"""RADOS benchmark: our S3 gateway on RADOS vs Ceph RGW, on the same throw-away cluster and
the same OSD, driven by the same client, in one run.

    python -m bench.rados [--ops 2000] [--sizes 4096,65536] [--concurrency 32] [--rounds 3]
                          [--workers 2] [--store]

One private cluster (runtime/ceph.py: one monitor, one manager, one BlueStore OSD on a
sparse file, loopback). On it, Ceph's radosgw (beast frontend) with its own pools, and our
gateway (`mailstore gateway --engine rados`, --workers processes) with its data, index and
metadata pools. Both are driven over S3 by bench.s3's pre-signed raw HTTP client. For each
object size and each of PUT, GET, HEAD and LIST (100 keys under a prefix) it prints ops/s,
p50/p99, the server's CPU per request, the RADOS operations the OSD executed per request
(its op_r/op_w/op_rw counters) and the servers' RSS; the two take turns --rounds times
(medians). Our bucket is made as for mail (16 index shards chosen by the first two path
components, as `<hash>/<user>/` in obox's layout), so a LIST under `tag/nn/` asks one
shard; RGW's asks all of its 11.

--store adds a third contender: the RADOS store driven directly from asyncio (no HTTP, no
SigV4), which shows what the S3 layer costs.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.engine.model import ObjectMeta
from gateway.engine.rados import RadosStore
from runtime.ceph import PrivateCeph

from .s3 import BIN, BUCKET, Result, Server, _children, drive, ensure_bucket, free_port, phase_requests

OPS = ("PUT", "GET", "HEAD", "LIST")
CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK


def server_pids(server: Server) -> list[int]:
    return [p for proc in (server.proc, *server.extra) for p in [proc.pid] + _children(proc.pid)]


async def drive_store(store: RadosStore, op: str, n: int, size: int, concurrency: int, tag: str) -> Result:
    body = os.urandom(size)
    meta = ObjectMeta(size, f'"{hashlib.md5(body).hexdigest()}"', time.time(), "message/rfc822")
    it = iter(range(n))
    lat: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        for i in it:
            key = f"{tag}/{i % 64:02x}/obj{i:07d}"
            t = time.perf_counter()
            try:
                if op == "PUT":
                    await store.put(BUCKET, key, meta, body)
                elif op == "GET":
                    await store.get(BUCKET, key)
                elif op == "HEAD":
                    await store.head(BUCKET, key)
                else:
                    await store.list_objects(BUCKET, f"{tag}/{i % 64:02x}/", "", None, 100)
            except Exception:  # noqa: BLE001 - counted, as bench.s3 counts non-2xx
                errors += 1
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(len(lat), errors, time.perf_counter() - t0, lat)


def start_ours(cluster: PrivateCeph, work: Path, workers: int) -> tuple[Server, tuple[str, str]]:
    """Our gateway as an operator runs it on a cluster: its own pools and cephx user, a master key,
    the mail bucket sharded by its first two path components."""
    pools = {"--data-pool": "ms-data", "--index-pool": "ms-index", "--meta-pool": "ms-meta"}
    for pool in pools.values():
        cluster.create_pool(pool, pg_num=32)
    keyring = cluster.create_user("client.bench", list(pools.values()))
    master = work / "master.key"
    args = ["--ceph-conf", str(cluster.conf), "--ceph-user", "client.bench", "--keyring", str(keyring),
            *[a for kv in pools.items() for a in kv]]

    def cli(*argv: str) -> str:
        return subprocess.run([str(BIN / "mailstore"), *argv], capture_output=True, text=True, check=True,
                              timeout=120).stdout

    cli("rados", "master-key", str(master))
    key = json.loads(cli("rados", "key-create", "bench", *args, "--master-key", str(master)))
    cli("rados", "bucket-create", BUCKET, "--shards", "16", "--shard-depth", "2", *args)
    proc = subprocess.Popen([str(BIN / "mailstore"), "gateway", "--engine", "rados", *args, "--master-key",
                             str(master), "--listen", "127.0.0.1:0", "--workers", str(workers)],
                            stdout=subprocess.PIPE, stderr=open(work / "gateway.log", "w"), text=True)
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    return Server(f"ours x{workers}", info["endpoint"], proc, work), (key["AccessKeyId"], key["SecretAccessKey"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--sizes", default="4096,65536")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="our gateway's processes (RGW uses every core)")
    ap.add_argument("--store", action="store_true", help="also drive the RADOS store directly (no HTTP)")
    ap.add_argument("--only", default=",".join(OPS), help="the operations to run (PUT first: the others read its keys)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="mailstore-radosbench-"))
    cluster = PrivateCeph(work / "ceph")
    # (ops/s, p50, p99, RADOS ops/req, server CPU us/req, errors, OSD CPU us/req, client CPU us/req)
    rows: dict[tuple[int, str, str], list[tuple[float, float, float, float, float, int, float, float]]] = {}
    rss: dict[str, float] = {}
    servers: list[Server] = []
    try:
        cluster.start()
        ours, our_key = start_ours(cluster, work, args.workers)
        servers.append(ours)
        rgw_port = free_port()
        rgw_key = cluster.start_rgw(rgw_port)
        rgw = Server("rgw", f"http://127.0.0.1:{rgw_port}", cluster.procs["rgw.x"], work)
        asyncio.run(ensure_bucket(rgw.endpoint, rgw_key, 60))
        store = None
        if args.store:
            store = RadosStore(str(cluster.conf), "client.bench", str(cluster.keyring("client.bench")),
                               data_pool="ms-data", index_pool="ms-index", meta_pool="ms-meta")
        cluster.wait_clean()
        contenders: list[tuple[str, Server | None, tuple[str, str]]] = [("ours", ours, our_key), ("rgw", rgw, rgw_key)]
        if store is not None:
            contenders.append(("store", None, our_key))
        for r in range(args.rounds):
            for size in sizes:
                for op in [o for o in OPS if o in args.only.split(",")]:
                    tag = f"r{r}s{size}"
                    for name, server, key in contenders:
                        before = cluster.osd_ops()
                        osd_pids = [p.pid for n, p in cluster.procs.items() if n.startswith("osd.")]
                        cpu0 = cpu_seconds(server_pids(server)) if server is not None else 0.0
                        osd0, me0 = cpu_seconds(osd_pids), cpu_seconds([os.getpid()])
                        if server is None:
                            assert store is not None
                            res = asyncio.run(drive_store(store, op, args.ops, size, args.concurrency, tag))
                        else:
                            reqs = phase_requests(op, server.endpoint, size, args.ops, key, tag)
                            res = asyncio.run(drive(server.endpoint, reqs, args.concurrency, op == "HEAD"))
                            rss[name] = max(rss.get(name, 0.0), server.rss_mb())
                        cpu = (cpu_seconds(server_pids(server)) - cpu0) if server is not None else 0.0
                        osd, me = cpu_seconds(osd_pids) - osd0, cpu_seconds([os.getpid()]) - me0
                        rados_ops = sum(cluster.osd_ops().values()) - sum(before.values())
                        n = max(res.ops, 1)
                        rows.setdefault((size, op, name), []).append(
                            (res.rate, res.pct(0.5), res.pct(0.99), rados_ops / n, cpu / n * 1e6, res.errors,
                             osd / n * 1e6, me / n * 1e6))
        if store is not None:
            store.close()
    finally:
        for s in servers:
            s.stop()
        cluster.remove()
        shutil.rmtree(work, ignore_errors=True)  # the master key, the gateway's log
    print(f"{args.concurrency} concurrent, {args.ops} ops a phase, median of {args.rounds} alternating rounds; "
          f"ours: {args.workers} gateway process(es); RSS (max): " + ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items()))
    print("CPU in microseconds per request: the server's processes, the OSD's, and this client's")
    print(f"{'size':>6} {'op':<5}{'server':<7}{'ops/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'server':>8}{'OSD':>6}"
          f"{'client':>7}{'RADOS ops/req':>14}{'errors':>7}")
    for (size, op, name), rs in rows.items():
        def med(i: int, rs: list[tuple[float, float, float, float, float, int, float, float]] = rs) -> float:
            return statistics.median(x[i] for x in rs)
        print(f"{size:>6} {op:<5}{name:<7}{med(0):>8.0f}{med(1):>8.1f}{med(2):>8.1f}{med(4):>8.0f}{med(6):>6.0f}"
              f"{med(7):>7.0f}{med(3):>14.2f}{sum(x[5] for x in rs):>7}")
    for size in sizes:
        for op in OPS:
            ours_r, theirs = rows.get((size, op, "ours")), rows.get((size, op, "rgw"))
            if ours_r and theirs:
                ratio = statistics.median(x[0] for x in ours_r) / statistics.median(x[0] for x in theirs)
                print(f"{size:>6} {op}: ours / rgw {ratio:.2f}x ops/s; RADOS ops per request "
                      f"{statistics.median(x[3] for x in ours_r):.2f} vs {statistics.median(x[3] for x in theirs):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
