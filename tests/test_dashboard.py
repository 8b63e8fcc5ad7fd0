"""The dashboard's arithmetic and alerts, from synthetic scrapes (the page itself:
tests/test_appliance.py in headless Chromium)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.dashboard import Collector, Sample, Sources, lb_state, quantile

INF = float("inf")


def collector(*samples: Sample) -> Collector:
    c = Collector(Sources(["http://a", "http://b"], "http://lb/stats", {}, Path("/nonexistent"), "admin", "pw"), 5)
    c.samples.extend(samples)
    return c


def sample(t: float, **gauges: float) -> Sample:
    return Sample(t, gauges={"mailstore_disk_free_bytes": 500e9, "mailstore_disk_size_bytes": 1000e9, **gauges},
                  lb={"gw1": "up", "gw2": "up"})


def test_quantiles_interpolate_within_buckets_like_prometheus():
    buckets = {0.001: 0, 0.01: 50, 0.1: 100, INF: 100}
    assert quantile(0.5, buckets) == pytest.approx(0.01)
    assert quantile(0.75, buckets) == pytest.approx(0.055)
    assert quantile(0.995, {0.01: 99, 0.1: 99, INF: 100}) == pytest.approx(0.1)  # in +Inf: the last finite bound
    assert quantile(0.5, {0.01: 0, INF: 0}) is None


def test_rates_and_latency_per_operation_from_counter_deltas():
    a, b = sample(100), sample(110)
    a.ops, b.ops = {"PutObject": 1000, "Unknown": 5}, {"PutObject": 1500, "Unknown": 9}
    a.buckets = {"PutObject": {0.005: 900, 0.05: 1000, INF: 1000}}
    b.buckets = {"PutObject": {0.005: 1300, 0.05: 1500, INF: 1500}}  # this interval: 400 under 5 ms, 100 under 50
    a.status, b.status = {"2xx": 1000, "5xx": 2}, {"2xx": 1490, "4xx": 10, "5xx": 2}
    st = collector(a, b).state()
    assert st["requests"] == {"PutObject": [[110, 50.0]]}  # Unknown (unroutable requests) is not charted
    t, p50, p99 = st["latency_ms"]["PutObject"][0]
    assert p50 == pytest.approx(5 * 250 / 400) and p99 == pytest.approx(5 + 45 * 95 / 100)
    assert st["errors"] == [[110, 1.0, 0.0]]


def test_no_alerts_when_all_is_well():
    st = collector(sample(0), sample(5)).state()
    assert st["alerts"] == [] and st["time_to_full_seconds"] is None


def test_alerts():
    quiet = sample(500, lmtp_temp_failed=3, mailstore_engine_storage_full_total=1)
    now = sample(700, lmtp_temp_failed=7, mailstore_disk_free_bytes=80e9, mailstore_engine_checksum_errors_total=2,
                 mailstore_engine_storage_full_total=6)
    now.lb = {"gw1": lb_state("DOWN"), "gw2": lb_state("NOLB")}
    texts = {a["text"]: a["level"] for a in collector(quiet, now).state()["alerts"]}
    assert texts == {"gateway gw1 is down": "critical", "gateway gw2 is draining": "warning",
                     "disk nearly full": "critical", "2 checksum errors": "critical",
                     "4 deliveries deferred in the last 5 minutes": "warning",
                     "storage full: 5 writes refused (503) in the last 5 minutes": "critical"}


def test_time_to_full_from_the_free_space_trend():
    early, late = sample(0, mailstore_disk_free_bytes=500e9), sample(600, mailstore_disk_free_bytes=499.4e9)
    st = collector(early, late).state()  # 1 GB per 1,000 s: 499.4 GB last 499,400 s
    assert st["time_to_full_seconds"] == pytest.approx(499_400, rel=1e-6)
    assert st["alerts"] == []  # days away: no alert
    assert collector(early, sample(300, mailstore_disk_free_bytes=400e9)).state()["time_to_full_seconds"] is None


@pytest.mark.parametrize("status,state", [("UP", "up"), ("UP 1/2", "up"), ("NOLB", "draining"), ("DRAIN", "draining"),
                                          ("DOWN", "down"), ("DOWN 1/2", "down"), ("MAINT", "down")])
def test_haproxy_status_words(status, state):
    assert lb_state(status) == state
