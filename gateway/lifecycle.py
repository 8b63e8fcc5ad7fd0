"""Bucket lifecycle (PutBucketLifecycleConfiguration): rules that expire objects and abort
incomplete multipart uploads, carried out by a background worker in every gateway, one at a
time across all gateways of a store.

A configuration is a bucket record (namespace "bucket-lifecycle"), its XML kept as sent after it
was parsed and checked (at most 1,000 rules, unique IDs, every rule with an action). What a rule
does, as AWS documents it (User Guide, "Lifecycle configuration elements"):

- Filter: Prefix, one Tag, ObjectSizeGreaterThan / ObjectSizeLessThan, or an And of them (the
  rule-level Prefix of old configurations too); Status Enabled or Disabled.
- Expiration: Days (the object's creation time plus N days, rounded up to the next midnight UTC)
  or Date (midnight UTC); the object is deleted, only if it is still the one the run looked at
  (If-Match), so a PUT during the run is never lost.
- AbortIncompleteMultipartUpload: DaysAfterInitiation, counted the same way.
- In a versioned bucket (versioning.py) an expiration does what a DELETE does there: a delete
  marker becomes the newest version, and the object stays as a noncurrent version.
- NoncurrentVersionExpiration: NoncurrentDays after a version became noncurrent (when the
  version after it was made), and beyond the NewerNoncurrentVersions newest noncurrent ones if
  given, the version is deleted for good.
- Expiration ExpiredObjectDeleteMarker: a delete marker that is the only version left of its
  key is removed.

The worker: every `interval` seconds a gateway tries to take the store's lifecycle lease (a shared
engine record, changed by compare-and-swap, held for `LEASE` seconds and renewed per bucket); the
one that holds it walks the buckets with a configuration. `run` does one pass at a given time,
for the admin API (a test clock, or an operator's "now").
"""

from __future__ import annotations

import asyncio
import calendar
import email.utils
import functools
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from . import versioning
from .bucket_records import BucketRecords
from .engine.api import Engine
from .engine.model import (
    SEP,
    Conditions,
    NoSuchBucket,
    NoSuchKey,
    NoSuchUpload,
    ObjectLocked,
    ObjectMeta,
    PreconditionFailed,
)
from .s3 import numbers
from .s3.errors import S3Error
from .s3.xml import parse_xml

log = logging.getLogger("gateway.lifecycle")
LEASE_NAMESPACE = "lifecycle"
LEASE = 300.0
MAX_RULES = 1000
DAY = 86400


@dataclass(frozen=True, slots=True)
class Rule:
    rule_id: str
    enabled: bool
    prefix: str = ""
    tags: tuple[tuple[str, str], ...] = ()
    size_greater: int | None = None
    size_less: int | None = None
    expire_days: int | None = None
    expire_date: float | None = None
    abort_days: int | None = None
    noncurrent_days: int | None = None
    newer_noncurrent: int | None = None  # keep this many noncurrent versions however old
    expired_markers: bool = False

    def selects(self, key: str, size: int, tags: tuple[tuple[str, str], ...] | None) -> bool:
        """Whether the filter takes this object (`tags` None: not read yet, taken as matching)."""
        return (key.startswith(self.prefix) and (tags is None or all(t in tags for t in self.tags))
                and (self.size_greater is None or size > self.size_greater)
                and (self.size_less is None or size < self.size_less))

    def expired(self, created: float, now: float) -> bool:
        return ((self.expire_days is not None and due(created, self.expire_days) <= now)
                or (self.expire_date is not None and self.expire_date <= now))


def _next_midnight(t: float) -> float:
    """AWS rounds a lifecycle time up to the next midnight UTC."""
    day = int(t // DAY) * DAY
    return float(day + DAY if t > day else day)


def due(created: float, days: int) -> float:
    return _next_midnight(created + days * DAY)


def _positive(text: str | None, what: str) -> int:
    value = numbers.decimal((text or "").strip())
    if value is None or value < 1:
        raise S3Error("InvalidArgument", f"'{what}' must be a positive integer")
    return value


def _date(text: str) -> float:
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise S3Error("InvalidArgument", "'Date' must be an ISO 8601 date") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if (when.hour, when.minute, when.second, when.microsecond) != (0, 0, 0, 0):
        raise S3Error("InvalidArgument", "'Date' must be at midnight GMT")
    return float(calendar.timegm(when.utctimetuple()))


def parse(body: bytes) -> list[Rule]:
    root = parse_xml(body)
    if root.tag != "LifecycleConfiguration":
        raise S3Error("MalformedXML", "The document is not a LifecycleConfiguration")
    rules = root.findall("Rule")
    if not rules or len(rules) > MAX_RULES:
        raise S3Error("MalformedXML", f"A LifecycleConfiguration holds 1 to {MAX_RULES} rules")
    out, seen = [], set()
    for n, r in enumerate(rules, 1):
        rule_id = (r.findtext("ID") or "").strip() or f"rule-{n}"
        if len(rule_id) > 255:
            raise S3Error("InvalidArgument", "ID length should not exceed allowed limit of 255")
        if rule_id in seen:
            raise S3Error("InvalidArgument", "Rule ID must be unique. Found same ID for more than one rule")
        seen.add(rule_id)
        status = (r.findtext("Status") or "").strip()
        if status not in ("Enabled", "Disabled"):
            raise S3Error("MalformedXML", f"Rule {rule_id}: Status is Enabled or Disabled")
        prefix, tags, greater, less = _filter(r, rule_id)
        expire_days = expire_date = abort_days = noncurrent_days = newer = None
        expired_markers = False
        exp = r.find("Expiration")
        if exp is not None:
            if exp.find("Days") is not None and exp.find("Date") is not None:
                raise S3Error("MalformedXML", f"Rule {rule_id}: Expiration has Days or Date, not both")
            if exp.find("Days") is not None:
                expire_days = _positive(exp.findtext("Days"), "Days' for Expiration action")
            elif exp.find("Date") is not None:
                expire_date = _date(exp.findtext("Date") or "")
            elif exp.find("ExpiredObjectDeleteMarker") is None:
                raise S3Error("MalformedXML", f"Rule {rule_id}: Expiration needs Days, Date or "
                              "ExpiredObjectDeleteMarker")
            if exp.find("ExpiredObjectDeleteMarker") is not None:
                if tags:
                    raise S3Error("InvalidRequest", "ExpiredObjectDeleteMarker cannot be specified with tags")
                if expire_days is not None or expire_date is not None:
                    raise S3Error("MalformedXML", f"Rule {rule_id}: ExpiredObjectDeleteMarker is given without "
                                  "Days or Date")
                value = (exp.findtext("ExpiredObjectDeleteMarker") or "").strip().lower()
                if value not in ("true", "false"):
                    raise S3Error("MalformedXML", "ExpiredObjectDeleteMarker is true or false")
                expired_markers = value == "true"
        abort = r.find("AbortIncompleteMultipartUpload")
        if abort is not None:
            if tags or greater is not None or less is not None:
                raise S3Error("InvalidRequest", "AbortIncompleteMultipartUpload cannot be specified with Tags "
                              "or object sizes")
            abort_days = _positive(abort.findtext("DaysAfterInitiation"), "DaysAfterInitiation")
        noncurrent = r.find("NoncurrentVersionExpiration")
        if noncurrent is not None:
            noncurrent_days = _positive(noncurrent.findtext("NoncurrentDays"), "NoncurrentDays")
            if noncurrent.find("NewerNoncurrentVersions") is not None:
                newer = _positive(noncurrent.findtext("NewerNoncurrentVersions"), "NewerNoncurrentVersions")
        if exp is None and abort is None and noncurrent is None:
            if r.find("Transition") is not None or r.find("NoncurrentVersionTransition") is not None:
                raise S3Error("NotImplemented", "Storage class transitions are not supported: there is one "
                              "storage class")
            raise S3Error("MalformedXML", f"Rule {rule_id} has no action")
        out.append(Rule(rule_id, status == "Enabled", prefix, tags, greater, less, expire_days, expire_date,
                        abort_days, noncurrent_days, newer, expired_markers))
    return out


def _filter(r: object, rule_id: str) -> tuple[str, tuple[tuple[str, str], ...], int | None, int | None]:
    import xml.etree.ElementTree as ET
    assert isinstance(r, ET.Element)
    f = r.find("Filter")
    if f is None:
        return (r.findtext("Prefix") or ""), (), None, None
    if r.find("Prefix") is not None:
        raise S3Error("MalformedXML", f"Rule {rule_id}: Prefix is given in the Filter or the Rule, not both")
    scope = f.find("And")
    if scope is None:
        scope = f
        if len(list(f)) > 1:
            raise S3Error("MalformedXML", f"Rule {rule_id}: a Filter with more than one condition needs And")
    tags = tuple(((t.findtext("Key") or ""), (t.findtext("Value") or "")) for t in scope.findall("Tag"))
    greater = scope.findtext("ObjectSizeGreaterThan")
    less = scope.findtext("ObjectSizeLessThan")
    return ((scope.findtext("Prefix") or ""), tags,
            _positive(greater, "ObjectSizeGreaterThan") if greater is not None else None,
            _positive(less, "ObjectSizeLessThan") if less is not None else None)


@dataclass(slots=True)
class Pass:
    """What one run did."""

    buckets: int = 0
    checked: int = 0
    expired: int = 0
    aborted: int = 0
    started: float = 0.0
    finished: float = 0.0
    errors: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, object]:
        return {"Buckets": self.buckets, "Checked": self.checked, "Expired": self.expired,
                "AbortedUploads": self.aborted, "Seconds": round(self.finished - self.started, 3),
                "Errors": self.errors[:20]}


@functools.lru_cache(maxsize=256)
def rules_of(text: str) -> tuple[Rule, ...]:
    """A stored configuration's enabled rules (parsed once per text: every GET and HEAD asks)."""
    return tuple(r for r in parse(text.encode()) if r.enabled)


def expiration_header(rules: tuple[Rule, ...], key: str, size: int, tags: tuple[tuple[str, str], ...],
                      created: float) -> str | None:
    """x-amz-expiration of a current object: when the earliest rule that takes it expires it, and
    that rule's id (AWS, PutObject/GetObject/HeadObject responses)."""
    best: tuple[float, str] | None = None
    for r in rules:
        if not r.selects(key, size, tags):
            continue
        when = due(created, r.expire_days) if r.expire_days is not None else r.expire_date
        if when is not None and (best is None or when < best[0]):
            best = (when, r.rule_id)
    if best is None:
        return None
    return f'expiry-date="{email.utils.formatdate(best[0], usegmt=True)}", rule-id="{best[1]}"'


class LeaseHeld(Exception):
    """Another gateway is running the lifecycle rules now."""


class Lifecycle:
    def __init__(self, engine: Engine, records: BucketRecords, interval: float = 3600.0,
                 versioning_records: BucketRecords | None = None) -> None:
        self.engine = engine
        self.interval = interval
        self.records = records  # the buckets' configurations (Gateway.bucket_lifecycle)
        self.versioning = versioning_records or BucketRecords(engine, versioning.NAMESPACE)
        self.holder = secrets.token_hex(8)
        self.totals = Pass()  # since this gateway started (metrics, the dashboard)
        self.passes = 0
        self.last: Pass | None = None
        self.last_finished = 0.0  # epoch seconds
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ the lease

    async def _take(self, now: float) -> bool:
        engine = self.engine
        current = await engine.record(LEASE_NAMESPACE, "lease")
        if current is not None and current.get("holder") != self.holder and float(current["until"]) > now:
            return False
        return await engine.swap_record(LEASE_NAMESPACE, "lease", current,
                                        {"holder": self.holder, "until": repr(now + LEASE)})

    async def _release(self) -> None:
        current = await self.engine.record(LEASE_NAMESPACE, "lease")
        if current is not None and current.get("holder") == self.holder:
            await self.engine.swap_record(LEASE_NAMESPACE, "lease", current, None)

    # ------------------------------------------------------------ a pass

    async def run(self, now: float | None = None) -> Pass:
        """One pass over every bucket with a configuration, as at time `now` (default: the
        clock); LeaseHeld when another gateway runs one."""
        clock = time.time()
        when = clock if now is None else now
        if not await self._take(clock):
            raise LeaseHeld()
        p = Pass(started=time.monotonic())
        try:
            for b in await self.engine.list_buckets():
                text = await self.records.read(b.name, b.created)
                if text is None:
                    continue
                rules = [r for r in parse(text.encode()) if r.enabled]
                if not rules:
                    continue
                p.buckets += 1
                try:
                    await self._bucket(b.name, rules, when, p, await self.versioning.read(b.name, b.created))
                except NoSuchBucket:
                    continue
                if not await self._take(time.time()):  # renewed per bucket; lost: stop here
                    p.errors.append("the lease was taken over; the pass stopped")
                    break
        finally:
            await self._release()
            p.finished = time.monotonic()
            self.last = p
            self.passes += 1
            self.last_finished = time.time()
            for name in ("buckets", "checked", "expired", "aborted"):
                setattr(self.totals, name, getattr(self.totals, name) + getattr(p, name))
        if p.expired or p.aborted:
            log.info("lifecycle: %d objects expired, %d uploads aborted in %d buckets", p.expired, p.aborted,
                     p.buckets)
        return p

    async def _bucket(self, bucket: str, rules: list[Rule], now: float, p: Pass, state: str | None) -> None:
        engine = self.engine
        expiring = [r for r in rules if r.expire_days is not None or r.expire_date is not None]
        if expiring:
            marker = None
            while True:
                page = await engine.list_objects(bucket, "", "", marker, 1000)
                for entry in page.entries:
                    p.checked += 1
                    marker = entry.key
                    if await self._expire(bucket, entry.key, entry.size, entry.mtime, expiring, now, state):
                        p.expired += 1
                if not page.truncated:
                    break
        history = [r for r in rules if r.noncurrent_days is not None or r.expired_markers]
        if history and state is not None:
            await self._versions(bucket, history, now, p)
        aborting = [r for r in rules if r.abort_days is not None]
        if aborting:
            for upload in await engine.list_uploads(bucket):
                if any(upload.key.startswith(r.prefix) and r.abort_days is not None
                       and due(upload.initiated, r.abort_days) <= now for r in aborting):
                    try:
                        await engine.abort_upload(bucket, upload.upload_id)
                        p.aborted += 1
                    except NoSuchUpload:
                        pass

    async def _expire(self, bucket: str, key: str, size: int, mtime: float, rules: list[Rule], now: float,
                      state: str | None) -> bool:
        if not any(r.selects(key, size, None) and r.expired(mtime, now) for r in rules):
            return False
        try:
            found = await self.engine.head(bucket, key)  # its tags, and the object as it is now
        except NoSuchKey:
            return False
        meta = found.meta
        if not any(r.selects(key, meta.size, meta.tags) and r.expired(meta.mtime, now) for r in rules):
            return False
        cond = Conditions(if_match=found.meta.etag.strip('"'), mtime=int(found.meta.mtime))
        try:
            if state is None:
                await self.engine.delete(bucket, key, cond)
            else:  # as a DELETE there: a delete marker, the object kept as noncurrent
                await self.engine.change_versions(bucket, key, versioning.on_delete(
                    state, versioning.marker(state), cond, key))
        except (PreconditionFailed, NoSuchKey):
            return False  # written again meanwhile: the new object is not expired
        return True

    async def _versions(self, bucket: str, rules: list[Rule], now: float, p: Pass) -> None:
        """Noncurrent versions past their NoncurrentDays (or beyond NewerNoncurrentVersions), and
        delete markers left alone, deleted for good, key by key as ListObjectVersions orders them."""
        after: str | None = None
        key: str | None = None
        rows: list[tuple[ObjectMeta, bool]] = []  # one key's versions, newest first (current first)
        more = True
        while more:
            page, more = await self.engine.version_page(bucket, "", after, 1000)
            for name, meta, current in page:
                after = name
                k = name if current else name.rsplit(SEP, 1)[0]
                if k != key:
                    if key is not None:
                        await self._history(bucket, key, rows, rules, now, p)
                    key, rows = k, []
                rows.append((meta, current))
            if not page:
                break
        if key is not None:
            await self._history(bucket, key, rows, rules, now, p)

    async def _history(self, bucket: str, key: str, rows: list[tuple[ObjectMeta, bool]], rules: list[Rule],
                       now: float, p: Pass) -> None:
        doomed: list[ObjectMeta] = []
        older = [m for m, current in rows if not current]
        newer_time = rows[0][0].mtime if rows[0][1] else None  # when the newest noncurrent one stopped being current
        rank = 0  # noncurrent versions newer than this one
        for meta in older:
            p.checked += 1
            since, newer_time = newer_time, meta.mtime
            if since is None:
                continue  # the newest version, a delete marker: not noncurrent
            rank += 1
            for r in rules:
                if r.noncurrent_days is None or not r.selects(key, meta.size, meta.tags):
                    continue
                kept = r.newer_noncurrent is not None and rank <= r.newer_noncurrent
                if not kept and due(since, r.noncurrent_days) <= now:
                    doomed.append(meta)
                    break
        if len(rows) == 1 and rows[0][0].marker and not rows[0][1] and \
                any(r.expired_markers and r.selects(key, 0, None) for r in rules):
            doomed.append(rows[0][0])
        for meta in doomed:
            outcome = versioning.Outcome()
            try:
                await self.engine.change_versions(bucket, key, versioning.on_delete_version(
                    versioning.version_of(meta), outcome, None, key))
            except ObjectLocked:
                continue  # under Object Lock: it stays until its retention ends (or its hold is lifted)
            p.expired += outcome.found

    # ------------------------------------------------------------ the worker

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.run()
            except LeaseHeld:
                continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lifecycle pass failed; the next one is in %.0f s", self.interval)
