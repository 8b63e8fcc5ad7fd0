"""What aiohttp's server logs about peers: one line for their faults, a traceback only for ours.

aiohttp logs every malformed request and every client that hangs up mid-answer
with `logger.exception`, a full traceback at ERROR: anybody who can reach the
port can fill the log, and real faults drown.  This logger hands aiohttp
the same interface and turns those into one INFO line naming the peer's
mistake; anything else is still logged with its traceback.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger("gateway.peer")

PEER_FAULTS = (HttpProcessingError, ConnectionError, asyncio.CancelledError, asyncio.IncompleteReadError)


def peer_fault(exc: BaseException | None) -> bool:
    return isinstance(exc, PEER_FAULTS)


def summary(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()
    text = " ".join(line.strip() for line in first[:2])[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ServerLog:
    """The slice of logging.Logger that aiohttp's RequestHandler calls."""

    def __init__(self, inner: logging.Logger | None = None) -> None:
        self.inner = inner or logging.getLogger("aiohttp.server")

    def exception(self, msg: str, *args: Any, exc_info: Any = True, **kw: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if peer_fault(exc):
            assert exc is not None
            log.info("%s: %s", msg % args if args else msg, summary(exc))
        else:
            self.inner.error(msg, *args, exc_info=exc_info, **kw)

    def debug(self, *args: Any, **kw: Any) -> None:
        self.inner.debug(*args, **kw)

    def info(self, *args: Any, **kw: Any) -> None:
        self.inner.info(*args, **kw)

    def warning(self, *args: Any, **kw: Any) -> None:
        self.inner.warning(*args, **kw)

    def error(self, *args: Any, **kw: Any) -> None:
        self.inner.error(*args, **kw)
