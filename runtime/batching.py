"""One thread that runs queued calls in batches and wakes the callers once per batch.

The pattern behind the fscache worker and the mail shim's metadata writer
(the gateway's group committer is the same idea, specialised): blocking work
leaves the event loop, a batch pays one transaction (one fsync, one lock)
for every call in it, and callers on each event loop are woken with a single
call_soon_threadsafe.  What a batch means (one transaction, savepoints, ...)
is the `run_batch` function's business.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

# The queue carries calls of every type at once: what comes back is whatever
# each fn returns, handed to that call's own typed future (see submit).
Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]  # fn, args, flags
Outcome = tuple[bool, Any]  # (ok, result or exception)
_Item = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Call]
T = TypeVar("T")


def call(fn: Callable[..., Any], args: tuple[Any, ...]) -> Outcome:
    try:
        return True, fn(*args)
    except Exception as exc:  # noqa: BLE001 - one call's failure is that call's alone: handed to its caller
        return False, exc


class BatchThread:
    def __init__(self, name: str, run_batch: Callable[[list[Call]], list[Outcome]], max_batch: int = 256) -> None:
        self._run_batch = run_batch
        self._max = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], *args: Any, **flags: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((loop, fut, (fn, args, flags)))
        return fut

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._max:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            try:
                outcomes = self._run_batch([item[2] for item in batch])
            except Exception as exc:  # noqa: BLE001 - the whole batch failed: each caller gets why
                outcomes = [(False, exc)] * len(batch)
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Outcome]]] = {}
            for (loop, fut, _), outcome in zip(batch, outcomes, strict=True):
                by_loop.setdefault(loop, []).append((fut, outcome))
            for loop, done in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_deliver, done)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    pass


def _deliver(done: list[tuple[asyncio.Future[Any], Outcome]]) -> None:
    for fut, (ok, value) in done:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
