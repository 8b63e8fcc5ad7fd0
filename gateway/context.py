"""What every request handler sees: the gateway's dependencies, and one request.

The dispatcher (app.py), the S3 handlers, the admin API, health and metrics
all import this module and it imports none of them, so the arrows between
them point one way.  `Gateway` is built once per process by the composition
root (server.py) and holds no per-request state but the in-flight count.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web
from multidict import CIMultiDictProxy, MultiDict

from runtime.logs import AccessLog

from .access import Access, Decision
from .accounts import AccountStore
from .auth import Authenticator, Principal
from .bucket_policies import BucketPolicies
from .bucket_records import BucketRecords
from .config import GatewayConfig
from .engine.api import Engine, ThreadRunner
from .keys import KeyStore
from .sse import Encryption

if TYPE_CHECKING:
    from .compact import Compactor
    from .lifecycle import Lifecycle

T = TypeVar("T")

_BUCKET_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789.-")


_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def valid_bucket_name(name: str) -> bool:
    """AWS's naming rules for general purpose buckets (S3 User Guide, "Bucket naming rules"):
    3-63 characters of a-z, 0-9, "." and "-"; every dot-separated label begins and ends with
    a letter or digit (so no "..", ".-" or "-."); not an IPv4 address; none of the reserved
    prefixes and suffixes."""
    if name in _VALID_SEEN:
        return True
    labels = name.split(".")
    ok = (3 <= len(name) <= 63 and set(name) <= _BUCKET_CHARS
          and all(label and label[0].isalnum() and label[-1].isalnum() for label in labels)
          and not (len(labels) == 4 and all(label.isdigit() for label in labels))
          and not name.startswith(_RESERVED_PREFIXES) and not name.endswith(_RESERVED_SUFFIXES))
    if ok and len(_VALID_SEEN) < 10_000:
        _VALID_SEEN.add(name)
    return ok


_VALID_SEEN: set[str] = set()



@dataclass(slots=True)
class S3Request:
    request: web.BaseRequest
    bucket: str | None
    key: str | None
    query: MultiDict[str]
    principal: Principal
    request_id: str
    op: str
    decision: Decision | None = None  # its permissions (DeleteObjects asks per key)

    def allows(self, action: str, resource: str) -> bool:
        return self.decision is not None and self.decision.allows(action, resource)

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        return self.request.headers


class Gateway:
    """Everything a handler needs, built once by the composition root."""

    def __init__(self, config: GatewayConfig, engine: Engine, runner: ThreadRunner) -> None:
        self.config = config
        self.engine = engine
        self.run_blocking = runner  # the one place blocking work (blob I/O, big copies) leaves the loop
        self.keys = KeyStore(engine)
        self.accounts = AccountStore(engine)
        self.bucket_policies = BucketPolicies(engine)
        self.bucket_tags = BucketRecords(engine, "bucket-tagging")
        self.bucket_encryption = BucketRecords(engine, "bucket-encryption", cache_seconds=2.0)  # every PUT asks
        self.bucket_lifecycle = BucketRecords(engine, "bucket-lifecycle", cache_seconds=2.0)  # GET/HEAD ask
        self.bucket_versioning = BucketRecords(engine, "bucket-versioning", cache_seconds=2.0)  # versioning.py
        self.bucket_object_lock = BucketRecords(engine, "bucket-object-lock", cache_seconds=2.0)  # objectlock.py
        self.encryption = Encryption(engine, config.region)
        self.auth = Authenticator(self.keys)
        self.access = Access()
        self.access_log = AccessLog()  # the S3 access log, one line per request (runtime/logs.py)
        self.counters: dict[str, int] = {}
        self.inflight = 0
        self.draining = False  # SIGTERM: /health/ready answers 404 and connections are not kept alive
        self.compactor: Compactor | None = None  # set by the composition root when compaction runs here
        self.lifecycle: Lifecycle | None = None  # set by the composition root


Handler = Callable[[Gateway, S3Request], Awaitable[web.StreamResponse]]
