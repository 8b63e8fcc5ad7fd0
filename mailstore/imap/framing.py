"""IMAP command framing (RFC 3501 §2.2, LITERAL+ RFC 7888, literal8 RFC 3516): sans-I/O.

`CommandFramer` takes bytes as they arrive and yields complete commands,
literals included.  Limits are checked *before* anything is read: a line
longer than `max_line`, a literal larger than `max_literal` (APPENDLIMIT)
and a NUL byte are refused as soon as they are seen (except inside a
literal8, ~{n}, which RFC 3516 made for binary data).  A synchronizing
literal ({n}) yields `NeedContinuation`, which the I/O loop answers with
"+ ..."; an oversized one is refused before the client sends it.  An
oversized non-synchronizing literal ({n+}) is already on its way, so it
is `fatal` (RFC 7888 §4: answer, then close).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .reader import TAG_RE

MAX_LINE = 64 * 1024  # a command line, literals excluded
MAX_LITERAL = 50 * 1024 * 1024  # APPENDLIMIT

_LITERAL_AT_END = re.compile(rb"(~?)\{(\d{1,12})(\+?)\}\r\n$")



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
        # All of one command is held in memory until it is parsed: several literals
        # (MULTIAPPEND, CATENATE) together stay within one APPENDLIMIT and a line.
        self.max_command = max_literal + max_line
        self._buf = bytearray()
        self._done = bytearray()  # the command assembled so far (lines and literals)
        self._literal_left = 0  # bytes of a literal still to come
        self._literal8 = False  # ... of a literal8 (~{n}): NUL allowed
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
                if b"\0" in chunk and not self._literal8:
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
            size, non_sync = int(m.group(2)), m.group(3) == b"+"
            too_big = None
            if size > self.max_literal:
                too_big = f"[TOOBIG] Literal of {size} bytes is over the limit of {self.max_literal}"
            elif len(self._done) + len(line) + size > self.max_command:
                too_big = f"[TOOBIG] The command's literals total over the limit of {self.max_literal} bytes"
            if too_big:
                out.append(self._error(too_big, fatal=non_sync, tag_from=bytes(self._done) + line))
                self._done.clear()
                if non_sync:
                    return out
                continue
            self._done += line
            self._literal_left = size
            self._literal8 = m.group(1) == b"~"
            if not non_sync and size:
                out.append(NeedContinuation(size))

    def _error(self, text: str, *, fatal: bool = False, tag_from: bytes | None = None) -> FramingError:
        source = tag_from if tag_from is not None else bytes(self._done) + bytes(self._buf[:64])
        tag = source.split(b" ", 1)[0].decode("ascii", "replace") if source else "*"
        if not tag or not TAG_RE.fullmatch(tag):
            tag = "*"
        return FramingError(tag, text, fatal)

