"""RFC 5322 address lists as IMAP ENVELOPE addresses: (name route mailbox host) each.

RFC 3501 §7.4.2: a group is a start marker (NIL NIL "group name" NIL), its
members, and an end marker (NIL NIL NIL NIL); a source route goes in the
second field ("@route.example"); strings are as in the header (RFC 2047
encoded-words stay encoded: decoding is the client's business).  Comments are
not part of a display name, except the old `user@host (Name)` form, whose
comment is the name (Dovecot answers the same).  The parser is tolerant:
whatever it cannot read ends the address it is in, never the list.
"""

from __future__ import annotations

Address = list[str | None]  # [name, route, mailbox, host]

_SPECIALS = set('<>@:;,.[]"()\\')


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text): "word" (atom), "quoted" (unquoted content), "comment", "literal" ([...]), or a special."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == '"':
            j, buf = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(text[j])
                j += 1
            out.append(("quoted", "".join(buf)))
            i = j + 1
        elif c == "(":
            depth, j = 1, i + 1
            while j < n and depth:
                if text[j] == "\\":
                    j += 1
                elif text[j] == "(":
                    depth += 1
                elif text[j] == ")":
                    depth -= 1
                j += 1
            out.append(("comment", text[i + 1:j - 1]))
            i = j
        elif c == "[":
            j = text.find("]", i)
            j = n if j < 0 else j + 1
            out.append(("literal", text[i:j]))
            i = j
        elif c in _SPECIALS:
            out.append((c, c))
            i += 1
        else:
            j = i
            while j < n and text[j] not in _SPECIALS and text[j] not in " \t\r\n":
                j += 1
            out.append(("word", text[i:j]))
            i = j
    return out


def parse(values: list[str]) -> list[Address] | None:
    """The ENVELOPE address list of a header's values; None when there is no address."""
    out: list[Address] = []
    for value in values:
        out += _list(_tokens(value))
    return out or None


def _list(toks: list[tuple[str, str]]) -> list[Address]:
    out: list[Address] = []
    phrase: list[str] = []
    comment: str | None = None
    in_group = False
    i, n = 0, len(toks)

    def flush_bare() -> None:  # a lone word without @: a mailbox without host
        if phrase:
            out.append([comment, None, "".join(phrase), None])

    while i < n:
        kind, text = toks[i]
        if kind in ("word", "quoted"):
            phrase.append(text)
        elif kind == ".":
            phrase.append(".")
        elif kind == "comment":
            comment = text.strip() or None
        elif kind == ":" and not in_group:
            out.append([None, None, " ".join(p for p in phrase if p != ".") or None, None])
            in_group, phrase, comment = True, [], None
        elif kind == "<":
            addr, i = _angle(toks, i + 1)
            addr[0] = _display(phrase)
            out.append(addr)
            phrase, comment = [], None
            continue
        elif kind == "@":
            local = "".join(phrase)
            host, i = _domain(toks, i + 1)
            name = None
            while i < n and toks[i][0] == "comment":  # user@host (Name)
                name = toks[i][1].strip() or name
                i += 1
            out.append([name, None, local or None, host])
            phrase, comment = [], None
            continue
        elif kind == ",":
            flush_bare()
            phrase, comment = [], None
        elif kind == ";" and in_group:
            flush_bare()
            out.append([None, None, None, None])
            in_group, phrase, comment = False, [], None
        i += 1
    flush_bare()
    if in_group:  # an unterminated group still ends
        out.append([None, None, None, None])
    return out


def _display(phrase: list[str]) -> str | None:
    words: list[str] = []
    for w in phrase:
        if w == "." and words:
            words[-1] += "."
        else:
            words.append(w)
    return " ".join(words) or None


def _angle(toks: list[tuple[str, str]], i: int) -> tuple[Address, int]:
    """Inside <...>: [route ':'] local '@' domain; returns the address and the index after '>'."""
    n = len(toks)
    route: list[str] = []
    if i < n and toks[i][0] == "@":  # obs-route: @a,@b:
        while i < n and toks[i][0] != ":" and toks[i][0] != ">":
            if toks[i][0] not in ("comment",):
                route.append(toks[i][1])
            i += 1
        if i < n and toks[i][0] == ":":
            i += 1
    local: list[str] = []
    while i < n and toks[i][0] not in ("@", ">"):
        if toks[i][0] in ("word", "quoted", "."):
            local.append(toks[i][1])
        i += 1
    host = None
    if i < n and toks[i][0] == "@":
        host, i = _domain(toks, i + 1, stop=(">",))
    while i < n and toks[i][0] != ">":
        i += 1
    return [None, "".join(route) or None, "".join(local) or None, host], i + 1


def _domain(toks: list[tuple[str, str]], i: int, stop: tuple[str, ...] = (",", ";")) -> tuple[str | None, int]:
    parts: list[str] = []
    n = len(toks)
    while i < n and toks[i][0] not in stop and toks[i][0] not in ("<", "@", ":"):
        kind, text = toks[i]
        if kind == "comment":
            if parts and parts[-1] != ".":
                break  # a comment after the domain: the name of user@host (Name)
        elif kind in ("word", "literal", "."):
            parts.append(text)
        else:
            break
        i += 1
    return "".join(parts) or None, i
