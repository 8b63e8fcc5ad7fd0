"""Side by side with Dovecot CE: the same IMAP commands to both servers, the answers compared.

A raw client (literals read by their byte count, nothing interpreted) and a
parser of IMAP's parenthesised data, so two answers compare by value, not by
spelling: a string may be quoted by one server and a literal from the other,
and type names differ in case (RFC 3501 §9: both are fine).  Section bytes
(BODY[...]) compare exactly.
"""

from __future__ import annotations

import re
import socket
import zlib
from typing import Any

Value = Any  # bytes | int | None | list[Value]

_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


class _Inflating:
    """The reading side after COMPRESS DEFLATE (RFC 4978): readline/read over inflated bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.z, self.buf = sock, zlib.decompressobj(-15), b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.buf += self.z.decompress(data)

    def readline(self) -> bytes:
        while b"\n" not in self.buf:
            self._fill()
        i = self.buf.index(b"\n") + 1
        line, self.buf = self.buf[:i], self.buf[i:]
        return line

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


class Raw:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.f: Any = self.sock.makefile("rb")
        self.n = 0
        self.greeting = self._line()
        self._deflate: Any = None

    def send(self, data: bytes) -> None:
        if self._deflate is not None:
            data = self._deflate.compress(data) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def compress(self) -> list[bytes]:
        """COMPRESS DEFLATE; on OK, everything after is deflated both ways."""
        lines = self.cmd("COMPRESS DEFLATE")
        if status(lines) == b"OK":
            self.f = _Inflating(self.sock)
            self._deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        return lines

    def _line(self) -> bytes:
        """One response line, literals included inline."""
        out = b""
        while True:
            line = self.f.readline()
            if not line:
                raise ConnectionError(f"closed after {out!r}")
            out += line
            m = _LITERAL.search(line)
            if m is None:
                return out
            out += self.f.read(int(m.group(1)))

    def cmd(self, text: str | bytes, *literals: bytes) -> list[bytes]:
        """Send `text` (with synchronizing literals after "{n}" lines); every response line."""
        self.n += 1
        tag = f"t{self.n}".encode()
        raw = text.encode() if isinstance(text, str) else text
        pieces = re.split(rb"\x00LIT(8?)\x00", raw)  # a literal's place; LIT8: a literal8 (RFC 3516)
        self.send(tag + b" " + pieces[0])
        for eight, piece, lit in zip(pieces[1::2], pieces[2::2], literals, strict=True):
            self.send(b"~" * len(eight) + b"{%d}\r\n" % len(lit))
            cont = self._line()
            if cont.startswith(tag + b" "):  # refused before the literal (Dovecot checks APPEND's mailbox first)
                return [cont]
            assert cont.startswith(b"+"), cont
            self.send(lit + piece)
        self.send(b"\r\n")
        lines = []
        while True:
            line = self._line()
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def close(self) -> None:
        try:
            self.cmd("LOGOUT")
        except (OSError, ConnectionError):
            pass
        self.sock.close()


def status(lines: list[bytes]) -> bytes:
    """The tagged completion without its human text: b"OK", b"NO [TRYCREATE]", ..."""
    words = lines[-1].split(b" ", 2)
    rest = words[2] if len(words) > 2 else b""
    code = re.match(rb"\[[^\]]*\]", rest)
    return words[1] + (b" " + code.group(0).split(b" ")[0].rstrip(b"]") + b"]" if code else b"")


# ------------------------------------------------------------------ parenthesised data

def parse(data: bytes, pos: int = 0) -> tuple[list[Value], int]:
    """Atoms, numbers, NIL, quoted strings, literals and lists up to the end of data or ")"."""
    out: list[Value] = []
    n = len(data)
    while pos < n:
        c = data[pos:pos + 1]
        if c in (b" ", b"\r", b"\n"):
            pos += 1
        elif c == b"(":
            inner, pos = parse(data, pos + 1)
            out.append(inner)
        elif c == b")":
            return out, pos + 1
        elif c == b'"':
            end = pos + 1
            buf = bytearray()
            while data[end:end + 1] != b'"':
                if data[end:end + 1] == b"\\":
                    end += 1
                buf += data[end:end + 1]
                end += 1
            out.append(bytes(buf))
            pos = end + 1
        elif c == b"{" or data[pos:pos + 2] == b"~{":  # a literal, or a literal8 (RFC 3516): the same value
            pos += c == b"~"
            m = re.match(rb"\{(\d+)\+?\}\r\n", data[pos:])
            assert m, data[pos:pos + 20]
            start = pos + m.end()
            out.append(data[start:start + int(m.group(1))])
            pos = start + int(m.group(1))
        else:
            m = re.match(rb"[^ ()\r\n\[]+(\[[^\]]*\](<[0-9.]+>)?)?", data[pos:])
            assert m, data[pos:pos + 20]
            word = m.group(0)
            out.append(None if word.upper() == b"NIL" else int(word) if word.isdigit() else word)
            pos += m.end()
    return out, pos


def fetch_items(lines: list[bytes]) -> dict[int, dict[bytes, Value]]:
    """seq -> {item name (upper case): value} from the * n FETCH (...) lines."""
    out: dict[int, dict[bytes, Value]] = {}
    for line in lines:
        m = re.match(rb"\* (\d+) FETCH \(", line)
        if not m:
            continue
        items, _ = parse(line, m.end())
        d = out.setdefault(int(m.group(1)), {})
        for name, value in zip(items[::2], items[1::2], strict=True):
            d[name.upper() if isinstance(name, bytes) else name] = value
    return out


def fold(value: Value) -> Value:
    """Case-folded strings for structures whose names are case-insensitive (BODYSTRUCTURE, ENVELOPE hosts)."""
    if isinstance(value, list):
        return [fold(v) for v in value]
    if isinstance(value, bytes):
        return value.upper()
    return value
