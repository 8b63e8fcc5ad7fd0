"""Prometheus metrics of a mail shim process (LMTP or IMAP), on --metrics-listen.

- LMTP: recipients accepted, temp-failed and perm-failed, by reason.
- IMAP: sessions open and opened, commands by name, failed logins, sessions in IDLE.
- fscache: hits, misses, evictions, inserts, entries and bytes (read when scraped).

prometheus-client serves the registry from its own thread; the collectors only
read counters the event loop keeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

prometheus_client.disable_created_metrics()


class ImapMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.sessions = Gauge("mailstore_imap_sessions", "IMAP connections open", registry=registry)
        self.sessions_total = Counter("mailstore_imap_sessions_opened", "IMAP connections accepted",
                                      registry=registry)
        self.commands = Counter("mailstore_imap_commands", "IMAP commands answered", ["command", "result"],
                                registry=registry)
        self.auth_failures = Counter("mailstore_imap_auth_failures", "Failed LOGIN and AUTHENTICATE",
                                     registry=registry)
        self.idling = Gauge("mailstore_imap_idle_sessions", "Sessions in IDLE", registry=registry)


class Pop3Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.sessions = Gauge("mailstore_pop3_sessions", "POP3 connections open", registry=registry)
        self.logins = Counter("mailstore_pop3_logins", "POP3 logins", registry=registry)
        self.auth_failures = Counter("mailstore_pop3_auth_failures", "Failed USER/PASS and AUTH", registry=registry)
        self.retrieved = Counter("mailstore_pop3_retrieved", "Messages sent by RETR", registry=registry)
        self.deleted = Counter("mailstore_pop3_deleted", "Messages deleted at QUIT", registry=registry)


class ManageSieveMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.sessions = Gauge("mailstore_managesieve_sessions", "ManageSieve connections open", registry=registry)
        self.logins = Counter("mailstore_managesieve_logins", "ManageSieve logins", registry=registry)
        self.auth_failures = Counter("mailstore_managesieve_auth_failures", "Failed AUTHENTICATE", registry=registry)
        self.commands = Counter("mailstore_managesieve_commands", "ManageSieve commands by name", ["command"],
                                registry=registry)


class _LmtpCollector(Collector):
    def __init__(self, deliverer: Any) -> None:
        self.deliverer = deliverer

    def collect(self) -> Iterator[CounterMetricFamily]:
        st = self.deliverer.stats
        c = CounterMetricFamily("mailstore_lmtp_recipients", "LMTP recipients by result and reason",
                                labels=["result", "reason"])
        c.add_metric(["accepted", ""], st.accepted)
        for reason, n in sorted(st.temp_failed.items()):
            c.add_metric(["temp_failed", reason], n)
        for reason, n in sorted(st.perm_failed.items()):
            c.add_metric(["perm_failed", reason], n)
        yield c


class _CacheCollector(Collector):
    def __init__(self, fs: Any) -> None:
        self.fs = fs

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        tier = self.fs  # the fscache layer, wherever it is in the stack (compress: may wrap it)
        while tier is not None and getattr(tier, "counters", None) is None:
            tier = getattr(tier, "parent", None)
        if tier is None:  # plain s3: with no cache tier there is nothing to report
            return
        counters = tier.counters
        for name in ("hits", "misses", "evictions", "inserts", "invalidations", "corrupt"):
            yield CounterMetricFamily(f"mailstore_cache_{name}", f"fscache {name}", value=getattr(counters, name))
        cache = tier.cache
        yield GaugeMetricFamily("mailstore_cache_entries", "fscache entries", value=len(cache))
        yield GaugeMetricFamily("mailstore_cache_bytes", "fscache bytes on disk", value=cache.volume())
        yield GaugeMetricFamily("mailstore_cache_size_limit_bytes", "fscache bound", value=int(cache.size_limit))


def serve(listen: str, *, deliverer: Any = None, fs: Any = None, imap: bool = False) -> ImapMetrics | None:
    """Start /metrics on HOST:PORT; returns the IMAP metrics to update when `imap`."""
    registry = _serve(listen, deliverer, fs)
    return ImapMetrics(registry) if imap else None


def serve_pop3(listen: str, fs: Any) -> Pop3Metrics:
    """/metrics of a POP3 server (and its fs cache) on HOST:PORT."""
    return Pop3Metrics(_serve(listen, None, fs))


def serve_managesieve(listen: str) -> ManageSieveMetrics:
    """/metrics of a ManageSieve server on HOST:PORT."""
    return ManageSieveMetrics(_serve(listen, None, None))


def _serve(listen: str, deliverer: Any, fs: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if deliverer is not None:
        registry.register(_LmtpCollector(deliverer))
    if fs is not None:
        registry.register(_CacheCollector(fs))
    host, _, port = listen.rpartition(":")
    prometheus_client.start_http_server(int(port), addr=host.strip("[]"), registry=registry)
    return registry
