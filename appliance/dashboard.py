"""The ops dashboard: one page an operator can leave open (`mailstore dashboard`).

Every few seconds it scrapes the appliance: each gateway's /metrics, HAProxy's
stats (how the balancer sees each gateway), the LMTP and IMAP processes'
/metrics, and the users table of the metadata store.  It keeps an hour of
samples in memory and serves them, already turned into rates, p50/p99
latencies, ratios, time-to-full and alerts, as /api/state; the page
(dashboard.html, no external assets) polls that and draws.  Everything but
/login and /metrics needs the administrator's login (a session cookie).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import os
import secrets
import signal
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mailstore.throttle import Busy, LoginLimiter
from runtime import logs

from .logevents import LogEvents

log = logging.getLogger("mailstore.dashboard")
auth_log = logging.getLogger("mailstore.auth")  # logins of every service: packaging/fail2ban reads it
PAGE = Path(__file__).with_name("dashboard.html")
COOKIE = "mailstore_session"
SESSION_SECONDS = 12 * 3600
HISTORY_SECONDS = 3600
TREND_MIN_SECONDS = 600  # no time-to-full from less history than this (a few samples are noise)


# Operations drawn as five groups: a line each, distinct colours, a legend that fits.
GROUPS = ("read", "write", "list", "delete", "bucket and other")
_GROUP_OF = {"GetObject": "read", "HeadObject": "read", "GetObjectAttributes": "read",
             "PutObject": "write", "UploadPart": "write", "CopyObject": "write", "UploadPartCopy": "write",
             "CreateMultipartUpload": "write", "CompleteMultipartUpload": "write",
             "ListObjects": "list", "ListObjectsV2": "list", "ListBuckets": "list", "ListParts": "list",
             "ListMultipartUploads": "list", "ListObjectVersions": "list",
             "DeleteObject": "delete", "DeleteObjects": "delete", "AbortMultipartUpload": "delete"}


def group_of(op: str) -> str:
    return _GROUP_OF.get(op, "bucket and other")


@dataclass(frozen=True)
class Sources:
    gateways: list[str]  # base URLs
    lb_stats: str  # HAProxy stats URL (CSV at ;csv)
    shim_metrics: dict[str, str]  # "lmtp"/"imap" -> /metrics URL
    meta_db: str  # a SQLite file or a postgresql:// URL ([metadata] url)
    user: str
    password: str
    logs_dir: Path | None = None  # DATA_DIR/logs: failed logins, deferred deliveries


@dataclass
class Sample:
    t: float
    ops: dict[str, float] = field(default_factory=dict)  # operation -> requests so far (all gateways)
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)  # operation -> le -> cumulative count
    status: dict[str, float] = field(default_factory=dict)  # "2xx".."5xx" -> requests so far
    gauges: dict[str, float] = field(default_factory=dict)  # engine, disk, cache, LMTP, IMAP figures
    lb: dict[str, str] = field(default_factory=dict)  # gw1 -> up / draining / down
    users: list[dict[str, Any]] = field(default_factory=list)


def _parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def lb_state(status: str) -> str:
    """HAProxy's server status as the operator reads it: UP (also "UP 1/2", a
    check failing) is up; NOLB (ready answered 404) and DRAIN are draining;
    DOWN, MAINT and the rest are down."""
    s = status.upper()
    if s.startswith("UP"):
        return "up"
    if s.startswith(("NOLB", "DRAIN")):
        return "draining"
    return "down"


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Histogram quantile (as Prometheus' histogram_quantile) from cumulative bucket counts."""
    items = sorted(buckets.items())
    if not items or items[-1][1] <= 0:
        return None
    rank = q * items[-1][1]
    prev_le, prev_c = 0.0, 0.0
    for le, c in items:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0.0)
        prev_le, prev_c = le, c
    return prev_le


class Collector:
    def __init__(self, src: Sources, interval: float) -> None:
        self.src = src
        self.interval = interval
        self.samples: deque[Sample] = deque(maxlen=int(HISTORY_SECONDS / interval) + 1)
        self.events = LogEvents(src.logs_dir)
        self.registry = CollectorRegistry(auto_describe=False)
        self.scrapes = Counter("mailstore_dashboard_scrapes", "Scrape rounds", registry=self.registry)
        self.scrape_failures = Counter("mailstore_dashboard_scrape_failures", "Sources that did not answer",
                                       ["source"], registry=self.registry)
        self.last_scrape = Gauge("mailstore_dashboard_last_scrape_timestamp_seconds", "Time of the last scrape",
                                 registry=self.registry)

    async def run(self, session: aiohttp.ClientSession) -> None:
        while True:
            try:
                self.samples.append(await self.scrape(session))
                self.scrapes.inc()
                self.last_scrape.set(time.time())
            except Exception:  # a bad round must not stop the dashboard
                log.exception("scrape failed")
            await asyncio.sleep(self.interval)

    async def _get(self, session: aiohttp.ClientSession, name: str, url: str) -> str | None:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=3)) as r:
                if r.status == 200:
                    return await r.text()
        except (TimeoutError, aiohttp.ClientError):
            pass
        self.scrape_failures.labels(name).inc()
        return None

    async def scrape(self, session: aiohttp.ClientSession) -> Sample:
        src = self.src
        names = [f"gw{i}" for i in range(1, len(src.gateways) + 1)]
        scrapes = (self._get(session, n, g + "/metrics") for n, g in zip(names, src.gateways, strict=True))
        texts = await asyncio.gather(*scrapes,
                                     self._get(session, "haproxy", src.lb_stats + ";csv"),
                                     *(self._get(session, n, u) for n, u in src.shim_metrics.items()))
        gw_texts, csv, shim_texts = texts[:len(names)], texts[len(names)], texts[len(names) + 1:]
        s = Sample(time.time())
        g = s.gauges
        for text in gw_texts:
            for name, labels, value in _parse_metrics(text or ""):
                op = labels.get("operation", "")
                if name == "mailstore_s3_requests_total":
                    s.ops[op] = s.ops.get(op, 0.0) + value
                    # 501: a feature the gateway does not implement, which SDKs and tools probe for: not a
                    # server error an operator must look at, so counted apart from the 5xx
                    klass = "501" if labels["status"] == "501" else labels["status"][0] + "xx"
                    s.status[klass] = s.status.get(klass, 0.0) + value
                elif name == "mailstore_s3_request_duration_seconds_bucket":
                    b = s.buckets.setdefault(op, {})
                    le = float(labels["le"])
                    b[le] = b.get(le, 0.0) + value
                elif name in ("mailstore_engine_checksum_errors_total", "mailstore_compaction_reclaimed_bytes_total",
                              "mailstore_engine_storage_full_total",
                              "mailstore_s3_auth_failures_total", "mailstore_s3_policy_denials_total",
                              "mailstore_lifecycle_passes_total", "mailstore_lifecycle_expired_total",
                              "mailstore_lifecycle_aborted_uploads_total"):
                    g[name] = g.get(name, 0.0) + value
                elif name == "mailstore_lifecycle_last_pass_timestamp_seconds":
                    g[name] = max(g.get(name, 0.0), value)  # the store's last pass, on whichever gateway
                elif name.startswith(("mailstore_engine_", "mailstore_disk_")) and not name.endswith(
                        ("_bucket", "_count", "_sum")):
                    g[name] = value  # one shared engine: every gateway reports the same
        for text in shim_texts:
            for metric, labels, value in _parse_metrics(text or ""):
                if metric == "mailstore_lmtp_recipients_total":
                    key = f"lmtp_{labels['result']}"
                    g[key] = g.get(key, 0.0) + value
                elif metric.startswith("mailstore_cache_") and metric.endswith("_total"):
                    key = metric.removesuffix("_total")
                    g[key] = g.get(key, 0.0) + value
                elif metric in ("mailstore_cache_bytes", "mailstore_cache_entries"):
                    g[metric] = max(g.get(metric, 0.0), value)  # one cache directory, shared
                elif metric.startswith("mailstore_imap_") and not labels:
                    g[metric] = value
                elif metric == "mailstore_imap_commands_total":
                    g["imap_commands"] = g.get("imap_commands", 0.0) + value
                elif metric.startswith(("mailstore_pop3_", "mailstore_managesieve_")) and not labels:
                    g[metric] = value
                elif metric == "mailstore_managesieve_commands_total" and labels.get("command") == "PUTSCRIPT":
                    g["managesieve_stored"] = g.get("managesieve_stored", 0.0) + value
        for line in (csv or "").splitlines():
            f = line.split(",")
            if len(f) > 17 and f[0] == "gateways" and f[1] not in ("BACKEND", "FRONTEND"):
                s.lb[f[1]] = lb_state(f[17])
        for n in names:
            s.lb.setdefault(n, "down" if csv is not None else "unknown")
        s.users = await asyncio.to_thread(self._users)
        await asyncio.to_thread(self.events.poll)
        return s

    def _users(self) -> list[dict[str, Any]]:
        db = str(self.src.meta_db)
        if db.startswith("postgresql://"):
            return self._users_pg(db)
        try:
            c = sqlite3.connect(f"file:{db.removeprefix('sqlite://')}?mode=ro", uri=True, timeout=2)
            try:
                rows = c.execute("SELECT name, used_bytes, quota_bytes FROM users ORDER BY used_bytes DESC, name "
                                 "LIMIT 10").fetchall()
            finally:
                c.close()
        except sqlite3.Error:
            return []
        return [{"user": n, "used_bytes": u, "quota_bytes": q} for n, u, q in rows]

    def _users_pg(self, url: str) -> list[dict[str, Any]]:
        import psycopg
        try:
            with psycopg.connect(url, connect_timeout=2) as c:
                rows = c.execute("SELECT name, used_bytes, quota_bytes FROM users ORDER BY used_bytes DESC, name "
                                 "LIMIT 10").fetchall()
        except psycopg.Error:
            return []
        return [{"user": n, "used_bytes": u, "quota_bytes": q} for n, u, q in rows]

    def state(self) -> dict[str, Any]:
        """What the page shows: the latest figures, the hour's series, alerts."""
        samples = list(self.samples)
        if not samples:
            return {"ready": False}
        last = samples[-1]
        series: dict[str, list[list[float | None]]] = {}  # per group of operations
        latency: dict[str, list[list[float | None]]] = {}
        errors: list[list[float]] = []  # t, 4xx/s, 5xx/s (501 apart), 501/s
        for a, b in itertools.pairwise(samples):
            dt = b.t - a.t
            if dt <= 0:
                continue
            rate: dict[str, float] = {}
            hist: dict[str, dict[float, float]] = {}
            for op, count in b.ops.items():
                if op in ("Unknown", "Admin"):
                    continue
                group = group_of(op)
                rate[group] = rate.get(group, 0.0) + max(0.0, count - a.ops.get(op, 0.0)) / dt
                h = hist.setdefault(group, {})
                for le, c in b.buckets.get(op, {}).items():
                    h[le] = h.get(le, 0.0) + c - a.buckets.get(op, {}).get(le, 0.0)
            for group in rate:
                series.setdefault(group, []).append([b.t, rate[group]])
                p50, p99 = quantile(0.5, hist.get(group, {})), quantile(0.99, hist.get(group, {}))
                latency.setdefault(group, []).append([b.t, None if p50 is None else p50 * 1000,
                                                      None if p99 is None else p99 * 1000])
            errors.append([b.t, *(max(0.0, b.status.get(k, 0) - a.status.get(k, 0)) / dt
                                  for k in ("4xx", "5xx", "501"))])
        g = last.gauges
        hits, misses = g.get("mailstore_cache_hits", 0.0), g.get("mailstore_cache_misses", 0.0)
        free, size = g.get("mailstore_disk_free_bytes"), g.get("mailstore_disk_size_bytes")
        time_to_full = None  # from the free-space trend over the hour, once there are 10 minutes of it
        first = next((s for s in samples if "mailstore_disk_free_bytes" in s.gauges), None)
        basis = last.t - first.t if first is not None else 0.0
        if first is not None and free is not None and basis >= TREND_MIN_SECONDS:
            slope = (free - first.gauges["mailstore_disk_free_bytes"]) / basis
            if slope < 0:
                time_to_full = free / -slope
        window = [s for s in samples if s.t >= last.t - 300]
        deferring = window[-1].gauges.get("lmtp_temp_failed", 0) - window[0].gauges.get("lmtp_temp_failed", 0)
        full = "mailstore_engine_storage_full_total"
        refused = window[-1].gauges.get(full, 0) - window[0].gauges.get(full, 0)
        alerts = []
        for name, st in sorted(last.lb.items()):
            if st == "down":
                alerts.append({"level": "critical", "text": f"gateway {name} is down"})
            elif st == "draining":
                alerts.append({"level": "warning", "text": f"gateway {name} is draining"})
        if free is not None and size and (free / size < 0.10 or (time_to_full is not None and time_to_full < 86400)):
            alerts.append({"level": "critical", "text": "disk nearly full"})
        if g.get("mailstore_engine_checksum_errors_total", 0) > 0:
            alerts.append({"level": "critical", "text": f"{int(g['mailstore_engine_checksum_errors_total'])} "
                                                        "checksum errors"})
        if refused > 0:
            alerts.append({"level": "critical", "text": f"storage full: {int(refused)} writes refused (503) "
                                                        "in the last 5 minutes"})
        if deferring > 0:
            alerts.append({"level": "warning", "text": f"{int(deferring)} deliveries deferred in the last 5 minutes"})
        return {"ready": True, "time": last.t, "interval": self.interval, "gateways": last.lb,
                "requests": series, "latency_ms": latency, "errors": errors,
                "engine": {k.removeprefix("mailstore_"): v for k, v in g.items()
                           if k.startswith(("mailstore_engine_", "mailstore_disk_", "mailstore_compaction_",
                                            "mailstore_lifecycle_"))},
                "time_to_full_seconds": time_to_full, "trend_seconds": basis,
                "cache": {"hits": hits, "misses": misses,
                          "hit_ratio": hits / (hits + misses) if hits + misses else None,
                          "bytes": g.get("mailstore_cache_bytes")},
                "lmtp": {k.removeprefix("lmtp_"): v for k, v in g.items() if k.startswith("lmtp_")},
                "imap": {"sessions": g.get("mailstore_imap_sessions"), "idle": g.get("mailstore_imap_idle_sessions"),
                         "commands": g.get("imap_commands"),
                         "auth_failures": g.get("mailstore_imap_auth_failures_total")},
                "pop3": {"sessions": g.get("mailstore_pop3_sessions"), "logins": g.get("mailstore_pop3_logins_total"),
                         "retrieved": g.get("mailstore_pop3_retrieved_total"),
                         "deleted": g.get("mailstore_pop3_deleted_total"),
                         "auth_failures": g.get("mailstore_pop3_auth_failures_total")},
                "managesieve": {"sessions": g.get("mailstore_managesieve_sessions"),
                                "logins": g.get("mailstore_managesieve_logins_total"),
                                "stored": g.get("managesieve_stored"),
                                "auth_failures": g.get("mailstore_managesieve_auth_failures_total")},
                "users": last.users, "alerts": alerts, "groups": [g for g in GROUPS if g in series],
                **self.events.summary(last.t)}


class Dashboard:
    def __init__(self, src: Sources, interval: float = 5.0) -> None:
        self.src = src
        self.collector = Collector(src, interval)
        self.sessions: dict[str, float] = {}  # token -> expiry
        self.limiter = LoginLimiter()

    def _signed_in(self, request: web.Request) -> bool:
        token = request.cookies.get(COOKIE, "")
        expiry = self.sessions.get(token)
        return expiry is not None and expiry > time.time()

    async def page(self, request: web.Request) -> web.StreamResponse:
        if not self._signed_in(request):
            raise web.HTTPFound("/login")
        return web.Response(text=PAGE.read_text(), content_type="text/html",
                            headers={"Cache-Control": "no-store"})

    async def api_state(self, request: web.Request) -> web.Response:
        if not self._signed_in(request):
            return web.json_response({"error": "login required"}, status=401)
        return web.json_response(self.collector.state(), headers={"Cache-Control": "no-store"})

    async def login_form(self, request: web.Request, error: str = "") -> web.Response:
        note = f'<p class="error">{error}</p>' if error else ""
        return web.Response(content_type="text/html", text=(
            "<!doctype html><html><head><meta charset='utf-8'><title>mailstore: sign in</title>"
            "<style>body{font:15px system-ui,sans-serif;background:#f4f5f7;display:flex;justify-content:center;"
            "padding-top:12vh}form{background:#fff;padding:2em;border-radius:8px;box-shadow:0 1px 4px #0002}"
            "input{display:block;margin:.4em 0 1em;padding:.4em;width:16em}.error{color:#b00}</style></head><body>"
            "<form method='post' action='/login'><h2>mailstore operations</h2>" + note +
            "<label>User<input name='user' id='user' autocomplete='username'></label>"
            "<label>Password<input name='password' id='password' type='password' autocomplete='current-password'>"
            "</label><button id='signin' type='submit'>Sign in</button></form></body></html>"))

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        user, password = str(form.get("user", "")), str(form.get("password", ""))
        try:  # per address and per user, one attempt at a time, as IMAP logins
            async with self.limiter.attempt(f"addr:{request.remote}", f"user:{user[:256]}") as attempt:
                ok = hmac.compare_digest(user.encode(), self.src.user.encode()) & \
                    hmac.compare_digest(password.encode(), self.src.password.encode())
                attempt.succeeded() if ok else attempt.failed()
        except Busy:
            logs.event(auth_log, logging.WARNING, "login failed", remote=request.remote or "-", user=user[:256],
                       service="dashboard", reason="throttled")
            return web.Response(status=429, text="Too many login attempts; try again later.\n",
                                headers={"Retry-After": "16"})
        if not ok:
            logs.event(auth_log, logging.WARNING, "login failed", remote=request.remote or "-", user=user[:256],
                       service="dashboard", reason="password")
            return await self.login_form(request, "Wrong user or password.")
        logs.event(auth_log, logging.INFO, "login", remote=request.remote or "-", user=user, service="dashboard")
        token = secrets.token_urlsafe(32)
        now = time.time()
        self.sessions = {t: e for t, e in self.sessions.items() if e > now}
        self.sessions[token] = now + SESSION_SECONDS
        resp = web.HTTPFound("/")
        resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", max_age=SESSION_SECONDS)
        raise resp

    async def logout(self, request: web.Request) -> web.Response:
        self.sessions.pop(request.cookies.get(COOKIE, ""), None)
        resp = web.HTTPFound("/login")
        resp.del_cookie(COOKIE)
        raise resp

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.collector.registry),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.get("/", self.page), web.get("/api/state", self.api_state),
                        web.get("/login", self.login_form), web.post("/login", self.login),
                        web.get("/logout", self.logout), web.get("/metrics", self.metrics)])

        async def scraper(app: web.Application) -> AsyncIterator[None]:
            session = aiohttp.ClientSession()
            task = asyncio.create_task(self.collector.run(session))
            yield
            task.cancel()
            await session.close()
        app.cleanup_ctx.append(scraper)
        return app


def sources_from(data_dir: Path) -> tuple[Sources, str]:
    """The appliance's own config and secrets: what to scrape, who may sign in, where to listen."""
    from .config import load, metadata

    cfg = load(data_dir)
    sec = json.loads((data_dir / "secrets.json").read_text())
    return Sources([f"http://{g}" for g in cfg.gateways], f"http://{cfg.lb_stats}/stats",
                   {"lmtp": f"http://{cfg.lmtp_metrics}/metrics", "imap": f"http://{cfg.imap_metrics}/metrics",
                    **({"pop3": f"http://{cfg.pop3_metrics}/metrics"} if cfg.pop3 and cfg.pop3_metrics else {}),
                    **({"managesieve": f"http://{cfg.managesieve_metrics}/metrics"}
                       if cfg.managesieve and cfg.managesieve_metrics else {})},
                   os.environ.get("MAILSTORE_METADATA") or metadata(cfg, data_dir),  # set by `mailstore up`
                   sec["dashboard"]["user"], sec["dashboard"]["password"], data_dir / "logs"), cfg.dashboard


def run(data_dir: Path, interval: float = 5.0) -> int:
    src, listen = sources_from(data_dir)
    host, _, port = listen.rpartition(":")

    async def main() -> None:
        runner = web.AppRunner(Dashboard(src, interval).app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host.strip("[]"), int(port))
        await site.start()
        print(json.dumps({"event": "listening", "dashboard": f"http://{listen}/"}), flush=True)
        logs.event(log, logging.INFO, "listening", dashboard=f"http://{listen}/")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        logs.reopen_on_sighup(loop)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())
    return 0
