"""The gateway's per-request figures, as a Prometheus scrape reads them (prometheus_client's own
parser): counts per operation and status, the latency histogram's cumulative buckets with a
value on a bound counted in it, bytes in and out per operation."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import _RequestCollector


def test_request_figures_scrape_as_prometheus_counters_and_histograms():
    collector = _RequestCollector()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    for seconds in (0.0004, 0.001, 0.003, 20.0):  # 0.001 sits on a bound: le="0.001" holds it
        collector.observe("GetObject", 200, seconds, 0, 4096)
    collector.observe("GetObject", 404, 0.0001, 0, 0)
    collector.observe("PutObject", 200, 0.002, 4096, 0)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(generate_latest(registry).decode())
               for s in family.samples}

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("mailstore_s3_requests_total", operation="GetObject", status="200") == 4
    assert value("mailstore_s3_requests_total", operation="GetObject", status="404") == 1
    assert value("mailstore_s3_requests_total", operation="PutObject", status="200") == 1
    bucket = "mailstore_s3_request_duration_seconds_bucket"
    assert value(bucket, operation="GetObject", le="0.0005") == 2
    assert value(bucket, operation="GetObject", le="0.001") == 3
    assert value(bucket, operation="GetObject", le="0.005") == 4
    assert value(bucket, operation="GetObject", le="10.0") == 4
    assert value(bucket, operation="GetObject", le="+Inf") == 5
    assert value("mailstore_s3_request_duration_seconds_count", operation="GetObject") == 5
    assert abs(value("mailstore_s3_request_duration_seconds_sum", operation="GetObject") - 20.0045) < 1e-9
    assert value("mailstore_s3_sent_bytes_total", operation="GetObject") == 4 * 4096
    assert value("mailstore_s3_received_bytes_total", operation="PutObject") == 4096
