"""The grammar of the commands on messages: FETCH and its items, STORE, COPY and MOVE
(RFC 3501 §6.4, CONDSTORE/QRESYNC modifiers RFC 7162, BINARY RFC 3516)."""

from __future__ import annotations

import re
from typing import Any

from .reader import FetchAttribute, Reader, Section


def parse_copy(r: Reader) -> dict[str, Any]:
    r.sp()
    s = r.seqset()
    r.sp()
    return {"set": s, "mailbox": r.mailbox()}


STORE_ACTIONS = {"FLAGS", "+FLAGS", "-FLAGS"}


def parse_store(r: Reader) -> dict[str, Any]:
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
                "BODY", "BODYSTRUCTURE", "UID", "MODSEQ", "SAVEDATE", "PREVIEW",
                "EMAILID", "THREADID"}
FETCH_MACROS = {"ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
                "FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
                "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"]}


def parse_section(r: Reader) -> Section:
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


def fetch_att(r: Reader) -> FetchAttribute:
    m = _FETCH_NAME.match(r.d, r.i)
    if not m:
        raise r.fail("Expected a fetch attribute")
    r.i = m.end()
    name = m.group().decode().upper()
    if r.peek() == b"[" and name in ("BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE"):
        # RFC 3516 section-binary is part numbers only; HEADER/TEXT/MIME are read as for BODY, as Dovecot does.
        section = parse_section(r)
        if name == "BINARY.SIZE":
            return FetchAttribute(name, section)
        partial = None
        if r.peek() == b"<":
            r.i += 1
            start = r.number()
            r.expect(b".")
            count = r.nz_number()
            r.expect(b">")
            partial = (start, count)
        return FetchAttribute(name.removesuffix(".PEEK"), section, name.endswith(".PEEK"), partial)
    # RFC 8970 §3: PREVIEW (LAZY).  Outside a list, "(" may instead open FETCH's own modifiers.
    if name == "PREVIEW" and r.d[r.i:r.i + 2] == b" (" and (r.depth or r.d[r.i + 2:r.i + 6].upper() == b"LAZY"):
        r.sp()

        def modifier(word: str) -> None:
            if word != "LAZY":
                raise r.fail(f"'{word}' is not a supported PREVIEW modifier")
        r.named_list(modifier)
    elif name not in FETCH_SIMPLE:
        raise r.fail(f"Invalid fetch attribute {name}")
    return FetchAttribute(name)


def parse_fetch(r: Reader) -> dict[str, Any]:
    r.sp()
    s = r.seqset()
    r.sp()
    if r.peek() == b"(":
        atts = r.paren_list(lambda: fetch_att(r))
    else:
        m = _FETCH_NAME.match(r.d, r.i)
        if m and m.group().upper().decode() in FETCH_MACROS and r.d[m.end():m.end() + 1] in (b"", b" "):
            r.i = m.end()
            atts = [FetchAttribute(n) for n in FETCH_MACROS[m.group().upper().decode()]]
        else:
            atts = [fetch_att(r)]
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


