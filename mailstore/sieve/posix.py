"""The regex extension's patterns (RFC 5228 §2.7 draft-murchison-sieve-regex: POSIX extended
regular expressions) read as POSIX reads them, and turned into Python `re` patterns that match
the same strings: bracket expressions with [:class:] names and a literal backslash, `$` only at
the very end, a quantifier after a quantifier applying to the whole (`a+?` is `(a+)?`, not a
lazy `a+`), back references only to groups already closed, `\\<`, `\\>`, `\\``, `\\'`.

A pattern POSIX refuses gets the words of glibc's regerror(), which is what Pigeonhole says at
upload (`invalid regular expression '...' for regex match: <words>.`).
"""

from __future__ import annotations

import functools
import re
import string

MAX_REPEAT = 0x7FFF  # glibc's RE_DUP_MAX
_CLASSES = {
    "alpha": "a-zA-Z", "digit": "0-9", "alnum": "a-zA-Z0-9", "upper": "A-Z", "lower": "a-z",
    "space": " \\t\\n\\r\\f\\v", "blank": " \\t", "punct": re.escape(string.punctuation), "print": "\\x20-\\x7e",
    "graph": "\\x21-\\x7e", "cntrl": "\\x00-\\x1f\\x7f", "xdigit": "0-9A-Fa-f",
}
_UNMATCHED_BRACKET = "unmatched [, [^, [:, [., or [="
_INTERVAL = re.compile(r"\{(\d*)(,(\d*))?\}")


class PosixError(ValueError):
    """A pattern POSIX refuses; the message is regerror()'s, in lower case as Pigeonhole prints it."""


def translate(pattern: str) -> str:
    """The Python pattern that matches what the POSIX extended regular expression matches."""
    out: list[str] = []
    atom: int | None = None  # where in `out` the last atom starts (None: nothing to repeat here)
    repeated = False  # the last thing was a quantifier
    opened: list[int] = []  # `out` positions of the open groups
    closed = 0  # groups closed so far (back references may name only these)
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c in "*+?{":
            if atom is None:
                raise PosixError("invalid preceding regular expression")
            if c == "{":
                end = pattern.find("}", i)
                if end < 0:
                    raise PosixError("unmatched \\{")
                m = _INTERVAL.match(pattern, i)
                if m is None or m.end() != end + 1 or (not m.group(1) and not m.group(2)):
                    raise PosixError("invalid content of \\{\\}")
                low = int(m.group(1) or 0)
                high = None if m.group(2) and not m.group(3) else int(m.group(3) or low)
                if low > MAX_REPEAT or (high is not None and high > MAX_REPEAT):
                    raise PosixError("regular expression too big")
                if high is not None and high < low:
                    raise PosixError("invalid content of \\{\\}")
                quantifier = f"{{{low},{'' if high is None else high}}}"
                i = end + 1
            else:
                quantifier, i = c, i + 1
            if repeated:  # POSIX repeats the repetition; Python would read `+?` as lazy
                out[atom:] = ["(?:" + "".join(out[atom:]) + ")"]
            out.append(quantifier)
            repeated = True
            continue
        repeated = False
        if c == "\\":
            if i + 1 == n:
                raise PosixError("trailing backslash")
            d = pattern[i + 1]
            i += 2
            atom = len(out)
            if d in "123456789":
                if int(d) > closed:
                    raise PosixError("invalid back reference")
                out.append(f"(?:\\{d})")
            elif d in "wWsSbB":
                out.append("\\" + d)
            else:
                out.append({"<": r"\b(?=\w)", ">": r"\b(?<=\w)", "`": r"\A", "'": r"\Z"}.get(d, re.escape(d)))
        elif c == "[":
            atom = len(out)
            piece, i = _bracket(pattern, i)
            out.append(piece)
        elif c == "(":
            opened.append(len(out))
            out.append("(")
            atom = None
            i += 1
        elif c == ")" and opened:
            atom = opened.pop()
            closed += 1
            out.append(")")
            i += 1
        elif c == "|":
            out.append("|")
            atom = None
            i += 1
        elif c == "^":
            out.append("^")
            atom = None
            i += 1
        elif c == "$":
            atom = None
            out.append(r"\Z")
            i += 1
        else:
            atom = len(out)
            out.append("." if c == "." else re.escape(c))
            i += 1
    if opened:
        raise PosixError("unmatched ( or \\(")
    return "".join(out)


def _bracket(pattern: str, i: int) -> tuple[str, int]:
    """A bracket expression starting at pattern[i] == "[": (its Python class, where it ends)."""
    n = len(pattern)
    j = i + 1
    negate = j < n and pattern[j] == "^"
    if negate:
        j += 1
    if j == n:
        raise PosixError("invalid regular expression")
    items: list[str] = []
    first = True
    while True:
        if j >= n:
            raise PosixError(_UNMATCHED_BRACKET)
        ch = pattern[j]
        if ch == "]" and not first:
            return "[" + ("^" if negate else "") + "".join(items) + "]", j + 1
        first = False
        if ch == "[" and j + 1 < n and pattern[j + 1] in ":.=":
            kind = pattern[j + 1]
            end = pattern.find(kind + "]", j + 2)
            if end < 0:
                raise PosixError(_UNMATCHED_BRACKET)
            name = pattern[j + 2:end]
            j = end + 2
            if kind == ":":
                if name not in _CLASSES:
                    raise PosixError("invalid character class name")
                items.append(_CLASSES[name])
                continue
            if len(name) != 1:
                raise PosixError("invalid collation character")
            start = name
        else:
            start = ch
            j += 1
        if j + 1 < n and pattern[j] == "-" and pattern[j + 1] != "]":
            stop = pattern[j + 1]
            j += 2
            if ord(stop) < ord(start):
                raise PosixError("invalid range end")
            items.append(f"{re.escape(start)}-{re.escape(stop)}")
        else:
            items.append(re.escape(start))


@functools.lru_cache(maxsize=4096)
def compiled(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    """The pattern, compiled (PosixError when POSIX refuses it)."""
    try:
        return re.compile(translate(pattern), re.DOTALL | (re.IGNORECASE if ignore_case else 0))
    except re.error as exc:  # (a translation Python cannot take: refused as POSIX would refuse it)
        raise PosixError("invalid regular expression") from exc
