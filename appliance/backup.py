"""`mailstore backup` and `mailstore restore`: everything of an appliance but the bulk object data.

The archive (a tar file, 0600: it holds every key) has

    MANIFEST.json            when, from where, what engine and metadata store
    mailstore.toml, secrets.json, shim-fs.url, pgpass, master.key   as found in DATA_DIR
    engine/master.key        the local engine's key: without it no access key's secret opens
    engine/index.db          the local engine's index, a consistent online copy (SQLite's backup API)
    meta.db | meta.pgdump    the mail metadata: SQLite's backup API, or pg_dump's custom format
    external/master.key      [engine] master_key when it lives outside DATA_DIR

The objects themselves (DATA_DIR/engine/segments and blobs, or the Ceph pools) are not in
it: they are large, append-only, and the truth.  Restoring puts these files back; the
engine's index is then brought up to the data files (a rebuild when they hold records the
copy does not know), and `mailstore reindex --all` brings the mail metadata up to the
bucket, flags from the state records (README "Backup and restore").
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from .config import load, metadata

PLAIN = ("mailstore.toml", "secrets.json", "shim-fs.url", "pgpass", "master.key")
FORMAT = 1


class BackupError(ValueError):
    pass


def _sqlite_copy(src: Path, dst: Path) -> None:
    """A consistent copy of a live SQLite database (writers may go on meanwhile)."""
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30.0)
    target = sqlite3.connect(dst)
    try:
        source.execute("PRAGMA busy_timeout=30000")
        source.backup(target)
    finally:
        target.close()
        source.close()


def backup(data_dir: Path, to: Path) -> dict[str, Any]:
    cfg = load(data_dir)
    if not (data_dir / "secrets.json").exists():
        raise BackupError(f"{data_dir} is not set up (no secrets.json): nothing to back up")
    db = metadata(cfg, data_dir)
    manifest: dict[str, Any] = {"format": FORMAT, "time": time.time(), "host": socket.gethostname(),
                                "data_dir": str(data_dir.resolve()), "engine": cfg.engine,
                                "metadata": "postgresql" if db.startswith("postgresql://") else "sqlite",
                                "files": []}
    tmp = to.with_name(to.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with tempfile.TemporaryDirectory(prefix="mailstore-backup-") as work, \
            os.fdopen(fd, "wb") as out, tarfile.open(fileobj=out, mode="w") as tar:
        def add(path: Path, name: str) -> None:
            tar.add(path, arcname=name, recursive=False)
            manifest["files"].append(name)
        for name in PLAIN:
            if (data_dir / name).is_file():
                add(data_dir / name, name)
        if cfg.engine == "local":
            engine = data_dir / "engine"
            add(engine / "master.key", "engine/master.key")
            _sqlite_copy(engine / "index.db", Path(work) / "index.db")
            add(Path(work) / "index.db", "engine/index.db")
        elif cfg.rados["master_key"]:
            add(Path(cfg.rados["master_key"]), "external/master.key")
            manifest["external_master_key"] = cfg.rados["master_key"]
        if db.startswith("postgresql://"):
            dump = Path(work) / "meta.pgdump"
            res = subprocess.run(["pg_dump", "--format=custom", "--no-owner", "--file", str(dump), db],
                                 capture_output=True, text=True)
            if res.returncode != 0:
                raise BackupError(f"pg_dump failed: {res.stderr.strip()}")
            add(dump, "meta.pgdump")
        else:
            _sqlite_copy(Path(db.removeprefix("sqlite:///")), Path(work) / "meta.db")
            add(Path(work) / "meta.db", "meta.db")
        body = json.dumps(manifest, indent=2).encode()
        info = tarfile.TarInfo("MANIFEST.json")
        info.size, info.mtime, info.mode = len(body), int(manifest["time"]), 0o600
        tar.addfile(info, io.BytesIO(body))
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(to)
    return manifest


def _running(data_dir: Path) -> str | None:
    pidfile = data_dir / "run" / "up.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text().split()[0]), 0)
            return f"`mailstore up` (pid in {pidfile})"
        except (ProcessLookupError, ValueError):
            pass
    if (data_dir / "engine").is_dir():
        from gateway.engine.local import EngineLock, EngineLocked
        try:
            EngineLock(data_dir / "engine", exclusive=True).close()
        except EngineLocked:
            return "a gateway on its engine"
    return None


def restore(archive: Path, data_dir: Path, force: bool = False) -> dict[str, Any]:
    """Put the archive's files back in DATA_DIR (the appliance stopped), then bring the engine's
    index up to its data files.  Refuses to overwrite a directory's state without `force`."""
    who = _running(data_dir)
    if who is not None:
        raise BackupError(f"{data_dir} is in use by {who}: stop the appliance first")
    with tarfile.open(archive) as tar:
        manifest = json.loads(tar.extractfile("MANIFEST.json").read())  # type: ignore[union-attr]
        if manifest.get("format") != FORMAT:
            raise BackupError(f"{archive}: not a mailstore backup of format {FORMAT}")
        present = [n for n in manifest["files"] if not n.startswith("external/") and (data_dir / n).exists()]
        if present and not force:
            raise BackupError(f"{data_dir} has {', '.join(present)}: restoring would replace them with the "
                              "backup's (--force to do so)")
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in manifest["files"]:
            src = tar.extractfile(name)
            assert src is not None
            dest = Path(manifest["external_master_key"]) if name == "external/master.key" else data_dir / name
            dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if name == "meta.pgdump":
                dest = data_dir / "run" / "meta.pgdump"
                dest.parent.mkdir(mode=0o700, exist_ok=True)
            tmp = dest.with_name(dest.name + ".restoring")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                shutil.copyfileobj(src, f)
                f.flush()
                os.fsync(f.fileno())
            for stale in (dest.with_name(dest.name + "-wal"), dest.with_name(dest.name + "-shm")):
                stale.unlink(missing_ok=True)  # a database's old log must not be replayed onto the copy
            tmp.replace(dest)
    for sub in ("logs", "run", "cache"):
        (data_dir / sub).mkdir(mode=0o700, exist_ok=True)
    report: dict[str, Any] = {"restored": manifest["files"], "backup_time": manifest["time"]}
    cfg = load(data_dir)
    if "meta.pgdump" in manifest["files"]:
        dump = data_dir / "run" / "meta.pgdump"
        res = subprocess.run(["pg_restore", "--clean", "--if-exists", "--no-owner", "--dbname",
                              metadata(cfg, data_dir), str(dump)], capture_output=True, text=True)
        dump.unlink()
        if res.returncode != 0:
            raise BackupError(f"pg_restore failed: {res.stderr.strip()}")
    if cfg.engine == "local":
        report["engine"] = _engine_to_data_files(data_dir / "engine")
    return report


def _engine_to_data_files(root: Path) -> str:
    """The restored index, brought up to the segments: as it is when they hold nothing newer,
    else rebuilt from them (the data files are the truth)."""
    from gateway import fsck
    from gateway.engine.local import EngineLock, LocalEngine
    from gateway.engine.recovery import IndexUnusable
    from runtime.progress import Progress

    try:
        LocalEngine(root, writer=False).close()
        return "index as backed up, brought up to the data files (their newer records adopted)"
    except IndexUnusable:
        pass
    with EngineLock(root, exclusive=True):
        show = Progress("rebuild", "segments")
        rep = fsck.rebuild(root, show)
        show.close()
    return f"index rebuilt from the data files ({rep.live} live records)"
