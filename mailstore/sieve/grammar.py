"""Sieve's grammar (RFC 5228 §8): a script into commands, tests and arguments, each with the line
it starts on; a script that does not parse fails with the first error, worded and placed as
Pigeonhole (Dovecot's Sieve) words and places it, so ManageSieve's CHECKSCRIPT answers as
Dovecot's does.

Lexical rules (§2.2-§2.4, §8.1): `#` comments to the end of the line, `/* */` comments,
identifiers, tags (`:name`), numbers with an optional K, M or G, quoted strings (in which
`\\x` is `x`), and multi-line strings (`text:` ... a line holding only `.`, with a leading
`..` undone).
"""

from __future__ import annotations

from dataclasses import dataclass, field

QUANTIFIERS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class SieveError(Exception):
    """A script that does not compile: `line` and Pigeonhole's words."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: error: {message}")
        self.line, self.message = line, message


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "identifier", "tag", "number", "string", or the punctuation itself: [ ] ( ) { } ; ,
    value: object
    line: int


@dataclass
class Test:
    name: str
    args: list[Argument]
    tests: list[Test]
    line: int


@dataclass
class Command:
    name: str
    args: list[Argument]
    tests: list[Test]
    block: list[Command] | None
    line: int


@dataclass(frozen=True, slots=True)
class Argument:
    kind: str  # "string" (a string or a string list), "number" or "tag"
    value: object  # list[str] for strings, int for numbers, str (lower case, no colon) for tags
    line: int
    is_list: bool = False  # written as a [string list], not a single string


@dataclass
class Script:
    commands: list[Command] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # "line N: warning: ..." (it compiles nonetheless)


def tokens(text: str, warnings: list[str] | None = None) -> list[Token]:
    """The script's tokens; SieveError at the first that cannot be read (and Pigeonhole's lexical
    warnings added to `warnings`)."""
    out: list[Token] = []
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c in " \t":
            i += 1
        elif c == "\r" or c == "\n":
            if c == "\r" and i + 1 < n and text[i + 1] == "\n":
                i += 1
            line += 1
            i += 1
        elif c == "#":
            while i < n and text[i] not in "\r\n":
                i += 1
            if i == n and warnings is not None:
                warnings.append(f"line {line}: warning: no newline (CRLF) at end of hash comment at end of file.")
        elif text.startswith("/*", i):
            start = line
            end = text.find("*/", i + 2)
            if end < 0:
                raise SieveError(start, f"end of file before end of bracket comment ('/* ... */') started at line "
                                        f"{start}.")
            line += _newlines(text[i:end])
            i = end + 2
        elif c == '"':
            start = line
            j, buf = i + 1, []
            while True:
                if j >= n:
                    raise SieveError(line, f"end of file before end of quoted string started at line {start}.")
                ch = text[j]
                if ch == "\\" and j + 1 < n:
                    buf.append(text[j + 1])
                    j += 2
                    continue
                if ch == '"':
                    break
                buf.append(ch)
                j += 1
            line += _newlines(text[i:j])
            out.append(Token("string", "".join(buf), start))
            i = j + 1
        elif c == ":" and i + 1 < n and (text[i + 1].isalpha() or text[i + 1] == "_"):
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            out.append(Token("tag", text[i + 1:j].lower(), line))
            i = j
        elif c.isdigit():
            j = i
            while j < n and text[j].isdigit():
                j += 1
            number = int(text[i:j])
            if j < n and text[j].upper() in QUANTIFIERS:
                number *= QUANTIFIERS[text[j].upper()]
                j += 1
            out.append(Token("number", number, line))
            i = j
        elif c.isalpha() or c == "_":
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            if word.lower() == "text" and j < n and text[j] == ":":
                i, line = _multiline(text, j + 1, line, out)
                continue
            out.append(Token("identifier", word.lower(), line))
            i = j
        elif c in "[](){};,":
            out.append(Token(c, c, line))
            i += 1
        else:
            raise SieveError(line, f"unexpected character(s) starting with '{c}'.")
    return out


def _newlines(s: str) -> int:
    return s.count("\n") + s.count("\r") - s.count("\r\n")


def _multiline(text: str, i: int, line: int, out: list[Token]) -> tuple[int, int]:
    """`text:` ends at i: blanks and an optional comment to the end of the line, then the lines up
    to one holding only "." (a leading ".." is one "."); returns where it ends and its line."""
    start, n = line, len(text)
    while i < n and text[i] in " \t":
        i += 1
    if text.startswith("#", i):
        while i < n and text[i] not in "\r\n":
            i += 1
    if text.startswith("\r\n", i):
        i += 2
    elif text.startswith("\n", i):
        i += 1
    else:
        raise SieveError(line, "invalid character after 'text:': a multi-line string starts on the next line.")
    line += 1
    lines: list[str] = []
    while True:
        if i >= n:
            raise SieveError(line, "end of file before end of multi-line string.")
        j = text.find("\n", i)
        content = (text[i:] if j < 0 else text[i:j]).removesuffix("\r")
        if content == ".":
            out.append(Token("string", "".join(x + "\r\n" for x in lines), start))
            return (n if j < 0 else j + 1), line + 1
        if j < 0:
            raise SieveError(line, "end of file before end of multi-line string.")
        lines.append(content[1:] if content.startswith("..") else content)
        i, line = j + 1, line + 1


_NAMES = {"[": "'['", "]": "']'", "(": "'('", ")": "')'", "{": "'{'", "}": "'}'", ";": "';'", ",": "','",
          "identifier": "identifier", "tag": "tag", "number": "number", "string": "string"}


def _found(tok: Token | None) -> str:
    return "end of file" if tok is None else _NAMES[tok.kind]


class _Parser:
    def __init__(self, toks: list[Token], eof_line: int) -> None:
        self.toks, self.i = toks, 0
        self.eof_line = eof_line

    def peek(self) -> Token | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def next(self) -> Token | None:
        tok = self.peek()
        self.i += 1
        return tok

    def last_line(self) -> int:
        """Where "end of file" is found: the line after the last line break (as Pigeonhole counts)."""
        return self.eof_line

    def _unclosed(self, close: str, what: str, found: Token | None) -> str:
        """Pigeonhole recovers from an error inside a list by skipping to the list's end: when
        the end of file comes first, it says so too (a second error line)."""
        if any(t.kind == close for t in self.toks[self.i - 1 if found is not None else self.i:]):
            return ""
        return f"\nline {self.last_line()}: error: expecting ',' or end of {what} '{close}', but found end of file."

    def commands(self, top: bool) -> list[Command]:
        out: list[Command] = []
        while True:
            tok = self.peek()
            if tok is None:
                return out
            if tok.kind == "}" and not top:
                return out
            if tok.kind != "identifier":
                what = "string" if tok.kind == "string" else _found(tok)
                if top:
                    raise SieveError(tok.line, f"unexpected {what} found at (the presumed) end of file.")
                raise SieveError(tok.line, f"expected command identifier, but found {what}.")
            out.append(self.command())

    def command(self) -> Command:
        tok = self.next()
        assert tok is not None
        args, tests = self.arguments(tok.value)  # type: ignore[arg-type]
        end = self.peek()
        if end is not None and end.kind == ";":
            self.i += 1
            return Command(str(tok.value), args, tests, None, tok.line)
        if end is not None and end.kind == "{":
            self.i += 1
            block = self.commands(top=False)
            close = self.next()
            if close is None:
                raise SieveError(self.last_line(), "expected end of compound block '}', but found end of file.")
            return Command(str(tok.value), args, tests, block, tok.line)
        line = end.line if end is not None else self.last_line()
        if tests and end is not None and end.kind == "identifier":
            raise SieveError(line, f"missing semicolon ';' after {tests[-1].name} test.")
        raise SieveError(line, "expected end of command ';' or the beginning of a compound block '{', "
                               f"but found {_found(end)}.")

    def arguments(self, owner: str) -> tuple[list[Argument], list[Test]]:
        args: list[Argument] = []
        while True:
            tok = self.peek()
            if tok is None:
                return args, []
            if tok.kind == "tag":
                self.i += 1
                args.append(Argument("tag", tok.value, tok.line))
            elif tok.kind == "number":
                self.i += 1
                args.append(Argument("number", tok.value, tok.line))
            elif tok.kind == "string":
                self.i += 1
                args.append(Argument("string", [tok.value], tok.line))
            elif tok.kind == "[":
                self.i += 1
                args.append(self.string_list(tok.line))
            elif tok.kind == "identifier":
                return args, [self.test()]
            elif tok.kind == "(":
                self.i += 1
                return args, self.test_list(owner)
            else:
                return args, []

    def string_list(self, line: int) -> Argument:
        values: list[str] = []
        while True:
            tok = self.next()
            if tok is None or tok.kind != "string":
                raise SieveError(tok.line if tok else self.last_line(),
                                 (f"expecting string after '[' in string list, but found {_found(tok)}."
                                  if not values else f"expecting string after ',' in string list, but found "
                                                     f"{_found(tok)}.") + self._unclosed("]", "string list", tok))
            values.append(str(tok.value))
            sep = self.next()
            if sep is not None and sep.kind == "]":
                return Argument("string", values, line, is_list=True)
            if sep is None or sep.kind != ",":
                raise SieveError(sep.line if sep else self.last_line(),
                                 f"expecting ',' or end of string list ']', but found {_found(sep)}.")

    def test(self) -> Test:
        tok = self.next()
        assert tok is not None and tok.kind == "identifier"
        args, tests = self.arguments(str(tok.value))
        return Test(str(tok.value), args, tests, tok.line)

    def test_list(self, owner: str) -> list[Test]:
        out: list[Test] = []
        after = "'('"
        while True:
            tok = self.peek()
            if tok is None or tok.kind != "identifier":
                line = tok.line if tok else self.last_line()
                more = f"\nline {line}: error: failed to accept more tests for command '{owner}'." if not out else ""
                raise SieveError(line, f"expecting test identifier after {after} in test list, but found "
                                       f"{_found(tok)}.{self._unclosed(')', 'test list', tok)}{more}")
            out.append(self.test())
            sep = self.next()
            if sep is not None and sep.kind == ")":
                return out
            if sep is None or sep.kind != ",":
                raise SieveError(sep.line if sep else self.last_line(),
                                 f"expecting ',' or end of test list ')', but found {_found(sep)}.")
            after = "','"


def parse(text: str) -> Script:
    """The script's syntax tree (SieveError: the first error)."""
    warnings: list[str] = []
    p = _Parser(tokens(text, warnings), text.count("\n") + 1)
    return Script(p.commands(top=True), warnings)
