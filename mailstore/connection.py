"""One client connection of a line-protocol mail service (POP3, ManageSieve), from accept to
close: the open-sessions gauge, the session's run, an internal error answered (and logged
with its traceback) instead of a silent hang-up, the socket closed without waiting long on a
TLS peer that vanished, and one "disconnected" line with how it ended."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any, Protocol

from runtime import logs


class Session(Protocol):
    session_id: str
    peer: str
    user: str | None
    commands: int
    done: bool  # it ended by the client's QUIT or LOGOUT

    async def run(self) -> None: ...

    async def close(self) -> None: ...


async def serve(session: Session, writer: asyncio.StreamWriter, log: logging.Logger, metrics: Any,
                internal_error: bytes, quit_word: str) -> None:
    started = time.monotonic()
    if metrics is not None:
        metrics.sessions.inc()
    ended = "disconnect"
    try:
        await session.run()
        ended = quit_word if session.done else ended
    except (ConnectionError, ssl.SSLError):
        pass
    except Exception:
        ended = "error"
        log.exception("session %s from %s failed", session.session_id, session.peer)
        try:
            writer.write(internal_error)
        except (ConnectionError, RuntimeError):
            pass
    finally:
        if metrics is not None:
            metrics.sessions.dec()
        await session.close()
        try:  # (a TLS peer that vanished without close_notify: its shutdown is not waited for long)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 5)
        except (ConnectionError, ssl.SSLError, RuntimeError, TimeoutError):
            pass
        logs.event(log, logging.INFO, "disconnected", session=session.session_id, user=session.user or "-",
                   remote=session.peer or "-", reason=ended, commands=session.commands,
                   seconds=round(time.monotonic() - started, 1))
