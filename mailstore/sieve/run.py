"""Running a compiled Sieve script on one message for one recipient: what should become of it.

The result is the list of actions (store in a folder with flags, redirect, reject, vacation,
discard) and whether the implicit keep stands (RFC 5228 §2.10.2), with its flags. Nothing is
done here: the delivery carries the actions out, and a script that fails at run time keeps the
message in INBOX (its error is returned, the delivery logs it).
"""

from __future__ import annotations

import email.header
import email.utils
import functools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import Message

from . import posix
from .grammar import Argument, Command, Script, Test

MAX_ACTIONS = 32  # redirects and the like per message (a loop in a script stops here)
MAX_INCLUDE_DEPTH = 10  # (Pigeonhole's default sieve_include_max_nesting_depth)


@dataclass(frozen=True, slots=True)
class Envelope:
    sender: str  # MAIL FROM, without <> ("" for the null sender)
    recipient: str  # RCPT TO as given (the address the user was reached at)
    auth: str = ""


@dataclass(frozen=True, slots=True)
class Vacation:
    reason: str
    subject: str | None
    sender: str | None  # :from
    addresses: tuple[str, ...]
    days: int
    handle: str
    mime: bool


@dataclass
class Store:
    folder: str
    flags: tuple[str, ...] | None  # (None only while the script runs: see _Run.current_flags)
    create: bool = False  # :create (RFC 5490): make the folder if it is missing
    copy: bool = False  # :copy: the implicit keep stays as it is


@dataclass
class Outcome:
    """What a script decided for one message: its actions in script order (Store, ("redirect",
    address, copy), ("reject", reason, ereject), ("discard",), Vacation), and the implicit keep."""

    actions: list[object] = field(default_factory=list)
    implicit_keep: bool = True
    keep_flags: tuple[str, ...] = ()  # the flags the implicit keep stores with
    error: str | None = None  # a run-time error: the message was kept in INBOX instead

    @property
    def stores(self) -> list[Store]:
        return [a for a in self.actions if isinstance(a, Store)]

    @property
    def redirects(self) -> list[str]:
        return [str(a[1]) for a in self.actions if isinstance(a, tuple) and a[0] == "redirect"]

    @property
    def reject(self) -> tuple[str, bool] | None:
        """(reason, ereject) of a reject or ereject."""
        return next(((str(a[1]), bool(a[2])) for a in self.actions if isinstance(a, tuple) and a[0] == "reject"),
                    None)

    @property
    def vacation(self) -> Vacation | None:
        return next((a for a in self.actions if isinstance(a, Vacation)), None)


class _Stop(Exception):
    pass


class _Return(Exception):
    pass


# An included script: its compiled form, or None when the user has no script of that name.
Loader = Callable[[str], "tuple[Script, frozenset[str]] | None"]


class RuntimeFailure(Exception):
    pass


def _decoded(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (email.errors.HeaderParseError, LookupError, UnicodeDecodeError, ValueError):
        return value


class _Run:
    def __init__(self, script: Script, required: set[str], raw: bytes, env: Envelope, now: float,
                 loader: Loader | None = None) -> None:
        self.script, self.required, self.raw, self.env, self.now = script, required, raw, env, now
        self.loader = loader
        self.depth = 0  # include nesting
        self.included: set[str] = set()  # (for :once)
        self.globals: dict[str, str] = {}
        self.global_names: set[str] = set()  # the variables this script declared global
        # The header only (the tests of headers, addresses, dates): the body is parsed when a body
        # test asks for it, not for every recipient of every message.
        self.msg: Message = message_from_bytes(_header_block(raw), policy=policy.compat32)
        self._whole: Message | None = None
        self.out = Outcome()
        self.variables: dict[str, str] = {}
        self.matches: list[str] = []
        self.flags: list[str] = []  # imap4flags' internal variable
        self.actions = 0

    # ------------------------------------------------------------ strings

    def expand(self, s: str) -> str:
        """${...} substitution (variables), and ${hex:..}/${unicode:..} (encoded-character)."""
        if "${" not in s:
            return s

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            low = name.lower()
            if "encoded-character" in self.required and ":" in low:
                kind, _, data = low.partition(":")
                try:
                    if kind == "hex":
                        return bytes(int(h, 16) for h in data.split()).decode("utf-8")
                    if kind == "unicode":
                        return "".join(chr(int(h, 16)) for h in data.split())
                except ValueError:
                    return m.group(0)
            if "variables" not in self.required:
                return m.group(0)
            if name.isdigit():
                n = int(name)
                return self.matches[n] if n < len(self.matches) else ""
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name):
                return self.get_var(low)
            return m.group(0)

        return re.sub(r"\$\{([^}]*)\}", sub, s)

    def strings(self, a: Argument) -> list[str]:
        return [self.expand(s) for s in a.value]  # type: ignore[attr-defined]

    # ------------------------------------------------------------ commands

    def block(self, commands: list[Command]) -> None:
        skip_rest_of_chain = False
        for cmd in commands:
            if cmd.name in ("elsif", "else"):
                if skip_rest_of_chain:
                    continue
                if cmd.name == "else" or self.test(cmd.tests[0]):
                    skip_rest_of_chain = True
                    self.block(cmd.block or [])
                continue
            skip_rest_of_chain = False
            if cmd.name == "if":
                if self.test(cmd.tests[0]):
                    skip_rest_of_chain = True
                    self.block(cmd.block or [])
                continue
            self.command(cmd)

    def command(self, cmd: Command) -> None:
        tags, pos = _split(cmd.args)
        name = cmd.name
        if name == "require":
            return
        if name == "stop":
            raise _Stop()
        if name == "return":  # (in the main script: as stop)
            raise _Return() if self.depth else _Stop()
        if name == "include":
            self.include(tags, pos)
            return
        if name == "global":
            self.global_names.update(v.lower() for v in self.strings(pos[0]))
            return
        if name == "keep":
            flags = self.flag_list(tags["flags"]) if "flags" in tags else self.current_flags()
            self.store("INBOX", flags, False, False)
            self.out.implicit_keep = False
        elif name == "discard":
            self.out.implicit_keep = False
            if ("discard",) not in self.out.actions:
                self.out.actions.append(("discard",))
        elif name == "fileinto":
            folder = self.strings(pos[0])[0]
            flags = self.flag_list(tags["flags"]) if "flags" in tags else self.current_flags()
            self.store(folder, flags, "create" in tags, "copy" in tags)
            if "copy" not in tags:
                self.out.implicit_keep = False
        elif name == "redirect":
            address = self.strings(pos[0])[0]
            if address.lower() not in (a.lower() for a in self.out.redirects):
                self.count_action()
                self.out.actions.append(("redirect", address, "copy" in tags))
            if "copy" not in tags:
                self.out.implicit_keep = False
        elif name in ("reject", "ereject"):
            if self.out.reject is None:
                self.out.actions.append(("reject", self.strings(pos[0])[0], name == "ereject"))
            self.out.implicit_keep = False
        elif name == "vacation":
            self.vacation(tags, pos)
        elif name == "set":
            self.set(tags, pos)
        elif name in ("setflag", "addflag", "removeflag"):
            self.flag_action(name, pos)

    def current_flags(self) -> tuple[str, ...] | None:
        """The flags a keep or fileinto without :flags stores with: the internal variable's value
        now (RFC 5232 §3). In a script that does not require imap4flags (one it includes), its
        value at the end of the run, as Pigeonhole gives them (None until then)."""
        return tuple(self.flags) if "imap4flags" in self.required else None

    def count_action(self) -> None:
        self.actions += 1
        if self.actions > MAX_ACTIONS:
            raise RuntimeFailure(f"more than {MAX_ACTIONS} actions")

    def store(self, folder: str, flags: tuple[str, ...] | None, create: bool, copy: bool) -> None:
        for a in self.out.stores:
            if a.folder == folder:  # one store per folder (the later flags win, as Pigeonhole merges them)
                a.flags, a.create, a.copy = flags, a.create or create, a.copy and copy
                return
        self.count_action()
        self.out.actions.append(Store(folder, flags, create, copy))

    def vacation(self, tags: dict[str, Argument | None], pos: list[Argument]) -> None:
        reason = self.strings(pos[0])[0]
        days = tags["days"].value if tags.get("days") is not None else 7  # type: ignore[union-attr]
        subject = self.strings(tags["subject"])[0] if tags.get("subject") is not None else None  # type: ignore[arg-type]
        sender = self.strings(tags["from"])[0] if tags.get("from") is not None else None  # type: ignore[arg-type]
        addresses = tuple(self.strings(tags["addresses"])) if tags.get("addresses") is not None else ()  # type: ignore[arg-type]
        handle = self.strings(tags["handle"])[0] if tags.get("handle") is not None else None  # type: ignore[arg-type]
        if handle is None:  # RFC 5230 §4.2: the reason, subject, from and mime make the default handle
            handle = reason + (subject or "") + (sender or "<default-from>") + ("<MIME>" if "mime" in tags
                                                                              else "<NO-MIME>")
        if self.out.vacation is None:
            self.out.actions.append(Vacation(reason, subject, sender, addresses, max(1, int(days)),  # type: ignore[arg-type]
                                             handle, "mime" in tags))

    def set(self, tags: dict[str, Argument | None], pos: list[Argument]) -> None:
        name = self.strings(pos[0])[0].lower()
        value = self.strings(pos[1])[0]
        for modifier, fn in (("lower", str.lower), ("upper", str.upper)):
            if modifier in tags:
                value = fn(value)
        if "lowerfirst" in tags:
            value = value[:1].lower() + value[1:]
        if "upperfirst" in tags:
            value = value[:1].upper() + value[1:]
        if "quotewildcard" in tags:
            value = re.sub(r"([*?\\])", r"\\\1", value)
        if "length" in tags:
            value = str(len(value))
        self.set_var(name, value)

    def get_var(self, name: str) -> str:
        """A variable's value (RFC 6609 §3.5: a global one when the script declared it so, or
        named in the "global." namespace)."""
        if name.startswith("global."):
            return self.globals.get(name[7:], "")
        return (self.globals if name in self.global_names else self.variables).get(name, "")

    def set_var(self, name: str, value: str) -> None:
        if name.startswith("global."):
            self.globals[name[7:]] = value
        else:
            (self.globals if name in self.global_names else self.variables)[name] = value

    def include(self, tags: dict[str, Argument | None], pos: list[Argument]) -> None:
        """RFC 6609: run another of the user's scripts here, with its own extensions and local
        variables; its actions join this one's, `stop` ends them all, `return` only it."""
        name = self.strings(pos[0])[0]
        if "once" in tags and name in self.included:
            return
        got = self.loader(name) if self.loader is not None else None
        if got is None:
            if "optional" in tags:
                return
            raise RuntimeFailure(f"included personal script '{name}' does not exist")
        if self.depth >= MAX_INCLUDE_DEPTH:
            raise RuntimeFailure(f"include of '{name}': nested more than {MAX_INCLUDE_DEPTH} deep")
        self.included.add(name)
        script, required = got
        saved = self.required, self.variables, self.global_names
        self.required, self.variables, self.global_names = set(required), {}, set()
        self.depth += 1
        try:
            self.block(script.commands)
        except _Return:
            pass
        finally:
            self.depth -= 1
            self.required, self.variables, self.global_names = saved

    def flag_list(self, a: Argument | None) -> tuple[str, ...]:
        if a is None:
            return ()
        out: list[str] = []
        for s in self.strings(a):
            for f in s.split():
                if f.lower() not in (x.lower() for x in out):
                    out.append(f)
        return tuple(out)

    def flag_action(self, name: str, pos: list[Argument]) -> None:
        if len(pos) == 2:
            var = self.strings(pos[0])[0].lower()
            current = self.get_var(var).split()
        else:
            var, current = None, list(self.flags)
        given = list(self.flag_list(pos[-1]))
        if name == "setflag":
            current = given
        elif name == "addflag":
            current += [f for f in given if f.lower() not in (c.lower() for c in current)]
        else:
            current = [c for c in current if c.lower() not in (f.lower() for f in given)]
        if var is None:
            self.flags = current
        else:
            self.set_var(var, " ".join(current))

    # ------------------------------------------------------------ tests

    def test(self, t: Test) -> bool:
        tags, pos = _split(t.args)
        name = t.name
        if name == "true":
            return True
        if name == "false":
            return False
        if name == "not":
            return not self.test(t.tests[0])
        if name == "allof":
            return all(self.test(x) for x in t.tests)
        if name == "anyof":
            return any(self.test(x) for x in t.tests)
        if name == "exists":
            return all(self.msg.get_all(h) is not None for h in self.strings(pos[0]))
        if name == "size":
            size = len(self.raw)
            limit = pos[0].value
            assert isinstance(limit, int)
            return size > limit if "over" in tags else size < limit
        if name == "header":
            values = [_decoded(v).replace("\r\n", "").replace("\n", "")
                      for h in self.strings(pos[0]) for v in (self.msg.get_all(h) or [])]
            return self.match(tags, values, self.strings(pos[1]))
        if name == "address":
            found = [self.address_part(tags, a) for h in self.strings(pos[0])
                     for a in _addresses(tuple(str(v) for v in self.msg.get_all(h) or ()))]
            return self.match(tags, [v for v in found if v is not None], self.strings(pos[1]))
        if name == "envelope":
            values = []
            for part in self.strings(pos[0]):
                a = {"from": self.env.sender, "to": self.env.recipient, "auth": self.env.auth}.get(part.lower(), "")
                if a or part.lower() == "from":
                    v = self.address_part(tags, a) if a else ""
                    if v is not None:
                        values.append(v)
            return self.match(tags, values, self.strings(pos[1]))
        if name == "string":
            return self.match(tags, self.strings(pos[0]), self.strings(pos[1]))
        if name == "hasflag":
            if len(pos) == 2:
                flags = [f for v in self.strings(pos[0]) for f in self.get_var(v.lower()).split()]
            else:
                flags = list(self.flags)
            return self.match(tags, flags, self.strings(pos[-1]))
        if name == "body":
            return self.match(tags, [self.body_text(tags)], self.strings(pos[0]), body=True)
        if name in ("date", "currentdate"):
            return self.date_test(name, tags, pos)
        raise RuntimeFailure(f"unknown test {name}")

    def address_part(self, tags: dict[str, Argument | None], address: str) -> str | None:
        local, at, domain = address.rpartition("@")
        if not at:
            local, domain = address, ""
        part = next((p for p in ("localpart", "domain", "user", "detail", "all") if p in tags), "all")
        if part == "all":
            return address
        if part == "localpart":
            return local
        if part == "domain":
            return domain
        user, plus, detail = local.partition("+")
        if part == "user":
            return user
        return detail if plus else None  # RFC 5233: no detail, no match (not an empty string)

    def body_text(self, tags: dict[str, Argument | None]) -> str:
        if "raw" in tags:
            return self.raw.split(b"\r\n\r\n", 1)[-1].split(b"\n\n", 1)[-1].decode("utf-8", "replace")
        types = self.strings(tags["content"]) if tags.get("content") is not None else ["text"]  # type: ignore[arg-type]
        out = []
        if self._whole is None:
            self._whole = parsed_message(self.raw)
        for part in self._whole.walk():
            if part.is_multipart():
                continue
            ctype = part.get_content_type()
            if any(t == "" or ctype == t.lower() or ctype.split("/")[0] == t.lower() for t in types):
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes):
                    out.append(payload.decode(part.get_content_charset() or "utf-8", "replace"))
        return "\n".join(out)

    def date_test(self, name: str, tags: dict[str, Argument | None], pos: list[Argument]) -> bool:
        if name == "currentdate":
            when: float | None = self.now
            part = self.strings(pos[0])[0].lower()
            keys = self.strings(pos[1])
        else:
            header = self.strings(pos[0])[0]
            part = self.strings(pos[1])[0].lower()
            keys = self.strings(pos[2])
            value = self.msg.get(header)
            parsed = email.utils.parsedate_tz(value) if value else None
            when = email.utils.mktime_tz(parsed) if parsed else None
        if when is None:
            return False
        zone = self.strings(tags["zone"])[0] if tags.get("zone") is not None else None  # type: ignore[arg-type]
        offset = _zone_offset(zone) if zone else -time.timezone
        t = time.gmtime(when + offset)
        sign = "+" if offset >= 0 else "-"
        zone_text = f"{sign}{abs(offset) // 3600:02d}{abs(offset) % 3600 // 60:02d}"
        parts = {"year": f"{t.tm_year:04d}", "month": f"{t.tm_mon:02d}", "day": f"{t.tm_mday:02d}",
                 "date": time.strftime("%Y-%m-%d", t), "hour": f"{t.tm_hour:02d}", "minute": f"{t.tm_min:02d}",
                 "second": f"{t.tm_sec:02d}", "time": time.strftime("%H:%M:%S", t),
                 "iso8601": time.strftime("%Y-%m-%dT%H:%M:%S", t) + zone_text[:3] + ":" + zone_text[3:],
                 "std11": time.strftime("%a, %d %b %Y %H:%M:%S ", t) + zone_text, "zone": zone_text,
                 "weekday": str((t.tm_wday + 1) % 7), "julian": str(int((when + offset) // 86400) + 40587)}
        if part not in parts:
            return False
        return self.match(tags, [parts[part]], keys)

    # ------------------------------------------------------------ matching

    def match(self, tags: dict[str, Argument | None], values: list[str], keys: list[str], body: bool = False) -> bool:
        given = tags.get("comparator")
        comparator = self.strings(given)[0].lower() if given is not None else "i;ascii-casemap"
        kind = next((k for k in ("is", "contains", "matches", "regex", "count", "value") if k in tags),
                    "contains" if body else "is")
        if kind == "count":
            relation = self.strings(tags["count"])[0].lower()  # type: ignore[arg-type]
            return any(_relate(relation, str(len(values)), k, "i;ascii-numeric") for k in keys)
        for v in values:
            for k in keys:
                if kind == "value":
                    if _relate(self.strings(tags["value"])[0].lower(), v, k, comparator):  # type: ignore[arg-type]
                        return True
                elif kind == "is":
                    if _fold(v, comparator) == _fold(k, comparator):
                        return True
                elif kind == "contains":
                    if _fold(k, comparator) in _fold(v, comparator):
                        return True
                elif kind == "matches":
                    m = re.fullmatch(_glob(k), v, re.DOTALL | (re.IGNORECASE if comparator == "i;ascii-casemap" else 0))
                    if m is not None:
                        self.matches = [v, *(g or "" for g in m.groups())]
                        return True
                elif kind == "regex":
                    try:
                        m = posix.compiled(k, comparator == "i;ascii-casemap").search(v)
                    except posix.PosixError as exc:
                        raise RuntimeFailure(f"invalid regular expression {k!r}: {exc}") from None
                    if m is not None:
                        self.matches = [m.group(0), *(g or "" for g in m.groups())]
                        return True
        return False


def _without_trace(raw: bytes) -> bytes:
    """The message as the MTA sent it: without the Return-Path and Delivered-To that each
    recipient's copy begins with (so every recipient's body test finds the same parse)."""
    for name in (b"return-path:", b"delivered-to:"):
        if raw[:len(name)].lower() == name:
            raw = raw[raw.find(b"\n") + 1:] if b"\n" in raw else raw
    return raw


@functools.lru_cache(maxsize=256)
def _addresses(values: tuple[str, ...]) -> list[str]:
    """The addresses of a header's values (the same for every recipient of a message: once)."""
    return [a for _, a in email.utils.getaddresses(list(values))]


def parsed_message(raw: bytes) -> Message:
    """A recipient's copy parsed whole, without its trace headers: once for all recipients of a
    delivery, and for the body tests, redirects and vacation replies alike (read only)."""
    return _parsed(_without_trace(raw))


@functools.lru_cache(maxsize=16)
def _parsed(raw: bytes) -> Message:
    return message_from_bytes(raw, policy=policy.compat32)


def _header_block(raw: bytes) -> bytes:
    """The message's header and the blank line that ends it (all of it when there is none)."""
    ends = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    if not ends:
        return raw
    end = min(ends)
    return raw[:end] + (b"\r\n\r\n" if raw.startswith(b"\r\n\r\n", end) else b"\n\n")


def _split(args: list[Argument]) -> tuple[dict[str, Argument | None], list[Argument]]:
    """Tagged arguments (with their parameter, when they take one) and positional ones."""
    takes = {"comparator", "flags", "days", "subject", "from", "addresses", "handle", "zone", "content", "count",
             "value", "index"}
    tags: dict[str, Argument | None] = {}
    pos: list[Argument] = []
    it = iter(args)
    for a in it:
        if a.kind == "tag":
            name = str(a.value)
            tags[name] = next(it, None) if name in takes else None
        else:
            pos.append(a)
    return tags, pos


def _fold(s: str, comparator: str) -> str:
    return s.lower() if comparator == "i;ascii-casemap" else s


def _glob(pattern: str) -> str:
    """A :matches pattern as a regular expression: `*` and `?` (each a match variable), `\\` escaping."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append("(.*?)" if c == "*" else "(.)" if c == "?" else re.escape(c))
        i += 1
    return "".join(out)


def _relate(relation: str, value: str, key: str, comparator: str) -> bool:
    if comparator == "i;ascii-numeric":
        def num(s: str) -> float:
            m = re.match(r"\d+", s)
            return float(m.group(0)) if m else float("inf")  # RFC 4790: no digits is positive infinity
        a, b = num(value), num(key)
    else:
        a, b = _fold(value, comparator), _fold(key, comparator)  # type: ignore[assignment]
    return {"gt": a > b, "ge": a >= b, "lt": a < b, "le": a <= b, "eq": a == b, "ne": a != b}[relation]


def _zone_offset(zone: str) -> int:
    m = re.fullmatch(r"([+-])(\d\d)(\d\d)", zone.strip())
    if not m:
        return 0
    secs = int(m.group(2)) * 3600 + int(m.group(3)) * 60
    return secs if m.group(1) == "+" else -secs


def run(script: Script, required: set[str], raw: bytes, env: Envelope, now: float | None = None,
        loader: Loader | None = None) -> Outcome:
    """What the script decides for this message (a run-time failure: implicit keep, and why).
    `loader`: the user's other scripts, for `include`."""
    r = _Run(script, required, raw, env, time.time() if now is None else now, loader)
    try:
        r.block(script.commands)
    except _Stop:
        pass
    except (RuntimeFailure, RecursionError) as exc:
        return Outcome(error=str(exc))
    out = r.out
    for st in out.stores:
        if st.flags is None:
            st.flags = tuple(r.flags)
    if out.implicit_keep:
        out.keep_flags = tuple(r.flags)
    return out


def describe(out: Outcome) -> str:
    """The outcome as Pigeonhole's sieve-test prints it ("Performed actions:" ... "Implicit keep:"),
    for comparing the two side by side."""
    def flags(fs: tuple[str, ...]) -> str:  # system flags first, in Dovecot's order, then keywords
        order = ["\\answered", "\\flagged", "\\deleted", "\\seen", "\\draft"]
        system = sorted((f.lower() for f in fs if f.lower() in order), key=order.index)
        return " ".join(system + [f for f in fs if f.lower() not in order])

    lines = ["Performed actions:", ""]
    if not out.actions:
        lines.append("  (none)")
    for a in out.actions:
        if isinstance(a, Store):
            lines.append(f" * store message in folder: {a.folder}")
            if a.copy:
                lines.append("        + preserve implicit keep")
            if a.flags:
                lines.append(f"        + add IMAP flags: {flags(a.flags)}")
        elif isinstance(a, Vacation):
            lines += [" * send vacation message:", f"    => seconds : {a.days * 86400}"]
            if a.subject is not None:
                lines.append(f"    => subject : {a.subject}")
            if a.sender is not None:
                lines.append(f"    => from    : {a.sender}")
            lines += [f"    => handle  : {a.handle}", "", "START MESSAGE", a.reason, "END MESSAGE"]
        elif isinstance(a, tuple) and a[0] == "redirect":
            lines.append(f" * redirect message to: <{a[1]}>")
        elif isinstance(a, tuple) and a[0] == "reject":
            lines.append(f" * reject message with reason: {a[1]}")
        elif isinstance(a, tuple) and a[0] == "discard":
            lines.append(" * discard")
    lines += ["", "Implicit keep:", ""]
    if out.implicit_keep:
        lines.append(" * store message in folder: INBOX")
        if out.keep_flags:
            lines.append(f"        + add IMAP flags: {flags(out.keep_flags)}")
    else:
        lines.append("  (none)")
    return "\n".join(lines)
