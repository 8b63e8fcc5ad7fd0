"""What a parsed Sieve script may say: the commands and tests of RFC 5228 and of the extensions
we serve, their positional arguments and tagged arguments, `require`, and where `if`, `elsif`,
`else` and blocks may stand. Errors are worded as Pigeonhole words them (ManageSieve's
CHECKSCRIPT and PUTSCRIPT answer them), all of them in script order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from . import posix
from .grammar import Argument, Command, Script, SieveError, Test

# What `require` may name (ManageSieve's SIEVE capability lists it).
EXTENSIONS = ("fileinto", "reject", "ereject", "envelope", "encoded-character", "vacation", "subaddress",
              "comparator-i;ascii-numeric", "relational", "regex", "imap4flags", "copy", "body", "variables",
              "mailbox", "date", "index", "include")
COMPARATORS = {"i;ascii-casemap": None, "i;octet": None, "i;ascii-numeric": "comparator-i;ascii-numeric"}
MATCH = {"is": None, "contains": None, "matches": None, "regex": "regex", "count": "relational",
         "value": "relational"}
ADDRESS_PART = {"all": None, "localpart": None, "domain": None, "user": "subaddress", "detail": "subaddress"}
RELATIONS = ("gt", "ge", "lt", "le", "eq", "ne")
DATE_PARTS = ("year", "month", "day", "date", "julian", "hour", "minute", "second", "time", "iso8601",
              "std11", "zone", "weekday")
ENVELOPE_PARTS = ("from", "to", "auth")
VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
MAX_SCRIPT_NAME = 512  # bytes (RFC 5804 §1.6 leaves the limit to the server)


def valid_script_name(name: str) -> bool:
    """A script name a user may give (ManageSieve, include): RFC 5804 §1.6's (UTF-8, no control
    characters), without "/" (Pigeonhole's rule too: a name is a file name there)."""
    return (0 < len(name.encode()) <= MAX_SCRIPT_NAME and "/" not in name
            and not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name))


@dataclass(frozen=True, slots=True)
class Tag:
    name: str
    param: str | None = None  # "number", "string", "strings" (string or list); None: no parameter
    extension: str | None = None


@dataclass(frozen=True, slots=True)
class Spec:
    name: str
    positional: tuple[tuple[str, str], ...]  # (label, "string" | "strings" | "number")
    tags: tuple[Tag, ...] = ()
    extension: str | None = None
    groups: tuple[str, ...] = ()  # comparator, match, address (the shared tagged arguments)
    block: bool = False  # takes a command block (if, elsif, else)
    tests: str = ""  # "one" (if, elsif, not), "list" (allof, anyof)
    optional_first: bool = False  # the first positional argument may be left out (imap4flags' variable)


_FLAGS = Tag("flags", "strings", "imap4flags")
COMMANDS = {s.name: s for s in (
    Spec("require", (("capabilities", "strings"),)),
    Spec("if", (), block=True, tests="one"),
    Spec("elsif", (), block=True, tests="one"),
    Spec("else", (), block=True),
    Spec("stop", ()),
    Spec("keep", (), (_FLAGS,)),
    Spec("discard", ()),
    Spec("redirect", (("address", "string"),), (Tag("copy", None, "copy"),)),
    Spec("fileinto", (("folder", "string"),), (Tag("copy", None, "copy"), Tag("create", None, "mailbox"), _FLAGS),
         "fileinto"),
    Spec("reject", (("reason", "string"),), extension="reject"),
    Spec("ereject", (("reason", "string"),), extension="ereject"),
    Spec("vacation", (("reason", "string"),), (Tag("days", "number"), Tag("subject", "string"), Tag("from", "string"),
                                                 Tag("addresses", "strings"), Tag("mime"), Tag("handle", "string")),
         "vacation"),
    Spec("set", (("name", "string"), ("value", "string")),
         tuple(Tag(t) for t in ("lower", "upper", "lowerfirst", "upperfirst", "quotewildcard", "quoteregex",
                                "length")), "variables"),
    Spec("include", (("script name", "string"),), (Tag("personal"), Tag("global"), Tag("once"), Tag("optional")),
         "include"),
    Spec("return", (), extension="include"),
    Spec("global", (("value", "strings"),), extension="include"),
    Spec("addflag", (("variable name", "string"), ("list of flags", "strings")), extension="imap4flags",
         optional_first=True),
    Spec("setflag", (("variable name", "string"), ("list of flags", "strings")), extension="imap4flags",
         optional_first=True),
    Spec("removeflag", (("variable name", "string"), ("list of flags", "strings")), extension="imap4flags",
         optional_first=True),
)}
TESTS = {s.name: s for s in (
    Spec("address", (("header list", "strings"), ("key list", "strings")), groups=("comparator", "match", "address")),
    Spec("envelope", (("envelope part", "strings"), ("key list", "strings")), extension="envelope",
         groups=("comparator", "match", "address")),
    Spec("header", (("header names", "strings"), ("key list", "strings")), groups=("comparator", "match")),
    Spec("exists", (("header names", "strings"),)),
    Spec("size", (("limit", "number"),), (Tag("over"), Tag("under"))),
    Spec("true", ()),
    Spec("false", ()),
    Spec("not", (), tests="one"),
    Spec("allof", (), tests="list"),
    Spec("anyof", (), tests="list"),
    Spec("body", (("key list", "strings"),), (Tag("raw"), Tag("content", "strings"), Tag("text")), "body",
         groups=("comparator", "match", "transform")),
    Spec("hasflag", (("variable list", "strings"), ("list of flags", "strings")), extension="imap4flags",
         groups=("comparator", "match"), optional_first=True),
    Spec("string", (("source", "strings"), ("key list", "strings")), extension="variables",
         groups=("comparator", "match")),
    Spec("date", (("header name", "string"), ("date part", "string"), ("key list", "strings")),
         (Tag("zone", "string"), Tag("originalzone"), Tag("index", "number", "index"), Tag("last", None, "index")),
         "date", groups=("comparator", "match")),
    Spec("currentdate", (("date part", "string"), ("key list", "strings")), (Tag("zone", "string"),), "date",
         groups=("comparator", "match")),
)}


@dataclass
class _Checker:
    required: set[str] = field(default_factory=set)
    errors: list[SieveError] = field(default_factory=list)
    reported: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    exists: Callable[[str], bool] | None = None  # whether the user has a script of that name (include)
    locals: set[str] = field(default_factory=set)  # variables `set` before any `global` named them
    globals: set[str] = field(default_factory=set)

    def error(self, line: int, message: str, once: str | None = None) -> None:
        if once is not None:
            if once in self.reported:
                return
            self.reported.add(once)
        self.errors.append(SieveError(line, message))

    def block(self, commands: list[Command], top: bool) -> None:
        previous: str | None = None
        seen_other = False
        for cmd in commands:
            if cmd.name == "require":
                if not top or seen_other:
                    self.error(cmd.line, "require commands can only be placed at top level at the beginning of "
                                         "the file.")
                else:
                    self.require(cmd)
                previous = cmd.name
                continue
            seen_other = True
            if cmd.name in ("elsif", "else") and previous not in ("if", "elsif"):
                self.error(cmd.line, f"the {cmd.name} command must follow an if or elseif command.")
            self.command(cmd)
            previous = cmd.name

    def require(self, cmd: Command) -> None:
        strings = [a for a in cmd.args if a.kind == "string"]
        if len(strings) != 1 or len(cmd.args) != 1:
            self.error(cmd.line, f"the require command requires 1 positional argument(s), but {len(cmd.args)} "
                                 "is/are specified.")
            return
        for name in strings[0].value:  # type: ignore[attr-defined]
            if name not in EXTENSIONS:
                self.error(cmd.line, f"require command: unknown Sieve capability `{name}'.")
            else:
                self.required.add(name)

    def known(self, table: dict[str, Spec], kind: str, name: str, line: int) -> Spec | None:
        """The spec of a command or test the script may use (its extension required), or None
        and the error, once per name."""
        spec = table.get(name)
        if spec is None or (spec.extension is not None and spec.extension not in self.required):
            self.error(line, f"unknown {kind} '{name}' (only reported once at first occurrence).",
                       once=f"{kind}:{name}")
            return None
        return spec

    def command(self, cmd: Command) -> None:
        spec = self.known(COMMANDS, "command", cmd.name, cmd.line)
        if spec is None:
            return
        self.arguments(spec, "command", cmd.args, cmd.tests, cmd.line)
        if spec.block and cmd.block is None:
            self.error(cmd.line, f"the {cmd.name} command requires a command block, but it is missing.")
        elif not spec.block and cmd.block is not None:
            self.error(cmd.line, f"the {cmd.name} command does not accept a command block, but one is specified.")
        if cmd.block is not None:
            self.block(cmd.block, top=False)
        self.semantics(cmd.name, cmd.args, cmd.line)

    def test(self, t: Test) -> None:
        spec = self.known(TESTS, "test", t.name, t.line)
        if spec is None:
            return
        self.arguments(spec, "test", t.args, t.tests, t.line)
        self.semantics(t.name, t.args, t.line)

    def arguments(self, spec: Spec, kind: str, args: list[Argument], tests: list[Test], line: int) -> None:
        positional: list[Argument] = []
        groups: dict[str, str] = {}
        it = iter(args)
        for a in it:
            if a.kind != "tag":
                positional.append(a)
                continue
            name = str(a.value)
            tag = next((t for t in spec.tags if t.name == name and (t.extension is None or t.extension in
                                                                      self.required)), None)
            group = self.group_of(spec, name)
            if tag is None and group is None:
                self.error(a.line, f"unknown tagged argument ':{name}' for the {spec.name} {kind} (reported only "
                                   "once at first occurrence).", once=f"tag:{spec.name}:{name}")
                return  # (as Pigeonhole: no more about this command's arguments)
            if group is not None:
                if group in groups:
                    label = {"match": "MATCH-TYPE", "address": "ADDRESS-PART", "comparator": "COMPARATOR"}.get(group)
                    self.error(a.line, f"encountered duplicate {label} argument (:{name}) for the {spec.name} {kind}."
                               if label else f"encountered duplicate :{name} argument for the {spec.name} {kind}.")
                    return
                groups[group] = name
                if group == "transform" and name == "content":
                    value = next(it, None)
                    if value is None or value.kind != "string":
                        self.error(a.line, f"the :content tag for the {spec.name} {kind} requires a string list as "
                                           "parameter.")
                        return
                    continue
                if group == "comparator":
                    value = next(it, None)
                    if value is None or value.kind != "string":
                        self.error(a.line, f"the :comparator tag for the {spec.name} {kind} requires a string as "
                                           "parameter.")
                        continue
                    comparator = value.value[0]  # type: ignore[index]
                    needs = COMPARATORS.get(comparator, "?")
                    if needs == "?" or (needs is not None and needs not in self.required):
                        self.error(a.line, f"unknown comparator '{comparator}'.")
                elif name in ("count", "value"):
                    value = next(it, None)
                    given = value.value[0] if value is not None and value.kind == "string" else None  # type: ignore[index]
                    if given is None or given.lower() not in RELATIONS:
                        self.error(a.line, f"the :{name} match-type requires a constant string argument being one of "
                                           '"gt", "ge", "lt", "le", "eq" or "ne", but '
                                           + (f'"{given}"' if given is not None else "nothing") + " was found.")
                        return
                continue
            assert tag is not None
            if tag.name in groups:
                self.error(a.line, f"encountered duplicate :{name} argument for the {spec.name} {kind}.")
            groups[tag.name] = name
            if tag.param is not None:
                value = next(it, None)
                wanted = "number" if tag.param == "number" else "string"
                if value is None or value.kind != wanted or (tag.param == "string" and value.is_list):
                    found = "nothing" if value is None else ("a string list" if value.is_list else
                                                             f"a {value.kind}" if value.kind != "tag" else "a tag")
                    self.error(a.line, f"the :{name} tag for the {spec.name} {kind} requires a {wanted} as "
                                       f"parameter, but {found} was found.")
        self.positional(spec, kind, positional, line)
        if spec.tests == "one":
            if not tests:
                self.error(line, f"the {spec.name} {kind} requires one sub-test, but none is specified.")
            elif len(tests) > 1:
                self.error(line, f"the {spec.name} {kind} requires one sub-test, but a list of tests is specified.")
        elif spec.tests == "list" and not tests:
            self.error(line, f"the {spec.name} {kind} requires a list of sub-tests, but none is specified.")
        elif not spec.tests and tests:
            self.error(line, f"the {spec.name} {kind} does not accept sub-tests, but some are specified.")
        for t in tests:
            self.test(t)

    def group_of(self, spec: Spec, name: str) -> str | None:
        if "transform" in spec.groups and name in ("raw", "content", "text"):
            return "transform"
        if "comparator" in spec.groups and name == "comparator":
            return "comparator"
        if "match" in spec.groups and name in MATCH and (MATCH[name] is None or MATCH[name] in self.required):
            return "match"
        if "address" in spec.groups and name in ADDRESS_PART and (ADDRESS_PART[name] is None
                                                                  or ADDRESS_PART[name] in self.required):
            return "address"
        return None

    def positional(self, spec: Spec, kind: str, args: list[Argument], line: int) -> None:
        wanted = list(spec.positional)
        if spec.optional_first and len(args) == len(wanted) - 1:
            wanted = wanted[1:]
        if spec.optional_first and not args:
            self.error(line, f"the {spec.name} {kind} expects at least one argument, but none was found.")
            return
        if spec.optional_first and len(args) == len(wanted) == len(spec.positional) \
                and "variables" not in self.required:
            self.error(line, f"the {spec.name} {kind} only allows for the specification of a variable name when "
                             "the variables extension is active.")
            return
        if len(args) != len(wanted):
            self.error(line, f"the {spec.name} {kind} requires {len(wanted)} positional argument(s), but "
                             f"{len(args)} is/are specified.")
            return
        for n, (a, (label, kind_wanted)) in enumerate(zip(args, wanted, strict=True), 1):
            if kind_wanted == "number" and a.kind != "number":
                self.error(a.line, f"the {spec.name} {kind} expects a number as argument {n} ({label}), but a "
                                   f"{'string list' if a.is_list else a.kind} was found.")
            elif kind_wanted in ("string", "strings") and a.kind != "string":
                what = "string list" if kind_wanted == "strings" else "string"
                self.error(a.line, f"the {spec.name} {kind} expects a {what} as argument {n} ({label}), but a "
                                   f"{a.kind} was found.")
            elif kind_wanted == "string" and a.is_list:
                self.error(a.line, f"the {spec.name} {kind} expects a string as argument {n} ({label}), but a "
                                   "string list was found.")

    def include(self, name: str, tags: set[str], line: int) -> None:
        if {"personal", "global"} <= tags:
            self.error(line, "include: cannot use location tags ':personal' and ':global' multiple times.")
        elif not name or "/" in name or not valid_script_name(name):
            self.error(line, f"include: invalid script name '{name}'.")
        elif "global" in tags:  # (no global scripts here: an operator's shared scripts are not served)
            self.error(line, f"include: global location for included script `{name}' is unavailable (contact "
                             "system administrator for more information).")
        elif self.exists is not None and "optional" not in tags and not self.exists(name):
            self.warnings.append(f"line {line}: warning: included personal script '{name}' does not exist (ignored "
                                 "during upload).")

    def semantics(self, name: str, args: list[Argument], line: int) -> None:
        """The checks of single commands and tests beyond their argument types."""
        tags = {str(a.value) for a in args if a.kind == "tag"}
        strings = [a for a in args if a.kind == "string"]
        if "regex" in tags and strings and args[-1].kind == "string":  # the key list: constant patterns now
            for key in args[-1].value:  # type: ignore[attr-defined]
                if "variables" in self.required and "${" in key:
                    continue  # (known when the script runs)
                try:
                    posix.translate(key)
                except posix.PosixError as exc:  # (the first of a list only, as Pigeonhole)
                    self.error(line, f"invalid regular expression '{key}' for regex match: {exc}.")
                    break
        if name == "size" and not tags & {"over", "under"}:
            self.error(line, "the size test requires either the :under or the :over tag to be specified.")
        elif name == "size" and {"over", "under"} <= tags:
            self.error(line, "the size test requires either the :under or the :over tag to be specified, but "
                             "both are.")
        elif name == "redirect" and strings and "@" not in strings[0].value[0]:  # type: ignore[index]
            address = strings[0].value[0]  # type: ignore[index]
            self.error(line, f"specified redirect address '{address}' is invalid: invalid or lonely local part "
                             f"'{address.split()[0] if address.split() else address}' (expecting '@').")
        elif name == "set" and strings and not VARIABLE.fullmatch(str(strings[0].value[0])):  # type: ignore[index]
            self.error(line, f"invalid variable name '{strings[0].value[0]}'.")  # type: ignore[index]
        elif name == "set" and strings:
            variable = str(strings[0].value[0]).lower()  # type: ignore[index]
            if variable not in self.globals:
                self.locals.add(variable)
        elif name == "include" and len(strings) == 1 and len(args) == len(tags) + 1:  # (its arguments were valid)
            self.include(str(strings[0].value[0]), tags, line)  # type: ignore[index]
        elif name == "global":
            if "variables" not in self.required:
                self.error(line, "global command requires that variables extension is active.")
            else:
                for variable in (strings[0].value if strings else []):  # type: ignore[attr-defined]
                    if variable.lower() in self.locals:
                        self.error(line, f"declaration of new global variable '{variable}' conflicts with earlier "
                                         "local use.")
                    self.globals.add(variable.lower())
        elif name == "envelope" and strings:
            for part in strings[0].value:  # type: ignore[attr-defined]
                if part.lower() not in ENVELOPE_PARTS:
                    self.error(line, f"specified envelope part '{part}' is not supported by the envelope test.")
        elif name == "vacation":
            it = iter(args)
            for a in it:
                if a.kind == "tag" and a.value == "days":
                    days = next(it, None)
                    if days is not None and days.kind == "number" and int(days.value) < 1:  # type: ignore[call-overload]
                        self.warnings.append(f"line {a.line}: warning: specified :days value '{days.value}' is "
                                             "under the minimum.")
        elif name in ("date", "currentdate"):
            parts, it = [], iter(args)
            for a in it:
                if a.kind == "tag" and a.value in ("comparator", "value", "count", "zone", "index"):
                    next(it, None)  # (the tag's parameter)
                elif a.kind == "string":
                    parts.append(a)
            part = parts[1 if name == "date" else 0] if len(parts) > (1 if name == "date" else 0) else None
            if part is not None and not part.is_list and str(part.value[0]).lower() not in DATE_PARTS:  # type: ignore[index]
                self.warnings.append(f"line {part.line}: warning: specified date part `{part.value[0]}' is not "  # type: ignore[index]
                                     "known.")


def check(script: Script, exists: Callable[[str], bool] | None = None) -> tuple[list[SieveError], set[str]]:
    """Every error of a parsed script in order (none: it compiles), and the extensions it requires
    (warnings go to script.warnings). `exists`: whether the user has a script of a name, for
    `include` at upload (not given: included scripts are looked for when the script runs)."""
    c = _Checker(warnings=script.warnings, exists=exists)
    c.block(script.commands, top=True)
    return c.errors, c.required


def errors_of(text: str) -> list[str]:
    """A script's errors as Pigeonhole prints them ("line N: error: ..."); [] when it compiles."""
    from .grammar import parse

    try:
        script = parse(text)
    except SieveError as exc:
        return [str(exc)]
    return [str(e) for e in check(script)[0]]
