"""Logs of every part of the appliance: one line format, one setup, reopened on SIGHUP.

Every process (gateway, LMTP, IMAP, dashboard, the `mailstore up` supervisor) calls
`setup()` once. Lines go to stderr, which is journald under systemd, or a file named with
`--log-file` (then stderr itself is that file, so a crash's traceback lands there too). On
SIGHUP the file is opened again by name, so logrotate can move it away first.

A line is an event with fields, in one of two formats:

    text:  2026-11-30T23:50:01.123Z WARNING imap[4242] mailstore.auth: login failed remote=203.0.113.7 user="bob"
    json:  {"time": "2026-11-30T23:50:01.123Z", "level": "WARNING", "part": "imap", "pid": 4242,
            "logger": "mailstore.auth", "message": "login failed", "remote": "203.0.113.7", "user": "bob"}

In text, a value that is empty or holds a space, a quote, an equals sign, a backslash or
anything outside printable ASCII is written as a JSON string. So no value (an object key or a
user name chosen by a client) can end a line or pass for another field: a filter such as
packaging/fail2ban's matches what the appliance wrote, not what a client sent.

Levels: `--log-level info` for every logger, or `info,s3.access=warning,mailstore.imap=debug`
for some loggers apart. The S3 access log (logger "s3.access", one line per request) is the
busiest; `AccessLog` renders its lines the same way and writes them in batches.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path

FORMATS = ("text", "json")
_SAFE = re.compile(r"[A-Za-z0-9_./:@<>\[\],;+*%!?#~()|^$&'`{}-]+")  # written bare; anything else quoted


class _State:
    part = "mailstore"
    format = "text"
    file: Path | None = None
    copy: logging.StreamHandler | None = None  # type: ignore[type-arg]  # setup(copy_to=...)
    copy_path: Path | None = None


STATE = _State()


def value_text(value: object) -> str:
    """One field's value in a text line (see the module's docstring)."""
    s = value if isinstance(value, str) else str(value)
    if _SAFE.fullmatch(s):
        return s
    return json.dumps(s)  # quoted, every control character and quote escaped, non-ASCII as \\u


_HEAD = re.compile(r"(\S+) ([A-Z]+) (\S+?)\[(\d+)\] (\S+): (\S+(?: (?!\S+=)\S+)*)")
_FIELD = re.compile(r' ([^\s=]+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_line(line: str) -> dict[str, object] | None:
    """A line this module wrote, text or JSON, as the JSON form's dict (None: not one of ours).
    The inverse of `render`: what tools reading the logs (the dashboard) use."""
    line = line.rstrip("\n")
    if line.startswith("{"):
        try:
            doc = json.loads(line)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) and "logger" in doc else None
    m = _HEAD.match(line)
    if m is None:
        return None
    doc = {"time": m[1], "level": m[2], "part": m[3], "pid": int(m[4]), "logger": m[5], "message": m[6]}
    rest = line[m.end():]
    pos = 0
    while (f := _FIELD.match(rest, pos)) is not None:
        raw = f[2]
        doc.setdefault(f[1], json.loads(raw) if raw.startswith('"') else raw)
        pos = f.end()
    return doc


@lru_cache(maxsize=64)
def _second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def _timestamp(created: float) -> str:
    return f"{_second(int(created))}.{int(created % 1 * 1000):03d}Z"


_PID = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))  # prefork workers


def _pid() -> int:
    return _PID[0]


def render(created: float, level: str, logger: str, message: str, fields: Mapping[str, object]) -> str:
    """One line, without its newline."""
    if STATE.format == "json":
        doc: dict[str, object] = {"time": _timestamp(created), "level": level, "part": STATE.part,
                                  "pid": _pid(), "logger": logger, "message": message}
        for k, v in fields.items():
            doc.setdefault(k, v if isinstance(v, (int, float, bool)) or v is None else str(v))
        return json.dumps(doc, ensure_ascii=True)
    head = f"{_timestamp(created)} {level} {STATE.part}[{_pid()}] {logger}: {message}"
    if not fields:
        return head
    return head + " " + " ".join(f"{k}={value_text(v)}" for k, v in fields.items())


def event(logger: logging.Logger, level: int, message: str, **fields: object) -> None:
    """Log `message` with fields (rendered as key=value, or as JSON keys)."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"fields": fields})


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None) or {}
        message = record.getMessage()
        if record.exc_info:  # a traceback: ours to fix, kept whole (escaped into one line in json)
            message = f"{message}\n{self.formatException(record.exc_info)}"
        if STATE.format == "text" and "\n" in message and not record.exc_info:
            message = json.dumps(message)  # a message built from client input stays one line
        return render(record.created, record.levelname, record.name, message, fields)


def parse_levels(spec: str) -> tuple[int, dict[str, int]]:
    """"info,s3.access=warning" -> (INFO, {"s3.access": WARNING}); ValueError when unknown."""
    default = logging.INFO
    per: dict[str, int] = {}
    for item in (p.strip() for p in spec.split(",") if p.strip()):
        name, eq, level = item.rpartition("=")
        number = logging.getLevelName(level.upper())
        if not isinstance(number, int):
            raise ValueError(f"unknown log level {level!r} (debug, info, warning, error or critical)")
        if eq:
            per[name] = number
        else:
            default = number
    return default, per


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--log-level, --log-format and --log-file, for every command that serves."""
    parser.add_argument("--log-level", default="info", metavar="SPEC",
                        help="info (default), debug, warning...; per logger too: 'info,s3.access=warning'")
    parser.add_argument("--log-format", choices=FORMATS, default="text", help="text lines (default) or JSON lines")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--log-file", type=Path, help="append to this file (reopened on SIGHUP) instead of stderr")
    where.add_argument("--log-copy", type=Path,
                       help="write to stderr (systemd's journal) and append a copy to this file (reopened on SIGHUP)")


def setup_from(args: argparse.Namespace, part: str) -> None:
    setup(part, args.log_level, args.log_format, args.log_file, args.log_copy)


def setup(part: str, levels: str = "info", fmt: str = "text", file: Path | None = None,
          copy_to: Path | None = None) -> None:
    """Configure this process's logging (once, before serving). `copy_to`: also append every line
    to that file (the `mailstore up` supervisor: its terminal, and DATA_DIR/logs/up.log)."""
    default, per = parse_levels(levels)
    STATE.part, STATE.format, STATE.file, STATE.copy_path = part, fmt, file, copy_to
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    reopen()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root.addHandler(handler)
    if STATE.copy is not None:
        root.addHandler(STATE.copy)
    root.setLevel(default)
    logging.getLogger("mail.log").setLevel(max(default, logging.WARNING))  # aiosmtpd logs every command at INFO
    for name, level in per.items():
        logging.getLogger(name).setLevel(level)


def reopen() -> None:
    """Open the log file again by its name as stderr (after logrotate moved it away)."""
    if STATE.copy_path is not None:
        old = STATE.copy
        STATE.copy = logging.StreamHandler(open(STATE.copy_path, "a", opener=_private))  # noqa: SIM115
        STATE.copy.setFormatter(_Formatter())
        root = logging.getLogger()
        if old is not None:
            root.removeHandler(old)
            old.stream.close()
            root.addHandler(STATE.copy)
    if STATE.file is None:
        return
    sys.stderr.flush()
    fd = _private(str(STATE.file), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.dup2(fd, 2)
    finally:
        os.close(fd)


def _private(path: str, flags: int) -> int:
    """Log files are the owner's alone (they name users and addresses)."""
    return os.open(path, flags | os.O_APPEND, 0o600)


Hook = Callable[[], None]


def reopen_on_sighup(loop: asyncio.AbstractEventLoop | None = None, *also: Hook) -> None:
    """SIGHUP reopens the log file and runs `also` (a certificate reload) (on `loop` when
    given, else as a plain signal handler)."""
    def hup() -> None:
        reopen()
        for hook in also:
            hook()
    if loop is not None:
        loop.add_signal_handler(signal.SIGHUP, hup)
    else:
        signal.signal(signal.SIGHUP, lambda signum, frame: hup())


class AccessLog:
    """The S3 access log: one line per request, rendered as every other line, collected and
    written at most every `interval` seconds (or every 256 lines) in one write, as a web
    server's buffered access log (measured: about 11 us a request in all, README "Logs").
    A process that dies loses at most its last `interval`'s lines."""

    def __init__(self, name: str = "s3.access", interval: float = 0.2) -> None:
        self.logger = logging.getLogger(name)
        self.name, self.interval = name, interval
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def write(self, message: str, fields: Mapping[str, object]) -> None:
        self._add(render(time.time(), "INFO", self.name, message, fields))

    def request(self, op: str, rid: str, remote: str, access_key: str, method: str, bucket: str, key: str,
                status: int, received: int, sent: int, seconds: float, error: str | None = None,
                extra: Mapping[str, str] | None = None) -> None:
        """A request's line, in that order of fields, built as one f-string (a request's log
        line is on its hot path: README "Logs").  `rid`, `remote`, `access_key`, `method`,
        `error` and the numbers the server made itself and are written as they are; `bucket`,
        `key` and `extra` (Dovecot's trace headers) came from the client and are escaped."""
        ms = round(seconds * 1000, 2)
        if STATE.format == "json":
            fields: dict[str, object] = {"rid": rid, "remote": remote, "access_key": access_key, "method": method,
                                         "bucket": bucket, "object": key, "status": status, "in": received,
                                         "out": sent, "ms": ms}
            if error is not None:
                fields["error"] = error
            self.write(op, {**fields, **(extra or {})})
            return
        line = (f"{_timestamp(time.time())} INFO {STATE.part}[{_pid()}] {self.name}: {op} rid={rid} remote={remote} "
                f"access_key={access_key} method={method} bucket={value_text(bucket)} object={value_text(key)} "
                f"status={status} in={received} out={sent} ms={ms}")
        if error is not None:
            line += f" error={error}"
        if extra:
            line += "".join(f" {k}={value_text(v)}" for k, v in extra.items())
        self._add(line)

    def _add(self, line: str) -> None:
        self._lines.append(line)
        if len(self._lines) >= 256:
            self.flush()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self.interval, self.flush)
            except RuntimeError:  # no loop (a test, a tool): at once
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            text = "\n".join(self._lines) + "\n"
            self._lines.clear()
            streams = [sys.stderr] if STATE.copy is None else [sys.stderr, STATE.copy.stream]
            for stream in streams:
                try:
                    stream.write(text)
                    stream.flush()
                except (OSError, ValueError):
                    pass  # a closed or full log must not fail requests
