"""HTTP semantics S3 relies on: byte ranges, conditional requests, dates.

RFC 9110 §13 (conditionals) and §14 (ranges), with S3's documented choices:
- If-Match true and If-Unmodified-Since false: 200 (If-Match wins).
- If-None-Match false and If-Modified-Since true: 304 (If-None-Match wins).
- A range S3 cannot satisfy is 416 InvalidRange; several ranges in one header
  are not supported by S3, which then serves the whole object.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import unquote

from . import numbers
from .errors import S3Error


@lru_cache(maxsize=4096)
def _http_date_second(second: int) -> str:
    return email.utils.formatdate(second, usegmt=True)


def http_date(ts: float) -> str:
    """RFC 9110 IMF-fixdate; cached per second (Last-Modified on every response)."""
    return _http_date_second(int(ts))


def parse_http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


@lru_cache(maxsize=256)
def parse_any_date(value: str) -> datetime | None:
    """Date header (RFC 1123) or x-amz-date (ISO 8601 basic, exactly YYYYMMDDTHHMMSSZ).

    Cached: a client signs every request of a second with the same date. The
    ISO form is told by its shape rather than by trying strptime first, whose
    failure on every Date header (SigV2, the shim) cost more than the signature.
    """
    if len(value) == 16 and value[8] == "T" and value[15] == "Z":
        digits = value[:8] + value[9:15]
        if not (digits.isascii() and digits.isdigit()):
            return None
        try:
            return datetime(int(value[:4]), int(value[4:6]), int(value[6:8]), int(value[9:11]), int(value[11:13]),
                            int(value[13:15]), tzinfo=UTC)
        except ValueError:  # month 13, second 61...
            return None
    ts = parse_http_date(value)
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


_BEYOND = 1 << 63  # any position past what one object can hold


def _position(text: str) -> int | None:
    """A byte position: ASCII digits of any length (a huge one is simply past the end), else None."""
    if len(text) > numbers.MAX_DIGITS and text.isascii() and text.isdigit():
        return _BEYOND
    return numbers.decimal(text)


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """None means 'serve the whole object' (no header, or one S3 ignores)."""
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    first, last = first.strip(), last.strip()
    if not first:  # suffix range: the last N bytes
        n = _position(last)
        if n is None:
            return None
        if n == 0:
            raise S3Error("InvalidRange", extra={"ActualObjectSize": str(size), "RangeRequested": header})
        if size == 0:
            raise S3Error("InvalidRange", extra={"ActualObjectSize": str(size), "RangeRequested": header})
        return ByteRange(max(0, size - n), size - 1)
    start = _position(first)
    end = _position(last) if last else size - 1
    if start is None or end is None:
        return None
    if last and end < start:
        return None  # syntactically invalid: RFC 9110 says ignore the header
    if start >= size:
        raise S3Error("InvalidRange", extra={"ActualObjectSize": str(size), "RangeRequested": header})
    return ByteRange(start, min(end, size - 1))


def _etag_matches(header: str, etag: str) -> bool:
    bare = etag.strip('"')
    for candidate in header.split(","):
        c = candidate.strip()
        if c == "*" or c.removeprefix("W/").strip('"') == bare:
            return True
    return False


_CONDITIONAL = ("if-match", "if-none-match", "if-modified-since", "if-unmodified-since")


def evaluate_preconditions(
    headers: Mapping[str, str], etag: str, mtime: float, *, prefix: str = ""
) -> int | None:
    """Return 412 or 304 when a precondition stops the request, else None.

    `prefix` is "x-amz-copy-source-" for CopyObject's source conditions, where
    the 304 cases become 412 as AWS documents.
    """
    get = headers.get
    if prefix == "" and not any(h in headers for h in _CONDITIONAL):
        return None
    if_match = get(prefix + "if-match")
    if_none = get(prefix + "if-none-match")
    if_unmod = parse_http_date(get(prefix + "if-unmodified-since"))
    if_mod = parse_http_date(get(prefix + "if-modified-since"))
    whole_seconds = float(int(mtime))  # HTTP dates have one-second resolution
    if if_match is not None:
        if not _etag_matches(if_match, etag):
            return 412
    elif if_unmod is not None and whole_seconds > if_unmod:
        return 412
    if if_none is not None:
        if _etag_matches(if_none, etag):
            return 412 if prefix else 304
    elif if_mod is not None and whole_seconds <= if_mod:
        return 412 if prefix else 304
    return None


_CONTROL = frozenset(chr(c) for c in (*range(9), *range(10, 32), 127))


def header_value(text: str, name: str) -> str:
    """`text` if it may be sent as a response header value, else InvalidArgument.

    CR or LF would split the response (aiohttp then drops the connection
    instead of answering); other control characters are refused by clients.
    """
    if not text.isprintable() and not _CONTROL.isdisjoint(text):
        raise S3Error("InvalidArgument", f"{name} contains a control character",
                      extra={"ArgumentName": name})
    return text


def decode_path(raw_path: str) -> str:
    """The percent-decoded path; InvalidURI when its bytes are not UTF-8 (never replacement
    characters) or hold NUL. AWS takes NUL in a key, but no listing can show it (XML 1.0 has
    no NUL) and Ceph's OMAP keys, which index RADOS buckets, end at one: refused alike on
    every engine, before anything is stored."""
    if "%" not in raw_path and raw_path.isascii():
        return raw_path
    try:
        path = unquote(raw_path, errors="strict")
        path.encode()  # raw non-UTF-8 bytes arrive as surrogates
    except UnicodeError:
        raise S3Error("InvalidURI", "The object key is not valid UTF-8") from None
    if "\x00" in path:
        raise S3Error("InvalidURI", "The object key may not contain NUL (%00)")
    return path

