"""The mail shim's part of the `mailstore` command line.

    mailstore user add|list|delete|passwd|set-quota|alias --db PATH ...
    mailstore lmtp --db PATH --fs URL [--listen HOST:PORT] [--max-size 50M] [--domain D] [--submission H:P]
    mailstore pop3 --db PATH --fs URL [--listen HOST:PORT] [--domain D]
    mailstore managesieve --db PATH [--listen HOST:PORT] [--domain D]
    mailstore reindex --db PATH --fs URL USER
    mailstore gc --db PATH --fs URL [--grace 1h] [--user U]
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cache import Fs, has_mail_crypt, open_fs, read_url
from cache.url import parse_duration, parse_size
from runtime import logs
from runtime.keyfile import read_secret
from runtime.progress import Progress
from runtime.tls import reloader, server_context

from .db import MetaError, MetaStore, NoSuchUser
from .users import AddressPolicy, hash_password

log = logging.getLogger("mailstore")


def _password(args: argparse.Namespace) -> str:
    if args.password is not None:
        return str(args.password)
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return getpass.getpass("password: ")


def _mail_key(args: argparse.Namespace, name: str, password: str) -> dict[str, object]:
    """With a mail-crypt: fs (user add, passwd): the user's key pair made, or resealed under the new
    password (the old one from --old-password-file or the prompt), or with --reset-mail-key made anew."""
    fs_url = getattr(args, "fs", None)
    if not fs_url or not has_mail_crypt(fs_url):
        return {}
    from cache import mail_crypt_of

    async def work() -> dict[str, object]:
        fs = open_fs(fs_url)
        try:
            crypt = mail_crypt_of(fs)
            if crypt is None:
                return {}
            if args.action == "add":
                return {"mail_key": "made" if await crypt.create_key(name, password) else "kept"}
            if getattr(args, "reset_mail_key", False):
                await crypt.reset_key(name, password)
                return {"mail_key": "new (mail stored before cannot be read any more)"}
            old = read_secret(args.old_password_file) if args.old_password_file else \
                getpass.getpass("old password (it opens the user's mail key): ")
            await crypt.change_password(name, old, password)
            return {"mail_key": "resealed"}
        finally:
            await fs.close()

    return asyncio.run(work())


def cmd_user(args: argparse.Namespace) -> int:
    meta = MetaStore(args.db)
    try:
        if args.action == "add":
            quota = parse_size(args.quota) if args.quota else 0
            password = _password(args)
            u = meta.add_user(args.name.lower(), hash_password(password), quota)
            made = _mail_key(args, u.name, password)
            print(json.dumps({"user": u.name, "quota_bytes": u.quota_bytes, **made}))
        elif args.action == "list":
            for u in meta.list_users():
                print(json.dumps({"user": u.name, "quota_bytes": u.quota_bytes, "used_bytes": u.used_bytes}))
        elif args.action == "delete":
            keys = meta.delete_user(args.name.lower())
            if keys and args.fs:
                async def purge() -> None:
                    fs = open_fs(args.fs)
                    try:
                        await fs.delete_many(keys)
                    finally:
                        await fs.close()
                asyncio.run(purge())
            if args.fs:
                asyncio.run(_forget_mail_key(args.fs, args.name.lower()))
            print(json.dumps({"user": args.name, "objects": len(keys), "objects_deleted": bool(args.fs)}))
        elif args.action == "passwd":
            password = _password(args)
            if meta.get_user(args.name.lower()) is None:
                raise NoSuchUser(args.name.lower())
            changed = _mail_key(args, args.name.lower(), password)  # first: a wrong old password changes nothing
            meta.set_password(args.name.lower(), hash_password(password))
            if changed:
                print(json.dumps({"user": args.name.lower(), **changed}))
        elif args.action == "set-quota":
            meta.set_quota(args.name.lower(), parse_size(args.quota) if args.quota != "0" else 0)
        elif args.action == "alias":
            meta.add_alias(args.address.lower(), args.name.lower())
    except MetaError as exc:
        print(f"mailstore user: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _forget_mail_key(fs_url: str, name: str) -> None:
    from cache import mail_crypt_of

    fs = open_fs(fs_url)
    try:
        crypt = mail_crypt_of(fs)
        if crypt is not None:
            await crypt.forget(name)
    finally:
        await fs.close()


def cmd_sieve(args: argparse.Namespace) -> int:
    """The users' Sieve scripts (what ManageSieve will change): put, get, list, activate, delete, check."""
    from .sieve import scripts
    from .sieve.grammar import SieveError

    def text() -> str:
        return sys.stdin.read() if args.file == "-" else Path(args.file).read_text()

    try:
        if args.action == "check":
            scripts.compile_text(text())
            print(json.dumps({"ok": True}))
            return 0
        meta = MetaStore(args.db)
        user = args.user.lower()
        if meta.get_user(user) is None:
            raise MetaError(f"no user {user}")
        if args.action == "put":
            scripts.put(meta, user, args.name, text())
            if args.activate:
                scripts.activate(meta, user, args.name)
        elif args.action == "get":
            sys.stdout.write(scripts.get(meta, user, args.name))
        elif args.action == "list":
            for s in scripts.listing(meta, user):
                print(json.dumps({"name": s.name, "active": s.active}))
        elif args.action == "activate":
            scripts.activate(meta, user, args.name)
        elif args.action == "deactivate":
            scripts.activate(meta, user, "")
        elif args.action == "delete":
            scripts.delete(meta, user, args.name)
    except (SieveError, MetaError) as exc:
        print(f"mailstore sieve: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_lmtp(args: argparse.Namespace) -> int:
    from .delivery import Deliverer
    from .lmtp import start_lmtp
    from .sieve.outbound import Relay

    logs.setup_from(args, "lmtp")
    host, _, port = args.listen.rpartition(":")
    max_size = parse_size(args.max_size)
    tls = _tls(args)
    try:
        relay = Relay.parse(args.submission) if args.submission else None
    except ValueError as exc:
        print(f"mailstore lmtp: {exc}", file=sys.stderr)
        return 2

    async def main(sock: socket.socket | None = None) -> None:
        meta = MetaStore(args.db)
        fs = open_fs(args.fs)
        deliverer = Deliverer(meta, fs, AddressPolicy(args.domain, args.delimiter), max_size, relay)
        if args.metrics_listen:
            from . import metrics

            metrics.serve(args.metrics_listen, deliverer=deliverer, fs=fs)
        server = await start_lmtp(deliverer, host, int(port), max_size=max_size,
                                  max_recipients=args.max_recipients, sock=sock, tls=tls)
        real = server.sockets[0].getsockname()[1]
        # (Under prefork the parent announces the socket.) Deliveries in flight finish first.
        await _serve_until_stopped(args, tls, {"event": "listening", "lmtp": f"{host}:{real}", "port": real},
                                   [server], announce=sock is None, drain=True)
        await fs.close()

    def serve(sock: socket.socket | None = None) -> None:
        _install_uvloop()
        asyncio.run(main(sock))

    if args.workers > 1:
        from runtime import prefork

        MetaStore(args.db)  # migrate once, before forking
        sock = prefork.bind(host, int(port))
        real = sock.getsockname()[1]
        prefork.run(sock, args.workers, serve, {"event": "listening", "lmtp": f"{host}:{real}", "port": real})
    else:
        serve()
    return 0


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    return server_context(args.tls_cert, args.tls_key) if args.tls_cert else None


def _tls_reload(args: argparse.Namespace, ctx: ssl.SSLContext | None) -> list[logs.Hook]:
    """SIGHUP reads the certificate again (renewed), as it reopens the log."""
    return [] if ctx is None else [reloader(ctx, args.tls_cert, args.tls_key)]


def _install_uvloop() -> None:
    """The LMTP and IMAP servers run on uvloop when it is there (it is, on Linux): less loop per command."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return
    uvloop.install()


def cmd_imap(args: argparse.Namespace) -> int:
    from .imap.server import start_imap
    from .imap.session import ImapContext

    logs.setup_from(args, "imap")
    host, _, port = args.listen.rpartition(":")

    tls = _tls(args)

    async def main() -> None:
        fs = open_fs(args.fs)
        ctx = ImapContext(MetaStore(args.db), fs, AddressPolicy(args.domain, args.delimiter),
                          parse_size(args.max_append), tls=tls)
        if args.metrics_listen:
            from . import metrics

            ctx.metrics = metrics.serve(args.metrics_listen, fs=fs, imap=True)
        from .changes import ChangeFeed
        ctx.changes = ChangeFeed(ctx.meta)  # PostgreSQL: LISTEN for changes made on any host
        ctx.changes.start()
        from .staterecord import Recorder
        recorder = Recorder(ctx.meta, fs, args.state_record_interval)
        if args.state_record_interval > 0:
            recorder.start()
        server = await start_imap(ctx, host, int(port))
        real = server.sockets[0].getsockname()[1]
        info = {"event": "listening", "imap": f"{host}:{real}", "port": real}
        servers = [server]
        if args.listen_tls:
            if tls is None:
                raise SystemExit("--listen-tls needs --tls-cert and --tls-key")
            thost, _, tport = args.listen_tls.rpartition(":")
            tserver = await start_imap(ctx, thost, int(tport), implicit_tls=True)
            info["imaps_port"] = tserver.sockets[0].getsockname()[1]
            servers.append(tserver)
        await _serve_until_stopped(args, tls, info, servers)
        await recorder.close()
        await ctx.changes.close()
        await fs.close()

    _install_uvloop()
    asyncio.run(main())
    return 0


def cmd_pop3(args: argparse.Namespace) -> int:
    from .pop3 import Pop3Context, start_pop3

    logs.setup_from(args, "pop3")
    host, _, port = args.listen.rpartition(":")
    tls = _tls(args)

    async def main() -> None:
        fs = open_fs(args.fs)
        ctx = Pop3Context(MetaStore(args.db), fs, AddressPolicy(args.domain, args.delimiter), tls=tls)
        if args.metrics_listen:
            from . import metrics

            ctx.metrics = metrics.serve_pop3(args.metrics_listen, fs)
        servers = [await start_pop3(ctx, host, int(port))]
        real = servers[0].sockets[0].getsockname()[1]
        info: dict[str, object] = {"event": "listening", "pop3": f"{host}:{real}", "port": real}
        if args.listen_tls:
            if tls is None:
                raise SystemExit("--listen-tls needs --tls-cert and --tls-key")
            thost, _, tport = args.listen_tls.rpartition(":")
            servers.append(await start_pop3(ctx, thost, int(tport), implicit_tls=True))
            info["pop3s_port"] = servers[-1].sockets[0].getsockname()[1]
        await _serve_until_stopped(args, tls, info, servers)
        await fs.close()

    _install_uvloop()
    asyncio.run(main())
    return 0


def cmd_managesieve(args: argparse.Namespace) -> int:
    from .managesieve import SieveContext, start_managesieve

    logs.setup_from(args, "managesieve")
    host, _, port = args.listen.rpartition(":")
    tls = _tls(args)

    async def main() -> None:
        ctx = SieveContext(MetaStore(args.db), AddressPolicy(args.domain, args.delimiter), tls=tls)
        if args.metrics_listen:
            from . import metrics

            ctx.metrics = metrics.serve_managesieve(args.metrics_listen)
        server = await start_managesieve(ctx, host, int(port))
        real = server.sockets[0].getsockname()[1]
        await _serve_until_stopped(args, tls, {"event": "listening", "managesieve": f"{host}:{real}", "port": real},
                                   [server])

    _install_uvloop()
    asyncio.run(main())
    return 0


async def _serve_until_stopped(args: argparse.Namespace, tls: ssl.SSLContext | None, info: dict[str, object],
                               servers: list[asyncio.Server], *, announce: bool = True, drain: bool = False) -> None:
    """Announce the listeners (a JSON line on stdout, and the log), serve until SIGINT or SIGTERM
    (SIGHUP reopens the log and reads the certificate again), then stop listening (`drain`: and
    wait for the connections open to finish)."""
    if announce:
        print(json.dumps(info), flush=True)
    logs.event(log, logging.INFO, "listening", **{k: v for k, v in info.items() if k != "event"})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    logs.reopen_on_sighup(loop, *_tls_reload(args, tls))
    await stop.wait()
    logs.event(log, logging.INFO, "stopping")
    for srv in servers:
        srv.close()
    if drain:
        for srv in servers:
            await srv.wait_closed()


def _on_store(args: argparse.Namespace, label: str, unit: str,
              work: Callable[[MetaStore, Fs, Progress], Awaitable[dict[str, int]]]) -> int:
    """A long admin operation: work(meta, fs, progress) -> its JSON report, with progress shown."""
    show = Progress(label, unit)

    async def main() -> dict[str, int]:
        fs = open_fs(args.fs)
        try:
            return await work(MetaStore(args.db), fs, show)
        finally:
            await fs.close()
    result = asyncio.run(main())
    show.close()
    print(json.dumps(result))
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    from .rebuild import reindex

    if bool(args.user) == bool(args.all):
        raise ValueError("mailstore reindex: name a USER, or give --all")
    if args.password_file and not args.user:
        raise ValueError("mailstore reindex: --password-file opens one user's mail: name the USER")
    if args.user:
        async def one(meta: MetaStore, fs: Fs, show: Progress) -> dict[str, int]:
            if args.password_file:
                from cache import mail_crypt_of
                crypt = mail_crypt_of(fs)
                if crypt is not None:
                    await crypt.unlock(args.user.lower(), read_secret(args.password_file), create=False)
            return await reindex(meta, fs, args.user.lower(), show)

        return _on_store(args, "reindex", "messages", one)

    async def every(meta: MetaStore, fs: Fs, show: Progress) -> dict[str, int]:
        """Every user the database or the bucket knows (a user made after a backup: only the bucket)."""
        from . import layout

        users = {u.name for u in await asyncio.to_thread(meta.list_users)}
        async for top in fs.list("", "/"):
            if top.is_prefix:
                async for e in fs.list(top.key, "/"):
                    name = e.key[len(top.key):].rstrip("/")
                    if e.is_prefix and layout.user_prefix(name) == e.key:
                        users.add(name)
        total: dict[str, int] = {"users": 0}
        for n, user in enumerate(sorted(users)):
            show(n, len(users))
            one = await reindex(meta, fs, user)
            total["users"] += 1
            for k, v in one.items():
                if k != "record_age_seconds":
                    total[k] = total.get(k, 0) + v
            if one["user_created"]:
                print(f"mailstore reindex: {user} was only in the bucket: made with a random password "
                      "(set one: mailstore user passwd)", file=sys.stderr)
        return total

    return _on_store(args, "reindex", "users", every)


def cmd_gc(args: argparse.Namespace) -> int:
    from .rebuild import gc

    grace = parse_duration(args.grace, "--grace")
    return _on_store(args, "gc", "users", lambda meta, fs, show: gc(
        meta, fs, grace, [args.user.lower()] if args.user else None, show))


def cmd_metadata_copy(args: argparse.Namespace) -> int:
    """Copy all mail metadata between stores (SQLite <-> PostgreSQL), then verify it."""
    from . import metacopy

    if args.source == args.target:
        print("mailstore metadata copy: --from and --to are the same store", file=sys.stderr)
        return 2
    shown: dict[str, int] = {}

    def progress(table: str, rows: int) -> None:
        if not args.quiet and shown.get(table) != rows:
            shown[table] = rows
            print(f"{table}: {rows} rows", file=sys.stderr, flush=True)

    try:
        counts = metacopy.copy(MetaStore(args.source), MetaStore(args.target), progress)
    except metacopy.CopyMismatch as exc:
        print(f"mailstore metadata copy: the copy differs from the source: {exc} (run it again to resume)",
              file=sys.stderr)
        return 1
    print(json.dumps({"verified": True, "rows": counts}))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from . import importing, sources

    source: importing.Source
    if args.kind == "imap":
        source = sources.ImapSource(sources.ImapUrl.parse(read_url(args.source)))
    elif args.kind == "maildir":
        source = sources.MaildirSource(Path(args.source))
    else:
        source = sources.MboxSource(Path(args.source), args.folder)
    meta = MetaStore(args.db)
    user = args.to.lower()
    if meta.get_user(user) is None:
        print(f"mailstore import: no user {user} (mailstore user add)", file=sys.stderr)
        return 1
    progress = importing.ImportProgress(enabled=not args.quiet)
    lock = importing.import_lock(meta, user, source.id)
    if not lock.acquire():
        print(f"mailstore import: another import of {source.id} into {user} is running", file=sys.stderr)
        return 75

    made: list[importing.Importer] = []  # the report survives a stop

    async def main() -> None:
        fs = open_fs(args.fs)
        made.append(importing.Importer(meta, fs, user, source.id, max_size=parse_size(args.max_size),
                                       ignore_quota=args.ignore_quota, progress=progress))
        try:
            await importing.run(made[0], source, args.connections)
        finally:
            made[0].close()
            await fs.close()

    code = 0
    _install_uvloop()
    try:
        asyncio.run(main())
    except importing.OverQuota as exc:
        print(f"\nmailstore import: {exc}", file=sys.stderr)
        code = 3
    except KeyboardInterrupt:
        print("\nmailstore import: interrupted; run the same command again to resume", file=sys.stderr)
        code = 130
    except (ConnectionError, OSError) as exc:
        print(f"\nmailstore import: source unavailable: {exc}; run again to resume", file=sys.stderr)
        code = 75
    progress.close()
    imp = made[0] if made else None
    if imp is not None:
        print(imp.table(), file=sys.stderr)
        summary = imp.summary()
        print(json.dumps(summary))
        if any(r.failed for r in imp.reports.values()):
            code = code or 1
    return code


if TYPE_CHECKING:  # argparse's class is generic only to type checkers
    Subcommands = argparse._SubParsersAction[argparse.ArgumentParser]


def register(sub: Subcommands) -> None:
    """The mail shim's subcommands of `mailstore` (assembled by appliance.cli)."""
    for add in (_user_parser, _lmtp_parser, _imap_parser, _pop3_parser, _managesieve_parser, _import_parsers,
                _reindex_parser, _gc_parser, _metadata_parser, _sieve_parser):
        add(sub)


def _store(p: argparse.ArgumentParser, *, fs: bool = True) -> None:
    """--db and --fs: where mail metadata and objects live."""
    p.add_argument("--data-dir", help="the appliance's directory: --db and --fs as its mailstore.toml and "
                                      "shim-fs.url say")
    p.add_argument("--db",
                   help="the metadata: a SQLite file, or postgresql://user@host:port/db (password from PGPASSFILE)")
    if fs:
        p.add_argument("--fs", help="fs URL of the objects (s3:... or fscache:...), or @FILE with it")


def _user_parser(sub: Subcommands) -> None:
    user = sub.add_parser("user", help="manage mail users")
    us = user.add_subparsers(dest="action", required=True)
    for action in ("add", "list", "delete", "passwd", "set-quota", "alias"):
        p = us.add_parser(action)
        _store(p, fs=False)
        if action != "list":
            p.add_argument("name", help="the user's address")
        if action in ("add", "passwd"):
            p.add_argument("--password", help="the password (visible in ps: prefer --password-stdin or the prompt)")
            p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
            p.add_argument("--fs", help="with a mail-crypt: fs URL (or @FILE): the user's mail key made (add) or "
                                        "resealed under the new password (passwd)")
        if action == "passwd":
            p.add_argument("--old-password-file", help="the old password (a 0600 file): it opens the mail key")
            p.add_argument("--reset-mail-key", action="store_true",
                           help="make a new mail key instead: mail stored before can no longer be read")
        if action == "add":
            p.add_argument("--quota", help="like 1G; none by default")
        if action == "set-quota":
            p.add_argument("quota", help="like 1G, or 0 for none")
        if action == "alias":
            p.add_argument("address", help="an extra address that delivers to NAME")
        if action == "delete":
            p.add_argument("--fs", help="also delete the user's objects through this fs URL")
    user.set_defaults(fn=cmd_user)


def _lmtp_parser(sub: Subcommands) -> None:
    p = sub.add_parser("lmtp", help="run the LMTP ingest server")
    _store(p)
    logs.add_arguments(p)
    p.add_argument("--listen", default="127.0.0.1:24", help="HOST:PORT (default 127.0.0.1:24)")
    p.add_argument("--max-size", default="50M", help="the largest message taken (SIZE; default 50M)")
    p.add_argument("--max-recipients", type=int, default=100,
                   help="RCPTs per transaction; past it 452 4.5.3 (RFC 5321 4.5.3.1.10)")
    p.add_argument("--domain", default="localhost", help="domain of bare local parts")
    p.add_argument("--delimiter", default="+", help="recipient delimiter ('' for none)")
    p.add_argument("--workers", type=int, default=1, help="LMTP processes sharing the socket")
    p.add_argument("--metrics-listen", help="serve Prometheus /metrics on HOST:PORT (with --workers 1)")
    p.add_argument("--tls-cert", help="certificate chain (PEM): enables STARTTLS (read again on SIGHUP)")
    p.add_argument("--tls-key", help="its private key (PEM)")
    p.add_argument("--submission", default="",
                   help="HOST:PORT of the SMTP relay (the local Postfix) that Sieve's redirects and vacation "
                        "replies are submitted to; without it they are not sent (and redirected mail is kept)")
    p.set_defaults(fn=cmd_lmtp)


def _login_server(sub: Subcommands, name: str, what: str, port: int, tls_port: int, starttls: str,
                  ) -> argparse.ArgumentParser:
    """The options IMAP and POP3 share: the store, logs, listeners, users' domain, TLS, metrics."""
    p = sub.add_parser(name, help=what)
    _store(p)
    logs.add_arguments(p)
    p.add_argument("--listen", default=f"127.0.0.1:{port}", help=f"HOST:PORT (default 127.0.0.1:{port})")
    p.add_argument("--domain", default="localhost", help="domain of bare user names at login")
    p.add_argument("--delimiter", default="+", help="recipient delimiter ('' for none)")
    p.add_argument("--tls-cert", help=f"certificate chain (PEM): enables {starttls} (read again on SIGHUP)")
    p.add_argument("--tls-key", help="its private key (PEM)")
    p.add_argument("--listen-tls", help=f"also listen with implicit TLS ({tls_port}-style) on HOST:PORT")
    p.add_argument("--metrics-listen", help="serve Prometheus /metrics on HOST:PORT")
    return p


def _imap_parser(sub: Subcommands) -> None:
    p = _login_server(sub, "imap", "run the IMAP server", 143, 993, "STARTTLS")
    p.add_argument("--max-append", default="50M", help="the largest APPEND taken (default 50M)")
    p.add_argument("--state-record-interval", type=float, default=300.0, metavar="SECONDS",
                   help="record changed users' flags, keywords, mailbox names and copies in the bucket this "
                        "often, for reindex (default 300; 0: never)")
    p.set_defaults(fn=cmd_imap)


def _managesieve_parser(sub: Subcommands) -> None:
    p = sub.add_parser("managesieve", help="run the ManageSieve server (RFC 5804: users' Sieve scripts)")
    _store(p, fs=False)
    logs.add_arguments(p)
    p.add_argument("--listen", default="127.0.0.1:4190", help="HOST:PORT (default 127.0.0.1:4190)")
    p.add_argument("--domain", default="localhost", help="domain of bare user names at login")
    p.add_argument("--delimiter", default="+", help="recipient delimiter ('' for none)")
    p.add_argument("--tls-cert", help="certificate chain (PEM): enables STARTTLS (read again on SIGHUP)")
    p.add_argument("--tls-key", help="its private key (PEM)")
    p.add_argument("--metrics-listen", help="serve Prometheus /metrics on HOST:PORT")
    p.set_defaults(fn=cmd_managesieve)


def _sieve_parser(sub: Subcommands) -> None:
    p = sub.add_parser("sieve", help="users' Sieve scripts, run at LMTP delivery")
    ss = p.add_subparsers(dest="action", required=True)
    for action, what in (("put", "store a script (it must compile)"), ("get", "print a script"),
                         ("list", "a user's scripts"), ("activate", "make a script the active one"),
                         ("deactivate", "no script active"), ("delete", "remove a script (not the active one)"),
                         ("check", "compile a script, print its errors")):
        a = ss.add_parser(action, help=what)
        if action != "check":
            _store(a, fs=False)
            a.add_argument("user", help="the user's address")
        if action in ("put", "get", "activate", "delete"):
            a.add_argument("name", help="the script's name")
        if action in ("put", "check"):
            a.add_argument("file", help="the script's file, or - for standard input")
        if action == "put":
            a.add_argument("--activate", action="store_true", help="and make it the active script")
    p.set_defaults(fn=cmd_sieve)


def _pop3_parser(sub: Subcommands) -> None:
    p = _login_server(sub, "pop3", "run the POP3 server (the users' INBOX)", 110, 995, "STLS")
    p.set_defaults(fn=cmd_pop3)


def _import_parsers(sub: Subcommands) -> None:
    imp = sub.add_parser("import", help="bring existing mail in: from an IMAP server, a Maildir or an mbox")
    isub = imp.add_subparsers(dest="kind", required=True)
    for kind, what in (("imap", "--from imap[s]://USER:PASS@HOST[:PORT] or @FILE"), ("maildir", "DIR"),
                       ("mbox", "FILE")):
        p = isub.add_parser(kind)
        if kind == "imap":
            p.add_argument("--from", dest="source", required=True, metavar="URL", help=what)
        else:
            p.add_argument("source", metavar=what, help="where the mail comes from")
        if kind == "mbox":
            p.add_argument("--folder", default="INBOX", help="the local folder to fill")
        p.add_argument("--to", required=True, help="the local user")
        _store(p)
        p.add_argument("--connections", type=int, default=4, help="folders imported at once (IMAP connections)")
        p.add_argument("--max-size", default="50M", help="larger messages are reported and skipped")
        p.add_argument("--ignore-quota", action="store_true", help="administrators: import past the quota")
        p.add_argument("--quiet", action="store_true", help="no progress output")
        p.set_defaults(fn=cmd_import)


def _reindex_parser(sub: Subcommands) -> None:
    p = sub.add_parser("reindex", help="rebuild a user's mailboxes and messages from the bucket")
    _store(p)
    p.add_argument("user", nargs="?", help="the user's address")
    p.add_argument("--all", action="store_true", help="every user of the database and of the bucket")
    p.add_argument("--password-file", help="mail-crypt: USER's password (a 0600 file), to read their mail")
    p.set_defaults(fn=cmd_reindex)


def _metadata_parser(sub: Subcommands) -> None:
    md = sub.add_parser("metadata", help="the mail metadata store itself")
    ms = md.add_subparsers(dest="action", required=True)
    p = ms.add_parser("copy", help="copy all of it to another store (SQLite <-> PostgreSQL), verified, resumable")
    p.add_argument("--from", dest="source", required=True,
                   help="a SQLite file or postgresql://user@host:port/db (passwords from PGPASSFILE)")
    p.add_argument("--to", dest="target", required=True, help="the same forms")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(fn=cmd_metadata_copy)


def _gc_parser(sub: Subcommands) -> None:
    p = sub.add_parser("gc", help="delete orphan objects (no metadata) older than a grace period")
    _store(p)
    p.add_argument("--grace", default="1h", help="leave objects younger than this (a delivery in flight)")
    p.add_argument("--user", help="only this user's objects")
    p.set_defaults(fn=cmd_gc)
