"""`mailstore`: one command for the whole appliance.

The gateway, the cache tier and the mail shim each register their own
subcommands; this module only assembles them (it is the one place that may
import every part).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cache import cli as cache_cli
from gateway import cli as gateway_cli
from gateway.filemodes import PRIVATE_UMASK
from mailstore import cli as mailstore_cli
from runtime import logs

from .parts import NAMES


def cmd_up(args: argparse.Namespace) -> int:
    from . import up

    return up.run(Path(args.data_dir), args.hosts, args.engine)


def cmd_init(args: argparse.Namespace) -> int:
    from .config import load
    from .setup import Report, configured_rados, init

    data_dir = Path(args.data_dir)
    report = Report()
    if (data_dir / "mailstore.toml").exists():
        cfg = load(data_dir)
        rados = configured_rados(data_dir, cfg) if cfg.engine == "rados" else None
    else:
        rados = None  # a new directory gets the embedded defaults: the local engine
    sec = init(data_dir, rados, report=report)
    print(f"mailstore init: {data_dir.resolve()}")
    for what in report.made:
        print(f"  made: {what}")
    for what in report.kept:
        print(f"  kept: {what}")
    print(f"  the admin key's secret, the shim's key and the dashboard login are in {data_dir / 'secrets.json'}"
          f" (0600); admin key id {sec['admin']['access_key']}")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from .backup import backup

    manifest = backup(Path(args.data_dir), Path(args.to))
    print(json.dumps({"archive": str(Path(args.to).resolve()), "files": manifest["files"]}))
    print(f"mailstore backup: {args.to} holds every key: keep it as safe as the keys themselves. The object "
          "data is not in it (README: Backup and restore).", file=sys.stderr)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from .backup import restore

    report = restore(Path(args.from_), Path(args.data_dir), force=args.force)
    print(json.dumps(report))
    print(f"mailstore restore: done. Next: start the appliance, then `mailstore reindex --all --data-dir "
          f"{args.data_dir}` to bring the mail metadata up to the bucket.", file=sys.stderr)
    return 0


def cmd_part(args: argparse.Namespace) -> int:
    from .parts import exec_part

    exec_part(Path(args.data_dir), args.name, prepare=args.prepare)
    if args.prepare:
        return 0
    return 1  # not reached: exec_part becomes the part


def cmd_dashboard(args: argparse.Namespace) -> int:
    from . import dashboard

    logs.setup_from(args, "dashboard")
    return dashboard.run(Path(args.data_dir), args.interval)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mailstore", description="Mail object storage appliance")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the whole appliance from DATA_DIR/mailstore.toml (made on first run)")
    up.add_argument("--data-dir", default="data", help="the appliance's directory (default: ./data)")
    up.add_argument("--hosts", type=int, choices=[1, 2], default=1,
                    help="shim hosts to run (2: on PostgreSQL, behind HAProxy's LMTP and IMAP fronts)")
    up.add_argument("--engine", choices=("local", "rados"),
                    help="where the gateways keep objects (default: [engine] kind in mailstore.toml); rados "
                         "without a ceph_conf there starts the appliance's own Ceph cluster in DATA_DIR/ceph")
    up.set_defaults(fn=cmd_up)
    init = sub.add_parser("init", help="make what DATA_DIR needs before its parts start (idempotent): "
                                       "config, engine, keys, bucket, dashboard login, secrets")
    init.add_argument("--data-dir", required=True, help="the appliance's directory (made 0700 if absent)")
    init.set_defaults(fn=cmd_init)
    bk = sub.add_parser("backup", help="an online, consistent archive of DATA_DIR's keys, config, engine index "
                                       "and mail metadata (not the object data)")
    bk.add_argument("--data-dir", required=True, help="the appliance's directory")
    bk.add_argument("--to", required=True, help="the archive to write (a tar file, made 0600)")
    bk.set_defaults(fn=cmd_backup)
    rs = sub.add_parser("restore", help="put a backup back into DATA_DIR (the appliance stopped)")
    rs.add_argument("--from", dest="from_", required=True, help="the archive `mailstore backup` wrote")
    rs.add_argument("--data-dir", required=True, help="the appliance's directory")
    rs.add_argument("--force", action="store_true", help="replace what DATA_DIR has with the backup's")
    rs.set_defaults(fn=cmd_restore)
    part = sub.add_parser("part", help="run one part of the appliance in DATA_DIR as mailstore.toml says "
                                       "(what the systemd units run)")
    part.add_argument("name", choices=NAMES, help="the part")
    part.add_argument("--data-dir", required=True, help="the appliance's directory, made by `mailstore init`")
    part.add_argument("--prepare", action="store_true",
                      help="only write what the part reads (HAProxy's TLS PEM) and exit: the haproxy unit's reload")
    part.set_defaults(fn=cmd_part)
    dash = sub.add_parser("dashboard", help="run the ops dashboard of the appliance in DATA_DIR")
    dash.add_argument("--data-dir", default="data", help="the appliance's directory (default: ./data)")
    dash.add_argument("--interval", type=float, default=5.0, help="seconds between scrapes")
    logs.add_arguments(dash)
    dash.set_defaults(fn=cmd_dashboard)
    gateway_cli.register(sub)
    cache_cli.register(sub)
    mailstore_cli.register(sub)
    return p


# The mail commands that may make a new SQLite metadata file: the servers, and reindex (a
# rebuild into a new, empty store is how a lost one comes back)
CREATING = ("lmtp", "imap", "pop3", "managesieve", "reindex")


def _mail_store(args: argparse.Namespace) -> None:
    """The mail commands' --db and --fs: given, or from the appliance's --data-dir.  A SQLite
    file that does not exist is refused except by CREATING (a typo would get an empty store)."""
    from .config import load, metadata

    if args.data_dir:
        data_dir = Path(args.data_dir)
        if not (data_dir / "mailstore.toml").exists():
            raise ValueError(f"{data_dir} is not an appliance's directory (no mailstore.toml); "
                             "`mailstore init --data-dir DIR` makes one")
        cfg = load(data_dir)
        args.db = args.db or metadata(cfg, data_dir)
        if "fs" in args and not args.fs and (args.command != "user" or args.action in ("add", "passwd")):
            args.fs = f"@{data_dir / 'shim-fs.url'}"  # (user delete --fs: only when asked)
    if not args.db or ("fs" in args and args.fs is None and args.command != "user"):
        raise ValueError(f"mailstore {args.command}: give the appliance's --data-dir, or --db"
                         f"{'' if 'fs' not in args or args.command == 'user' else ' and --fs'}")
    db = str(args.db)
    if args.command not in CREATING and not db.startswith("postgresql://"):
        path = Path(db.removeprefix("sqlite:///"))
        if not path.is_file():
            raise ValueError(f"no metadata store at {path} (made by `mailstore init` or the LMTP and IMAP "
                             "servers): give the appliance's --data-dir or the right --db")


def main(argv: list[str] | None = None) -> int:
    # Mail, password hashes and keys: nothing this process creates is for other users.
    os.umask(PRIVATE_UMASK)
    args = parser().parse_args(argv)
    if "db" in args and args.command != "metadata":
        try:
            _mail_store(args)
        except ValueError as exc:
            print(f"mailstore: {exc}", file=sys.stderr)
            return 2
    return gateway_cli.run_command(args)


if __name__ == "__main__":
    sys.exit(main())
