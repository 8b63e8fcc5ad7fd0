"""Records that belong to a bucket (its policy, its tags): shared engine records named by the
bucket, each also recording which bucket it was put on (the bucket's creation time), so a
bucket deleted and made again never inherits the old one's."""

from __future__ import annotations

import time

from .engine.api import Engine


class BucketRecords:
    """One kind of bucket record, in the engine namespace `namespace`. With `cache_seconds`, a
    read is kept that long by this gateway (for records every request of a kind asks, such as
    default encryption on every PUT): a change holds on every other gateway within that time
    and at once on the one that made it."""

    def __init__(self, engine: Engine, namespace: str, cache_seconds: float = 0.0) -> None:
        self.engine, self.namespace = engine, namespace
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, float, str | None]] = {}  # bucket -> (read at, created, value)

    async def read(self, bucket: str, created: float) -> str | None:
        """The value put on this bucket (made at `created`), or None."""
        now = time.monotonic()
        hit = self._cache.get(bucket)
        if hit is not None and now - hit[0] < self.cache_seconds and hit[1] == created:
            return hit[2]
        fields = await self.engine.record(self.namespace, bucket)
        value = fields["value"] if fields is not None and fields.get("created") == repr(created) else None
        if self.cache_seconds:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[bucket] = (now, created, value)
        return value

    async def write(self, bucket: str, created: float, value: str) -> None:
        await self._swap(bucket, {"value": value, "created": repr(created)})
        self._cache.pop(bucket, None)

    async def delete(self, bucket: str) -> None:
        await self._swap(bucket, None)
        self._cache.pop(bucket, None)

    async def _swap(self, bucket: str, fields: dict[str, str] | None) -> None:
        while True:
            current = await self.engine.record(self.namespace, bucket)
            if current is None and fields is None:
                return
            if await self.engine.swap_record(self.namespace, bucket, current, fields):
                return
