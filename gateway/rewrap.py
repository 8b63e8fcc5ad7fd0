"""Rewrapping data keys after a rotation: every SSE-S3 and SSE-KMS object whose data key is
wrapped by an older store key (or KMS key version) gets it wrapped by the newest, so the older
key can be retired. Bodies are not re-encrypted: each record is written again with the same
sealed bytes and a new wrapped key, only if the object is still the one read (If-Match), with
its ETag and Last-Modified unchanged.

The walk is paged (`rewrap_page`: at most `limit` objects per call, and a marker to go on
from), so one admin API request never runs long; `mailstore rewrap` loops over the pages.
"""

from __future__ import annotations

from dataclasses import dataclass

from .context import Gateway
from .engine.model import Conditions, NoSuchBucket, NoSuchKey, PreconditionFailed
from .handlers.objects import copy_body


@dataclass(frozen=True, slots=True)
class Page:
    checked: int
    rewrapped: int
    next_marker: str | None  # "bucket/key" to go on from; None: done


async def rewrap_page(gw: Gateway, marker: str | None, limit: int = 1000) -> Page:
    """Up to `limit` objects from `marker` on ("bucket/key", exclusive), in bucket and key order."""
    start_bucket, _, start_key = (marker or "").partition("/")
    checked = rewrapped = 0
    for bucket in sorted(b.name for b in await gw.engine.list_buckets()):
        if bucket < start_bucket:
            continue
        key_marker = start_key if bucket == start_bucket and start_key else None
        while checked < limit:
            try:
                page = await gw.engine.list_objects(bucket, "", "", key_marker, min(1000, limit - checked))
            except NoSuchBucket:
                break
            for entry in page.entries:
                checked += 1
                rewrapped += await _rewrap(gw, bucket, entry.key)
                key_marker = entry.key
            if not page.truncated:
                break
        if checked >= limit:
            return Page(checked, rewrapped, f"{bucket}/{key_marker}" if key_marker else None)
    return Page(checked, rewrapped, None)


async def _rewrap(gw: Gateway, bucket: str, key: str) -> int:
    try:
        found = await gw.engine.head(bucket, key)
    except (NoSuchKey, NoSuchBucket):
        return 0  # deleted meanwhile
    meta = await gw.encryption.rewrapped(found.meta)
    if meta is None:
        return 0
    data, blobs, _, _ = await copy_body(gw, found, 0, found.meta.body_size, bucket)  # as stored: sealed
    try:
        await gw.engine.put(bucket, key, meta, data, blobs, Conditions(if_match=found.meta.etag.strip('"')))
    except (PreconditionFailed, NoSuchKey):
        await gw.engine.discard(blobs)
        return 0  # written again meanwhile: the new one is sealed under the newest key already
    except BaseException:
        await gw.engine.discard(blobs)
        raise
    return 1
