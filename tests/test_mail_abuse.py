"""The mail ports and the dashboard tried as an attacker would (issue 12, items 14-16).

LMTP: a thousand RCPTs of one user must not store a thousand copies.  IMAP: an
over-long line after AUTHENTICATE or inside IDLE, or a NUL in a quoted string,
gets a tagged answer (and BYE where the stream cannot be resynchronised), never
a traceback.  Logins: concurrent guesses wait one behind another.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from appliance.dashboard import Dashboard, Sources
from mailstore.throttle import Busy, LoginLimiter
from test_lmtp import DOMAIN, Shim

USER = f"abuse@{DOMAIN}"
OTHER = f"other@{DOMAIN}"


@pytest.fixture(scope="module")
def shim(tmp_path_factory):  # type: ignore[no-untyped-def]
    s = Shim(tmp_path_factory.mktemp("abuse"))
    s.add_user(USER)
    s.add_user(OTHER)
    proc, info = s.start_imap()
    s.imap_port = info["port"]  # type: ignore[attr-defined]
    s.imap_proc = proc  # type: ignore[attr-defined]
    yield s
    proc.terminate()
    proc.wait(timeout=30)
    s.stop()


def lmtp(shim: Shim) -> smtplib.LMTP:
    c = smtplib.LMTP("127.0.0.1", shim.port)
    c.ehlo("test")  # LHLO
    return c


def rcpt_replies(shim: Shim, rcpts: list[str]) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """Raw LMTP: the RCPT replies, then the per-recipient DATA replies (RFC 2033)."""
    with socket.create_connection(("127.0.0.1", shim.port), timeout=30) as s:
        f = s.makefile("rb")

        def reply() -> tuple[int, bytes]:
            lines = []
            while True:
                line = f.readline()
                lines.append(line)
                if line[3:4] != b"-":
                    return int(line[:3]), b"".join(lines)

        reply()
        s.sendall(b"LHLO test\r\n")
        reply()
        s.sendall(b"MAIL FROM:<a@example.org>\r\n" + b"".join(f"RCPT TO:<{r}>\r\n".encode() for r in rcpts))
        reply()
        got = [reply() for _ in rcpts]
        accepted = sum(1 for code, _ in got if code == 250)
        s.sendall(b"DATA\r\n")
        assert reply()[0] == 354
        s.sendall(b"Subject: amplification\r\n\r\nbody\r\n.\r\n")
        data = [reply() for _ in range(accepted)]
        s.sendall(b"QUIT\r\n")
        return got, data


def test_a_thousand_rcpts_of_one_user_store_one_copy(shim: Shim) -> None:
    before = len(shim.rows(USER))
    got, data = rcpt_replies(shim, [USER] * 1000)
    codes = [c for c, _ in got]
    assert codes[:100] == [250] * 100
    assert set(codes[100:]) == {452} and b"4.5.3" in got[100][1]
    assert [c for c, _ in data] == [250] * 100  # one reply per accepted RCPT
    assert len(shim.rows(USER)) == before + 1


def test_duplicate_recipients_get_one_copy_each_and_every_reply(shim: Shim) -> None:
    before_u, before_o = len(shim.rows(USER)), len(shim.rows(OTHER))
    got, data = rcpt_replies(shim, [USER, OTHER, USER, USER.upper(), OTHER])
    assert [c for c, _ in got] == [250] * 5
    assert [c for c, _ in data] == [250] * 5
    assert len(shim.rows(USER)) == before_u + 1 and len(shim.rows(OTHER)) == before_o + 1


def test_paths_cut_short_are_syntax_errors_not_500s(shim: Shim) -> None:
    """Python's address parser raises on these; aiosmtpd answered 500 with a traceback."""
    with socket.create_connection(("127.0.0.1", shim.port), timeout=30) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"LHLO test\r\n")
        while f.readline()[3:4] == b"-":
            pass
        for path in (b"<@", b"<a@[", b"<a@", b"<@a:", b"<a@b>"):
            s.sendall(b"MAIL FROM:" + path + b"\r\n")
            reply = f.readline()
            if path == b"<a@b>":
                assert reply.startswith(b"250"), reply
            else:  # aiosmtpd's answer to a malformed path, where its parser does not crash
                assert reply.startswith(b"553 5.1.3"), (path, reply)
        for path in (b"<@", b"<a@[", b"<" + USER.encode() + b">"):
            s.sendall(b"RCPT TO:" + path + b"\r\n")
            reply = f.readline()
            assert reply.startswith(b"250" if b"@" + DOMAIN.encode() in path else b"553 5.1.3"), (path, reply)
        s.sendall(b"RSET\r\nQUIT\r\n")


def imap_conversation(port: int, *sends: bytes, read_for: float = 3.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=read_for) as s:
        got = s.recv(4096)
        for data in sends:
            s.sendall(data)
            time.sleep(0.2)
        s.settimeout(read_for)
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except (socket.timeout, ConnectionError):
            pass
        return got


def test_imap_long_line_after_authenticate_is_a_tagged_bad(shim: Shim) -> None:
    out = imap_conversation(shim.imap_port, b"a1 AUTHENTICATE PLAIN\r\n", b"A" * 2_000_000 + b"\r\n")  # type: ignore[attr-defined]
    assert b"a1 BAD" in out and b"* BYE" in out


def test_imap_long_line_during_idle_is_a_tagged_bad(shim: Shim) -> None:
    out = imap_conversation(shim.imap_port, f"a1 LOGIN {USER} pw\r\n".encode(), b"a2 SELECT INBOX\r\n",  # type: ignore[attr-defined]
                            b"a3 IDLE\r\n", b"D" * 2_000_000 + b"\r\n")
    assert b"a2 OK" in out and b"+ idling" in out
    assert b"a3 BAD" in out and b"* BYE" in out


def test_imap_nul_in_quoted_string_is_tagged(shim: Shim) -> None:
    out = imap_conversation(shim.imap_port, b'a1 LOGIN "ab\x00use" pw\r\n', b"a2 NOOP\r\n", read_for=1.5)  # type: ignore[attr-defined]
    assert b"a1 BAD" in out and b"a2 OK" in out
    assert b"* BAD" not in out


def test_no_tracebacks_in_the_mail_logs(shim: Shim) -> None:
    for log in Path(shim.base).glob("*.log"):
        text = log.read_text()
        assert "Traceback" not in text, (log, text[-2000:])


# ------------------------------------------------------------------ the login limiter

def test_limiter_serialises_concurrent_guesses_and_grows_the_pause() -> None:
    async def go() -> tuple[list[tuple[float, float]], int]:
        limiter = LoginLimiter(unit=0.05, cap=0.4, max_waiting=6)
        spans: list[tuple[float, float]] = []
        busy = 0

        async def guess() -> None:
            nonlocal busy
            loop = asyncio.get_running_loop()
            try:
                async with limiter.attempt("addr:10.0.0.1", "user:bob") as a:
                    t0 = loop.time()
                    await asyncio.sleep(0.01)  # the password check
                    spans.append((t0, loop.time()))
                    a.failed()
            except Busy:
                busy += 1

        await asyncio.gather(*(guess() for _ in range(40)))
        return spans, busy

    spans, busy = asyncio.run(go())
    assert busy == 40 - 6  # only max_waiting queue; the rest are refused without a check
    spans.sort()
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end  # never two checks of one key at once
    gaps = [b[0] - a[1] for a, b in zip(spans, spans[1:])]
    assert gaps[0] >= 0.04 and gaps[-1] >= 0.39  # 0.05, 0.1, 0.2, 0.4 (capped)


def test_limiter_keys_by_user_across_addresses_and_success_clears() -> None:
    async def go() -> tuple[float, float]:
        limiter = LoginLimiter(unit=0.2)
        for addr in ("1.1.1.1", "2.2.2.2", "3.3.3.3"):
            async with limiter.attempt(f"addr:{addr}", "user:bob") as a:
                a.failed()
        before = limiter.delay("user:bob")
        async with limiter.attempt("addr:4.4.4.4", "user:bob") as a:
            a.succeeded()
        return before, limiter.delay("user:bob")

    before, after = asyncio.run(go())
    assert before >= 0.8 and after == 0.0


def test_dashboard_logins_are_throttled_under_concurrency(tmp_path: Path) -> None:
    async def go() -> list[int]:
        dash = Dashboard(Sources([], "http://127.0.0.1:9/stats", {}, tmp_path / "none.db", "admin", "right"), 60)
        dash.limiter = LoginLimiter(unit=0.05, cap=0.2)
        server = TestServer(dash.app(), host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as session:
                async def guess(i: int) -> int:
                    async with session.post(server.make_url("/login"), data={"user": "admin", "password": f"x{i}"},
                                            allow_redirects=False) as r:
                        await r.read()
                        return r.status
                return list(await asyncio.gather(*(guess(i) for i in range(40))))
        finally:
            await server.close()

    statuses = asyncio.run(go())
    assert statuses.count(429) >= 30  # refused at once: at most 8 wait
    assert statuses.count(200) <= 10  # the "wrong password" form, one check at a time
