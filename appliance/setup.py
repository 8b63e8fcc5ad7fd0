"""`mailstore init`: everything an appliance's data directory needs before its parts can start.

    DATA_DIR/mailstore.toml   the configuration (embedded defaults when absent)
    DATA_DIR/engine/          the local engine and its master.key (kind "local")
    DATA_DIR/meta.db          the mail metadata (unless [metadata] url names PostgreSQL)
    DATA_DIR/secrets.json     admin and shim keys, the dashboard login (0600)
    DATA_DIR/shim-fs.url      the shim's fs URL with its key (0600: never on a command line)
    DATA_DIR/logs, run, cache

Idempotent: what exists is kept (a key is never replaced), what is missing is made, and the
report says which.  `mailstore up` runs the same on every start; the systemd units
(`mailstore part NAME`) need it run once, by hand, as the service user.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.accounts import owner_field
from gateway.config import RadosSettings

from .config import ApplianceConfig, ConfigError, load, metadata

# secrets.json: {"admin"|"shim": {"access_key", "secret_key"}, "user": {"name", "password"} (a test
# user: `mailstore up` only), "dashboard": {"user", "password"}, "engine": {"kind"}}
Secrets = dict[str, dict[str, str]]


@dataclass
class Report:
    made: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def note(self, what: str, new: bool) -> None:
        (self.made if new else self.kept).append(what)


def write_private(path: Path, doc: Mapping[str, object]) -> None:
    """JSON readable by the owner only (it holds secrets)."""
    write_private_text(path, json.dumps(doc, indent=2) + "\n")


def write_private_text(path: Path, text: str) -> None:
    """Whole or not at all (a rename), mode 0600, on stable storage before the rename."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def configured_rados(data_dir: Path, cfg: ApplianceConfig) -> RadosSettings:
    """[engine] kind "rados" on a cluster the operator runs (ceph_conf set); the master key made once."""
    from gateway.engine.rados_api import make_master_key

    r = cfg.rados
    if not r["ceph_conf"]:
        raise ConfigError("[engine] kind \"rados\" without a ceph_conf is the appliance's own cluster, which "
                          "only `mailstore up --engine rados` runs; name your cluster's ceph.conf in "
                          f"{data_dir / 'mailstore.toml'}")
    master = Path(r["master_key"]) if r["master_key"] else data_dir / "master.key"
    if not r["master_key"] and not master.exists():
        make_master_key(master)
    return RadosSettings(r["ceph_conf"], r["ceph_user"], r["keyring"] or f"/etc/ceph/ceph.{r['ceph_user']}.keyring",
                         r["data_pool"], r["index_pool"], r["meta_pool"], master, r["namespace"])


def shim_fs_url(data_dir: Path, cfg: ApplianceConfig, sec: Secrets, cache: str = "cache") -> str:
    """The shim's fs stack: compress: above mail-crypt: (encrypted bytes do not compress) above
    the fscache (which so holds only what is stored: never decrypted mail) above s3:."""
    shim = sec["shim"]
    wrappers = (f"compress:{cfg.compress}:" if cfg.compress else "") + ("mail-crypt:" if cfg.mail_crypt else "")
    return (f"{wrappers}fscache:{cfg.cache_size}:{data_dir.resolve() / cache}:s3:http://{shim['access_key']}:"
            f"{shim['secret_key']}@{cfg.s3_listen}/?bucket={cfg.bucket}")


def init(data_dir: Path, rados: RadosSettings | None = None, *, db: str | None = None,
         test_user: bool = False, report: Report | None = None) -> Secrets:
    """Make what is missing in DATA_DIR (see the module); `rados`: the cluster of kind "rados"
    (None: the local engine in DATA_DIR/engine); `db`: the metadata store when not the
    configured one (`up --hosts 2`'s private PostgreSQL)."""
    report = report if report is not None else Report()
    report.note(f"{data_dir}/", not data_dir.exists())
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    report.note("mailstore.toml", not (data_dir / "mailstore.toml").exists())
    cfg = load(data_dir)
    for sub in ("logs", "run", "cache"):
        (data_dir / sub).mkdir(mode=0o700, exist_ok=True)
    db = db or metadata(cfg, data_dir)
    kind = "rados" if rados is not None else "local"
    path = data_dir / "secrets.json"
    found: Secrets = json.loads(path.read_text()) if path.exists() else {}
    made_on = found.get("engine", {}).get("kind", kind)
    if made_on != kind:
        raise ConfigError(f"{data_dir}'s keys and bucket are on the {made_on} engine, not {kind}: "
                          f"use another data directory for the {kind} engine")
    if kind == "local":
        report.note("engine/ (the local engine, its master.key)", not (data_dir / "engine" / "segments").is_dir())
    keys_new = "admin" not in found
    found.update(_engine_setup(data_dir, cfg, rados, found, report))
    found["engine"] = {"kind": kind}
    if "dashboard" not in found:
        found["dashboard"] = {"user": "admin", "password": secrets.token_urlsafe(12)}
        report.note("dashboard login", True)
    else:
        report.note("dashboard login", False)
    from mailstore.db import MetaStore
    from mailstore.users import hash_password

    is_file = not db.startswith("postgresql://")
    report.note(f"metadata {db}", is_file and not Path(db.removeprefix("sqlite:///")).exists())
    meta = MetaStore(db)  # the schema, made or brought up to date
    if test_user and "user" not in found:
        user, password = f"test@{cfg.domain}", secrets.token_urlsafe(12)
        if meta.get_user(user) is None:
            meta.add_user(user, hash_password(password))
            found["user"] = {"name": user, "password": password}
            report.note(f"mail user {user}", True)
    if keys_new or not path.exists() or json.loads(path.read_text()) != found:
        write_private(path, found)
    report.note("secrets.json", keys_new)
    fs_file = data_dir / "shim-fs.url"
    fs = shim_fs_url(data_dir, cfg, found) + "\n"
    if not fs_file.exists() or fs_file.read_text() != fs:
        report.note("shim-fs.url", True)
        write_private_text(fs_file, fs)
    else:
        report.note("shim-fs.url", False)
    return found


def _engine_setup(data_dir: Path, cfg: ApplianceConfig, rados: RadosSettings | None, found: Secrets,
                  report: Report) -> Secrets:
    """The admin and shim keys (unless secrets.json has them) and the bucket, on the engine."""
    from gateway.engine.api import Engine
    from gateway.engine.rados_api import RadosGateway
    from gateway.keys import KeyStore
    from gateway.policy import preset

    async def setup(engine: Engine) -> Secrets:
        made: Secrets = {}
        keys = KeyStore(engine)
        if "admin" not in found:
            admin = await keys.create("admin", admin=True)
            shim = await keys.create("mail-shim", admin=False, policy=preset(f"bucket:{cfg.bucket}"))
            made["admin"] = {"access_key": admin.access_key, "secret_key": admin.secret}
            made["shim"] = {"access_key": shim.access_key, "secret_key": shim.secret}
            report.note(f"admin key {admin.access_key}", True)
            report.note(f"shim key {shim.access_key} (bucket {cfg.bucket} only)", True)
        else:
            have = {k.access_key for k in await keys.list()}
            for name in ("admin", "shim"):
                if found[name]["access_key"] not in have:
                    raise ConfigError(f"{data_dir / 'secrets.json'} names the {name} key "
                                      f"{found[name]['access_key']}, which the engine does not have: is this the "
                                      "engine these secrets were made for? (restore both from one backup)")
            report.note(f"admin key {found['admin']['access_key']}", False)
        exists = await engine.bucket_exists(cfg.bucket)
        if not exists:
            if isinstance(engine, RadosGateway):  # obox's <hash>/<user>/...: one user's listing, one shard
                await engine.store.create_bucket(cfg.bucket, owner_field(""), shards=16, depth=2)
            else:
                await engine.create_bucket(cfg.bucket, owner_field(""))
        report.note(f"bucket {cfg.bucket}", not exists)
        return made

    if rados is not None:
        from gateway.engine.rados import RadosStore

        gw = RadosGateway(RadosStore(rados.conf, rados.user, rados.keyring, data_pool=rados.data_pool,
                                     index_pool=rados.index_pool, meta_pool=rados.meta_pool,
                                     namespace=rados.namespace), rados.master_key)
        try:
            return asyncio.run(setup(gw))
        finally:
            gw.close()
    from gateway.engine.local import LocalEngine
    from gateway.engine.local_api import run_on

    engine = LocalEngine(data_dir / "engine")
    try:
        return run_on(engine, setup)
    finally:
        engine.close()
