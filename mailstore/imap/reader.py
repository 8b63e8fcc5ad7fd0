"""The IMAP lexer (RFC 3501 §9 values): what every command's grammar reads with.

`Reader` walks one framed command (see framing.py) and reads atoms, numbers,
strings, literals, lists, sequence sets and dates, raising `ParseError(tag,
text)` on anything the grammar does not allow: the session answers "<tag> BAD
<text>" and the connection stays usable.  Numbers are bounded by their grammar
(RFC 3501 32-bit, RFC 7162 63-bit mod-sequences) and nesting by MAX_DEPTH.
The values a command parses into (Command, SequenceSet, Section, ...) live here
too, so the session modules import them from below the grammar.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

T = TypeVar("T")

MAX_DEPTH = 32  # nested parentheses (search keys, lists)
MAX_NUMBER = 2**32 - 1  # RFC 3501 number, nz-number: unsigned 32-bit
MAX_MODSEQ = 2**63 - 1  # RFC 7162 mod-sequence-value: unsigned 63-bit (SQLite's INTEGER)

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
class AppendMessage:
    """One message of an APPEND (several: MULTIAPPEND, RFC 3502)."""

    flags: tuple[str, ...]
    date: datetime | None
    parts: tuple[bytes | str, ...]  # literal text, or the IMAP URL of stored text (CATENATE, RFC 4469)
    binary: bool = False  # some text came as a literal8 (RFC 3516)
    catenate: bool = False
    utf8: bool = False  # sent as UTF8 (literal8): a message with UTF-8 headers (RFC 9755 §4)


@dataclass(frozen=True, slots=True)
class EventGroup:
    """One "(filter events)" of NOTIFY SET (RFC 5465 §6)."""

    filter: str  # SELECTED, SELECTED-DELAYED, INBOXES, PERSONAL, SUBSCRIBED, SUBTREE, MAILBOXES
    mailboxes: tuple[str, ...]  # for SUBTREE and MAILBOXES
    events: frozenset[str]  # upper case; empty for NONE
    fetch: tuple[FetchAttribute, ...] = ()  # MessageNew (fetch-att ...), for the selected mailbox


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

TAG_RE = re.compile(r"[!#$&',\-./0-9:;<=>?@A-Z\\^_`a-z|~]+")  # ASTRING-CHAR but not "+"
ATOM_SPECIALS = set(b'(){ %*"\\]') | set(range(32)) | {127}
_LITERAL = re.compile(rb"(~?)\{(\d{1,12})\+?\}\r\n")
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


class Reader:
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

    def literal(self, *, binary: bool = False) -> bytes:
        """{n} (or {n+}); with `binary`, also a literal8 ~{n} (RFC 3516: where the grammar allows it)."""
        m = _LITERAL.match(self.d, self.i)
        if not m:
            raise self.fail("Malformed literal")
        if m.group(1) and not binary:
            raise self.fail("A literal8 is not allowed here")
        n = int(m.group(2))
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


