"""`mailstore up`: the whole appliance on one host, from DATA_DIR/mailstore.toml.

    HAProxy (packaging/haproxy.cfg) ─► gateway 1 ┐
                                    └► gateway 2 ┴─► one local engine (DATA_DIR/engine)
    LMTP + IMAP shim ─► fscache (DATA_DIR/cache) ─► HAProxy
    ops dashboard ◄── every part's /metrics, HAProxy's stats, the users table

First run: an administrator key, a key for the shim limited to the bucket,
the bucket, and a test mail user; their secrets stay in DATA_DIR/secrets.json
(mode 0600).  Every start prints the endpoints and writes them to
DATA_DIR/endpoints.json.  Each part runs as its own process in its own
session (a terminal's Ctrl-C reaches only this supervisor, which stops the
parts in order: shim and dashboard, balancer, gateways).  A part that exits on its own is
started again; the PIDs are in DATA_DIR/run/processes.json.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import NotRequired, TypedDict

from gateway.config import RadosSettings
from gateway.filemodes import too_open
from runtime import logs
from runtime.ceph import PrivateCeph

from .config import ApplianceConfig, load, metadata
from .parts import Part, parts, shifted, write_tls_pem
from .setup import Secrets, configured_rados, init, write_private, write_private_text

log = logging.getLogger("mailstore.up")


class Supervisor:
    def __init__(self, data_dir: Path, parts: list[Part]) -> None:
        self.data_dir = data_dir
        self.parts = parts
        self.logs = data_dir / "logs"
        self.logs.mkdir(mode=0o700, exist_ok=True)
        (data_dir / "run").mkdir(mode=0o700, exist_ok=True)
        self.stopping = False

    def start(self, part: Part, timeout: float = 30.0) -> None:
        # Until it opens its --log-file itself (and after, for what a crash writes to stderr).
        with open(self.logs / f"{part.name}.log", "ab") as out:  # the child keeps its own copy
            part.proc = subprocess.Popen(part.argv, env={**os.environ, **part.env}, start_new_session=True,
                                         stdin=subprocess.DEVNULL, stderr=out,
                                         stdout=subprocess.PIPE if part.announces else out)
        if part.announces:
            assert part.proc.stdout is not None
            line = part.proc.stdout.readline()  # the "listening" line, or EOF if it failed to start
            part.proc.stdout.close()
            if not line:
                raise RuntimeError(f"{part.name} did not start; see {self.logs / (part.name + '.log')}")
        self._write_pids()

    def _write_pids(self) -> None:
        pids = {p.name: p.proc.pid for p in self.parts if p.proc is not None}
        tmp = self.data_dir / "run" / "processes.json.tmp"
        tmp.write_text(json.dumps(pids, indent=2) + "\n")
        tmp.replace(self.data_dir / "run" / "processes.json")

    def watch_once(self) -> None:
        """Start again any part that exited on its own (not while stopping)."""
        for part in self.parts:
            if self.stopping or part.proc is None or part.proc.poll() is None:
                continue
            part.restarts += 1
            logs.event(log, logging.WARNING, "part exited; starting it again", part=part.name,
                       status=part.proc.returncode, restarts=part.restarts)
            time.sleep(min(5.0, 0.2 * part.restarts))
            try:
                self.start(part)
            except RuntimeError as exc:
                logs.event(log, logging.ERROR, "part did not start", part=part.name, error=str(exc))

    def reload(self, cfg: ApplianceConfig) -> None:
        """SIGHUP (logrotate's postrotate, a renewed certificate): every part of ours opens its
        log file again and reads its certificate again; HAProxy reloads (master-worker) when it
        serves HTTPS."""
        logs.reopen()
        write_tls_pem(self.data_dir, cfg)
        for part in self.parts:
            if part.proc is None or part.proc.poll() is not None or part.name == "postgres":
                continue
            if part.name != "haproxy":
                part.proc.send_signal(signal.SIGHUP)
            elif cfg.s3_https:
                part.proc.send_signal(signal.SIGUSR2)

    def stop(self, deadline: float = 30.0) -> None:
        """The shim first (no new mail), then the balancer, then the gateways."""
        self.stopping = True
        order = [p for p in self.parts if p.name.startswith(("imap", "pop3", "managesieve", "lmtp", "dashboard"))] + \
                [p for p in self.parts if p.name == "haproxy"] + \
                [p for p in self.parts if p.name.startswith("gateway")] + \
                [p for p in self.parts if p.name == "postgres"]  # the metadata last
        for part in order:
            if part.proc is None or part.proc.poll() is not None:
                continue
            if part.name == "postgres":  # its group: runuser and the server (fast shutdown)
                os.killpg(part.proc.pid, signal.SIGINT)
            else:
                # the gateways stop at once (SIGINT; in-flight requests finish); SIGTERM would drain
                part.proc.send_signal(signal.SIGINT if part.name.startswith("gateway") else signal.SIGTERM)
            try:
                part.proc.wait(timeout=deadline)
            except subprocess.TimeoutExpired:
                part.proc.kill()
                part.proc.wait()


def _wait_ready(stats: str, timeout: float = 30.0) -> None:
    """Until HAProxy sees both gateways UP (its stats CSV; health is not served through the front)."""
    end = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{stats}/stats;csv", timeout=2) as r:
                rows = [line.split(",") for line in r.read().decode().splitlines()]
                if sum(1 for f in rows if len(f) > 17 and f[0] == "gateways" and f[1].startswith("gw")
                       and f[17] == "UP") == 2:
                    return
        except OSError:
            pass
        if time.monotonic() > end:
            raise RuntimeError(f"HAProxy did not see both gateways up within {timeout:g}s")
        time.sleep(0.1)


class HostPort(TypedDict):
    host: str
    port: int


class Endpoints(TypedDict):
    """endpoints.json (its shape is documented in the README)."""

    s3: dict[str, str]  # endpoint, access_key, secret_key, bucket
    gateways: list[str]
    lmtp: HostPort
    imap: HostPort
    pop3: NotRequired[HostPort]  # when [mail] pop3 is set
    managesieve: NotRequired[HostPort]  # when [mail] managesieve is set
    user: NotRequired[dict[str, str]]  # name, password (not in a directory `mailstore init` made)
    dashboard: dict[str, str]  # url, user, password


def _endpoints(cfg: ApplianceConfig, sec: Secrets) -> Endpoints:
    def hp(addr: str) -> HostPort:
        host, _, port = addr.rpartition(":")
        return {"host": host.strip("[]"), "port": int(port)}
    ep: Endpoints = {"s3": {"endpoint": f"http://{cfg.s3_listen}", "access_key": sec["admin"]["access_key"],
                            "secret_key": sec["admin"]["secret_key"], "bucket": cfg.bucket},
                     "gateways": [f"http://{g}" for g in cfg.gateways],
                     "lmtp": hp(cfg.lmtp),
                     "imap": hp(cfg.imap),
                     "dashboard": {"url": f"http://{cfg.dashboard}/", **sec["dashboard"]}}
    if cfg.pop3:
        ep["pop3"] = hp(cfg.pop3)
    if cfg.managesieve:
        ep["managesieve"] = hp(cfg.managesieve)
    if "user" in sec:
        ep["user"] = dict(sec["user"])
    return ep


def busy_addresses(cfg: ApplianceConfig, hosts: int = 1) -> list[str]:
    """The configured addresses something else already listens on (a second appliance?)."""
    wanted = [cfg.s3_listen, *cfg.gateways, cfg.lb_stats, cfg.lmtp, cfg.imap, cfg.dashboard, cfg.s3_https,
              cfg.imaps, cfg.pop3, cfg.pop3s, cfg.managesieve]
    for k in range(1, hosts + 1):
        wanted += [shifted(cfg.lmtp_metrics, 10 * (k - 1)), shifted(cfg.imap_metrics, 10 * (k - 1))]
        if cfg.pop3 and cfg.pop3_metrics:
            wanted.append(shifted(cfg.pop3_metrics, 10 * (k - 1)))
        if cfg.managesieve and cfg.managesieve_metrics:
            wanted.append(shifted(cfg.managesieve_metrics, 10 * (k - 1)))
        if hosts > 1:
            wanted += [shifted(cfg.lmtp, 10 * k), shifted(cfg.imap, 10 * k)]
            if cfg.pop3:
                wanted.append(shifted(cfg.pop3, 10 * k))
            if cfg.managesieve:
                wanted.append(shifted(cfg.managesieve, 10 * k))
    busy = []
    for addr in filter(None, wanted):
        host, _, port = addr.rpartition(":")
        host = host.strip("[]")
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, int(port)))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    busy.append(addr)
    return busy


def _private_postgres(data_dir: Path, cfg: ApplianceConfig) -> tuple[Part, str]:
    """`--hosts 2` without a [metadata] url: the appliance's own PostgreSQL (runtime/postgres.py),
    run as a part; the shim's URL names no password, the parts find it in DATA_DIR/pgpass (0600)."""
    import hashlib

    from runtime.postgres import PrivatePostgres
    if os.geteuid() == 0:  # the server runs as the postgres user, who cannot enter a 0700 DATA_DIR
        tag = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
        root = Path("/var/lib/postgresql") / f"mailstore-{tag}"
    else:
        root = data_dir / "postgres"
    host, _, port = cfg.private_postgres.rpartition(":")
    pg = PrivatePostgres(root, int(port))
    pg.init()
    passfile = data_dir / "pgpass"
    write_private_text(passfile, f"{host}:{port}:*:{pg.user}:{pg.password}\n")
    os.environ["PGPASSFILE"] = str(passfile)
    return Part("postgres", pg.command(), announces=False), f"postgresql://{pg.user}@{host}:{port}/{pg.database}"


def _wait_postgres(url: str, timeout: float = 60.0) -> None:
    """Until the private cluster takes connections; its database made the first time."""
    import psycopg
    admin = url.rsplit("/", 1)[0] + "/postgres"
    database = url.rsplit("/", 1)[1]
    end = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(admin, autocommit=True, connect_timeout=2) as c:
                if c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
                    c.execute(f'CREATE DATABASE "{database}"')
                return
        except psycopg.OperationalError:
            if time.monotonic() > end:
                raise RuntimeError(f"the private PostgreSQL did not start within {timeout:g}s") from None
            time.sleep(0.2)


def _rados(data_dir: Path, cfg: ApplianceConfig) -> tuple[RadosSettings, PrivateCeph | None]:
    """The cluster [engine] names, or (no ceph_conf) the appliance's own in DATA_DIR/ceph,
    started here with its pools and the gateways' cephx user; the master key made once."""
    from gateway.engine.rados_api import make_master_key

    r = cfg.rados
    if r["ceph_conf"]:
        return configured_rados(data_dir, cfg), None
    master = Path(r["master_key"]) if r["master_key"] else data_dir / "master.key"
    if not r["master_key"] and not master.exists():
        make_master_key(master)
    pools = (r["data_pool"], r["index_pool"], r["meta_pool"])
    own = PrivateCeph(data_dir / "ceph")
    print(f"mailstore: starting the appliance's own Ceph cluster in {own.root} ...", flush=True)
    own.start()
    for pool in pools:
        own.create_pool(pool)
    keyring = str(own.create_user(r["ceph_user"], list(pools)))
    return RadosSettings(str(own.conf), r["ceph_user"], keyring, *pools, master, r["namespace"]), own


def run(data_dir: Path, hosts: int = 1, engine: str | None = None) -> int:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for problem in too_open(data_dir):
        print(f"mailstore: warning: other users may read the data: {problem}", file=sys.stderr)
    cfg = load(data_dir)
    (data_dir / "logs").mkdir(mode=0o700, exist_ok=True)
    logs.setup("up", cfg.log_level, cfg.log_format, copy_to=data_dir / "logs" / "up.log")
    if cfg.metadata_passfile:  # libpq finds PostgreSQL's password there, in every part (they inherit it)
        os.environ["PGPASSFILE"] = cfg.metadata_passfile
    from gateway.engine.local import LocalEngine
    from gateway.engine.recovery import IndexUnusable

    kind = engine or cfg.engine
    if kind == "local":
        try:  # the gateways would refuse (and be restarted for ever): say it once, here
            LocalEngine(data_dir / "engine", writer=False).close()
        except IndexUnusable as exc:
            print(f"mailstore: {exc}", file=sys.stderr)
            return 4
    db = metadata(cfg, data_dir)
    busy = busy_addresses(cfg, hosts)
    if busy:
        what = f"address {busy[0]} is" if len(busy) == 1 else f"addresses {', '.join(busy)} are"
        print(f"mailstore: {what} in use: is another appliance running? (addresses in "
              f"{data_dir / 'mailstore.toml'})", file=sys.stderr)
        return 3
    sup = Supervisor(data_dir, [])
    rados: RadosSettings | None = None
    own_ceph: PrivateCeph | None = None
    got_signal: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: got_signal.append(signum))
    hup: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, frame: hup.append(signum))
    pidfile = data_dir / "run" / "up.pid"  # for logrotate's postrotate (packaging/logrotate)
    pidfile.write_text(f"{os.getpid()}\n")
    try:
        if hosts > 1 and not db.startswith("postgresql://"):  # several hosts share one PostgreSQL
            pg_part, db = _private_postgres(data_dir, cfg)
            sup.parts.append(pg_part)
            sup.start(pg_part)
            _wait_postgres(db)
        if kind == "rados":
            rados, own_ceph = _rados(data_dir, cfg)
        sec = init(data_dir, rados, db=db, test_user=True)
        write_tls_pem(data_dir, cfg)
        sup.parts += parts(data_dir, cfg, sec, db, hosts, rados)
        for part in sup.parts:
            if got_signal:
                break
            if part.proc is not None:  # the private PostgreSQL, already up
                continue
            sup.start(part)
            if part.name == "haproxy":
                _wait_ready(cfg.lb_stats)
        if not got_signal:
            ep = _endpoints(cfg, sec)
            path = data_dir / "endpoints.json"
            write_private(path, ep)
            s3, user, dash = ep["s3"], ep.get("user"), ep["dashboard"]
            print(f"\nmailstore is up (data in {data_dir.resolve()})\n"
                  f"  S3 endpoint : {s3['endpoint']}   (HAProxy over {' and '.join(ep['gateways'])};"
                  f" path style; region {cfg.region})\n"
                  f"  access key  : {s3['access_key']}\n"
                  f"  secret key  : {s3['secret_key']}\n"
                  f"  bucket      : {s3['bucket']}\n"
                  f"  LMTP        : {ep['lmtp']['host']}:{ep['lmtp']['port']}\n"
                  f"  IMAP        : {ep['imap']['host']}:{ep['imap']['port']}\n"
                  + (f"  POP3        : {ep['pop3']['host']}:{ep['pop3']['port']}\n" if "pop3" in ep else "")
                  + (f"  ManageSieve : {ep['managesieve']['host']}:{ep['managesieve']['port']}\n"
                     if "managesieve" in ep else "")
                  + f"  mail user   : {user['name'] if user else '(none made: mailstore user add)'}"
                  f"{'   password: ' + user['password'] if user else ''}\n"
                  f"  dashboard   : {dash['url']}   user: {dash['user']}   password: {dash['password']}\n"
                  f"  (also in {path}; logs in {sup.logs}; Ctrl-C stops everything)\n", flush=True)
        while not got_signal:
            sup.watch_once()
            if hup:
                hup.clear()
                sup.reload(cfg)
            time.sleep(0.3)
    finally:
        sup.stop()
        if own_ceph is not None:
            own_ceph.stop()
        pidfile.unlink(missing_ok=True)
    logs.event(log, logging.INFO, "stopped")
    print("mailstore: stopped", flush=True)
    return 0
