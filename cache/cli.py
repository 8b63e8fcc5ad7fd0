"""`mailstore fs`: storage operations on a Dovecot-style fs URL, like `doveadm fs`.

    mailstore fs put URL KEY FILE|- [--meta NAME=VALUE]... [--content-type T]
    mailstore fs get URL KEY [FILE]
    mailstore fs stat URL KEY
    mailstore fs ls URL [PREFIX] [--delimiter /]
    mailstore fs rm URL KEY [KEY...]
    mailstore fs cp URL SRC DST [--meta NAME=VALUE]...   (with --meta: metadata replaced)

Exit status: 0 done, 1 the storage said no (not found, denied, ...), 2 bad
arguments or URL, 75 storage unavailable (try again later; EX_TEMPFAIL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from runtime.keyfile import read_secret

from . import FsError, FsUrlError, NotFound, Unavailable, mail_crypt_of, open_fs
from .mailcrypt import user_of


def _meta(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    out = {}
    for p in pairs:
        name, eq, value = p.partition("=")
        if not eq or not name:
            raise FsUrlError(f"--meta wants NAME=VALUE, got {p!r}")
        out[name.lower()] = value
    return out


async def _run(args: argparse.Namespace) -> int:
    fs = open_fs(args.url)
    try:
        if getattr(args, "password_file", None):  # a mail-crypt: user's mail, opened with the password
            crypt = mail_crypt_of(fs)
            if crypt is None:
                raise FsUrlError("--password-file opens a mail-crypt: user's mail; this fs URL has no mail-crypt:")
            await crypt.unlock(user_of(args.key), read_secret(args.password_file), create=False)
        if args.op == "put":
            data = sys.stdin.buffer.read() if args.file == "-" else await asyncio.to_thread(Path(args.file).read_bytes)
            etag = await fs.put(args.key, data, _meta(args.meta), args.content_type)
            print(json.dumps({"key": args.key, "etag": etag, "size": len(data)}))
        elif args.op == "get":
            body, _ = await fs.get(args.key)
            if args.file:
                await asyncio.to_thread(Path(args.file).write_bytes, body)
            else:
                sys.stdout.buffer.write(body)
        elif args.op == "stat":
            st = await fs.stat(args.key)
            print(json.dumps({"key": st.key, "size": st.size, "etag": st.etag, "mtime": st.mtime,
                              "content_type": st.content_type, "metadata": st.metadata}, indent=2))
        elif args.op == "ls":
            async for e in fs.list(args.prefix or "", args.delimiter):
                print(e.key if e.is_prefix else f"{e.key}\t{e.size}")
        elif args.op == "rm":
            if len(args.keys) == 1:
                await fs.delete(args.keys[0])
            else:
                failed = await fs.delete_many(args.keys)
                for key, code in failed:
                    print(f"mailstore fs: rm {key}: {code}", file=sys.stderr)
                if failed:
                    return 1
        elif args.op == "cp":
            await fs.copy(args.src, args.dst, _meta(args.meta))
        return 0
    finally:
        await fs.close()


# What `mailstore fs` says and exits with, first match wins (75: EX_TEMPFAIL, try again later).
_FAILURES: tuple[tuple[type[Exception], str, int], ...] = (
    (FsUrlError, "", 2), (Unavailable, "storage unavailable: ", 75), (NotFound, "not found: ", 1),
    (FsError, "", 1), (OSError, "", 2), (ValueError, "", 2))


def cmd_fs(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except tuple(kind for kind, _, _ in _FAILURES) as exc:
        prefix, code = next((p, c) for kind, p, c in _FAILURES if isinstance(exc, kind))
        print(f"mailstore fs: {prefix}{exc}", file=sys.stderr)
        return code


URL_HELP = ("the fs URL (s3:http://KEY:SECRET@HOST/?bucket=B, fscache:SIZE:DIR:s3:..., compress:zstd:3:..., "
            "mail-crypt:...), or @FILE holding it")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fs = sub.add_parser("fs", help="operate on a Dovecot-style fs URL (s3:..., fscache:...)",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ops = fs.add_subparsers(dest="op", required=True)
    p = ops.add_parser("put")
    p.add_argument("url", help=URL_HELP)
    p.add_argument("key", help="the object key")
    p.add_argument("file", help="a file, or - for standard input")
    p.add_argument("--meta", action="append", help="NAME=VALUE (x-amz-meta-NAME), repeatable")
    p.add_argument("--content-type", default="application/octet-stream", help="the object's Content-Type")
    g = ops.add_parser("get")
    g.add_argument("url", help=URL_HELP)
    g.add_argument("key", help="the object key")
    g.add_argument("file", nargs="?", help="write here (default: standard output)")
    g.add_argument("--password-file", help="mail-crypt: the object's user's password (a 0600 file)")
    s = ops.add_parser("stat")
    s.add_argument("url", help=URL_HELP)
    s.add_argument("key", help="the object key")
    ls = ops.add_parser("ls")
    ls.add_argument("url", help=URL_HELP)
    ls.add_argument("prefix", nargs="?", help="only keys starting so")
    ls.add_argument("--delimiter", help="group keys by this character (like /)")
    rm = ops.add_parser("rm")
    rm.add_argument("url", help=URL_HELP)
    rm.add_argument("keys", nargs="+", help="the object keys")
    cp = ops.add_parser("cp")
    cp.add_argument("url", help=URL_HELP)
    cp.add_argument("src", help="the source key")
    cp.add_argument("dst", help="the destination key")
    cp.add_argument("--meta", action="append", help="NAME=VALUE replacing the metadata, repeatable")
    fs.set_defaults(fn=cmd_fs)
