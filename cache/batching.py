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
from typing import Any, Callable

Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]  # fn, args, flags
Outcome = tuple[bool, Any]  # (ok, result or exception)


def call(fn: Callable[..., Any], args: tuple[Any, ...]) -> Outcome:
    try:
        return True, fn(*args)
    except Exception as exc:  # one call's failure is that call's alone
        return False, exc


class BatchThread:
    def __init__(self, name: str, run_batch: Callable[[list[Call]], list[Outcome]], max_batch: int = 256) -> None:
        self._run_batch = run_batch
        self._max = max_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # type: ignore[type-arg]
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any, **flags: Any) -> asyncio.Future:  # type: ignore[type-arg]
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
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
            except Exception as exc:  # the batch as a whole failed: nothing in it happened
                outcomes = [(False, exc)] * len(batch)
            by_loop: dict[asyncio.AbstractEventLoop, list] = {}  # type: ignore[type-arg]
            for (loop, fut, _), outcome in zip(batch, outcomes):
                by_loop.setdefault(loop, []).append((fut, outcome))
            for loop, done in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_deliver, done)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    pass


def _deliver(done: list) -> None:  # type: ignore[type-arg]
    for fut, (ok, value) in done:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
