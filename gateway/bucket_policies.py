"""Bucket policies (issue 17): a bucket's resource policy in the AWS grammar, with Principals.

A policy is a bucket record (bucket_records.py, namespace "bucket-policy"), so a bucket
deleted and made again never inherits the old one's policy. Gateways keep what they read for
2 s, as they keep keys, so a change made through one gateway holds on every other within 2 s
and at once on the gateway that made it.
"""

from __future__ import annotations

import time

from .bucket_records import BucketRecords
from .engine.api import Engine
from .policy import Policy

NAMESPACE = "bucket-policy"
CACHE_SECONDS = 2.0
MAX_POLICY = 20 * 1024  # AWS: a bucket policy is at most 20 KB


class BucketPolicies:
    def __init__(self, engine: Engine) -> None:
        self.records = BucketRecords(engine, NAMESPACE)
        self._cache: dict[str, tuple[float, float, Policy | None]] = {}  # bucket -> (read at, created, policy)

    def cached(self, bucket: str, created: float) -> Policy | bool | None:
        """The policy as last read, without awaiting (every request asks); False when it must be read."""
        hit = self._cache.get(bucket)
        if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS and hit[1] == created:
            return hit[2]
        return False

    async def get(self, bucket: str, created: float) -> Policy | None:
        now = time.monotonic()
        hit = self._cache.get(bucket)
        if hit is not None and now - hit[0] < CACHE_SECONDS and hit[1] == created:
            return hit[2]
        text = await self.records.read(bucket, created)
        policy = Policy.parse(text, bucket=bucket) if text is not None else None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[bucket] = (now, created, policy)
        return policy

    async def put(self, bucket: str, created: float, text: str) -> None:
        """Sets the policy (already parsed and checked by the caller)."""
        await self.records.write(bucket, created, text)
        self._cache.pop(bucket, None)

    async def delete(self, bucket: str) -> None:
        await self.records.delete(bucket)
        self._cache.pop(bucket, None)
