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


def test_rates_and_latency_per_group_of_operations_from_counter_deltas():
    a, b = sample(100), sample(110)
    a.ops = {"PutObject": 600, "UploadPart": 400, "GetObject": 0, "Unknown": 5}
    b.ops = {"PutObject": 900, "UploadPart": 600, "GetObject": 30, "Unknown": 9}
    a.buckets = {"PutObject": {0.005: 500, 0.05: 600, INF: 600}, "UploadPart": {0.005: 400, 0.05: 400, INF: 400}}
    b.buckets = {"PutObject": {0.005: 700, 0.05: 900, INF: 900},  # this interval, writes: 400 under 5 ms, 100 under 50
                 "UploadPart": {0.005: 600, 0.05: 600, INF: 600}}
    a.status, b.status = {"2xx": 1000, "5xx": 2}, {"2xx": 1490, "4xx": 10, "5xx": 2, "501": 30}
    st = collector(a, b).state()
    assert st["requests"] == {"write": [[110, 50.0]], "read": [[110, 3.0]]}  # Unknown (unroutable) is not charted
    assert st["groups"] == ["read", "write"]  # in the page's fixed order, each its own colour
    t, p50, p99 = st["latency_ms"]["write"][0]
    assert p50 == pytest.approx(5 * 250 / 400) and p99 == pytest.approx(5 + 45 * 95 / 100)
    assert st["errors"] == [[110, 1.0, 0.0, 3.0]]  # a 501 (a client's feature probe) is not a 5xx


def test_failed_logins_by_address_and_deferrals_by_reason_from_the_logs(tmp_path):
    """The log-derived panels: the parts' own lines, text or JSON, read as they are appended,
    a rotated file followed, only the last hour counted."""
    import json
    import time as _time

    from appliance.logevents import LogEvents
    from runtime import logs

    def stamp(t: float) -> str:
        return _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(t)) + ".000Z"
    now = 1_800_000_000.0
    imap = tmp_path / "imap.log"
    imap.write_text(
        f"{stamp(now - 7200)} WARNING imap[1] mailstore.auth: login failed remote=192.0.2.9 user=x service=imap\n"
        f"{stamp(now - 60)} WARNING imap[1] mailstore.auth: login failed remote=192.0.2.1 user=a service=imap\n"
        f"{stamp(now - 50)} WARNING imap[1] mailstore.auth: login failed remote=192.0.2.1 "
        'user="remote=198.51.100.7" service=imap\n')
    (tmp_path / "lmtp.log").write_text(json.dumps(
        {"time": stamp(now - 30), "level": "WARNING", "part": "lmtp", "pid": 2, "logger": "mailstore.delivery",
         "message": "deferred", "result": "452 4.2.2", "reason": "over quota"}) + "\n")
    ev = LogEvents(tmp_path)
    ev.poll()
    with open(imap, "a") as f:  # appended, half a line first
        f.write(f"{stamp(now - 10)} WARNING imap[1] mailstore.auth: login failed remote=192.0.2.1 ")
    ev.poll()
    with open(imap, "a") as f:
        f.write("user=b service=imap\n")
    imap.rename(tmp_path / "imap.log.1")  # rotated: the new file from its start
    (tmp_path / "dashboard.log").write_text(
        f"{stamp(now - 5)} WARNING dashboard[3] mailstore.auth: login failed remote=192.0.2.2 user=admin "
        "service=dashboard\n")
    ev.poll()
    summary = ev.summary(now)
    assert summary["failed_logins"] == [
        {"address": "192.0.2.1", "count": 2, "services": ["imap"]},  # the third line sits in the rotated file
        {"address": "192.0.2.2", "count": 1, "services": ["dashboard"]}]
    assert summary["deferred_reasons"] == [{"reason": "over quota", "count": 1}]
    assert logs.parse_line("not a line of ours") is None


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
