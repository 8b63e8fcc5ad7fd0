"""Sieve (issue 21): the grammar and its checks, side by side with Pigeonhole (Dovecot's Sieve,
Debian's `sievec`), which is what ManageSieve's CHECKSCRIPT answers with on Dovecot."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailstore.sieve.checks import errors_of
from mailstore.sieve.grammar import SieveError, parse, tokens

CORPUS = (Path(__file__).parent / "sieve" / "corpus.sieve-list").read_text().split("\n====\n")


def pigeonhole(script: str, tmp: Path) -> list[str]:
    """sievec's errors for a script ("line N: error: ..."), [] when it compiles."""
    source = tmp / "s.sieve"
    source.write_text(script)
    out = subprocess.run(["sievec", str(source), str(tmp / "s.svbin")], capture_output=True, text=True)
    return [re.sub(r"^s: ", "", line) for line in (out.stdout + out.stderr).splitlines()
            if re.match(r"(s: )?line \d+: error: ", line)]


@pytest.mark.parametrize("n", range(len(CORPUS)))
def test_errors_as_pigeonhole_says_them(n, tmp_path):
    """Every script of the corpus: the same verdict, and the same errors on the same lines, in
    the same words. (Left out of the corpus: `ereject`, which Debian's Pigeonhole 0.5.19 does
    not have, and `if true keep;`, where Pigeonhole's parser does not take a test after a test
    that RFC 5228's grammar allows.)"""
    assert shutil.which("sievec"), "dovecot-sieve is installed by ./dev"
    theirs = pigeonhole(CORPUS[n], tmp_path)
    ours = [line for e in errors_of(CORPUS[n]) for line in e.split("\n")]
    assert ours == theirs, CORPUS[n]


def test_lexical_forms():
    toks = tokens('keep; # c\n/* x\ny */ "a\\"b\\\\c\\d" 10K 2M 3G :Over [ ] text:\nline\n..dot\n.\n')
    values = [t.value for t in toks]
    assert values[:2] == ["keep", ";"]
    assert values[2] == 'a"b\\cd' and toks[2].line == 3
    assert values[3:6] == [10 << 10, 2 << 20, 3 << 30] and values[6] == "over"
    assert values[9] == "line\r\n.dot\r\n" and toks[9].line == 3
    script = parse('if anyof (not exists "x", header :is ["a","b"] "c") { keep; } else { discard; }')
    first = script.commands[0]
    assert first.name == "if" and first.tests[0].name == "anyof" and len(first.tests[0].tests) == 2
    assert first.tests[0].tests[1].args[1].value == ["a", "b"] and first.tests[0].tests[1].args[1].is_list
    with pytest.raises(SieveError) as e:
        parse('keep;\n\n"open')
    assert e.value.line == 3 and "quoted string started at line 3" in e.value.message


RUN_CASES = (Path(__file__).parent / "sieve" / "run-cases.sieve-list").read_text().split("\n====\n")
MESSAGE = (Path(__file__).parent / "sieve" / "message.eml").read_bytes()


@pytest.fixture(scope="module")
def mail_readable() -> Iterator[Path]:
    """A directory the mail user (whom sieve-test drops to) can reach, unlike pytest's."""
    d = Path(tempfile.mkdtemp(prefix="mailstore-sieve-"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def sieve_test(script: str, tmp: Path) -> str:
    """What Pigeonhole's sieve-test says a script does with MESSAGE (from alice@, to bob+tag@)."""
    (tmp / "s.sieve").write_text(script)
    (tmp / "m.eml").write_bytes(MESSAGE)
    out = subprocess.run(["sieve-test", "-o", "mail_uid=mail", "-o", "mail_gid=mail", "-o", "first_valid_uid=1",
                          "-o", f"mail_location=maildir:{tmp}/mail", "-f", "alice@example.com",
                          "-r", "bob+tag@example.com", str(tmp / "s.sieve"), str(tmp / "m.eml")],
                         capture_output=True, text=True)
    m = re.search(r"(Performed actions:.*?)\n\nsieve-test", out.stdout + out.stderr, re.S)
    assert m, out.stdout + out.stderr
    return m.group(1).rstrip()


@pytest.mark.parametrize("n", range(len(RUN_CASES)))
def test_actions_as_pigeonhole_takes_them(n, mail_readable):
    """Each script run on the same message and envelope: the same actions, in the same order,
    with the same flags, and the same implicit keep."""
    from mailstore.sieve.checks import check
    from mailstore.sieve.run import Envelope, describe, run

    tree = parse(RUN_CASES[n])
    errors, required = check(tree)
    assert errors == []
    ours = describe(run(tree, required, MESSAGE, Envelope("alice@example.com", "bob+tag@example.com")))
    assert ours.rstrip() == sieve_test(RUN_CASES[n], mail_readable), RUN_CASES[n]
