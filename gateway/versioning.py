"""Bucket versioning (AWS S3 User Guide, "Using versioning in S3 buckets"): what each write
does to a key's versions, decided here once for both engines.

A bucket is unversioned until versioning is first enabled; then Enabled or Suspended, never
unversioned again. The engine keeps a key's *current* object where it always was (GET, HEAD
and ListObjects read it alone, as in an unversioned bucket) and its *noncurrent* versions
beside it, newest first (model.order_of). A delete marker is never current: when it is the
newest version, the key has no current object.

- Enabled: every write makes a new version with a new id, and the one it replaces becomes
  noncurrent; a DELETE adds a delete marker.
- Suspended: a write makes the "null" version, replacing the null version there was (current
  or not); a DELETE adds a null delete marker. Versions with ids stay.
- DELETE with a versionId removes that version for good; when it was the newest, the next
  newest becomes current (unless it is a delete marker).

The state is a bucket record read through a 2-second cache: a change holds at once on the
gateway that made it and within 2 s on the others (AWS asks for 15 minutes).
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from . import objectlock
from .bucket_records import BucketRecords
from .engine.api import Decide, Engine, Found
from .engine.model import INVERTED, Change, Conditions, NoSuchKey, NoSuchVersion, ObjectMeta, PreconditionFailed
from .s3.errors import S3Error


class Gateway(Protocol):
    """What of the gateway (context.Gateway) versioning reads."""

    @property
    def engine(self) -> Engine: ...
    @property
    def bucket_versioning(self) -> BucketRecords: ...
    @property
    def bucket_object_lock(self) -> BucketRecords: ...


NAMESPACE = "bucket-versioning"
ENABLED, SUSPENDED = "Enabled", "Suspended"
_ID = re.compile(r"[0-9a-f]{32}")


def new_id() -> str:
    """A version id: the inverted microsecond time (newest sorts first) and 76 random bits."""
    return f"{INVERTED - int(time.time() * 1_000_000):013x}{secrets.token_hex(10)[:19]}"


def version_of(meta: ObjectMeta) -> str:
    """The version id S3 shows: "null" for the null version."""
    return meta.version or "null"


def valid_id(text: str) -> bool:
    return text == "null" or _ID.fullmatch(text) is not None


def order_named(version_id: str, versions: list[tuple[str, ObjectMeta]]) -> str | None:
    """The order of the noncurrent version with this id, if there is one."""
    for order, meta in versions:
        if version_of(meta) == version_id:
            return order
    return None


def marker(state: str) -> ObjectMeta:
    """A new delete marker: with an id (Enabled) or the null one (Suspended)."""
    return ObjectMeta(0, "", time.time(), version=new_id() if state == ENABLED else "", marker=True)


def _nulls(versions: list[tuple[str, ObjectMeta]]) -> tuple[str, ...]:
    """The null versions among noncurrent ones (to be replaced): none under Object Lock."""
    nulls = tuple(order for order, meta in versions if not meta.version)
    for order, meta in versions:
        if order in nulls:
            objectlock.check_removal(meta, False)
    return nulls


def on_write(state: str, new: ObjectMeta, cond: Conditions | None, key: str) -> Decide:
    """A PUT, copy or completed upload making `new` current."""
    def decide(current: ObjectMeta | None, versions: list[tuple[str, ObjectMeta]]) -> Change:
        if cond is not None:
            cond.check(current, key)
        if new.version:  # Enabled: whatever is current stays, as noncurrent
            return Change(archive=current is not None)
        # Suspended: the new null version replaces the null version, current or noncurrent
        if current is not None and not current.version:
            objectlock.check_removal(current, False)
        return Change(archive=current is not None and bool(current.version), remove=_nulls(versions))

    return decide


def on_delete(state: str, dm: ObjectMeta, cond: Conditions | None, key: str) -> Decide:
    """A DELETE without a versionId: a delete marker becomes the newest version."""
    def decide(current: ObjectMeta | None, versions: list[tuple[str, ObjectMeta]]) -> Change:
        if cond is not None:
            cond.check(current, key)
        if dm.version:
            return Change(archive=current is not None, delete_current=True, markers=(dm,))
        if current is not None and not current.version:
            objectlock.check_removal(current, False)
        return Change(archive=current is not None and bool(current.version), delete_current=True,
                      markers=(dm,), remove=_nulls(versions))

    return decide


class Outcome:
    """What a DELETE with a versionId found: whether the version was there and was a marker."""

    found = False
    was_marker = False


def on_delete_version(version_id: str, outcome: Outcome, cond: Conditions | None, key: str,
                      bypass: bool = False) -> Decide:
    """DELETE ?versionId: that version removed for good (nothing, when there is none), unless
    Object Lock keeps it (ObjectLocked; `bypass`: a GOVERNANCE retention gives way)."""
    def decide(current: ObjectMeta | None, versions: list[tuple[str, ObjectMeta]]) -> Change:
        outcome.found = outcome.was_marker = False
        if current is not None and version_of(current) == version_id:
            if cond is not None:
                cond.check(current, key)
            objectlock.check_removal(current, bypass)
            outcome.found = True
            newest = versions[0] if versions else None
            return Change(delete_current=True,
                          promote=newest[0] if newest is not None and not newest[1].marker else None)
        order = order_named(version_id, versions)
        if order is None:
            return Change()
        meta = dict(versions)[order]
        if cond is not None and cond.needs_current():
            if meta.marker:
                raise PreconditionFailed(key)
            cond.check(meta, key)
        objectlock.check_removal(meta, bypass)
        outcome.found, outcome.was_marker = True, meta.marker
        promote = None
        if current is None and versions[0][0] == order and len(versions) > 1 and not versions[1][1].marker:
            promote = versions[1][0]  # the newest went: the next newest is current now
        return Change(remove=(order,), promote=promote)

    return decide


def on_restamp(version_id: str | None, update: Callable[[ObjectMeta], ObjectMeta], key: str) -> Decide:
    """New metadata (`update` of the old, which may refuse) for the current object or a version,
    its body as it is: Object Lock's retention and legal hold."""
    def decide(current: ObjectMeta | None, versions: list[tuple[str, ObjectMeta]]) -> Change:
        if current is not None and (version_id is None or version_of(current) == version_id):
            return Change(restamp=(("", update(current)),))
        if version_id is None:
            raise NoSuchKey(key)
        order = order_named(version_id, versions)
        if order is None:
            raise NoSuchVersion(version_id)
        meta = dict(versions)[order]
        refuse_marker(meta)
        return Change(restamp=((order, update(meta)),))

    return decide


# ------------------------------------------------------------------ what handlers ask

async def state(gw: Gateway, bucket: str) -> str | None:
    """Enabled, Suspended, or None (never enabled)."""
    b = await gw.engine.bucket_info(bucket, fresh=False)
    return await gw.bucket_versioning.read(bucket, b.created)


async def lock_config(gw: Gateway, bucket: str) -> objectlock.LockConfig | None:
    """The bucket's Object Lock configuration, or None (no Object Lock)."""
    b = await gw.engine.bucket_info(bucket, fresh=False)
    text = await gw.bucket_object_lock.read(bucket, b.created)
    return objectlock.LockConfig.from_text(text) if text is not None else None


async def for_write(gw: Gateway, bucket: str, key: str, meta: ObjectMeta, cond: Conditions | None,
                    headers: Mapping[str, str]) -> tuple[ObjectMeta, Decide | None, Conditions | None]:
    """A new object's metadata with its version id and Object Lock (the request's
    x-amz-object-lock-* headers, else the bucket's default retention), and how the engine writes
    it: (meta, decide, cond) for `put`; in an unversioned bucket (meta, None, cond) as before."""
    now = await state(gw, bucket)
    asked = objectlock.requested(headers, time.time())
    if now is not None or asked != (None, None):
        meta = objectlock.stamped(meta, await lock_config(gw, bucket), asked, time.time())
    if now is None:
        return meta, None, cond
    meta = dataclasses.replace(meta, version=new_id() if now == ENABLED else "")
    return meta, on_write(now, meta, cond, key), None


def check_id(version_id: str) -> None:
    if not valid_id(version_id):
        raise S3Error("InvalidArgument", "Invalid version id specified",
                      extra={"ArgumentName": "versionId", "ArgumentValue": version_id[:64]})


async def find(gw: Gateway, bucket: str, key: str, version_id: str | None) -> Found:
    """The object a request names: the current one, or the version `version_id` (NoSuchVersion;
    a delete marker is found too: the caller answers for it)."""
    if version_id is None:
        try:
            return await gw.engine.head(bucket, key)
        except NoSuchKey:
            raise await _missing(gw, bucket, key) from None
    check_id(version_id)
    try:
        current = await gw.engine.head(bucket, key)
        if version_of(current.meta) == version_id:
            return current
    except NoSuchKey:
        pass
    order: str | None = version_id
    if version_id == "null":
        order = order_named("null", await gw.engine.versions(bucket, key))
        if order is None:
            raise NoSuchVersion(version_id)
    assert order is not None
    return await gw.engine.head_version(bucket, key, order)


async def _missing(gw: Gateway, bucket: str, key: str) -> S3Error:
    """NoSuchKey; where a delete marker is the newest version, AWS says so in its headers."""
    headers: dict[str, str] = {}
    if await state(gw, bucket) is not None:
        versions = await gw.engine.versions(bucket, key)
        if versions and versions[0][1].marker:
            headers = {"x-amz-delete-marker": "true", "x-amz-version-id": version_of(versions[0][1])}
    return S3Error("NoSuchKey", headers=headers)


def refuse_marker(meta: ObjectMeta) -> None:
    """GET or HEAD of a delete marker by its versionId: 405, as AWS answers."""
    if meta.marker:
        raise S3Error("MethodNotAllowed", headers={"x-amz-delete-marker": "true", "Allow": "DELETE",
                                                    "x-amz-version-id": version_of(meta)})


def headers(meta: ObjectMeta, asked: bool = False) -> dict[str, str]:
    """x-amz-version-id of an object with a version id (or asked for by one)."""
    return {"x-amz-version-id": version_of(meta)} if meta.version or asked else {}
