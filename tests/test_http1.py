"""The S3 client's HTTP/1.1 client (cache/http1.py) against servers that misbehave on purpose.

Each test runs a raw asyncio server that answers with exactly the bytes the test
chooses, so keep-alive reuse, a connection the server closed while idle, a HEAD's
Content-Length, chunked bodies, truncated and malformed answers and timeouts are
all seen on the wire, not assumed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from cache.http1 import Http1Pool, HttpError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, list[bytes]], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


async def serve(handler: Handler, test: Callable[[Http1Pool, list[bytes], list[int]], Awaitable[None]]) -> None:
    seen: list[bytes] = []
    connections: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await handler(reader, writer, seen)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Http1Pool("127.0.0.1", port)
    try:
        await test(pool, seen, connections)
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


def answer(status: str, body: bytes = b"", extra: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


async def echo_forever(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]) -> None:
    while True:
        req = await read_request(reader)
        seen.append(req)
        body = req.split(b"\r\n\r\n", 1)[1]
        writer.write(answer("200 OK", body or b"hello", "ETag: \"e\"\r\nX-Amz-Meta-A: 1\r\nX-Amz-Meta-A: 2\r\n"))
        await writer.drain()


@pytest.fixture(params=["asyncio", "uvloop"], autouse=True)
def loop_kind(request: pytest.FixtureRequest) -> str:
    """Every test on both loops: the servers run on uvloop, whose transports are not asyncio's classes."""
    LOOP[0] = request.param
    return str(request.param)


LOOP = ["asyncio"]


def run(coro: Awaitable[None]) -> None:
    if LOOP[0] == "uvloop":
        uvloop.run(coro)  # type: ignore[arg-type]
    else:
        asyncio.run(coro)  # type: ignore[arg-type]


def test_keep_alive_reuses_one_connection_and_reads_headers() -> None:
    async def test(pool: Http1Pool, seen: list[bytes], conns: list[int]) -> None:
        for i in range(5):
            r = await pool.request("PUT", f"/b/k{i}", {"Host": "h"}, b"x" * i)
            assert r.status == 200 and r.body == (b"x" * i or b"hello")
            assert r.headers["etag"] == '"e"' and r.headers.getall("x-amz-meta-a") == ["1", "2"]
        assert len(conns) == 1
        assert seen[0].startswith(b"PUT /b/k0 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
    run(serve(echo_forever, test))


def test_a_large_body_arrives_whole() -> None:
    body = bytes(range(256)) * 8192  # 2 MiB
    async def test(pool: Http1Pool, seen: list[bytes], conns: list[int]) -> None:
        r = await pool.request("PUT", "/b/big", {"Host": "h"}, body)
        assert r.body == body
    run(serve(echo_forever, test))


def test_a_connection_the_server_closed_while_idle_is_replaced_silently() -> None:
    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]) -> None:
        seen.append(await read_request(reader))
        writer.write(answer("200 OK", b"1"))
        await writer.drain()
        # and close, without Connection: close: the client learns it on its next request

    async def test(pool: Http1Pool, seen: list[bytes], conns: list[int]) -> None:
        assert (await pool.request("GET", "/a", {"Host": "h"}, b"")).body == b"1"
        await asyncio.sleep(0.05)
        assert (await pool.request("GET", "/b", {"Host": "h"}, b"")).body == b"1"
        assert len(conns) == 2 and len(seen) == 2
    run(serve(one_then_close, test))


def test_connection_close_is_honoured() -> None:
    async def test(pool: Http1Pool, seen: list[bytes], conns: list[int]) -> None:
        for _ in range(3):
            assert (await pool.request("GET", "/a", {"Host": "h"}, b"")).status == 200
        assert len(conns) == 3

    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]) -> None:
        seen.append(await read_request(reader))
        writer.write(answer("200 OK", b"x", "Connection: close\r\n"))
        await writer.drain()
        await asyncio.sleep(1)  # the client must not wait for the close to be done
    run(serve(closing, test))


def test_head_has_no_body_whatever_its_content_length() -> None:
    async def heads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]) -> None:
        while True:
            req = await read_request(reader)
            seen.append(req)
            if req.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\nETag: \"h\"\r\n\r\n")
            else:
                writer.write(answer("200 OK", b"body"))
            await writer.drain()

    async def test(pool: Http1Pool, seen: list[bytes], conns: list[int]) -> None:
        r = await asyncio.wait_for(pool.request("HEAD", "/a", {"Host": "h"}, b""), 5)
        assert r.status == 200 and r.body == b"" and r.headers["Content-Length"] == "4096"
        r = await asyncio.wait_for(pool.request("GET", "/a", {"Host": "h"}, b""), 5)
        assert r.body == b"body"  # the same connection, not confused by the HEAD
        assert len(conns) == 1
    run(serve(heads, test))


def test_chunked_answer() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async def test(pool: Http1Pool, seen: list[bytes], conns: list[int]) -> None:
        assert (await pool.request("GET", "/a", {"Host": "h"}, b"")).body == b"hello world"
    run(serve(chunked, test))


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_an_interim_answer_is_skipped(method: str) -> None:
    async def interim(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(answer("200 OK", b"" if method == "HEAD" else b"real", "X-Final: 1\r\n"))
            await writer.drain()

    async def test(pool: Http1Pool, seen: list[bytes], conns: list[int]) -> None:
        for _ in range(2):
            r = await asyncio.wait_for(pool.request(method, "/a", {"Host": "h"}, b""), 5)
            assert r.status == 200 and r.body == (b"" if method == "HEAD" else b"real")
            assert "X-Final" in r.headers and "X-Interim" not in r.headers
        assert len(conns) == 1
    run(serve(interim, test))


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",  # closed mid-body
    b"HTTP/1.1 200 OK\r\nContent-Le",  # closed mid-headers
    b"SMTP ready\r\n\r\n",  # not HTTP
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",  # smuggling shape
])
def test_a_broken_answer_is_an_error_never_a_result(reply: bytes) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]) -> None:
        seen.append(await read_request(reader))
        writer.write(reply)
        await writer.drain()

    async def test(pool: Http1Pool, seen: list[bytes], conns: list[int]) -> None:
        with pytest.raises(HttpError):
            await asyncio.wait_for(pool.request("GET", "/a", {"Host": "h"}, b""), 5)
        assert len(seen) == 1  # sent once: a connection that answered something is not retried here
    run(serve(broken, test))


def test_a_timeout_closes_the_connection() -> None:
    calls: list[int] = []

    async def slow_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: list[bytes]) -> None:
        calls.append(1)
        first = len(calls) == 1
        while True:
            seen.append(await read_request(reader))
            if first:
                await asyncio.sleep(0.3)  # answered after the client gave up: it must never be read
            writer.write(answer("200 OK", b"late" if first else b"fresh"))
            await writer.drain()

    async def test(pool: Http1Pool, seen: list[bytes], conns: list[int]) -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await pool.request("GET", "/a", {"Host": "h"}, b"")
        # at once, before the late answer comes: on the old connection it would be taken for this one's
        assert (await pool.request("GET", "/b", {"Host": "h"}, b"")).body == b"fresh"
        assert len(conns) == 2
    run(serve(slow_first, test))


def test_refused_connection_is_an_http_error() -> None:
    async def test() -> None:
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        with pytest.raises(HttpError, match="cannot connect"):
            await Http1Pool("127.0.0.1", port).request("GET", "/", {"Host": "h"}, b"")
    run(test())


@pytest.mark.parametrize("target, headers", [
    ("/a\r\nX-Evil: 1", {"Host": "h"}),
    ("/a", {"Host": "h", "X-Amz-Meta-A": "v\r\nX-Evil: 1"}),
    ("/a", {"Host": "h", "X-Amz-Meta-A": "v\nX"}),
    ("/a", {"Host": "h\r"}),
])
def test_line_breaks_cannot_split_a_request(target: str, headers: dict[str, str]) -> None:
    async def test(pool: Http1Pool, seen: list[bytes], conns: list[int]) -> None:
        with pytest.raises(ValueError):
            await pool.request("GET", target, headers, b"")
        assert seen == []
    run(serve(echo_forever, test))
