"""Each user's Sieve scripts, in the metadata store (so every shim host sees the same): a name,
the text, and which one is active (at most one: RFC 5804 §1.1). Only scripts that compile are
stored. What ManageSieve and `mailstore sieve` change, LMTP delivery reads (`active`), through a
cache of compiled scripts keyed by the text."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

from ..db import MetaError, MetaStore
from .checks import check
from .grammar import Script, SieveError, parse

MAX_SCRIPT_BYTES = 1 << 20  # HAVESPACE's limit per script
MAX_SCRIPTS = 20  # per user
MAX_NAME = 512


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


def valid_name(name: str) -> bool:
    """RFC 5804 §1.6: a non-empty UTF-8 name without control characters."""
    return 0 < len(name.encode()) <= MAX_NAME and not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name)


def put(meta: MetaStore, user: str, name: str, text: str) -> None:
    """Store (or replace) a script; it must compile (SieveError)."""
    if not valid_name(name):
        raise ScriptError("Invalid script name.", "")
    if len(text.encode()) > MAX_SCRIPT_BYTES:
        raise ScriptError("Script is too large.", "QUOTA/MAXSIZE")
    compile_text(text)
    with meta._write() as c:
        exists = c.execute("SELECT 1 FROM sieve_scripts WHERE user_name=? AND name=?", (user, name)).fetchone()
        if exists:
            c.execute("UPDATE sieve_scripts SET script=?, modified=? WHERE user_name=? AND name=?",
                      (text, time.time(), user, name))
            return
        count = c.execute("SELECT count(*) FROM sieve_scripts WHERE user_name=?", (user,)).fetchone()[0]
        if count >= MAX_SCRIPTS:
            raise ScriptError(f"Too many scripts (at most {MAX_SCRIPTS}).", "QUOTA/MAXSCRIPTS")
        c.execute("INSERT INTO sieve_scripts(user_name, name, script, active, modified) VALUES (?,?,?,0,?)",
                  (user, name, text, time.time()))


def get(meta: MetaStore, user: str, name: str) -> str:
    row = meta.conn().execute("SELECT script FROM sieve_scripts WHERE user_name=? AND name=?",
                              (user, name)).fetchone()
    if row is None:
        raise ScriptError("There is no script by that name.", "NONEXISTENT")
    return str(row[0])


def listing(meta: MetaStore, user: str) -> list[StoredScript]:
    return [StoredScript(n, bool(a), float(m)) for n, a, m in meta.conn().execute(
        "SELECT name, active, modified FROM sieve_scripts WHERE user_name=? ORDER BY name", (user,))]


def activate(meta: MetaStore, user: str, name: str) -> None:
    """Make `name` the active script ("" : none is)."""
    with meta._write() as c:
        if name and not c.execute("SELECT 1 FROM sieve_scripts WHERE user_name=? AND name=?",
                                  (user, name)).fetchone():
            raise ScriptError("There is no script by that name.", "NONEXISTENT")
        c.execute("UPDATE sieve_scripts SET active=0 WHERE user_name=? AND active=1", (user,))
        if name:
            c.execute("UPDATE sieve_scripts SET active=1 WHERE user_name=? AND name=?", (user, name))


def delete(meta: MetaStore, user: str, name: str) -> None:
    with meta._write() as c:
        row = c.execute("SELECT active FROM sieve_scripts WHERE user_name=? AND name=?", (user, name)).fetchone()
        if row is None:
            raise ScriptError("There is no script by that name.", "NONEXISTENT")
        if row[0]:
            raise ScriptError("Active script cannot be deleted.", "ACTIVE")
        c.execute("DELETE FROM sieve_scripts WHERE user_name=? AND name=?", (user, name))


def rename(meta: MetaStore, user: str, old: str, new: str) -> None:
    if not valid_name(new):
        raise ScriptError("Invalid script name.", "")
    with meta._write() as c:
        if not c.execute("SELECT 1 FROM sieve_scripts WHERE user_name=? AND name=?", (user, old)).fetchone():
            raise ScriptError("There is no script by that name.", "NONEXISTENT")
        if c.execute("SELECT 1 FROM sieve_scripts WHERE user_name=? AND name=?", (user, new)).fetchone():
            raise ScriptError("A script with that name already exists.", "ALREADYEXISTS")
        c.execute("UPDATE sieve_scripts SET name=? WHERE user_name=? AND name=?", (new, user, old))


def active(meta: MetaStore, user: str) -> tuple[str, str] | None:
    """The user's active script (name, text), or None."""
    row = meta.conn().execute("SELECT name, script FROM sieve_scripts WHERE user_name=? AND active=1",
                              (user,)).fetchone()
    return (str(row[0]), str(row[1])) if row else None
