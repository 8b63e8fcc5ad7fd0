"""A lean HTTP/1.1 client for the S3 client: keep-alive connections to one endpoint.

The S3 client needs little of HTTP: a request with its whole body in memory,
the whole response back, connections kept alive between calls. aiohttp's
client does much more, and its generality cost about 270 us of CPU per 8 KiB
PUT to the gateway. This client writes the request itself and lets llhttp
(through httptools, the parser uvicorn uses) read the response: about 115 us
(README, "Benchmark"). What it leaves out, the S3 client never asks for:
redirects, proxies, cookies, decompression, 100-continue, streamed bodies.

One connection carries one request at a time. Idle connections wait in a
pool, the most recently used first, and are dropped after `idle_seconds` or
when the server said `Connection: close`. A request that finds its reused
connection closed before any byte of the answer arrived (the server dropped
it while idle) is sent once more on a new connection; every other failure is
the caller's to retry.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_mod
import time
from dataclasses import dataclass
from typing import cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy


class HttpError(ConnectionError):
    """The connection failed, closed early, or the answer was not HTTP/1.x."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; `exchange` sends one request and waits for its answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.last_used = time.monotonic()
        self._answer: asyncio.Future[Response] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._head_only = False
        self.received = False  # any byte of the current answer
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._body: list[bytes] = []
        self.keep_alive = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass, but has its methods

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._answer.done() or self._parser is None:
            self.closed = True  # bytes nobody asked for: this connection cannot be trusted again
            if self.transport is not None:
                self.transport.close()
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HttpError(f"malformed HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(HttpError(f"connection closed before the response ended{f': {exc}' if exc else ''}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.add(name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))

    def on_headers_complete(self) -> None:
        if self._head_only:  # a HEAD's answer has no body, whatever its Content-Length says
            self._complete()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._head_only:
            self._complete()

    def _complete(self) -> None:
        assert self._parser is not None and self._answer is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows on this parser
            self._headers, self._body = CIMultiDict(), []
            return
        self.keep_alive = self._parser.should_keep_alive()  # llhttp's reading of the version and Connection
        if not self._answer.done():
            self._answer.set_result(Response(status, CIMultiDictProxy(self._headers), b"".join(self._body)))
        self._parser = None

    def _fail(self, exc: Exception) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(exc)

    async def exchange(self, request: bytes, body: bytes, head_only: bool) -> Response:
        assert self.transport is not None
        self.received = False
        if self.closed:  # closed since it went idle: nothing was sent on it
            raise HttpError("connection closed")
        self._answer = asyncio.get_running_loop().create_future()
        self._parser = httptools.HttpResponseParser(self)
        self._head_only = head_only
        self._headers, self._body = CIMultiDict(), []
        if len(body) <= 65536:
            self.transport.write(request + body)
        else:  # no copy of a large body
            self.transport.write(request)
            self.transport.write(body)
        try:
            return await self._answer
        finally:
            self.last_used = time.monotonic()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Http1Pool:
    """Requests to one `host:port`, over at most `limit` connections at once."""

    def __init__(self, host: str, port: int, *, ssl: ssl_mod.SSLContext | None = None, limit: int = 64,
                 idle_seconds: float = 30.0) -> None:
        self.host, self.port, self.ssl = host, port, ssl
        self.idle_seconds = idle_seconds
        self._idle: list[_Connection] = []
        self._limit = limit
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def request(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Response:
        """`method target` with `headers` (Host among them) and `body`. The caller bounds the time
        (asyncio.timeout): a request cancelled mid-answer closes its connection."""
        lines = [f"{method} {target} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body or method in ("PUT", "POST"):
            lines.append(f"Content-Length: {len(body)}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        if head.count("\n") != len(lines) + 1 or head.count("\r") != len(lines) + 1:
            raise ValueError("a line break in the request target or a header")  # it would split the request
        request = head.encode("utf-8", "surrogateescape")
        self._bind_loop()
        assert self._slots is not None
        async with self._slots:
            while True:
                conn, reused = await self._connection()
                try:
                    answer = await conn.exchange(request, body, method == "HEAD")
                except HttpError:
                    conn.close()
                    if reused and not conn.received:
                        continue  # the server had closed it while it was idle: once more, on a new one
                    raise
                except BaseException:  # cancelled or timed out mid-answer: the connection is in an unknown state
                    conn.close()
                    raise
                if conn.keep_alive and not conn.closed:
                    self._idle.append(conn)
                else:
                    conn.close()
                return answer

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # connections belong to the loop that made them
            for conn in self._idle:
                conn.closed = True
            self._idle = []
            self._loop, self._slots = loop, asyncio.Semaphore(self._limit)

    async def _connection(self) -> tuple[_Connection, bool]:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.last_used < self.idle_seconds:
                return conn, True
            conn.close()
        loop = asyncio.get_running_loop()
        try:
            _, proto = await loop.create_connection(_Connection, self.host, self.port, ssl=self.ssl,
                                                    server_hostname=self.host if self.ssl else None)
        except OSError as exc:
            raise HttpError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        return proto, False

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle = []
