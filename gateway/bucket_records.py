"""Records that belong to a bucket (its policy, its tags): shared engine records named by the
bucket, each also recording which bucket it was put on (the bucket's creation time), so a
bucket deleted and made again never inherits the old one's."""

from __future__ import annotations

from .engine.api import Engine


class BucketRecords:
    """One kind of bucket record, in the engine namespace `namespace`."""

    def __init__(self, engine: Engine, namespace: str) -> None:
        self.engine, self.namespace = engine, namespace

    async def read(self, bucket: str, created: float) -> str | None:
        """The value put on this bucket (made at `created`), or None."""
        fields = await self.engine.record(self.namespace, bucket)
        if fields is None or fields.get("created") != repr(created):
            return None
        return fields["value"]

    async def write(self, bucket: str, created: float, value: str) -> None:
        await self._swap(bucket, {"value": value, "created": repr(created)})

    async def delete(self, bucket: str) -> None:
        await self._swap(bucket, None)

    async def _swap(self, bucket: str, fields: dict[str, str] | None) -> None:
        while True:
            current = await self.engine.record(self.namespace, bucket)
            if current is None and fields is None:
                return
            if await self.engine.swap_record(self.namespace, bucket, current, fields):
                return
