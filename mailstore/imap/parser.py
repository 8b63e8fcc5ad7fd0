"""IMAP command parsing (RFC 3501 §9 grammar, plus the extensions in state.CAPABILITIES): sans-I/O.

`parse_command` turns one framed command (framing.py) into a typed `Command`.
The grammar is split along the protocol's families: this module has the
dispatch and the session and mailbox commands (LOGIN ... APPEND); FETCH, STORE,
COPY and MOVE are in parse_fetch.py; SEARCH, SORT and THREAD in parse_search.py;
the lexer they all read with is reader.py.
"""

from __future__ import annotations

from typing import Any

from .parse_fetch import fetch_att, parse_copy, parse_fetch, parse_store
from .parse_search import parse_search, parse_sort, parse_thread
from .reader import TAG_RE, AppendMessage, Command, EventGroup, FetchAttribute, ParseError, Reader


def parse_command(data: bytes) -> Command:
    """A framed command (see CommandFramer) as a typed Command, or ParseError."""
    tag_end = data.find(b" ")
    raw_tag = data if tag_end < 0 else data[:tag_end]
    tag = raw_tag.decode("ascii", "replace")
    if not tag or not TAG_RE.fullmatch(tag):
        raise ParseError("*", "Invalid tag")
    if tag_end < 0:
        raise ParseError(tag, "Missing command")
    r = Reader(data, tag)
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


def _no_args(r: Reader) -> dict[str, Any]:
    return {}


def _login(r: Reader) -> dict[str, Any]:
    r.sp()
    user = r.astring()
    r.sp()
    return {"user": user.decode("utf-8", "replace"), "password": r.astring()}


def _authenticate(r: Reader) -> dict[str, Any]:
    r.sp()
    mech = r.atom().upper()
    initial = None
    if r.maybe_sp():  # SASL-IR (RFC 4959): base64, or "=" for an empty response
        initial = r.atom().encode()
    return {"mechanism": mech, "initial": initial}


def _mailbox_only(r: Reader) -> dict[str, Any]:
    r.sp()
    return {"mailbox": r.mailbox()}


def _select(r: Reader) -> dict[str, Any]:
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


def _qresync(r: Reader) -> dict[str, Any]:
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


def _create(r: Reader) -> dict[str, Any]:
    r.sp()
    out: dict[str, Any] = {"mailbox": r.mailbox(), "use": []}
    if r.maybe_sp():  # RFC 6154 CREATE-SPECIAL-USE: (USE (\Drafts ...))
        r.open()
        r.expect(b"USE")
        r.sp()
        out["use"] = r.flag_list()
        r.close()
    return out


def _rename(r: Reader) -> dict[str, Any]:
    r.sp()
    old = r.mailbox()
    r.sp()
    return {"old": old, "new": r.mailbox()}


def _list(r: Reader) -> dict[str, Any]:
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


def _list_return(r: Reader) -> str | list[str]:
    option = r.atom().upper()
    if option != "STATUS":
        return option
    r.sp()
    items = r.paren_list(lambda: r.atom().upper())
    bad = [i for i in items if i not in STATUS_ITEMS]
    if bad or not items:
        raise r.fail(f"Invalid STATUS items {bad or '()'}")
    return items


def _lsub(r: Reader) -> dict[str, Any]:
    r.sp()
    ref = r.string().decode("utf-8", "replace") if r.peek() in (b'"', b"{") else r.mailbox()
    r.sp()
    return {"reference": ref, "patterns": [r.list_mailbox()], "selection": ["SUBSCRIBED"], "return": [],
            "status": None, "extended": False}


STATUS_ITEMS = {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE", "MAILBOXID",
                "DELETED"}


def _status(r: Reader) -> dict[str, Any]:
    r.sp()
    box = r.mailbox()
    r.sp()
    items = r.paren_list(lambda: r.atom().upper())
    bad = [i for i in items if i not in STATUS_ITEMS]
    if bad or not items:
        raise r.fail(f"Invalid STATUS items {bad or '()'}")
    return {"mailbox": box, "items": items}


def _append(r: Reader) -> dict[str, Any]:
    """APPEND mailbox 1*([SP flag-list] [SP date-time] SP (literal / literal8 / CATENATE (...)))
    (RFC 3501 §6.3.11; several messages: MULTIAPPEND, RFC 3502; CATENATE, RFC 4469; literal8, RFC 3516)."""
    r.sp()
    box = r.mailbox()
    messages: list[AppendMessage] = []
    while r.maybe_sp():
        messages.append(_append_message(r))
    if not messages:
        raise r.fail("APPEND needs a message")
    return {"mailbox": box, "messages": messages}


def _append_message(r: Reader) -> AppendMessage:
    flags: list[str] = []
    when = None
    if r.peek() == b"(":
        flags = r.flag_list()
        r.sp()
    if r.peek() == b'"':
        when = r.date_time()
        r.sp()
    if r.peek() in (b"{", b"~"):
        binary = r.peek() == b"~"
        return AppendMessage(tuple(flags), when, (r.literal(binary=True),), binary)
    kind = r.atom().upper()
    if kind == "UTF8":
        binary = r.d[r.i + 2:r.i + 3] == b"~"
        return AppendMessage(tuple(flags), when, (_utf8_literal(r),), binary, utf8=True)
    if kind != "CATENATE":
        raise r.fail("APPEND needs the message as a literal, UTF8 (literal) or CATENATE")
    r.sp()
    binary = utf8 = False

    def cat_part() -> bytes | str:
        nonlocal binary, utf8
        kind = r.atom().upper()
        if kind == "UTF8":  # RFC 9755 §4: a text part with UTF-8 headers
            utf8 = True
            return _utf8_literal(r)
        r.sp()
        if kind == "URL":
            return r.astring().decode("utf-8", "replace")
        if kind != "TEXT":
            raise r.fail(f"Unknown CATENATE part {kind}")
        binary |= r.peek() == b"~"
        return r.literal(binary=True)

    parts = r.paren_list(cat_part)
    if not parts:
        raise r.fail("Empty CATENATE list")
    return AppendMessage(tuple(flags), when, tuple(parts), binary, catenate=True, utf8=utf8)


def _utf8_literal(r: Reader) -> bytes:
    """SP "(" literal8 ")" after UTF8 (RFC 9755 §4)."""
    r.sp()
    r.open()
    data = r.literal(binary=True)
    r.close()
    return data


def _cancelupdate(r: Reader) -> dict[str, Any]:  # RFC 5267 §4.2: CANCELUPDATE "tag" *(SP "tag")
    tags = []
    while r.maybe_sp():
        tags.append(r.string().decode("ascii", "replace"))
    if not tags:
        raise r.fail("CANCELUPDATE needs the tags of searches")
    return {"tags": tags}


NOTIFY_FILTERS = {"SELECTED", "SELECTED-DELAYED", "INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE", "MAILBOXES"}


def _notify(r: Reader) -> dict[str, Any]:
    """NOTIFY NONE / NOTIFY SET [STATUS] (filter events) ... (RFC 5465 §8)."""
    r.sp()
    word = r.atom().upper()
    if word == "NONE":
        return {"groups": None, "status": False}
    if word != "SET":
        raise r.fail("NOTIFY SET or NOTIFY NONE")
    r.sp()
    status = r.d[r.i:r.i + 6].upper() == b"STATUS"
    if status:
        r.i += 6
        r.sp()
    groups = [_event_group(r)]
    while r.maybe_sp():
        groups.append(_event_group(r))
    return {"groups": groups, "status": status}


def _event_group(r: Reader) -> EventGroup:
    r.open()
    kind = r.atom().upper()
    if kind not in NOTIFY_FILTERS:
        raise r.fail(f"Unknown NOTIFY filter {kind}")
    names: list[str] = []
    if kind in ("SUBTREE", "MAILBOXES"):
        r.sp()
        names = r.paren_list(r.mailbox) if r.peek() == b"(" else [r.mailbox()]
    r.sp()
    events: set[str] = set()
    fetch: list[FetchAttribute] = []
    if r.peek() == b"(":
        def event() -> str:
            name = r.atom().upper()
            if name == "MESSAGENEW" and r.d[r.i:r.i + 2] == b" (":
                r.sp()
                fetch.extend(r.paren_list(lambda: fetch_att(r)))
            return name
        events = set(r.paren_list(event))
    elif r.atom().upper() != "NONE":
        raise r.fail("Expected events or NONE")
    r.close()
    return EventGroup(kind, tuple(names), frozenset(events), tuple(fetch))


def _compress(r: Reader) -> dict[str, Any]:  # RFC 4978
    r.sp()
    return {"mechanism": r.atom().upper()}


def _enable(r: Reader) -> dict[str, Any]:
    caps = []
    while r.maybe_sp():
        caps.append(r.atom().upper())
    if not caps:
        raise r.fail("ENABLE needs capabilities")
    return {"capabilities": caps}


def _id(r: Reader) -> dict[str, Any]:
    r.sp()
    if r.nil():
        return {"params": None}
    items = r.paren_list(lambda: r.nstring())
    if len(items) % 2:
        raise r.fail("ID parameters come in pairs")
    return {"params": {(items[i] or b"").decode("utf-8", "replace").lower():
                       (items[i + 1] or b"").decode("utf-8", "replace") for i in range(0, len(items), 2)}}


def _quota_root(r: Reader) -> dict[str, Any]:
    r.sp()
    return {"root": r.astring().decode("utf-8", "replace")}


def _uid_expunge(r: Reader) -> dict[str, Any]:  # RFC 4315 UIDPLUS
    r.sp()
    return {"set": r.seqset()}


_COMMANDS = {
    "CAPABILITY": _no_args, "NOOP": _no_args, "LOGOUT": _no_args, "STARTTLS": _no_args,
    "AUTHENTICATE": _authenticate, "LOGIN": _login,
    "SELECT": _select, "EXAMINE": _select, "CREATE": _create, "DELETE": _mailbox_only, "RENAME": _rename,
    "SUBSCRIBE": _mailbox_only, "UNSUBSCRIBE": _mailbox_only, "LIST": _list, "LSUB": _lsub,
    "STATUS": _status, "APPEND": _append, "NAMESPACE": _no_args, "ENABLE": _enable, "ID": _id,
    "COMPRESS": _compress, "CANCELUPDATE": _cancelupdate, "NOTIFY": _notify,
    "IDLE": _no_args, "GETQUOTA": _quota_root, "GETQUOTAROOT": _mailbox_only,
    "CHECK": _no_args, "CLOSE": _no_args, "UNSELECT": _no_args, "EXPUNGE": _no_args,
    "SEARCH": parse_search, "SORT": parse_sort, "THREAD": parse_thread,
    "FETCH": parse_fetch, "STORE": parse_store, "COPY": parse_copy, "MOVE": parse_copy,
}
_UID_COMMANDS = {"EXPUNGE": _uid_expunge}

