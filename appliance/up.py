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

import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from gateway.accounts import owner_field
from gateway.config import RadosSettings
from gateway.filemodes import too_open
from gateway.rados_cli import rados_argv
from runtime import logs
from runtime.ceph import PrivateCeph

from .config import ApplianceConfig, ConfigError, load, metadata

ROOT = Path(__file__).resolve().parents[1]
HAPROXY_CFG = ROOT / "packaging" / "haproxy.cfg"
HAPROXY_MAIL_CFG = ROOT / "packaging" / "haproxy-mail.cfg"  # TCP fronts over several shim hosts
BIN = Path(sys.executable).parent
log = logging.getLogger("mailstore.up")


# secrets.json: {"admin"|"shim": {"access_key", "secret_key"}, "user": {"name", "password"},
#                "dashboard": {"user", "password"}}
Secrets = dict[str, dict[str, str]]


@dataclass
class Part:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    announces: bool = True  # prints one JSON "listening" line when it is up
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0


def _first_run(data_dir: Path, cfg: ApplianceConfig, db: str, rados: RadosSettings | None) -> Secrets:
    """Keys, bucket and test user, made once; their secrets, on every run."""
    path = data_dir / "secrets.json"
    kind = "rados" if rados is not None else "local"
    if path.exists():
        found: Secrets = json.loads(path.read_text())
        if "dashboard" not in found:  # made by an older version
            found["dashboard"] = {"user": "admin", "password": secrets.token_urlsafe(12)}
            _write_private(path, found)
        made_on = found.get("engine", {}).get("kind", "local")
        if made_on != kind:
            raise ConfigError(f"{data_dir}'s keys and bucket are on the {made_on} engine, not {kind}: "
                              f"use another data directory for the {kind} engine")
        return found
    from gateway.engine.api import Engine
    from gateway.engine.rados_api import RadosGateway
    from gateway.keys import AccessKey, KeyStore
    from gateway.policy import preset
    from mailstore.db import MetaStore
    from mailstore.users import hash_password

    async def first_keys(engine: Engine) -> tuple[AccessKey, AccessKey]:
        keys = KeyStore(engine)
        admin = await keys.create("admin", admin=True)
        shim = await keys.create("mail-shim", admin=False, policy=preset(f"bucket:{cfg.bucket}"))
        if not await engine.bucket_exists(cfg.bucket):
            if isinstance(engine, RadosGateway):  # obox's <hash>/<user>/...: one user's listing, one shard
                await engine.store.create_bucket(cfg.bucket, owner_field(""), shards=16, depth=2)
            else:
                await engine.create_bucket(cfg.bucket, owner_field(""))
        return admin, shim

    if rados is not None:
        import asyncio

        from gateway.engine.rados import RadosStore

        gw = RadosGateway(RadosStore(rados.conf, rados.user, rados.keyring, data_pool=rados.data_pool,
                                     index_pool=rados.index_pool, meta_pool=rados.meta_pool,
                                     namespace=rados.namespace), rados.master_key)
        try:
            admin, shim = asyncio.run(first_keys(gw))
        finally:
            gw.close()
    else:
        from gateway.engine.local import LocalEngine
        from gateway.engine.local_api import run_on

        engine = LocalEngine(data_dir / "engine")
        try:
            admin, shim = run_on(engine, first_keys)
        finally:
            engine.close()
    user, password = f"test@{cfg.domain}", secrets.token_urlsafe(12)
    meta = MetaStore(db)
    if meta.get_user(user) is None:
        meta.add_user(user, hash_password(password))
    found = {"admin": {"access_key": admin.access_key, "secret_key": admin.secret},
             "shim": {"access_key": shim.access_key, "secret_key": shim.secret},
             "user": {"name": user, "password": password},
             "dashboard": {"user": "admin", "password": secrets.token_urlsafe(12)},
             "engine": {"kind": kind}}
    _write_private(path, found)
    return found


def _write_private(path: Path, doc: Mapping[str, object]) -> None:
    """JSON readable by the owner only (it holds secrets)."""
    _write_private_text(path, json.dumps(doc, indent=2) + "\n")


def _write_private_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def _shifted(addr: str, by: int) -> str:
    host, _, port = addr.rpartition(":")
    return f"{host}:{int(port) + by}"


def _log_argv(data_dir: Path, cfg: ApplianceConfig, part: str) -> list[str]:
    """A part's log options: its file in DATA_DIR/logs (reopened on SIGHUP), level and format."""
    return ["--log-file", str(data_dir / "logs" / f"{part}.log"), "--log-level", cfg.log_level,
            "--log-format", cfg.log_format]


def _parts(data_dir: Path, cfg: ApplianceConfig, sec: Secrets, db: str, hosts: int = 1,
           rados: RadosSettings | None = None) -> list[Part]:
    mailstore = str(BIN / "mailstore")
    engine = ["--data-dir", str(data_dir / "engine")] if rados is None else ["--engine", "rados", *rados_argv(rados)]
    gateways = [Part(f"gateway{i}", [mailstore, "gateway", *engine, "--listen", addr, "--region", cfg.region])
                for i, addr in enumerate(cfg.gateways, 1)]
    haproxy = Part("haproxy", [shutil.which("haproxy") or "/usr/sbin/haproxy", "-f", str(HAPROXY_CFG), "-db"],
                   env={"MAILSTORE_S3_BIND": cfg.s3_listen, "MAILSTORE_GW1": cfg.gateways[0],
                        "MAILSTORE_GW2": cfg.gateways[1], "MAILSTORE_LB_STATS": cfg.lb_stats},
                   announces=False)
    if hosts > 1:  # the LMTP and IMAP addresses become HAProxy's TCP fronts over the shim hosts
        haproxy.argv[3:3] = ["-f", str(HAPROXY_MAIL_CFG)]
        haproxy.env.update({"MAILSTORE_LMTP_BIND": cfg.lmtp, "MAILSTORE_IMAP_BIND": cfg.imap})
        for k in (1, 2):
            haproxy.env[f"MAILSTORE_LMTP{k}"] = _shifted(cfg.lmtp, 10 * k)
            haproxy.env[f"MAILSTORE_IMAP{k}"] = _shifted(cfg.imap, 10 * k)
    shim = sec["shim"]
    shims: list[Part] = []
    for k in range(1, hosts + 1):
        # One host: the configured addresses. Several: host k 10*k ports above them (the
        # configured ones are HAProxy's fronts), each with its own cache; host 1 keeps the
        # configured metrics addresses (the dashboard reads them), host 2 10 above.
        suffix = "" if hosts == 1 else str(k)
        cache = data_dir / ("cache" if hosts == 1 else f"cache{k}")
        fs = (f"fscache:{cfg.cache_size}:{cache}:s3:http://{shim['access_key']}:{shim['secret_key']}"
              f"@{cfg.s3_listen}/?bucket={cfg.bucket}")
        # The URL holds the shim's S3 secret: the processes read it from a 0600 file,
        # never from their command line (which every local user sees in ps).
        fs_file = data_dir / f"shim-fs{suffix}.url"
        _write_private_text(fs_file, fs + "\n")
        fs = f"@{fs_file}"
        lmtp_at, imap_at = (cfg.lmtp, cfg.imap) if hosts == 1 else (_shifted(cfg.lmtp, 10 * k),
                                                                    _shifted(cfg.imap, 10 * k))
        metrics_by = 10 * (k - 1)
        shims.append(Part(f"lmtp{suffix}", [mailstore, "lmtp", "--db", db, "--fs", fs, "--listen", lmtp_at,
                                            "--domain", cfg.domain, "--max-recipients", str(cfg.max_recipients),
                                            "--metrics-listen", _shifted(cfg.lmtp_metrics, metrics_by)]))
        shims.append(Part(f"imap{suffix}", [mailstore, "imap", "--db", db, "--fs", fs, "--listen", imap_at,
                                            "--domain", cfg.domain,
                                            "--metrics-listen", _shifted(cfg.imap_metrics, metrics_by)]))
    dashboard = Part("dashboard", [mailstore, "dashboard", "--data-dir", str(data_dir), "--interval",
                                   str(cfg.dashboard_interval)],
                     env={"MAILSTORE_METADATA": db})  # the store this run uses (also a private PostgreSQL)
    for part in [*gateways, *shims, dashboard]:
        part.argv += _log_argv(data_dir, cfg, part.name)
    return [*gateways, haproxy, *shims, dashboard]


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

    def reopen_logs(self) -> None:
        """SIGHUP (logrotate's postrotate): every part of ours opens its log file again."""
        logs.reopen()
        for part in self.parts:
            if part.proc is not None and part.proc.poll() is None and part.name not in ("haproxy", "postgres"):
                part.proc.send_signal(signal.SIGHUP)

    def stop(self, deadline: float = 30.0) -> None:
        """The shim first (no new mail), then the balancer, then the gateways."""
        self.stopping = True
        order = [p for p in self.parts if p.name.startswith(("imap", "lmtp", "dashboard"))] + \
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
    user: dict[str, str]  # name, password
    dashboard: dict[str, str]  # url, user, password


def _endpoints(cfg: ApplianceConfig, sec: Secrets) -> Endpoints:
    def hp(addr: str) -> HostPort:
        host, _, port = addr.rpartition(":")
        return {"host": host.strip("[]"), "port": int(port)}
    return {"s3": {"endpoint": f"http://{cfg.s3_listen}", "access_key": sec["admin"]["access_key"],
                   "secret_key": sec["admin"]["secret_key"], "bucket": cfg.bucket},
            "gateways": [f"http://{g}" for g in cfg.gateways],
            "lmtp": hp(cfg.lmtp),
            "imap": hp(cfg.imap),
            "user": dict(sec["user"]),
            "dashboard": {"url": f"http://{cfg.dashboard}/", **sec["dashboard"]}}


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
    _write_private_text(passfile, f"{host}:{port}:*:{pg.user}:{pg.password}\n")
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
    master = Path(r["master_key"]) if r["master_key"] else data_dir / "master.key"
    if not r["master_key"] and not master.exists():
        make_master_key(master)
    pools = (r["data_pool"], r["index_pool"], r["meta_pool"])
    own = None
    if r["ceph_conf"]:
        conf, keyring = r["ceph_conf"], r["keyring"] or f"/etc/ceph/ceph.{r['ceph_user']}.keyring"
    else:
        own = PrivateCeph(data_dir / "ceph")
        print(f"mailstore: starting the appliance's own Ceph cluster in {own.root} ...", flush=True)
        own.start()
        for pool in pools:
            own.create_pool(pool)
        conf, keyring = str(own.conf), str(own.create_user(r["ceph_user"], list(pools)))
    return RadosSettings(conf, r["ceph_user"], keyring, *pools, master, r["namespace"]), own


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
        sec = _first_run(data_dir, cfg, db, rados)
        sup.parts += _parts(data_dir, cfg, sec, db, hosts, rados)
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
            _write_private(path, ep)
            s3, user, dash = ep["s3"], ep["user"], ep["dashboard"]
            print(f"\nmailstore is up (data in {data_dir.resolve()})\n"
                  f"  S3 endpoint : {s3['endpoint']}   (HAProxy over {' and '.join(ep['gateways'])};"
                  f" path style; region {cfg.region})\n"
                  f"  access key  : {s3['access_key']}\n"
                  f"  secret key  : {s3['secret_key']}\n"
                  f"  bucket      : {s3['bucket']}\n"
                  f"  LMTP        : {ep['lmtp']['host']}:{ep['lmtp']['port']}\n"
                  f"  IMAP        : {ep['imap']['host']}:{ep['imap']['port']}\n"
                  f"  mail user   : {user['name']}   password: {user['password']}\n"
                  f"  dashboard   : {dash['url']}   user: {dash['user']}   password: {dash['password']}\n"
                  f"  (also in {path}; logs in {sup.logs}; Ctrl-C stops everything)\n", flush=True)
        while not got_signal:
            sup.watch_once()
            if hup:
                hup.clear()
                sup.reopen_logs()
            time.sleep(0.3)
    finally:
        sup.stop()
        if own_ceph is not None:
            own_ceph.stop()
        pidfile.unlink(missing_ok=True)
    logs.event(log, logging.INFO, "stopped")
    print("mailstore: stopped", flush=True)
    return 0
