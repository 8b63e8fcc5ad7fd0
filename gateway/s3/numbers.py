"""The one way a number is read from a request: ASCII digits only, bounded.

`str.isdigit()` is true for "²" and "٣", and `int()` accepts "1_000", " 7",
"+7" and (in base 16) "0x3e8"; Python then refuses strings of over 4,300
digits with a ValueError.  Every numeric header, query parameter, XML field and
chunk size goes through here instead, so a strange number is a precise 4xx,
never a 500.
"""

from __future__ import annotations

from .errors import S3Error

_DEC = frozenset("0123456789")
_HEX = frozenset("0123456789abcdefABCDEF")
MAX_DIGITS = 19  # fits a signed 64-bit integer, as AWS's parsers do


def decimal(text: str | None, *, max_digits: int = MAX_DIGITS) -> int | None:
    """The value of an unsigned ASCII decimal, or None when `text` is not one."""
    if not text or len(text) > max_digits or not _DEC.issuperset(text):
        return None
    return int(text)


def hexadecimal(text: str, *, max_digits: int = 16) -> int | None:
    """The value of an unsigned ASCII hex number without prefix, or None."""
    if not text or len(text) > max_digits or not _HEX.issuperset(text):
        return None
    return int(text, 16)


def argument(text: str | None, name: str, *, low: int = 0, high: int = (1 << 63) - 1,
             code: str = "InvalidArgument", message: str | None = None) -> int:
    """A required numeric argument in [low, high], else `code` naming it (AWS's ArgumentName/Value)."""
    n = decimal(text)
    if n is None or not low <= n <= high:
        raise S3Error(code, message or f"{name} must be an integer between {low} and {high}",
                      extra={"ArgumentName": name, "ArgumentValue": (text or "")[:64]})
    return n
