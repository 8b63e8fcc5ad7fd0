"""Each user's Sieve scripts, in the metadata store (so every shim host sees the same): a name,
the text, and which one is active (at most one: RFC 5804 §1.1). Only scripts that compile are
stored. What ManageSieve and `mailstore sieve` change, LMTP delivery reads (`active`), through a
cache of compiled scripts keyed by the text."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..db import MetaError, MetaStore
from .checks import check, valid_script_name
from .grammar import Script, SieveError, parse

MAX_SCRIPT_BYTES = 1 << 20  # HAVESPACE's limit per script
MAX_SCRIPTS = 20  # per user


class ScriptError(MetaError):
    """A script store request that cannot be done; `code`: ManageSieve's response code."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class StoredScript:
    name: str
    active: bool
    modified: float


def diagnose(text: str, exists: Callable[[str], bool] | None = None) -> tuple[list[str], str]:
    """A script's errors as Pigeonhole prints them ("line N: error: ...", its warnings among
    them), and the stage that failed ("parse" or "validation"); when it compiles, its warnings
    and ""."""
    try:
        script = parse(text)
    except SieveError as exc:
        return str(exc).split("\n"), "parse"
    errors, _ = check(script, exists)
    lines = sorted(script.warnings + [line for e in errors for line in str(e).split("\n")],
                   key=lambda line: int(line.split(":")[0].split()[1]))
    return (lines, "validation") if errors else (script.warnings, "")


def compile_text(text: str) -> tuple[Script, set[str]]:
    """A script compiled (SieveError listing every error, as Pigeonhole lists them)."""
    script = parse(text)
    errors, required = check(script)
    if errors:
        raise SieveError(errors[0].line, "\n".join(str(e) for e in errors)
                         .removeprefix(f"line {errors[0].line}: error: "))
    return script, required


@functools.lru_cache(maxsize=1024)
def compiled(text: str) -> tuple[Script, frozenset[str]]:
    """The compiled form of an active script's text (once per text per process)."""
    script, required = compile_text(text)
    return script, frozenset(required)


valid_name = valid_script_name


def put(meta: MetaStore, user: str, name: str, text: str) -> None:
    """Store (or replace) a script; it must compile (SieveError)."""
    if not valid_name(name):
        raise ScriptError(f"Invalid Sieve script name `{name}'.", "")
    if len(text.encode()) > MAX_SCRIPT_BYTES:
        raise ScriptError(f"Script is too large (max {MAX_SCRIPT_BYTES} bytes).", "QUOTA/MAXSIZE")
    compile_text(text)
    with meta._write() as c:
        exists = c.execute("SELECT 1 FROM sieve_scripts WHERE user_name=? AND name=?", (user, name)).fetchone()
        if exists:
            c.execute("UPDATE sieve_scripts SET script=?, modified=? WHERE user_name=? AND name=?",
                      (text, time.time(), user, name))
            return
        _room(c, user)
        c.execute("INSERT INTO sieve_scripts(user_name, name, script, active, modified) VALUES (?,?,?,0,?)",
                  (user, name, text, time.time()))


def _room(c: Any, user: str) -> None:
    count = c.execute("SELECT count(*) FROM sieve_scripts WHERE user_name=?", (user,)).fetchone()[0]
    if count >= MAX_SCRIPTS:
        raise ScriptError(f"Script count quota exceeded (max {MAX_SCRIPTS} scripts).", "QUOTA/MAXSCRIPTS")


def check_room(meta: MetaStore, user: str, name: str) -> None:
    """HAVESPACE: would a PUTSCRIPT of `name` fit (ScriptError when it would not)."""
    c = meta.conn()
    if not c.execute("SELECT 1 FROM sieve_scripts WHERE user_name=? AND name=?", (user, name)).fetchone():
        _room(c, user)


def _missing(name: str) -> ScriptError:
    return ScriptError(f"Sieve script `{name}' not found", "NONEXISTENT")


def get(meta: MetaStore, user: str, name: str) -> str:
    row = meta.conn().execute("SELECT script FROM sieve_scripts WHERE user_name=? AND name=?",
                              (user, name)).fetchone()
    if row is None:
        raise _missing(name)
    return str(row[0])


def listing(meta: MetaStore, user: str) -> list[StoredScript]:
    return [StoredScript(n, bool(a), float(m)) for n, a, m in meta.conn().execute(
        "SELECT name, active, modified FROM sieve_scripts WHERE user_name=? ORDER BY name", (user,))]


def activate(meta: MetaStore, user: str, name: str) -> str | None:
    """Make `name` the active script ("" : none is); the one that was active before (None: none)."""
    with meta._write() as c:
        if name and not c.execute("SELECT 1 FROM sieve_scripts WHERE user_name=? AND name=?",
                                  (user, name)).fetchone():
            raise _missing(name)
        row = c.execute("SELECT name FROM sieve_scripts WHERE user_name=? AND active=1", (user,)).fetchone()
        c.execute("UPDATE sieve_scripts SET active=0 WHERE user_name=? AND active=1", (user,))
        if name:
            c.execute("UPDATE sieve_scripts SET active=1 WHERE user_name=? AND name=?", (user, name))
        return str(row[0]) if row else None


def delete(meta: MetaStore, user: str, name: str) -> None:
    with meta._write() as c:
        row = c.execute("SELECT active FROM sieve_scripts WHERE user_name=? AND name=?", (user, name)).fetchone()
        if row is None:
            raise _missing(name)
        if row[0]:
            raise ScriptError("Cannot delete the active Sieve script.", "ACTIVE")
        c.execute("DELETE FROM sieve_scripts WHERE user_name=? AND name=?", (user, name))


def rename(meta: MetaStore, user: str, old: str, new: str) -> None:
    if not valid_name(new):
        raise ScriptError(f"Invalid new Sieve script name `{new}'.", "")
    with meta._write() as c:
        if not c.execute("SELECT 1 FROM sieve_scripts WHERE user_name=? AND name=?", (user, old)).fetchone():
            raise _missing(old)
        if c.execute("SELECT 1 FROM sieve_scripts WHERE user_name=? AND name=?", (user, new)).fetchone():
            raise ScriptError("A sieve script with that name already exists.", "ALREADYEXISTS")
        c.execute("UPDATE sieve_scripts SET name=? WHERE user_name=? AND name=?", (new, user, old))


def active(meta: MetaStore, user: str) -> tuple[str, str] | None:
    """The user's active script (name, text), or None."""
    row = meta.conn().execute("SELECT name, script FROM sieve_scripts WHERE user_name=? AND active=1",
                              (user,)).fetchone()
    return (str(row[0]), str(row[1])) if row else None
