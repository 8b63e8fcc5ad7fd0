"""`mailstore`: one command for the whole appliance.

The gateway, the cache tier and the mail shim each register their own
subcommands; this module only assembles them (it is the one place that may
import every part).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cache import cli as cache_cli
from gateway import cli as gateway_cli
from gateway.filemodes import PRIVATE_UMASK
from mailstore import cli as mailstore_cli
from runtime import logs


def cmd_up(args: argparse.Namespace) -> int:
    from . import up

    return up.run(Path(args.data_dir), args.hosts, args.engine)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from . import dashboard

    logs.setup_from(args, "dashboard")
    return dashboard.run(Path(args.data_dir), args.interval)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mailstore", description="Mail object storage appliance")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the whole appliance from DATA_DIR/mailstore.toml (made on first run)")
    up.add_argument("--data-dir", default="data")
    up.add_argument("--hosts", type=int, choices=[1, 2], default=1,
                    help="shim hosts to run (2: on PostgreSQL, behind HAProxy's LMTP and IMAP fronts)")
    up.add_argument("--engine", choices=("local", "rados"),
                    help="where the gateways keep objects (default: [engine] kind in mailstore.toml); rados "
                         "without a ceph_conf there starts the appliance's own Ceph cluster in DATA_DIR/ceph")
    up.set_defaults(fn=cmd_up)
    dash = sub.add_parser("dashboard", help="run the ops dashboard of the appliance in DATA_DIR")
    dash.add_argument("--data-dir", default="data")
    dash.add_argument("--interval", type=float, default=5.0, help="seconds between scrapes")
    logs.add_arguments(dash)
    dash.set_defaults(fn=cmd_dashboard)
    gateway_cli.register(sub)
    cache_cli.register(sub)
    mailstore_cli.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    # Mail, password hashes and keys: nothing this process creates is for other users.
    os.umask(PRIVATE_UMASK)
    args = parser().parse_args(argv)
    return gateway_cli.run_command(args)


if __name__ == "__main__":
    sys.exit(main())
