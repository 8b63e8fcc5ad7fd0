"""Rewrapping data keys after a rotation: every SSE-S3 and SSE-KMS object version whose data key
is wrapped by an older store key (or KMS key version) gets it wrapped by the newest, so the
older key can be retired. Bodies are not re-encrypted or copied: each version's metadata is
restamped in place (versioning.on_restamp: the engine's atomic step), only if the version is
still as it was read, so its ETag, Last-Modified and version id stay.

The walk covers current objects and noncurrent versions (ListObjectVersions' order) and is
paged (`rewrap_page`: at most `limit` versions per call, and a marker to go on from), so one
admin API request never runs long; `mailstore rewrap` loops over the pages.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import versioning
from .context import Gateway
from .engine.model import SEP, NoSuchBucket, NoSuchKey, NoSuchVersion, ObjectMeta
from .s3.errors import S3Error


@dataclass(frozen=True, slots=True)
class Page:
    checked: int
    rewrapped: int
    next_marker: str | None  # "bucket/name" to go on from; None: done


async def rewrap_page(gw: Gateway, marker: str | None, limit: int = 1000) -> Page:
    """Up to `limit` versions from `marker` on ("bucket/name", exclusive), in bucket order and
    then as ListObjectVersions orders them."""
    start_bucket, _, start = (marker or "").partition("/")
    checked = rewrapped = 0
    for bucket in sorted(b.name for b in await gw.engine.list_buckets()):
        if bucket < start_bucket:
            continue
        after = start if bucket == start_bucket and start else None
        more = True
        while more and checked < limit:
            try:
                rows, more = await gw.engine.version_page(bucket, "", after, min(1000, limit - checked))
            except NoSuchBucket:
                break
            for name, meta, current in rows:
                checked += 1
                after = name
                rewrapped += await _rewrap(gw, bucket, name if current else name.rsplit(SEP, 1)[0], meta)
            if not rows:
                break
        if checked >= limit:
            return Page(checked, rewrapped, f"{bucket}/{after}" if after else None)
    return Page(checked, rewrapped, None)


async def _rewrap(gw: Gateway, bucket: str, key: str, meta: ObjectMeta) -> int:
    if meta.marker:
        return 0
    new = await gw.encryption.rewrapped(meta)
    if new is None:
        return 0
    done = False

    def update(now: ObjectMeta) -> ObjectMeta:
        nonlocal done
        done = now == meta  # changed meanwhile (written again, retagged): left as it is now
        return new if done else now

    try:
        await gw.engine.change_versions(bucket, key, versioning.on_restamp(versioning.version_of(meta), update, key))
    except (NoSuchKey, NoSuchVersion, NoSuchBucket, S3Error):
        return 0  # deleted meanwhile
    return int(done)
