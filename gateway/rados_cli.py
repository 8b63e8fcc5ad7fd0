"""`mailstore rados ...`: buckets, resharding, the orphan sweep, the index check and the index rebuild on
a Ceph cluster holding the RADOS layout (gateway/engine/rados.py).

The cluster is named by a ceph.conf, a cephx user and that user's keyring file (the key
never on the command line), and the three pools."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .accounts import AccountStore, owner_field
from .config import RadosSettings
from .engine import rados_fsck
from .engine.model import EngineError
from .engine.rados import DEFAULT_SHARDS, RadosStore

if TYPE_CHECKING:
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


def open_store(args: argparse.Namespace) -> RadosStore:
    return RadosStore(args.ceph_conf, args.ceph_user, args.keyring, data_pool=args.data_pool,
                      index_pool=args.index_pool, meta_pool=args.meta_pool, namespace=args.namespace)


def cmd_rados(args: argparse.Namespace) -> int:
    if args.action == "master-key":
        from .engine.rados_api import make_master_key
        try:
            make_master_key(Path(args.path))
        except FileExistsError:
            print(f"mailstore: {args.path} exists: a master key is never replaced", file=sys.stderr)
            return 2
        return 0
    return on_store(args, _run)


def on_store(args: argparse.Namespace, act: Callable[[RadosStore, argparse.Namespace], int]) -> int:
    """Run `act` on the cluster the arguments name: exit 2 when it cannot be reached (a missing
    ceph.conf, keyring or pool), 1 on an engine error, with one line and no traceback."""
    try:
        store = open_store(args)
    except EngineError as exc:
        print(f"mailstore: {exc}", file=sys.stderr)
        return 2
    try:
        return act(store, args)
    except EngineError as exc:
        print(f"mailstore: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _run(store: RadosStore, args: argparse.Namespace) -> int:
    if args.action == "bucket-create":
        b = asyncio.run(store.create_bucket(args.name, owner_field(args.account), args.shards, args.shard_depth))
        print(json.dumps({"bucket": b.name, "id": b.id, "shards": b.shards, "depth": b.depth}))
        return 0
    if args.action == "key-create":
        from .engine.rados_api import RadosGateway
        from .keys import KeyStore
        from .policy import Policy, preset

        engine = RadosGateway(store, Path(args.master_key))
        keys = KeyStore(engine)
        policy = (preset(args.preset) if args.preset else
                  Policy.parse(Path(args.policy).read_text()) if args.policy else None)
        if asyncio.run(AccountStore(engine).get(args.account)) is None:
            print(f"mailstore: no such account: {args.account}", file=sys.stderr)
            return 1
        key = asyncio.run(keys.create(args.name, admin=policy is None, policy=policy, account=args.account))
        print(json.dumps({"AccessKeyId": key.access_key, "SecretAccessKey": key.secret}))
        return 0
    if args.action == "reshard":
        b = asyncio.run(store.reshard(args.name, args.shards, args.shard_depth))
        print(json.dumps({"bucket": b.name, "shards": b.shards, "depth": b.depth}))
        return 0
    buckets = rados_fsck.buckets(store)
    if args.action == "bucket-list":
        print(json.dumps([{"bucket": b.name, "id": b.id, "owner": b.owner, "created": b.created,
                           "shards": b.shards, "depth": b.depth} for b in buckets], indent=2))
        return 0
    if args.action == "sweep":
        rep = rados_fsck.sweep(store, args.min_age)
        print(json.dumps({"scanned": rep.scanned, "removed": len(rep.removed), "too_young": rep.too_young,
                          "corrupt": rep.corrupt[:100]}, indent=2))
        return 0 if not rep.corrupt else 1
    chosen = [b for b in buckets if args.bucket in (None, b.name)]
    if args.bucket is not None and not chosen:
        print(f"mailstore: no bucket {args.bucket!r}", file=sys.stderr)
        return 1
    if args.action == "check":
        rep = rados_fsck.check(store, chosen, deep=args.deep)
        ok = not rep.dangling and not rep.corrupt
        print(json.dumps({"result": "ok" if ok else "problems", "entries": rep.scanned,
                          "dangling": rep.dangling[:100], "corrupt": rep.corrupt[:100]}, indent=2))
        return 0 if ok else 1
    restored = 0
    corrupt: list[str] = []
    for b in chosen:  # rebuild
        rep = rados_fsck.rebuild(store, b)
        restored += rep.restored
        corrupt += rep.corrupt
    print(json.dumps({"restored": restored, "corrupt": corrupt[:100]}, indent=2))
    return 0


def fsck(args: argparse.Namespace) -> int:
    """`mailstore fsck --engine rados`: every index entry's data object read and verified (record
    and tails), `--sweep` the orphans, `--rebuild-index` the index from the data objects.
    Exit 1 when something is dangling or corrupt."""
    return on_store(args, _fsck)


def _fsck(store: RadosStore, args: argparse.Namespace) -> int:
    chosen = [b for b in rados_fsck.buckets(store) if args.bucket in (None, b.name)]
    if args.bucket is not None and not chosen:
        print(f"mailstore: no bucket {args.bucket!r}", file=sys.stderr)
        return 1
    out: dict[str, object] = {}
    if args.rebuild_index:
        reps = [rados_fsck.rebuild(store, b) for b in chosen]
        out["restored"] = sum(r.restored for r in reps)
    rep = rados_fsck.check(store, chosen, deep=True)
    problems = [f"dangling: {b}/{k}" for b, k in rep.dangling] + [f"corrupt: {o}" for o in rep.corrupt]
    if args.sweep:
        swept = rados_fsck.sweep(store, args.min_age)
        out.update(swept=len(swept.removed), too_young=swept.too_young)
        problems += [f"corrupt: {o}" for o in swept.corrupt]
    ok = not problems
    print(json.dumps({"result": "ok" if ok else "problems", "engine": "rados",
                      "buckets": [b.name for b in chosen], "entries": rep.scanned, **out,
                      "problems": problems[:100], "problem_count": len(problems)}, indent=2))
    return 0 if ok else 1


def _count(lowest: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text) if text.strip().lstrip("-").isdigit() else None
        if value is None or value < lowest:
            raise argparse.ArgumentTypeError(f"a whole number of at least {lowest}, not {text!r}")
        return value
    return parse


def cluster_args(p: argparse._ActionsContainer) -> None:
    """Which cluster, as which cephx user, and which pools (RadosSettings' defaults)."""
    d = RadosSettings()
    p.add_argument("--ceph-conf", default=d.conf, help=f"the cluster's ceph.conf (default {d.conf})")
    p.add_argument("--ceph-user", default=d.user, help="the cephx user (client.NAME)")
    p.add_argument("--keyring", default=d.keyring, help="that user's keyring file (0600)")
    p.add_argument("--data-pool", default=d.data_pool, help="the pool of object data")
    p.add_argument("--index-pool", default=d.index_pool, help="the pool of bucket index shards (OMAP)")
    p.add_argument("--meta-pool", default=d.meta_pool, help="the pool of buckets, keys and accounts")
    p.add_argument("--namespace", default=d.namespace,
                   help="a RADOS namespace in the pools (several stores on one set of pools)")


def settings(args: argparse.Namespace) -> RadosSettings:
    return RadosSettings(args.ceph_conf, args.ceph_user, args.keyring, args.data_pool, args.index_pool,
                         args.meta_pool, Path(args.master_key), args.namespace)


def rados_argv(r: RadosSettings) -> list[str]:
    """The command-line arguments naming a cluster and its master key (the inverse of `settings`)."""
    return ["--ceph-conf", r.conf, "--ceph-user", r.user, "--keyring", r.keyring, "--data-pool", r.data_pool,
            "--index-pool", r.index_pool, "--meta-pool", r.meta_pool, "--namespace", r.namespace,
            "--master-key", str(r.master_key)]


def register(sub: Subcommands) -> None:
    rados = sub.add_parser("rados", help="the RADOS layout on a Ceph cluster: buckets, sweep, check, rebuild")
    rsub = rados.add_subparsers(dest="action", required=True)
    parsers = {
        "bucket-create": rsub.add_parser("bucket-create", help="a new bucket and its index shards"),
        "bucket-list": rsub.add_parser("bucket-list"),
        "sweep": rsub.add_parser("sweep", help="remove data objects no index entry names"),
        "check": rsub.add_parser("check", help="every index entry's data is there (--deep: and sound)"),
        "rebuild": rsub.add_parser("rebuild", help="make buckets' index entries again from their data objects"),
        "reshard": rsub.add_parser("reshard", help="move a bucket's index to a new number of shards"),
        "key-create": rsub.add_parser("key-create", help="an access key for the gateways (the secret, once)"),
    }
    mk = rsub.add_parser("master-key", help="make the 32-byte master key file (0600) to copy to every gateway host")
    mk.add_argument("path", help="the new key file (0600; never replaced)")
    parsers["key-create"].add_argument("name", help="the key's name")
    limit = parsers["key-create"].add_mutually_exclusive_group()
    limit.add_argument("--preset", help="a typical policy (default: an administrator key)")
    limit.add_argument("--policy", help="an IAM-style JSON policy file limiting the key")
    parsers["key-create"].add_argument("--master-key", default=str(RadosSettings().master_key),
                                       help="the file that seals access-key secrets (the gateways' one)")
    parsers["key-create"].add_argument("--account", default="", help="the account it belongs to (the operator's)")
    for p in parsers.values():
        cluster_args(p)
    parsers["bucket-create"].add_argument("name", help="the bucket's name")
    parsers["bucket-create"].add_argument("--account", default="", help="the account that owns it (the operator's)")
    parsers["bucket-create"].add_argument("--shards", type=_count(1), default=DEFAULT_SHARDS,
                                          help="index shards (fixed for the bucket's life)")
    parsers["bucket-create"].add_argument("--shard-depth", type=_count(0), default=0,
                                          help="choose a key's shard by its first N path components "
                                               "(2 for obox's <hash>/<user>/...: a user's LIST asks one shard)")
    parsers["reshard"].add_argument("name", help="the bucket")
    parsers["reshard"].add_argument("--shards", type=_count(1), required=True, help="the new number of index shards")
    parsers["reshard"].add_argument("--shard-depth", type=_count(0), help="a new shard depth (default: keep it)")
    parsers["sweep"].add_argument("--min-age", type=float, default=3600.0,
                                  help="seconds: younger data objects may be a PUT in flight")
    parsers["check"].add_argument("--deep", action="store_true", help="also read every record and tail")
    for name in ("check", "rebuild"):
        parsers[name].add_argument("--bucket", help="only this bucket")
    rados.set_defaults(fn=cmd_rados)
