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
from bisect import bisect_left
from collections.abc import Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
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
        self.requests = _RequestCollector()
        r.register(self.requests)
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
        r.register(_EngineCollector(gw))
        r.register(_LifecycleCollector(gw))
        if isinstance(gw.engine, LocalGateway):
            gw.engine.local.batch_observers.append(self._batch)

    def _batch(self, n: int, seconds: float, sync_seconds: float) -> None:  # the committer's thread
        self.batch_size.observe(n)
        self.commit_seconds.observe(seconds)
        self.fsync_seconds.observe(sync_seconds)

    def observe(self, operation: str, status: int, seconds: float, bytes_in: int, bytes_out: int,
                error_code: str | None) -> None:
        """Once per request, on the event loop."""
        self.requests.observe(operation, status, seconds, bytes_in, bytes_out)
        if error_code in AUTH_FAILURES:
            self.auth_failures.labels(error_code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _RequestCollector(Collector):
    """The per-request figures, kept in plain lists by the event loop (no lock: one thread
    writes) and turned into Prometheus families when scraped. prometheus_client's labelled
    Counter and Histogram take a lock per increment: four of them cost a request about 3 us."""

    def __init__(self) -> None:
        self.by_status: dict[tuple[str, int], list[int]] = {}  # (operation, status) -> [requests]
        self.by_operation: dict[str, list[float]] = {}  # -> [bytes in, bytes out, seconds, *bucket counts]

    def observe(self, operation: str, status: int, seconds: float, bytes_in: int, bytes_out: int) -> None:
        count = self.by_status.get((operation, status))
        if count is None:
            count = self.by_status[(operation, status)] = [0]
        count[0] += 1
        figures = self.by_operation.get(operation)
        if figures is None:
            figures = self.by_operation[operation] = [0.0] * (3 + len(_LATENCY_BUCKETS) + 1)
        figures[0] += bytes_in
        figures[1] += bytes_out
        figures[2] += seconds
        figures[3 + bisect_left(_LATENCY_BUCKETS, seconds)] += 1  # le: a value on a bound counts in it

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily("mailstore_s3_requests", "S3 requests answered", labels=["operation", "status"])
        for (operation, status), count in list(self.by_status.items()):
            requests.add_metric([operation, str(status)], count[0])
        yield requests
        latency = HistogramMetricFamily("mailstore_s3_request_duration_seconds",
                                        "S3 request latency, to the handler's answer", labels=["operation"])
        received = CounterMetricFamily("mailstore_s3_received_bytes", "Request body bytes", labels=["operation"])
        sent = CounterMetricFamily("mailstore_s3_sent_bytes", "Response body bytes", labels=["operation"])
        for operation, figures in list(self.by_operation.items()):
            figures = list(figures)
            cumulative, buckets = 0.0, []
            for bound, n in zip([*map(str, _LATENCY_BUCKETS), "+Inf"], figures[3:], strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            latency.add_metric([operation], buckets, figures[2])
            received.add_metric([operation], figures[0])
            sent.add_metric([operation], figures[1])
        yield from (latency, received, sent)


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


class _LifecycleCollector(Collector):
    """What this gateway's lifecycle passes did (gateway/lifecycle.py); the dashboard sums them."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        lc = self.gw.lifecycle
        if lc is None:
            return
        t = lc.totals
        yield CounterMetricFamily("mailstore_lifecycle_passes", "Lifecycle passes run by this gateway",
                                  value=lc.passes)
        yield CounterMetricFamily("mailstore_lifecycle_checked", "Objects looked at by lifecycle passes",
                                  value=t.checked)
        yield CounterMetricFamily("mailstore_lifecycle_expired", "Objects deleted by lifecycle expiration",
                                  value=t.expired)
        yield CounterMetricFamily("mailstore_lifecycle_aborted_uploads",
                                  "Incomplete multipart uploads aborted by lifecycle rules", value=t.aborted)
        if lc.last_finished:
            yield GaugeMetricFamily("mailstore_lifecycle_last_pass_timestamp_seconds",
                                    "When this gateway's last lifecycle pass ended", value=lc.last_finished)
