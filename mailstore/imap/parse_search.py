"""The grammar of SEARCH, SORT and THREAD (RFC 3501 §6.4.4, ESEARCH RFC 4731, SORT and
THREAD RFC 5256, WITHIN RFC 5032, SAVEDATE RFC 8514)."""

from __future__ import annotations

import itertools
import re
from typing import Any

from .reader import MAX_DEPTH, Reader, SearchKey

SEARCH_FLAGS = {"ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "NEW", "OLD", "RECENT", "SEEN", "UNANSWERED",
                "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN"}
SEARCH_STRING = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"}
SEARCH_DATE = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE",
               "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"}  # the last three: RFC 8514 SAVEDATE


def _search_key(r: Reader) -> SearchKey:
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
    if word in ("EMAILID", "THREADID"):  # RFC 8474 §6: objectid = 1*255(ALPHA / DIGIT / "_" / "-")
        oid = r.atom()
        if len(oid) > 255 or not all(c.isascii() and (c.isalnum() or c in "_-") for c in oid):
            raise r.fail(f"Invalid object id {oid[:40]!r}")
        return SearchKey(word, (oid,))
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


def _returns(r: Reader, out: dict[str, Any]) -> None:
    """[RETURN (option ...) SP]: RFC 4731 ESEARCH options; PARTIAL range and UPDATE are RFC 5267's."""
    out["return"], out["partial"] = None, None
    if r.d[r.i:r.i + 6].upper() != b"RETURN":
        return
    r.i += 6
    r.sp()

    def option() -> str:
        name = r.atom().upper()
        if name == "PARTIAL":  # partial-range = -?nz-number ":" -?nz-number, both of one sign
            r.sp()
            m = re.compile(rb"(-?)(\d{1,10}):(-?)(\d{1,10})").match(r.d, r.i)
            if m is None or m.group(1) != m.group(3) or int(m.group(2)) == 0 or int(m.group(4)) == 0:
                raise r.fail("Invalid PARTIAL range")
            r.i = m.end()
            sign = -1 if m.group(1) else 1
            out["partial"] = (sign * int(m.group(2)), sign * int(m.group(4)))
        return name

    out["return"] = r.paren_list(option)
    r.sp()


def _search_keys(r: Reader) -> SearchKey:
    """1*(SP search-key), their AND (the first SP already read)."""
    keys = [_search_key(r)]
    while r.maybe_sp():
        keys.append(_search_key(r))
    return SearchKey("AND", tuple(keys))


def _charset(r: Reader) -> str:
    """A SORT/THREAD charset, then the SP before the search keys."""
    charset = r.astring().decode("ascii", "replace").upper()
    r.sp()
    return charset


def parse_search(r: Reader) -> dict[str, Any]:
    out: dict[str, Any] = {}
    charset = None
    r.sp()
    _returns(r, out)
    if r.d[r.i:r.i + 7].upper() == b"CHARSET":
        r.i += 7
        r.sp()
        charset = r.astring().decode("ascii", "replace").upper()
        r.sp()
    return {**out, "charset": charset, "keys": _search_keys(r)}


SORT_KEYS = {"ARRIVAL", "CC", "DATE", "FROM", "REVERSE", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"}


def parse_sort(r: Reader) -> dict[str, Any]:
    """SORT [RETURN (...)] (criteria) charset keys (RFC 5256; DISPLAYFROM/TO: RFC 5957; RETURN: ESORT)."""
    out: dict[str, Any] = {}
    r.sp()
    _returns(r, out)
    criteria = r.paren_list(lambda: r.atom().upper())
    if not criteria or any(c not in SORT_KEYS for c in criteria):
        raise r.fail("Invalid sort criteria")
    if criteria[-1] == "REVERSE" or any(a == b == "REVERSE" for a, b in itertools.pairwise(criteria)):
        raise r.fail("REVERSE must come before a sort key")
    r.sp()
    return {**out, "criteria": criteria, "charset": _charset(r), "keys": _search_keys(r)}


def parse_thread(r: Reader) -> dict[str, Any]:
    """THREAD algorithm charset keys (RFC 5256 §4)."""
    r.sp()
    algorithm = r.atom().upper()
    if algorithm not in ("ORDEREDSUBJECT", "REFERENCES", "REFS"):
        raise r.fail(f"Unknown threading algorithm {algorithm}")
    r.sp()
    return {"algorithm": algorithm, "charset": _charset(r), "keys": _search_keys(r)}


