"""IMAP command parsing (RFC 3501 §9 grammar, plus LITERAL+, UIDPLUS, MOVE, CONDSTORE,
ID, ENABLE, NAMESPACE, QUOTA, IDLE, UNSELECT, SPECIAL-USE): sans-I/O.

Two layers, neither touches a socket:

- `CommandFramer` takes bytes as they arrive and yields complete commands,
  literals included.  Limits are checked *before* anything is read: a line
  longer than `max_line`, a literal larger than `max_literal` (APPENDLIMIT)
  and a NUL byte are refused as soon as they are seen.  A synchronizing
  literal ({n}) yields `NeedContinuation`, which the I/O loop answers with
  "+ ..."; an oversized one is refused before the client sends it.  An
  oversized non-synchronizing literal ({n+}) is already on its way, so it
  is `fatal` (RFC 7888 §4: answer, then close).
- `parse_command` turns one framed command into a typed `Command`, with
  nesting depth bounded.  Errors are `ParseError(tag, text)`: the session
  answers "<tag> BAD <text>" and the connection stays usable.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

T = TypeVar("T")

MAX_LINE = 64 * 1024  # a command line, literals excluded
MAX_LITERAL = 50 * 1024 * 1024  # APPENDLIMIT
MAX_DEPTH = 32  # nested parentheses (search keys, lists)
MAX_NUMBER = 2**32 - 1  # RFC 3501 number, nz-number: unsigned 32-bit
MAX_MODSEQ = 2**63 - 1  # RFC 7162 mod-sequence-value: unsigned 63-bit (SQLite's INTEGER)

_LITERAL_AT_END = re.compile(rb"\{(\d{1,12})(\+?)\}\r\n$")


# ------------------------------------------------------------------ framing

@dataclass(frozen=True, slots=True)
class Framed:
    """One complete command: the wire bytes, literals inline, without the final CRLF."""

    data: bytes


@dataclass(frozen=True, slots=True)
class NeedContinuation:
    """A synchronizing literal was announced: send "+ ..." to receive it."""

    size: int


@dataclass(frozen=True, slots=True)
class FramingError:
    tag: str
    text: str
    fatal: bool = False  # the connection cannot be resynchronised: close it after answering


class CommandFramer:
    def __init__(self, *, max_line: int = MAX_LINE, max_literal: int = MAX_LITERAL) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self._buf = bytearray()
        self._done = bytearray()  # the command assembled so far (lines and literals)
        self._literal_left = 0  # bytes of a literal still to come
        self._skip_line = False  # after an error: drop the rest of the line

    @property
    def mid_command(self) -> bool:
        """Part of a command is buffered: the client is still sending it."""
        return bool(self._buf or self._done or self._literal_left)

    def feed(self, data: bytes) -> list[Framed | NeedContinuation | FramingError]:
        self._buf += data
        out: list[Framed | NeedContinuation | FramingError] = []
        while True:
            if self._literal_left:
                take = min(self._literal_left, len(self._buf))
                if take == 0:
                    return out
                chunk = bytes(self._buf[:take])
                del self._buf[:take]
                self._literal_left -= take
                if b"\0" in chunk:
                    out.append(self._error("NUL byte in a literal", fatal=True))
                    return out
                self._done += chunk
                continue
            i = self._buf.find(b"\r\n")
            if i < 0:
                if len(self._buf) > self.max_line:
                    out.append(self._error("Command line too long"))
                    self._buf.clear()
                    self._skip_line = True
                return out
            line = bytes(self._buf[: i + 2])
            del self._buf[: i + 2]
            if self._skip_line:
                self._skip_line = False
                self._done.clear()
                continue
            # The line has left the buffer: its own tag answers (RFC 3501 §7.1: tagged BAD).
            if len(line) > self.max_line:
                out.append(self._error("Command line too long", tag_from=bytes(self._done) + line))
                self._done.clear()
                continue
            if b"\0" in line:
                out.append(self._error("NUL byte in command", tag_from=bytes(self._done) + line))
                self._done.clear()
                continue
            m = _LITERAL_AT_END.search(line)
            if m is None:
                out.append(Framed(bytes(self._done) + line[:-2]))
                self._done.clear()
                continue
            size, non_sync = int(m.group(1)), m.group(2) == b"+"
            if size > self.max_literal:
                out.append(self._error(f"[TOOBIG] Literal of {size} bytes is over the limit of {self.max_literal}",
                                       fatal=non_sync, tag_from=bytes(self._done) + line))
                self._done.clear()
                if non_sync:
                    return out
                continue
            self._done += line
            self._literal_left = size
            if not non_sync and size:
                out.append(NeedContinuation(size))

    def _error(self, text: str, *, fatal: bool = False, tag_from: bytes | None = None) -> FramingError:
        source = tag_from if tag_from is not None else bytes(self._done) + bytes(self._buf[:64])
        tag = source.split(b" ", 1)[0].decode("ascii", "replace") if source else "*"
        if not tag or not _TAG_RE.fullmatch(tag):
            tag = "*"
        return FramingError(tag, text, fatal)


# ------------------------------------------------------------------ values

@dataclass(frozen=True, slots=True)
class SequenceSet:
    """Ranges of message numbers or UIDs; None stands for "*" (the largest)."""

    ranges: tuple[tuple[int | None, int | None], ...]
    last_result: bool = False  # "$" (RFC 5182 SEARCHRES)

    def contains(self, n: int, largest: int) -> bool:
        for a, b in self.ranges:
            lo = largest if a is None else a
            hi = largest if b is None else b
            if min(lo, hi) <= n <= max(lo, hi):
                return True
        return False


@dataclass(frozen=True, slots=True)
class Section:
    parts: tuple[int, ...] = ()  # 1.2.3
    text: str = ""  # "", HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: tuple[str, ...] = ()  # for HEADER.FIELDS[.NOT]


@dataclass(frozen=True, slots=True)
class FetchAttribute:
    name: str  # ENVELOPE, FLAGS, INTERNALDATE, RFC822.SIZE, BODY, BODYSTRUCTURE, UID, MODSEQ, RFC822, ...
    section: Section | None = None  # BODY[...] / BODY.PEEK[...]
    peek: bool = False
    partial: tuple[int, int] | None = None  # <start.count>


@dataclass(frozen=True, slots=True)
class SearchKey:
    name: str  # ALL, SEEN, FROM, HEADER, OR, NOT, AND (a parenthesised list), SEQSET, UID, ...
    args: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Command:
    tag: str
    name: str  # upper case; "UID FETCH" etc. for UID commands
    args: dict[str, Any] = field(default_factory=dict)


class ParseError(Exception):
    def __init__(self, tag: str, text: str) -> None:
        super().__init__(text)
        self.tag, self.text = tag, text


# ------------------------------------------------------------------ the reader

_TAG_RE = re.compile(r"[!#$&',\-./0-9:;<=>?@A-Z\\^_`a-z|~]+")  # ASTRING-CHAR but not "+"
ATOM_SPECIALS = set(b'(){ %*"\\]') | set(range(32)) | {127}
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


class _Reader:
    def __init__(self, data: bytes, tag: str) -> None:
        self.d = data
        self.i = 0
        self.tag = tag
        self.depth = 0

    def fail(self, text: str) -> ParseError:
        return ParseError(self.tag, text)

    def at_end(self) -> bool:
        return self.i >= len(self.d)

    def peek(self, n: int = 1) -> bytes:
        return self.d[self.i:self.i + n]

    def sp(self) -> None:
        if self.peek() != b" ":
            raise self.fail("Expected a space")
        self.i += 1

    def maybe_sp(self) -> bool:
        if self.peek() == b" ":
            self.i += 1
            return True
        return False

    def end(self) -> None:
        if not self.at_end():
            raise self.fail(f"Unexpected characters at the end: {self.d[self.i:self.i + 20]!r}")

    def expect(self, text: bytes) -> None:
        if self.d[self.i:self.i + len(text)].upper() != text.upper():
            raise self.fail(f"Expected {text.decode()}")
        self.i += len(text)

    def atom(self, extra_allowed: bytes = b"") -> str:
        start = self.i
        while self.i < len(self.d) and (self.d[self.i] not in ATOM_SPECIALS or self.d[self.i] in extra_allowed):
            self.i += 1
        if self.i == start:
            raise self.fail("Expected an atom")
        return self.d[start:self.i].decode("ascii", "replace")

    def number(self, limit: int = MAX_NUMBER) -> int:
        """RFC 3501 number: an unsigned 32-bit integer (RFC 7162 mod-sequences: `limit`=MAX_MODSEQ)."""
        m = re.compile(rb"\d{1,20}").match(self.d, self.i)
        if not m:
            raise self.fail("Expected a number")
        n = int(m.group())
        if n > limit:
            raise self.fail(f"Number out of range (at most {limit})")
        self.i = m.end()
        return n

    def modseq(self) -> int:
        return self.number(MAX_MODSEQ)

    def nz_number(self) -> int:
        n = self.number()
        if n == 0:
            raise self.fail("Expected a non-zero number")
        return n

    def quoted(self) -> bytes:
        self.i += 1  # the opening quote
        out = bytearray()
        while True:
            if self.i >= len(self.d):
                raise self.fail("Unterminated quoted string")
            c = self.d[self.i]
            if c == 0x22:
                self.i += 1
                return bytes(out)
            if c == 0x5C:  # backslash quotes only " and \\
                nxt = self.d[self.i + 1:self.i + 2]
                if nxt not in (b'"', b"\\"):
                    raise self.fail("Invalid escape in quoted string")
                out += nxt
                self.i += 2
                continue
            if c in (0x0D, 0x0A):
                raise self.fail("Line break in quoted string")
            out.append(c)
            self.i += 1

    def literal(self) -> bytes:
        m = re.compile(rb"\{(\d{1,12})\+?\}\r\n").match(self.d, self.i)
        if not m:
            raise self.fail("Malformed literal")
        n = int(m.group(1))
        start = m.end()
        if start + n > len(self.d):
            raise self.fail("Truncated literal")
        self.i = start + n
        return self.d[start:start + n]

    def string(self) -> bytes:
        c = self.peek()
        if c == b'"':
            return self.quoted()
        if c == b"{":
            return self.literal()
        raise self.fail("Expected a string")

    def astring(self) -> bytes:
        c = self.peek()
        if c in (b'"', b"{"):
            return self.string()
        return self.atom(extra_allowed=b"]").encode()

    def nil(self) -> bool:
        """Consume NIL if it is next."""
        if self.d[self.i:self.i + 3].upper() == b"NIL" and (self.i + 3 >= len(self.d) or self.d[self.i + 3] in b" )"):
            self.i += 3
            return True
        return False

    def nstring(self) -> bytes | None:
        return None if self.nil() else self.string()

    def mailbox(self) -> str:
        raw = self.astring()
        name = raw.decode("utf-8", "replace")
        return "INBOX" if name.upper() == "INBOX" else name

    def list_mailbox(self) -> str:
        c = self.peek()
        if c in (b'"', b"{"):
            return self.string().decode("utf-8", "replace")
        return self.atom(extra_allowed=b"%*]")

    def open(self) -> None:
        if self.peek() != b"(":
            raise self.fail("Expected (")
        self.i += 1
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail("Too deeply nested")

    def close(self) -> None:
        if self.peek() != b")":
            raise self.fail("Expected )")
        self.i += 1
        self.depth -= 1

    def paren_list(self, item: Callable[[], T]) -> list[T]:
        self.open()
        out: list[T] = []
        while self.peek() != b")":
            if self.at_end():
                raise self.fail("Expected )")
            if out:
                self.sp()
            out.append(item())
        self.close()
        return out

    def named_list(self, one: Callable[[str], None]) -> None:
        """(NAME [value] *(SP NAME [value])): `one` reads what follows each name, or refuses it."""
        self.open()
        while True:
            one(self.atom().upper())
            if self.peek() == b")":
                break
            self.sp()
        self.close()

    def flag(self) -> str:
        if self.peek() == b"\\":
            self.i += 1
            if self.peek() == b"*":
                self.i += 1
                return "\\*"
            return "\\" + self.atom().capitalize()
        return self.atom(extra_allowed=b"]")

    def flag_list(self) -> list[str]:
        return self.paren_list(self.flag)

    def seqset(self) -> SequenceSet:
        if self.peek() == b"$":
            self.i += 1
            return SequenceSet((), last_result=True)
        ranges = []
        while True:
            a = self._seq_number()
            b = a
            if self.peek() == b":":
                self.i += 1
                b = self._seq_number()
            ranges.append((a, b))
            if self.peek() != b",":
                break
            self.i += 1
        return SequenceSet(tuple(ranges))

    def _seq_number(self) -> int | None:
        if self.peek() == b"*":
            self.i += 1
            return None
        try:
            return self.nz_number()
        except ParseError:
            raise self.fail("Invalid sequence set") from None

    def date(self) -> datetime:
        quoted = self.peek() == b'"'
        text = (self.quoted() if quoted else self.atom().encode()).decode()
        m = re.fullmatch(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})", text)
        if not m or m.group(2).capitalize() not in MONTHS:
            raise self.fail(f"Invalid date {text!r}")
        try:
            return datetime(int(m.group(3)), MONTHS.index(m.group(2).capitalize()) + 1, int(m.group(1)),
                            tzinfo=UTC)
        except ValueError:
            raise self.fail(f"Invalid date {text!r}") from None

    def date_time(self) -> datetime:
        if self.peek() != b'"':
            raise self.fail("Expected a quoted date-time")
        text = self.quoted().decode()
        try:
            return datetime.strptime(text.strip(), "%d-%b-%Y %H:%M:%S %z")
        except ValueError:
            raise self.fail(f"Invalid date-time {text!r}") from None


# ------------------------------------------------------------------ commands

def parse_command(data: bytes) -> Command:
    """A framed command (see CommandFramer) as a typed Command, or ParseError."""
    tag_end = data.find(b" ")
    raw_tag = data if tag_end < 0 else data[:tag_end]
    tag = raw_tag.decode("ascii", "replace")
    if not tag or not _TAG_RE.fullmatch(tag):
        raise ParseError("*", "Invalid tag")
    if tag_end < 0:
        raise ParseError(tag, "Missing command")
    r = _Reader(data, tag)
    r.i = tag_end + 1
    name = r.atom().upper()
    uid = False
    if name == "UID":
        r.sp()
        name = r.atom().upper()
        if name not in ("FETCH", "STORE", "COPY", "MOVE", "SEARCH", "EXPUNGE", "SORT", "THREAD"):
            raise r.fail(f"UID {name} is not a command")
        uid = True
    handler = _UID_COMMANDS.get(name) if uid else None
    handler = handler or _COMMANDS.get(name)
    if handler is None:
        raise r.fail(f"Unknown command {name}")
    args = handler(r)
    r.end()
    return Command(tag, f"UID {name}" if uid else name, args)


def _no_args(r: _Reader) -> dict[str, Any]:
    return {}


def _login(r: _Reader) -> dict[str, Any]:
    r.sp()
    user = r.astring()
    r.sp()
    return {"user": user.decode("utf-8", "replace"), "password": r.astring()}


def _authenticate(r: _Reader) -> dict[str, Any]:
    r.sp()
    mech = r.atom().upper()
    initial = None
    if r.maybe_sp():  # SASL-IR (RFC 4959): base64, or "=" for an empty response
        initial = r.atom().encode()
    return {"mechanism": mech, "initial": initial}


def _mailbox_only(r: _Reader) -> dict[str, Any]:
    r.sp()
    return {"mailbox": r.mailbox()}


def _select(r: _Reader) -> dict[str, Any]:
    """SELECT/EXAMINE mailbox [(CONDSTORE) | (QRESYNC (uidvalidity modseq [known-uids
    [(seq-match uid-match)]]))] (RFC 7162 §3.1.8, §3.2.5)."""
    r.sp()
    out: dict[str, Any] = {"mailbox": r.mailbox(), "condstore": False, "qresync": None}
    if r.maybe_sp():
        def param(name: str) -> None:
            if name == "CONDSTORE":
                out["condstore"] = True
            elif name == "QRESYNC" and out["qresync"] is None:
                r.sp()
                out["qresync"] = _qresync(r)
            else:
                raise r.fail(f"Unknown {name} parameter")
        r.named_list(param)
    return out


def _qresync(r: _Reader) -> dict[str, Any]:
    r.open()
    validity = r.nz_number()
    r.sp()
    modseq = r.modseq()
    known = None
    if r.maybe_sp() and r.peek() != b"(":
        known = r.seqset()
        r.maybe_sp()
    if r.peek() == b"(":  # the sequence match data only narrows the answer: read and let go
        r.open()
        r.seqset()
        r.sp()
        r.seqset()
        r.close()
    r.close()
    return {"uidvalidity": validity, "modseq": modseq, "known": known}


def _create(r: _Reader) -> dict[str, Any]:
    r.sp()
    out: dict[str, Any] = {"mailbox": r.mailbox(), "use": []}
    if r.maybe_sp():  # RFC 6154 CREATE-SPECIAL-USE: (USE (\Drafts ...))
        r.open()
        r.expect(b"USE")
        r.sp()
        out["use"] = r.flag_list()
        r.close()
    return out


def _rename(r: _Reader) -> dict[str, Any]:
    r.sp()
    old = r.mailbox()
    r.sp()
    return {"old": old, "new": r.mailbox()}


def _list(r: _Reader) -> dict[str, Any]:
    r.sp()
    selection: list[str] = []
    if r.peek() == b"(":  # RFC 5258 LIST-EXTENDED selection options
        selection = r.paren_list(lambda: r.atom().upper())
        r.sp()
    ref = r.mailbox() if r.peek() not in (b'"', b"{") else r.string().decode("utf-8", "replace")
    r.sp()
    listed = r.peek() == b"("
    if listed:
        patterns = r.paren_list(r.list_mailbox)
    else:
        patterns = [r.list_mailbox()]
    returns: list[str] = []
    status: list[str] | None = None
    if r.maybe_sp():
        r.expect(b"RETURN")
        r.sp()
        for option in r.paren_list(lambda: _list_return(r)):
            if isinstance(option, list):  # STATUS (items): RFC 5819 LIST-STATUS
                status = option
                returns.append("STATUS")
            else:
                returns.append(option)
    extended = bool(selection) or bool(returns) or listed  # any RFC 5258 syntax: the extended answer
    return {"reference": ref, "patterns": patterns, "selection": selection, "return": returns,
            "status": status, "extended": extended}


def _list_return(r: _Reader) -> str | list[str]:
    option = r.atom().upper()
    if option != "STATUS":
        return option
    r.sp()
    items = r.paren_list(lambda: r.atom().upper())
    bad = [i for i in items if i not in STATUS_ITEMS]
    if bad or not items:
        raise r.fail(f"Invalid STATUS items {bad or '()'}")
    return items


def _lsub(r: _Reader) -> dict[str, Any]:
    r.sp()
    ref = r.string().decode("utf-8", "replace") if r.peek() in (b'"', b"{") else r.mailbox()
    r.sp()
    return {"reference": ref, "patterns": [r.list_mailbox()], "selection": ["SUBSCRIBED"], "return": [],
            "status": None, "extended": False}


STATUS_ITEMS = {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE"}


def _status(r: _Reader) -> dict[str, Any]:
    r.sp()
    box = r.mailbox()
    r.sp()
    items = r.paren_list(lambda: r.atom().upper())
    bad = [i for i in items if i not in STATUS_ITEMS]
    if bad or not items:
        raise r.fail(f"Invalid STATUS items {bad or '()'}")
    return {"mailbox": box, "items": items}


def _append(r: _Reader) -> dict[str, Any]:
    r.sp()
    box = r.mailbox()
    r.sp()
    flags: list[str] = []
    when = None
    if r.peek() == b"(":
        flags = r.flag_list()
        r.sp()
    if r.peek() == b'"':
        when = r.date_time()
        r.sp()
    if r.peek() != b"{":
        raise r.fail("APPEND needs the message as a literal")
    message = r.literal()
    return {"mailbox": box, "flags": flags, "date": when, "message": message}


def _enable(r: _Reader) -> dict[str, Any]:
    caps = []
    while r.maybe_sp():
        caps.append(r.atom().upper())
    if not caps:
        raise r.fail("ENABLE needs capabilities")
    return {"capabilities": caps}


def _id(r: _Reader) -> dict[str, Any]:
    r.sp()
    if r.nil():
        return {"params": None}
    items = r.paren_list(lambda: r.nstring())
    if len(items) % 2:
        raise r.fail("ID parameters come in pairs")
    return {"params": {(items[i] or b"").decode("utf-8", "replace").lower():
                       (items[i + 1] or b"").decode("utf-8", "replace") for i in range(0, len(items), 2)}}


def _quota_root(r: _Reader) -> dict[str, Any]:
    r.sp()
    return {"root": r.astring().decode("utf-8", "replace")}


def _uid_expunge(r: _Reader) -> dict[str, Any]:  # RFC 4315 UIDPLUS
    r.sp()
    return {"set": r.seqset()}


def _copy(r: _Reader) -> dict[str, Any]:
    r.sp()
    s = r.seqset()
    r.sp()
    return {"set": s, "mailbox": r.mailbox()}


STORE_ACTIONS = {"FLAGS", "+FLAGS", "-FLAGS"}


def _store(r: _Reader) -> dict[str, Any]:
    r.sp()
    s = r.seqset()
    r.sp()
    unchanged = None
    if r.peek() == b"(":  # RFC 7162 (UNCHANGEDSINCE n)
        r.open()
        r.expect(b"UNCHANGEDSINCE")
        r.sp()
        unchanged = r.modseq()
        r.close()
        r.sp()
    action = r.atom().upper()
    silent = action.endswith(".SILENT")
    base = action[:-7] if silent else action
    if base not in STORE_ACTIONS:
        raise r.fail(f"Invalid STORE action {action}")
    r.sp()
    if r.peek() == b"(":
        flags = r.flag_list()
    else:
        flags = [r.flag()]
        while r.maybe_sp():
            flags.append(r.flag())
    return {"set": s, "action": base, "silent": silent, "flags": flags, "unchangedsince": unchanged}


FETCH_SIMPLE = {"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE", "RFC822.TEXT",
                "BODY", "BODYSTRUCTURE", "UID", "MODSEQ", "SAVEDATE"}
FETCH_MACROS = {"ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
                "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
                "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"]}


def _section(r: _Reader) -> Section:
    r.expect(b"[")
    parts: list[int] = []
    text = ""
    fields: tuple[str, ...] = ()
    while r.peek().isdigit():
        parts.append(r.nz_number())
        if r.peek() == b".":
            r.i += 1
        else:
            break
    if r.peek() != b"]":
        text = r.atom().upper()
        if text not in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"):
            raise r.fail(f"Invalid section {text}")
        if text == "MIME" and not parts:
            raise r.fail("MIME needs a part number")
        if text.startswith("HEADER.FIELDS"):
            r.sp()
            fields = tuple(f.decode("ascii", "replace").upper() for f in r.paren_list(r.astring))
            if not fields:
                raise r.fail("HEADER.FIELDS needs field names")
    r.expect(b"]")
    return Section(tuple(parts), text, fields)


_FETCH_NAME = re.compile(rb"[A-Za-z0-9.]+")


def _fetch_att(r: _Reader) -> FetchAttribute:
    m = _FETCH_NAME.match(r.d, r.i)
    if not m:
        raise r.fail("Expected a fetch attribute")
    r.i = m.end()
    name = m.group().decode().upper()
    if r.peek() == b"[" and name in ("BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK"):
        section = _section(r)
        partial = None
        if r.peek() == b"<":
            r.i += 1
            start = r.number()
            r.expect(b".")
            count = r.nz_number()
            r.expect(b">")
            partial = (start, count)
        return FetchAttribute(name.split(".")[0], section, name.endswith(".PEEK"), partial)
    if name not in FETCH_SIMPLE:
        raise r.fail(f"Invalid fetch attribute {name}")
    return FetchAttribute(name)


def _fetch(r: _Reader) -> dict[str, Any]:
    r.sp()
    s = r.seqset()
    r.sp()
    if r.peek() == b"(":
        atts = r.paren_list(lambda: _fetch_att(r))
    else:
        m = _FETCH_NAME.match(r.d, r.i)
        if m and m.group().upper().decode() in FETCH_MACROS and r.d[m.end():m.end() + 1] in (b"", b" "):
            r.i = m.end()
            atts = [FetchAttribute(n) for n in FETCH_MACROS[m.group().upper().decode()]]
        else:
            atts = [_fetch_att(r)]
    out: dict[str, Any] = {"set": s, "attributes": atts, "changedsince": None, "vanished": False}
    if r.maybe_sp():  # RFC 7162 modifiers: (CHANGEDSINCE n [VANISHED])
        if r.peek() != b"(":
            raise r.fail("Unexpected characters after the fetch attributes")

        def modifier(name: str) -> None:
            if name == "CHANGEDSINCE" and out["changedsince"] is None:
                r.sp()
                out["changedsince"] = r.modseq()
            elif name == "VANISHED" and not out["vanished"]:
                out["vanished"] = True
            else:
                raise r.fail(f"Unknown FETCH modifier {name}")
        r.named_list(modifier)
        if out["vanished"] and out["changedsince"] is None:
            raise r.fail("VANISHED needs CHANGEDSINCE")
    return out


SEARCH_FLAGS = {"ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD", "RECENT", "SEEN", "UNANSWERED",
                "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN"}
SEARCH_STRING = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"}
SEARCH_DATE = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE",
               "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"}  # the last three: RFC 8514 SAVEDATE


def _search_key(r: _Reader) -> SearchKey:
    c = r.peek()
    if c == b"(":
        return SearchKey("AND", tuple(r.paren_list(lambda: _search_key(r))))
    if c.isdigit() or c in (b"*", b"$"):
        return SearchKey("SEQSET", (r.seqset(),))
    word = r.atom().upper()
    if word in SEARCH_FLAGS or word == "SAVEDATESUPPORTED":
        return SearchKey(word)
    r.sp()
    if word in SEARCH_STRING:
        return SearchKey(word, (r.astring(),))
    if word in SEARCH_DATE:
        return SearchKey(word, (r.date(),))
    if word in ("KEYWORD", "UNKEYWORD"):
        return SearchKey(word, (r.flag(),))
    if word == "MODSEQ":
        return SearchKey(word, (r.modseq(),))
    if word in ("LARGER", "SMALLER", "OLDER", "YOUNGER"):  # OLDER/YOUNGER: RFC 5032 WITHIN
        return SearchKey(word, (r.number(),))
    if word == "UID":
        return SearchKey("UID", (r.seqset(),))
    if word == "HEADER":
        name = r.astring()
        r.sp()
        return SearchKey("HEADER", (name.decode("ascii", "replace"), r.astring()))
    if word == "NOT":
        r.depth += 1
        if r.depth > MAX_DEPTH:
            raise r.fail("Too deeply nested")
        key = _search_key(r)
        r.depth -= 1
        return SearchKey("NOT", (key,))
    if word == "OR":
        r.depth += 1
        if r.depth > MAX_DEPTH:
            raise r.fail("Too deeply nested")
        a = _search_key(r)
        r.sp()
        b = _search_key(r)
        r.depth -= 1
        return SearchKey("OR", (a, b))
    raise r.fail(f"Invalid search key {word}")


def _search(r: _Reader) -> dict[str, Any]:
    returns: list[str] | None = None
    charset = None
    r.sp()
    if r.d[r.i:r.i + 6].upper() == b"RETURN":  # RFC 4731 ESEARCH
        r.i += 6
        r.sp()
        returns = r.paren_list(lambda: r.atom().upper())
        r.sp()
    if r.d[r.i:r.i + 7].upper() == b"CHARSET":
        r.i += 7
        r.sp()
        charset = r.astring().decode("ascii", "replace").upper()
        r.sp()
    keys = [_search_key(r)]
    while r.maybe_sp():
        keys.append(_search_key(r))
    return {"charset": charset, "keys": SearchKey("AND", tuple(keys)), "return": returns}


SORT_KEYS = {"ARRIVAL", "CC", "DATE", "FROM", "REVERSE", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"}


def _sort(r: _Reader) -> dict[str, Any]:
    """SORT [RETURN (...)] (criteria) charset keys (RFC 5256; DISPLAYFROM/TO: RFC 5957; RETURN: ESORT)."""
    returns: list[str] | None = None
    r.sp()
    if r.d[r.i:r.i + 6].upper() == b"RETURN":
        r.i += 6
        r.sp()
        returns = r.paren_list(lambda: r.atom().upper())
        r.sp()
    criteria = r.paren_list(lambda: r.atom().upper())
    if not criteria or any(c not in SORT_KEYS for c in criteria):
        raise r.fail("Invalid sort criteria")
    if criteria[-1] == "REVERSE" or any(a == b == "REVERSE" for a, b in itertools.pairwise(criteria)):
        raise r.fail("REVERSE must come before a sort key")
    r.sp()
    charset = r.astring().decode("ascii", "replace").upper()
    r.sp()
    keys = [_search_key(r)]
    while r.maybe_sp():
        keys.append(_search_key(r))
    return {"criteria": criteria, "charset": charset, "keys": SearchKey("AND", tuple(keys)), "return": returns}


def _thread(r: _Reader) -> dict[str, Any]:
    """THREAD algorithm charset keys (RFC 5256 §4)."""
    r.sp()
    algorithm = r.atom().upper()
    if algorithm not in ("ORDEREDSUBJECT", "REFERENCES"):
        raise r.fail(f"Unknown threading algorithm {algorithm}")
    r.sp()
    charset = r.astring().decode("ascii", "replace").upper()
    r.sp()
    keys = [_search_key(r)]
    while r.maybe_sp():
        keys.append(_search_key(r))
    return {"algorithm": algorithm, "charset": charset, "keys": SearchKey("AND", tuple(keys))}


_COMMANDS = {
    "CAPABILITY": _no_args, "NOOP": _no_args, "LOGOUT": _no_args, "STARTTLS": _no_args,
    "AUTHENTICATE": _authenticate, "LOGIN": _login,
    "SELECT": _select, "EXAMINE": _select, "CREATE": _create, "DELETE": _mailbox_only, "RENAME": _rename,
    "SUBSCRIBE": _mailbox_only, "UNSUBSCRIBE": _mailbox_only, "LIST": _list, "LSUB": _lsub,
    "STATUS": _status, "APPEND": _append, "NAMESPACE": _no_args, "ENABLE": _enable, "ID": _id,
    "IDLE": _no_args, "GETQUOTA": _quota_root, "GETQUOTAROOT": _mailbox_only,
    "CHECK": _no_args, "CLOSE": _no_args, "UNSELECT": _no_args, "EXPUNGE": _no_args,
    "SEARCH": _search, "SORT": _sort, "THREAD": _thread, "FETCH": _fetch, "STORE": _store, "COPY": _copy, "MOVE": _copy,
}
_UID_COMMANDS = {"EXPUNGE": _uid_expunge}
