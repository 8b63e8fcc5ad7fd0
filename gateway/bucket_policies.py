"""Bucket policies (issue 17): a bucket's resource policy in the AWS grammar, with Principals.

A policy is a shared engine record (namespace "bucket-policy", named by the bucket) that
also records which bucket it was put on (the bucket's creation time): a bucket deleted and
made again never inherits the old one's policy. Gateways keep what they read for 2 s, as
they keep keys, so a change made through one gateway holds on every other within 2 s and
at once on the gateway that made it.
"""

from __future__ import annotations

import time

from .engine.api import Engine
from .policy import Policy

NAMESPACE = "bucket-policy"
CACHE_SECONDS = 2.0
MAX_POLICY = 20 * 1024  # AWS: a bucket policy is at most 20 KB


class BucketPolicies:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._cache: dict[str, tuple[float, float, Policy | None]] = {}  # bucket -> (read at, created, policy)

    async def get(self, bucket: str, created: float) -> Policy | None:
        now = time.monotonic()
        hit = self._cache.get(bucket)
        if hit is not None and now - hit[0] < CACHE_SECONDS and hit[1] == created:
            return hit[2]
        fields = await self.engine.record(NAMESPACE, bucket)
        policy = None
        if fields is not None and fields.get("created") == repr(created):
            policy = Policy.parse(fields["policy"], bucket=bucket)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[bucket] = (now, created, policy)
        return policy

    async def put(self, bucket: str, created: float, text: str) -> None:
        """Sets the policy (already parsed and checked by the caller)."""
        await self._swap(bucket, {"policy": text, "created": repr(created)})

    async def delete(self, bucket: str) -> None:
        await self._swap(bucket, None)

    async def _swap(self, bucket: str, fields: dict[str, str] | None) -> None:
        while True:
            current = await self.engine.record(NAMESPACE, bucket)
            if current is None and fields is None:
                break
            if await self.engine.swap_record(NAMESPACE, bucket, current, fields):
                break
        self._cache.pop(bucket, None)
