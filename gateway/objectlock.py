"""S3 Object Lock (AWS S3 User Guide, "Locking objects with Object Lock"): write-once retention
for a versioned bucket.

- A bucket is made with `x-amz-bucket-object-lock-enabled: true` (or, versioning enabled, gets
  it from PutObjectLockConfiguration); it is versioned for good: never Suspended again.
- A version carries a retention (GOVERNANCE or COMPLIANCE, until a date) and a legal hold, from
  the request's x-amz-object-lock-* headers or the bucket's default retention, or set later by
  PutObjectRetention / PutObjectLegalHold; both live in the version's metadata.
- While a version's retention date has not passed, or it is on legal hold, nobody deletes it:
  DELETE ?versionId answers 403, lifecycle skips it, and a bucket holding it is not empty. A
  GOVERNANCE retention gives way to `x-amz-bypass-governance-retention: true` from a principal
  allowed s3:BypassGovernanceRetention; a COMPLIANCE one to no one, the admin key included, and
  it can be extended, never shortened. A DELETE without a versionId only adds a delete marker.

The check runs inside the engine's atomic step (versioning.py's decisions), against the
version as it is then, whatever asked: the S3 API, the lifecycle worker or an admin command.
"""

from __future__ import annotations

import calendar
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from .engine.model import ObjectLocked, ObjectMeta
from .s3 import numbers
from .s3.errors import S3Error
from .s3.xml import parse_xml

NAMESPACE = "bucket-object-lock"
MODES = ("GOVERNANCE", "COMPLIANCE")
DAY = 86400
H_MODE = "x-amz-object-lock-mode"
H_UNTIL = "x-amz-object-lock-retain-until-date"
H_HOLD = "x-amz-object-lock-legal-hold"
H_BYPASS = "x-amz-bypass-governance-retention"


@dataclass(frozen=True, slots=True)
class LockConfig:
    """A bucket's Object Lock configuration: enabled, with a default retention or none."""

    mode: str | None = None
    days: int | None = None
    years: int | None = None

    def to_text(self) -> str:
        return json.dumps({"mode": self.mode, "days": self.days, "years": self.years})

    @classmethod
    def from_text(cls, text: str) -> LockConfig:
        d = json.loads(text)
        return cls(d.get("mode"), d.get("days"), d.get("years"))

    def default(self, now: float) -> tuple[str, float] | None:
        """The retention a new version gets when its request names none."""
        if self.mode is None:
            return None
        span = (self.days or 0) * DAY + (self.years or 0) * 365 * DAY
        return self.mode, now + span

    def to_xml(self) -> str:
        rule = ""
        if self.mode is not None:
            period = f"<Days>{self.days}</Days>" if self.days else f"<Years>{self.years}</Years>"
            rule = f"<Rule><DefaultRetention><Mode>{self.mode}</Mode>{period}</DefaultRetention></Rule>"
        return f"<ObjectLockEnabled>Enabled</ObjectLockEnabled>{rule}"


def parse_config(body: bytes) -> LockConfig:
    root = parse_xml(body)
    if root.tag != "ObjectLockConfiguration":
        raise S3Error("MalformedXML")
    if (root.findtext("ObjectLockEnabled") or "").strip() != "Enabled":
        raise S3Error("MalformedXML", "ObjectLockEnabled must be Enabled")
    rule = root.find("Rule")
    if rule is None:
        return LockConfig()
    default = rule.find("DefaultRetention")
    if default is None:
        raise S3Error("MalformedXML", "A Rule needs a DefaultRetention")
    mode = (default.findtext("Mode") or "").strip()
    if mode not in MODES:
        raise S3Error("MalformedXML", "Mode must be GOVERNANCE or COMPLIANCE")
    days, years = default.findtext("Days"), default.findtext("Years")
    if (days is None) == (years is None):
        raise S3Error("MalformedXML", "A DefaultRetention has Days or Years, one of them")
    n = numbers.decimal((days or years or "").strip())
    if n is None or n < 1:
        raise S3Error("InvalidArgument", "Default retention period must be a positive integer value")
    return LockConfig(mode, n if days is not None else None, n if years is not None else None)


def _instant(text: str, what: str) -> float:
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise S3Error("InvalidArgument", f"{what} must be an ISO 8601 date and time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return calendar.timegm(when.utctimetuple()) + when.microsecond / 1e6


def retention_from(mode: str | None, until: str | None, now: float) -> tuple[str, float] | None:
    """A retention asked for (headers or a Retention document): both parts or neither, a known
    mode, a date in the future."""
    if mode is None and until is None:
        return None
    if mode is None or until is None:
        raise S3Error("InvalidArgument", "x-amz-object-lock-retain-until-date and x-amz-object-lock-mode must "
                      "both be supplied")
    if mode not in MODES:
        raise S3Error("InvalidArgument", "Unknown wormMode directive.")
    when = _instant(until, "RetainUntilDate")
    if when <= now:
        raise S3Error("InvalidArgument", "The retain until date must be in the future!")
    return mode, when


def hold_from(text: str | None) -> bool | None:
    if text is None:
        return None
    if text not in ("ON", "OFF"):
        raise S3Error("InvalidArgument", "Legal Hold must be either of 'ON' or 'OFF'")
    return text == "ON"


def requested(headers: Mapping[str, str], now: float) -> tuple[tuple[str, float] | None, bool | None]:
    """The x-amz-object-lock-* headers of a PUT, copy or CreateMultipartUpload."""
    return retention_from(headers.get(H_MODE), headers.get(H_UNTIL), now), hold_from(headers.get(H_HOLD))


def stamped(meta: ObjectMeta, config: LockConfig | None, asked: tuple[tuple[str, float] | None, bool | None],
            now: float) -> ObjectMeta:
    """A new version's metadata with its retention (asked, else the bucket's default) and hold."""
    retention, hold = asked
    if config is None:
        if retention is not None or hold is not None:
            raise S3Error("InvalidRequest", "Bucket is missing Object Lock Configuration")
        return meta
    return replace(meta, retention=retention or config.default(now), legal_hold=bool(hold))


def check_removal(meta: ObjectMeta, bypass: bool, now: float | None = None) -> None:
    """Refuse to delete a version under Object Lock (ObjectLocked)."""
    if meta.legal_hold:
        raise ObjectLocked("the version is on legal hold")
    if meta.retention is None:
        return
    mode, until = meta.retention
    if until <= (time.time() if now is None else now):
        return
    if mode == "GOVERNANCE" and bypass:
        return
    raise ObjectLocked(f"the version is under {mode} retention until {until}")


def new_retention(meta: ObjectMeta, wanted: tuple[str, float] | None, bypass: bool, now: float) -> ObjectMeta:
    """PutObjectRetention's rules for an unexpired retention: it may be extended in its mode;
    a COMPLIANCE one changes no other way, a GOVERNANCE one only with the bypass."""
    old = meta.retention
    if old is not None and old[1] > now:
        mode, until = old
        extends = wanted is not None and wanted[0] == mode and wanted[1] >= until
        if mode == "COMPLIANCE" and not extends:
            raise ObjectLocked("a COMPLIANCE retention can only be extended")
        if mode == "GOVERNANCE" and not extends and not bypass:
            raise ObjectLocked("shortening or removing a GOVERNANCE retention needs the bypass")
    return replace(meta, retention=wanted)


def response_headers(meta: ObjectMeta) -> dict[str, str]:
    out: dict[str, str] = {}
    if meta.retention is not None:
        out[H_MODE] = meta.retention[0]
        out[H_UNTIL] = iso(meta.retention[1])
    if meta.legal_hold:
        out[H_HOLD] = "ON"
    return out


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"
