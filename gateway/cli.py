"""The gateway's part of the `mailstore` command line.

    mailstore up [--data-dir DIR] [--listen HOST:PORT]
    mailstore gateway --data-dir DIR --listen HOST:PORT [--base-domain D]... [--region R]
    mailstore key create|list|delete --data-dir DIR ...
    mailstore bucket create|list|delete --data-dir DIR ...
    mailstore fsck --data-dir DIR [--rebuild-index]
    mailstore compact --data-dir DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime import logs
from runtime.progress import Progress

from .accounts import AccountError, AccountStore, account_of, owner_field
from .config import GatewayConfig, RadosSettings, parse_bytes, parse_listen
from .engine.api import Engine
from .engine.local import EngineLock, EngineLocked, LocalEngine, find_engine, serving_engine
from .engine.local_api import run_on
from .engine.model import EngineUnavailable
from .engine.recovery import IndexUnusable


def cmd_gateway(args: argparse.Namespace) -> int:
    from .server import run

    logs.setup_from(args, "gateway")

    host, port = parse_listen(args.listen)
    domains = tuple(args.base_domain) if args.base_domain else ("s3.localhost",)
    if args.workers < 1:
        raise ValueError("--workers must be at least 1")
    rados = None
    if args.engine == "rados":
        from .rados_cli import settings

        rados = settings(args)
    elif not args.data_dir:
        raise ValueError("the local engine needs --data-dir DIR (or give --engine rados)")
    run(GatewayConfig(serving_engine(args.data_dir or "."), host, port, args.region, domains, rados=rados,
                      compaction=not args.no_compaction, max_inflight=args.max_inflight,
                      tls_cert=Path(args.tls_cert) if args.tls_cert else None,
                      tls_key=Path(args.tls_key) if args.tls_key else None, min_free_bytes=parse_bytes(args.min_free),
                      request_timeout=args.request_timeout, idle_timeout=args.idle_timeout,
                      drain_grace=args.drain_grace, drain_timeout=args.drain_timeout,
                      lifecycle_interval=args.lifecycle_interval), workers=args.workers)
    return 0


def _admin_call(args: argparse.Namespace, method: str, path: str, body: dict[str, object] | None = None) -> Any:
    """A signed request to a gateway's admin API (credentials: --access-key/--secret-key or env).

    Returns the answer's JSON as parsed (its shape is the admin API's, documented in admin.py).
    """
    import hashlib
    import os
    import urllib.error
    import urllib.parse
    import urllib.request

    from .s3 import sigv4

    akid = args.admin_access_key or os.environ.get("MAILSTORE_ACCESS_KEY")
    secret = args.admin_secret_key or os.environ.get("MAILSTORE_SECRET_KEY")
    if not akid or not secret:
        raise ValueError("--endpoint needs an administrator key: --access-key/--secret-key or "
                         "MAILSTORE_ACCESS_KEY/MAILSTORE_SECRET_KEY")
    url = urllib.parse.urlsplit(args.endpoint)
    path_only, _, query = path.partition("?")
    data = json.dumps(body).encode() if body is not None else b""
    headers = {"Host": url.netloc, "Content-Type": "application/json"}
    headers.update(sigv4.sign_headers(method, path_only, sigv4.parse_query(query), headers, akid, secret,
                                      payload_hash=hashlib.sha256(data).hexdigest()))
    req = urllib.request.Request(args.endpoint.rstrip("/") + path, data=data or None, method=method,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        try:
            err = json.loads(exc.read())
            message = f"{err.get('error')}: {err.get('message')}"
        except ValueError:
            message = str(exc)
        raise AdminCallError(f"{method} {path}: {message}", exc.code) from None


class AdminCallError(ValueError):
    """The admin API answered an error (`status`); the message says which."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _policy_args(args: argparse.Namespace) -> dict[str, object]:
    """--policy FILE / --preset SPEC / --admin as an admin-API body."""
    from .policy import Policy

    if getattr(args, "policy", None):
        text = Path(args.policy).read_text()
        Policy.parse(text)  # a clear error here rather than from the server
        return {"policy": json.loads(text)}
    if getattr(args, "preset", None):
        return {"preset": args.preset}
    return {"admin": True}


def cmd_account(args: argparse.Namespace) -> int:
    """mailstore account create NAME | list | delete NAME (--data-dir, or --endpoint)."""
    from .keys import KeyStore

    if args.endpoint:
        if args.action == "create":
            print(json.dumps(_admin_call(args, "POST", "/_admin/accounts", {"name": args.name})))
        elif args.action == "list":
            for a in _admin_call(args, "GET", "/_admin/accounts"):
                print(json.dumps(a))
        else:
            _admin_call(args, "DELETE", f"/_admin/accounts/{args.name}")
        return 0
    if not args.data_dir:
        raise ValueError("give --data-dir DIR (local) or --endpoint URL (admin API)")

    async def act(engine: Engine) -> int:
        accounts = AccountStore(engine)
        try:
            if args.action == "create":
                print(json.dumps((await accounts.create(args.name)).describe()))
            elif args.action == "list":
                for a in await accounts.list():
                    print(json.dumps(a.describe()))
            else:
                members = [k for k in await KeyStore(engine).list() if k.account == args.name]
                owned = [b for b in await engine.list_buckets() if account_of(b.owner) == args.name]
                if not await accounts.delete(args.name, keys=len(members), buckets=len(owned)):
                    print(f"mailstore: no such account: {args.name}", file=sys.stderr)
                    return 1
        except AccountError as exc:
            print(f"mailstore: {exc}", file=sys.stderr)
            return 1
        return 0

    return _on_local(args, act, writer=args.action != "list")


def cmd_key(args: argparse.Namespace) -> int:
    from .keys import KeyStore
    from .policy import Policy, preset

    if args.endpoint:
        if args.action == "create":
            out = _admin_call(args, "POST", "/_admin/keys", {"name": args.name, "account": args.account,
                                                             **_policy_args(args)})
            print(json.dumps({"AccessKeyId": out["AccessKeyId"], "SecretAccessKey": out["SecretAccessKey"]}))
        elif args.action == "list":
            for k in _admin_call(args, "GET", "/_admin/keys"):
                print(json.dumps(k))
        elif args.action == "delete":
            _admin_call(args, "DELETE", f"/_admin/keys/{args.key_id}")
        elif args.action == "set-policy":
            print(json.dumps(_admin_call(args, "PUT", f"/_admin/keys/{args.key_id}/policy",
                                         _policy_args(args))))
        return 0
    if not args.data_dir:
        raise ValueError("give --data-dir DIR (local) or --endpoint URL (admin API)")
    body = _policy_args(args) if args.action in ("create", "set-policy") else {}
    policy = (preset(str(body["preset"])) if "preset" in body else
              Policy.parse(json.dumps(body["policy"])) if "policy" in body else None)

    async def act(engine: Engine) -> int:
        keys = KeyStore(engine)
        if args.action == "create":
            account = "" if args.account == "operator" else args.account
            if await AccountStore(engine).get(account) is None:
                print(f"mailstore: no such account: {args.account}", file=sys.stderr)
                return 1
            key = await keys.create(args.name, admin=policy is None, policy=policy, account=account)
            print(json.dumps({"AccessKeyId": key.access_key, "SecretAccessKey": key.secret}))
        elif args.action == "list":
            for k in await keys.list():
                print(json.dumps(k.describe()))
        elif args.action == "delete":
            if not await keys.delete(args.key_id):
                print(f"mailstore: no such key: {args.key_id}", file=sys.stderr)
                return 1
        elif args.action == "set-policy":
            try:
                fresh = await keys.set_policy(args.key_id, policy, policy is None)
            except KeyError:
                print(f"mailstore: no such key: {args.key_id}", file=sys.stderr)
                return 1
            print(json.dumps(fresh.describe()))
        return 0

    return _on_local(args, act, writer=args.action != "list")


def cmd_store_key(args: argparse.Namespace) -> int:
    """mailstore store-key list | rotate: SSE-S3's store keys (gateway/sse.py); never prints a key."""
    from .sse import StoreKeys

    if args.endpoint:
        if args.action == "rotate":
            print(json.dumps(_admin_call(args, "POST", "/_admin/store-keys", {})))
        else:
            for k in _admin_call(args, "GET", "/_admin/store-keys"):
                print(json.dumps(k))
        return 0
    if not args.data_dir:
        raise ValueError("give --data-dir DIR (local) or --endpoint URL (admin API)")

    async def act(engine: Engine) -> int:
        keys = StoreKeys(engine)
        if args.action == "rotate":
            print(json.dumps({"KeyId": await keys.rotate(), "Newest": True}))
        else:
            for doc in await keys.describe():
                print(json.dumps(doc))
        return 0

    return _on_local(args, act, writer=args.action != "list")


def cmd_kms(args: argparse.Namespace) -> int:
    """mailstore kms create | list | rotate KEY_ID: SSE-KMS's local key table (gateway/kms.py)."""
    from .kms import KeyNotFound, KmsKeys

    if args.endpoint:
        if args.action == "create":
            print(json.dumps(_admin_call(args, "POST", "/_admin/kms-keys",
                                         {"description": args.description, "alias": args.alias})))
        elif args.action == "rotate":
            print(json.dumps(_admin_call(args, "POST", f"/_admin/kms-keys/{args.key_id}/rotate", {})))
        else:
            for k in _admin_call(args, "GET", "/_admin/kms-keys"):
                print(json.dumps(k))
        return 0
    if not args.data_dir:
        raise ValueError("give --data-dir DIR (local) or --endpoint URL (admin API)")

    async def act(engine: Engine) -> int:
        keys = KmsKeys(engine)
        try:
            if args.action == "create":
                print(json.dumps((await keys.create(args.description, args.alias)).describe()))
            elif args.action == "rotate":
                print(json.dumps({"KeyId": args.key_id, "Version": await keys.rotate(args.key_id)}))
            else:
                for k in await keys.list():
                    print(json.dumps(k.describe()))
        except KeyNotFound:
            print(f"mailstore: no such KMS key: {args.key_id}", file=sys.stderr)
            return 1
        except ValueError as exc:
            print(f"mailstore: {exc}", file=sys.stderr)
            return 1
        return 0

    return _on_local(args, act, writer=args.action != "list")


def cmd_rewrap(args: argparse.Namespace) -> int:
    """mailstore rewrap --endpoint URL: every SSE-S3 / SSE-KMS data key under the newest key."""
    if not args.endpoint:
        raise ValueError("rewrap runs through a gateway (it reads and writes objects): give --endpoint URL")
    checked = rewrapped = 0
    marker = None
    while True:
        page = _admin_call(args, "POST", "/_admin/rewrap", {"marker": marker, "limit": args.page_size})
        checked += page["Checked"]
        rewrapped += page["Rewrapped"]
        marker = page["NextMarker"]
        if marker is None:
            break
    print(json.dumps({"Checked": checked, "Rewrapped": rewrapped}))
    return 0


def cmd_lifecycle(args: argparse.Namespace) -> int:
    """mailstore lifecycle run --endpoint URL [--now TIME]: one pass of the bucket lifecycle rules."""
    if not args.endpoint:
        raise ValueError("lifecycle runs in a gateway (it reads and deletes objects): give --endpoint URL")
    body: dict[str, object] = {}
    if args.now:
        from datetime import datetime
        when = datetime.fromisoformat(args.now.replace("Z", "+00:00"))
        body["now"] = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    try:
        print(json.dumps(_admin_call(args, "POST", "/_admin/lifecycle/run", body)))
    except AdminCallError as exc:
        if exc.status == 409:
            print("mailstore: another gateway is running the lifecycle rules now; try again later", file=sys.stderr)
            return 1
        raise
    return 0


def _on_local(args: argparse.Namespace, act: Callable[[Engine], Coroutine[Any, Any, int]], *, writer: bool) -> int:
    """Run `act` on the data directory's engine (as a gateway would see it), then close it."""
    engine = LocalEngine(find_engine(args.data_dir), writer=writer)
    try:
        return run_on(engine, act)
    finally:
        engine.close()


def cmd_usage(args: argparse.Namespace) -> int:
    if args.endpoint:
        out = _admin_call(args, "GET", "/_admin/usage" + (f"?bucket={args.bucket}" if args.bucket else ""))
    else:
        from .admin import usage

        async def act(engine: Engine) -> int:
            print(json.dumps({"buckets": await usage(engine, args.bucket)}, indent=2))
            return 0

        return _on_local(args, act, writer=False)
    print(json.dumps(out, indent=2))
    return 0


def cmd_bucket(args: argparse.Namespace) -> int:
    from .context import valid_bucket_name
    from .engine.model import EngineError

    if args.action != "list" and not valid_bucket_name(args.name):
        print(f"mailstore: invalid bucket name: {args.name}", file=sys.stderr)
        return 2
    if args.endpoint:
        if args.action == "list":
            for b in _admin_call(args, "GET", "/_admin/buckets"):
                print(b["Name"])
        elif args.action == "create":
            _admin_call(args, "POST", "/_admin/buckets", {"name": args.name})
        else:
            _admin_call(args, "DELETE", f"/_admin/buckets/{args.name}")
        return 0
    if not args.data_dir:
        raise ValueError("give --data-dir DIR (local) or --endpoint URL (admin API)")

    async def act(engine: Engine) -> int:
        if args.action == "list":
            for b in await engine.list_buckets():
                print(b.name)
            return 0
        try:
            if args.action == "create":
                await engine.create_bucket(args.name, owner_field(""))
            else:
                await engine.delete_bucket(args.name)
        except EngineError as exc:
            print(f"mailstore: {args.action} {args.name}: {type(exc).__name__}", file=sys.stderr)
            return 1
        return 0

    return _on_local(args, act, writer=args.action != "list")


def cmd_fsck(args: argparse.Namespace) -> int:
    from . import fsck

    if args.engine == "rados":
        from .rados_cli import fsck as rados_fsck

        return rados_fsck(args)
    if not args.data_dir:
        raise ValueError("the local engine needs --data-dir DIR (or give --engine rados)")
    root = find_engine(args.data_dir)
    # Exclusive: no gateway may write while we read everything (or swap the index).
    # No recovery either: fsck reads the files as they are, whatever the index says.
    with EngineLock(root, exclusive=True):
        show = Progress("fsck", "segments", enabled=not args.quiet)
        if args.rebuild_index:
            rep = fsck.rebuild(root, show)
            verb = "rebuilt"
        else:
            rep = fsck.verify(root, show)
            verb = "checked"
        show.close()
    for w in rep.warnings:
        print(f"mailstore: warning: {w}", file=sys.stderr)
    print(json.dumps({"result": "ok" if rep.ok else "problems", "action": verb, "records": rep.records,
                      "live": rep.live, "dead": rep.dead, "blobs": rep.blobs, "problems": rep.problems[:100],
                      "problem_count": len(rep.problems), "warnings": rep.warnings}, indent=2))
    return 0 if rep.ok or args.rebuild_index else 1


def cmd_compact(args: argparse.Namespace) -> int:
    from .compact import Compactor

    engine = LocalEngine(find_engine(args.data_dir), writer=False)
    try:
        show = Progress("compact", "segments")
        stats = Compactor(engine, dead_ratio=args.dead_ratio).run_once(show)
        show.close()
    finally:
        engine.close()
    print(json.dumps(stats))
    return 0


if TYPE_CHECKING:  # argparse's class is generic only to type checkers
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


def register(sub: Subcommands) -> None:
    """The gateway's subcommands of `mailstore` (assembled by appliance.cli)."""
    from . import rados_cli

    for add in (_gateway_parser, _account_parsers, _key_parsers, _store_key_parsers, _kms_parsers, _rewrap_parser,
                _lifecycle_parser, _usage_parser,
                _bucket_parsers, _fsck_parser, _compact_parser, rados_cli.register):
        add(sub)


def _gateway_parser(sub: Subcommands) -> None:
    from .rados_cli import cluster_args

    p = sub.add_parser("gateway", help="run one S3 gateway (on a local engine, or on a Ceph cluster)")
    p.add_argument("--engine", choices=("local", "rados"), default="local",
                   help="local: objects in --data-dir; rados: objects on the Ceph cluster named below")
    p.add_argument("--data-dir", help="the local engine's data directory")
    p.add_argument("--listen", default="127.0.0.1:8000", help="HOST:PORT to serve S3 on (default 127.0.0.1:8000)")
    p.add_argument("--base-domain", action="append", help="virtual-host style domain (repeatable)")
    p.add_argument("--region", default="us-east-1", help="the region signatures name (default us-east-1)")
    p.add_argument("--no-compaction", action="store_true", help="no background compaction in this process")
    p.add_argument("--max-inflight", type=int, default=1024,
                   help="requests in flight per process before answering 503 SlowDown")
    p.add_argument("--tls-cert", help="serve HTTPS: certificate chain (PEM)")
    p.add_argument("--tls-key", help="serve HTTPS: private key (PEM)")
    p.add_argument("--workers", type=int, default=1, help="gateway processes sharing the listening socket")
    logs.add_arguments(p)
    d = GatewayConfig(Path("."))
    p.add_argument("--min-free", default=str(d.min_free_bytes),
                   help="/health/ready fails below this much free disk (like 1G)")
    p.add_argument("--request-timeout", type=float, default=d.request_timeout, help="seconds per request")
    p.add_argument("--idle-timeout", type=float, default=d.idle_timeout,
                   help="seconds before an idle keep-alive connection is closed")
    p.add_argument("--drain-grace", type=float, default=d.drain_grace,
                   help="after SIGTERM, seconds of 404 on /health/ready before the listener closes")
    p.add_argument("--drain-timeout", type=float, default=d.drain_timeout,
                   help="then seconds for in-flight requests to finish")
    p.add_argument("--lifecycle-interval", type=float, default=d.lifecycle_interval,
                   help="seconds between bucket lifecycle passes (one gateway of a store runs each); 0: none")
    g = p.add_argument_group("--engine rados")
    cluster_args(g)
    g.add_argument("--master-key", default=str(RadosSettings().master_key),
                   help="the 32-byte file that seals access-key secrets, the same on every gateway (0600)")
    p.set_defaults(fn=cmd_gateway)


def _where(p: argparse.ArgumentParser) -> None:
    """A data directory to work on directly, or a running gateway's admin API."""
    p.add_argument("--data-dir", help="work on this engine directly: the appliance's directory or its engine")
    p.add_argument("--endpoint", help="or on a running gateway, through its admin API")
    p.add_argument("--access-key", dest="admin_access_key",
                   help="administrator key for --endpoint (or MAILSTORE_ACCESS_KEY)")
    p.add_argument("--secret-key", dest="admin_secret_key", help="its secret (or MAILSTORE_SECRET_KEY)")


def _limits(p: argparse.ArgumentParser) -> None:
    """What a key may do: a policy file, a preset, or everything."""
    from .policy import PRESETS_HELP

    g = p.add_mutually_exclusive_group()
    g.add_argument("--policy", help="IAM-style JSON policy file limiting the key")
    g.add_argument("--preset", help="a typical policy:\n" + PRESETS_HELP)
    g.add_argument("--admin", action="store_true", help="an administrator key (the default)")


def _account_parsers(sub: Subcommands) -> None:
    account = sub.add_parser("account", help="manage accounts (the owners of buckets)")
    asub = account.add_subparsers(dest="action", required=True)
    for action in ("create", "list", "delete"):
        p = asub.add_parser(action)
        _where(p)
        if action != "list":
            p.add_argument("name", metavar="NAME", help="the account's name")
    account.set_defaults(fn=cmd_account)


def _key_parsers(sub: Subcommands) -> None:
    key = sub.add_parser("key", help="manage access keys", formatter_class=argparse.RawTextHelpFormatter)
    ksub = key.add_subparsers(dest="action", required=True)
    create = ksub.add_parser("create", formatter_class=argparse.RawTextHelpFormatter,
                             help="new key; prints its secret once")
    _where(create)
    create.add_argument("--name", required=True, help="what the key is for (shown by key list)")
    create.add_argument("--account", default="", help="the account it belongs to (default: the operator's)")
    _limits(create)
    _where(ksub.add_parser("list"))
    delete = ksub.add_parser("delete")
    _where(delete)
    delete.add_argument("key_id", metavar="ACCESS_KEY_ID", help="the key to delete")
    set_policy = ksub.add_parser("set-policy", formatter_class=argparse.RawTextHelpFormatter)
    _where(set_policy)
    set_policy.add_argument("key_id", metavar="ACCESS_KEY_ID", help="the key to limit")
    _limits(set_policy)
    key.set_defaults(fn=cmd_key)


def _store_key_parsers(sub: Subcommands) -> None:
    p = sub.add_parser("store-key", help="SSE-S3 store keys: list them, or make a new one new objects use")
    ssub = p.add_subparsers(dest="action", required=True)
    _where(ssub.add_parser("list", help="every store key (id, created, which is newest); never the key"))
    _where(ssub.add_parser("rotate", help="a new store key; objects written from now on use it, older "
                                          "objects keep opening with theirs"))
    p.set_defaults(fn=cmd_store_key)


def _kms_parsers(sub: Subcommands) -> None:
    p = sub.add_parser("kms", help="SSE-KMS keys (a local key table in place of AWS KMS)")
    ksub = p.add_subparsers(dest="action", required=True)
    create = ksub.add_parser("create", help="a new KMS key; prints its id and ARN (never its material)")
    _where(create)
    create.add_argument("--description", default="", help="what the key is for")
    create.add_argument("--alias", default="", help="a name requests may use as alias/NAME")
    _where(ksub.add_parser("list", help="every KMS key: id, ARN, alias, versions"))
    rotate = ksub.add_parser("rotate", help="new key material for KEY_ID; what it wrapped before still opens")
    _where(rotate)
    rotate.add_argument("key_id", metavar="KEY_ID", help="the KMS key to give new material (from kms list)")
    p.set_defaults(fn=cmd_kms)


def _rewrap_parser(sub: Subcommands) -> None:
    p = sub.add_parser("rewrap", help="wrap every SSE-S3/SSE-KMS data key under the newest store key or KMS "
                                      "key version (after a rotation); bodies are not re-encrypted")
    _where(p)
    p.add_argument("--page-size", type=int, default=1000, help="objects per admin API request (1-10000)")
    p.set_defaults(fn=cmd_rewrap)


def _lifecycle_parser(sub: Subcommands) -> None:
    p = sub.add_parser("lifecycle", help="bucket lifecycle rules: run a pass now")
    lsub = p.add_subparsers(dest="action", required=True)
    run = lsub.add_parser("run", help="one pass over every bucket's rules (expirations, aborted uploads)")
    _where(run)
    run.add_argument("--now", help="as at this time (ISO 8601, UTC when no offset): a test clock")
    p.set_defaults(fn=cmd_lifecycle)


def _usage_parser(sub: Subcommands) -> None:
    p = sub.add_parser("usage", help="objects and bytes per bucket and first-level prefix")
    _where(p)
    p.add_argument("--bucket", help="only this bucket")
    p.set_defaults(fn=cmd_usage)


def _bucket_parsers(sub: Subcommands) -> None:
    bucket = sub.add_parser("bucket", help="manage buckets")
    bsub = bucket.add_subparsers(dest="action", required=True)
    for action, what in (("create", "a new bucket of the operator's"), ("delete", "an empty bucket"),
                         ("list", "every bucket's name")):
        p = bsub.add_parser(action, help=what)
        _where(p)
        if action != "list":
            p.add_argument("name", help="the bucket's name")
    bucket.set_defaults(fn=cmd_bucket)


def _fsck_parser(sub: Subcommands) -> None:
    from .rados_cli import cluster_args

    p = sub.add_parser("fsck", help="verify every checksum and the index (local: gateways stopped)")
    p.add_argument("--engine", choices=("local", "rados"), default="local", help="which engine to check")
    p.add_argument("--data-dir", help="the local engine's data directory")
    p.add_argument("--rebuild-index", action="store_true",
                   help="rebuild the index from the data files alone (rados: of --bucket, or of every bucket)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    g = p.add_argument_group("--engine rados (gateways may run meanwhile)")
    cluster_args(g)
    g.add_argument("--bucket", help="only this bucket")
    g.add_argument("--sweep", action="store_true", help="also remove data objects no index entry names")
    g.add_argument("--min-age", type=float, default=3600.0,
                   help="seconds: the sweep leaves younger objects (a PUT may be between its two writes)")
    p.set_defaults(fn=cmd_fsck)


def _compact_parser(sub: Subcommands) -> None:
    p = sub.add_parser("compact", help="run one compaction pass now")
    p.add_argument("--data-dir", required=True, help="the appliance's directory or its engine")
    p.add_argument("--dead-ratio", type=float, default=0.5,
                   help="rewrite segments at least this share dead (default 0.5)")
    p.set_defaults(fn=cmd_compact)


def run_command(args: argparse.Namespace) -> int:
    fn: Callable[[argparse.Namespace], int] = args.fn  # set by each subcommand's parser
    try:
        return fn(args)
    except EngineLocked as exc:
        print(f"mailstore: {exc}", file=sys.stderr)
        return 3
    except IndexUnusable as exc:
        print(f"mailstore: {exc}", file=sys.stderr)
        return 4
    except EngineUnavailable as exc:  # a cluster that does not answer, a missing master key
        print(f"mailstore: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # PolicyError too
        print(f"mailstore: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a port in use, a directory not writable: say which, no traceback
        print(f"mailstore: {exc}", file=sys.stderr)
        return 1


