"""Prometheus metrics of one gateway process, served at GET /metrics (unsigned, like health).

Per request: mailstore_s3_requests_total{operation,status}, a latency
histogram per operation, bytes in and out, auth failures and policy denials.
The engine's state is read when scraped (objects, bytes, data files, garbage
ratio, free disk, checksum errors, compaction), and the group committer
reports each batch (size, commit and fdatasync latency).  Every process of a
pair has its own registry; the engine-wide figures come from the shared index,
so each gateway reports the same values for them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .compact import DEAD_RATIO
from .context import Gateway
from .engine.local import LocalEngine
from .engine.local_api import LocalGateway
from .engine.rados_api import RadosGateway

prometheus_client.disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
AUTH_FAILURES = frozenset({"SignatureDoesNotMatch", "InvalidAccessKeyId", "RequestTimeTooSkewed",
                           "AuthorizationHeaderMalformed", "ExpiredToken", "MissingSecurityHeader"})
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics:
    def __init__(self, gw: Gateway) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter("mailstore_s3_requests", "S3 requests answered", ["operation", "status"], registry=r)
        self.latency = Histogram("mailstore_s3_request_duration_seconds", "S3 request latency, to the handler's answer",
                                 ["operation"], buckets=_LATENCY_BUCKETS, registry=r)
        self.bytes_in = Counter("mailstore_s3_received_bytes", "Request body bytes", ["operation"], registry=r)
        self.bytes_out = Counter("mailstore_s3_sent_bytes", "Response body bytes", ["operation"], registry=r)
        self.auth_failures = Counter("mailstore_s3_auth_failures", "Requests refused before any policy: bad or "
                                     "unknown signature or key", ["code"], registry=r)
        self.batch_size = Histogram("mailstore_engine_commit_batch_size", "Transactions per group commit",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.commit_seconds = Histogram("mailstore_engine_commit_seconds", "Group commit duration",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.fsync_seconds = Histogram("mailstore_engine_fsync_seconds", "fdatasync of a group commit",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.storage_full = Counter("mailstore_engine_storage_full", "Writes refused with 503 because the "
                                    "data directory's disk (or quota) is full", registry=r)
        self._children: dict[tuple[str, int], tuple[Counter, Histogram, Counter, Counter]] = {}
        r.register(_EngineCollector(gw))
        if isinstance(gw.engine, LocalGateway):
            gw.engine.local.batch_observers.append(self._batch)

    def _batch(self, n: int, seconds: float, sync_seconds: float) -> None:  # the committer's thread
        self.batch_size.observe(n)
        self.commit_seconds.observe(seconds)
        self.fsync_seconds.observe(sync_seconds)

    def observe(self, operation: str, status: int, seconds: float, bytes_in: int, bytes_out: int,
                error_code: str | None) -> None:
        """Once per request: the labelled children are looked up once per (operation, status)
        and kept, since labels() validates and locks on every call (5 us -> 2 us a request)."""
        children = self._children.get((operation, status))
        if children is None:
            children = self._children[(operation, status)] = (
                self.requests.labels(operation, str(status)), self.latency.labels(operation),
                self.bytes_in.labels(operation), self.bytes_out.labels(operation))
        requests, latency, received, sent = children
        requests.inc()
        latency.observe(seconds)
        if bytes_in:
            received.inc(bytes_in)
        if bytes_out:
            sent.inc(bytes_out)
        if error_code in AUTH_FAILURES:
            self.auth_failures.labels(error_code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector(Collector):
    """The engine and its disk as of the scrape (one index query)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        gw = self.gw
        if isinstance(gw.engine, LocalGateway):
            yield from self._local(gw.engine.local)
        if isinstance(gw.engine, RadosGateway):
            ops = gw.engine.ops
            yield CounterMetricFamily("mailstore_rados_operations", "RADOS operations completed", value=ops["done"])
            yield CounterMetricFamily("mailstore_rados_operation_errors", "RADOS operations that failed (not "
                                      "the ENOENT/ECANCELED/EEXIST answers the layout asks for)", value=ops["failed"])
            yield GaugeMetricFamily("mailstore_rados_operations_inflight", "RADOS operations in flight",
                                    value=ops["started"] - ops["done"])
        yield CounterMetricFamily("mailstore_engine_checksum_errors", "Records or blobs that failed their checksum "
                                  "on read", value=gw.engine.metrics["checksum_errors"])
        yield CounterMetricFamily("mailstore_s3_policy_denials", "Requests a key's policy refused",
                                  value=gw.access.denials)
        draining = GaugeMetricFamily("mailstore_gateway_draining", "1 while the gateway drains after SIGTERM")
        draining.add_metric([], 1 if gw.draining else 0)
        yield draining
        yield GaugeMetricFamily("mailstore_s3_inflight_requests", "Requests in flight", value=gw.inflight)

    def _local(self, engine: LocalEngine) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """The local engine's index, segments, compaction and disk."""
        gw = self.gw
        st = engine.index.stats()
        yield GaugeMetricFamily("mailstore_engine_objects", "Objects stored (all buckets)", value=st["objects"])
        yield GaugeMetricFamily("mailstore_engine_object_bytes", "Bytes of stored objects", value=st["bytes"])
        yield GaugeMetricFamily("mailstore_engine_data_files", "Segment files", value=st["segments"])
        yield GaugeMetricFamily("mailstore_engine_data_bytes", "Bytes in segment files", value=st["segment_bytes"])
        ratio = st["dead_bytes"] / st["segment_bytes"] if st["segment_bytes"] else 0.0
        yield GaugeMetricFamily("mailstore_engine_garbage_ratio", "Dead bytes / segment bytes (compaction reclaims)",
                                value=ratio)
        try:
            usage = shutil.disk_usage(gw.config.data_dir)
            free, total = usage.free, usage.total
        except OSError:
            free = total = 0
        yield GaugeMetricFamily("mailstore_disk_free_bytes", "Free bytes on the data directory's disk", value=free)
        yield GaugeMetricFamily("mailstore_disk_size_bytes", "Size of the data directory's disk", value=total)
        comp = gw.compactor.stats if gw.compactor is not None else {}
        yield CounterMetricFamily("mailstore_compaction_runs", "Compaction passes", value=comp.get("runs", 0))
        yield CounterMetricFamily("mailstore_compaction_segments", "Segments compacted",
                                  value=comp.get("segments_compacted", 0))
        yield CounterMetricFamily("mailstore_compaction_reclaimed_bytes", "Bytes reclaimed by compaction",
                                  value=comp.get("bytes_reclaimed", 0))
        ratio_limit = gw.compactor.dead_ratio if gw.compactor is not None else DEAD_RATIO
        pending = engine.index.conn.execute(
            "SELECT count(*) FROM segments WHERE sealed=1 AND size>0 AND dead>=size*?", (ratio_limit,)).fetchone()[0]
        yield GaugeMetricFamily("mailstore_compaction_pending_segments", "Sealed segments due for compaction",
                                value=pending)
