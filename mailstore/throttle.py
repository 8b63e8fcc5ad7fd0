"""Login throttling that concurrency cannot bypass: per client address and per user name.

The attempts of one key (an address, a user) run one at a time, and each
waits 0, 1, 2, 4, ... up to `cap` seconds after that key's failures before
its password is even checked.  A sleep inside each request (the earlier
rule) let forty concurrent guesses through in one second; here the fortieth
waits behind the other thirty-nine.  At most `max_waiting` attempts queue per
key; more are refused at once (`Busy`), so a flood costs no memory, and a
success clears the key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


class Busy(Exception):
    """Too many attempts waiting for one key: refused without looking at the password."""


@dataclass
class _Key:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    failures: int = 0
    last: float = 0.0
    waiting: int = 0


class Attempt:
    def __init__(self) -> None:
        self.ok: bool | None = None

    def failed(self) -> None:
        self.ok = False

    def succeeded(self) -> None:
        self.ok = True


class LoginLimiter:
    def __init__(self, cap: float = 16.0, forget_after: float = 900.0, max_waiting: int = 8,
                 max_keys: int = 100_000, unit: float = 1.0) -> None:
        self.cap, self.forget_after, self.max_waiting, self.max_keys = cap, forget_after, max_waiting, max_keys
        self.unit = unit  # seconds of the first pause (tests shrink it)
        self._keys: dict[str, _Key] = {}

    def delay(self, key: str) -> float:
        k = self._keys.get(key)
        if k is None or not k.failures or time.monotonic() - k.last > self.forget_after:
            return 0.0
        return min(self.cap, self.unit * 2.0 ** (k.failures - 1))

    @asynccontextmanager
    async def attempt(self, *keys: str) -> AsyncIterator[Attempt]:
        """`async with limiter.attempt("addr:1.2.3.4", "user:bob") as a:` check, then a.failed()/a.succeeded()."""
        names = sorted(set(keys))  # one order for every caller: no deadlock between two keys
        if len(self._keys) > self.max_keys:
            self._forget_idle()
        held = [self._keys.setdefault(n, _Key()) for n in names]
        if any(k.waiting >= self.max_waiting for k in held):
            raise Busy()
        for k in held:
            k.waiting += 1
        locked: list[_Key] = []
        try:
            for k in held:
                await k.lock.acquire()
                locked.append(k)
            pause = max(self.delay(n) for n in names)
            if pause:
                await asyncio.sleep(pause)
            a = Attempt()
            yield a
            now = time.monotonic()
            for k in held:
                if a.ok:
                    k.failures = 0
                elif a.ok is False:
                    k.failures = k.failures + 1 if now - k.last <= self.forget_after else 1
                    k.last = now
        finally:
            for k in locked:
                k.lock.release()
            for k in held:
                k.waiting -= 1

    def _forget_idle(self) -> None:
        now = time.monotonic()
        self._keys = {n: k for n, k in self._keys.items()
                      if k.waiting or (k.failures and now - k.last <= self.forget_after)}
