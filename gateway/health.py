"""Health for load balancers: GET /health/live and GET /health/ready.

- live: the process answers (200).
- ready: 200 when the engine answers, the data directory is writable and its
  free space is above the configured floor; 503 when one of those fails;
  404 while the gateway drains, which HAProxy's `http-check disable-on-404`
  reads as "finish what you have, send nothing new".

Only unsigned GET/HEAD requests are health checks (or metrics scrapes): a
signed request for /health/live is S3 (bucket "health", key "live") like any
other.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from aiohttp import web

from .context import Gateway

PATHS = ("/health/live", "/health/ready", "/metrics")  # /metrics: gateway/metrics.py


def is_check(request: web.BaseRequest, raw_path: str, raw_query: str) -> bool:
    return (raw_path in PATHS and request.method in ("GET", "HEAD") and "authorization" not in request.headers
            and "Signature" not in raw_query)


async def readiness(gw: Gateway) -> dict[str, str | int | bool]:
    """What /health/ready reports: the engine answers and, on a local engine, its disk is
    writable with room left."""
    checks: dict[str, str | int | bool] = {}
    try:
        await gw.engine.probe()
        checks["engine"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure to answer is "not ready", with its reason
        checks["engine"] = f"failed: {type(exc).__name__}: {exc}"
    if gw.engine.kind == "local":
        checks.update(await gw.run_blocking(_disk, gw.config.data_dir))
        checks["min_free_bytes"] = gw.config.min_free_bytes
    checks["draining"] = gw.draining
    return checks


def _disk(data_dir: Path) -> dict[str, str | int | bool]:
    try:
        free = shutil.disk_usage(data_dir).free
    except OSError:
        free = 0
    return {"data_dir_writable": os.access(data_dir, os.W_OK), "free_bytes": free}


async def respond(gw: Gateway, request: web.BaseRequest, raw_path: str) -> web.Response:
    body: dict[str, object]
    if raw_path == "/health/live":
        status, body = 200, {"status": "live"}
    else:
        checks = await readiness(gw)
        ok = checks["engine"] == "ok" and (gw.engine.kind != "local" or (
            bool(checks["data_dir_writable"]) and int(checks["free_bytes"]) >= gw.config.min_free_bytes))
        if gw.draining:
            status, state = 404, "draining"
        else:
            status, state = (200, "ready") if ok else (503, "not ready")
        body = {"status": state, "checks": checks}
    text = None if request.method == "HEAD" else json.dumps(body) + "\n"
    resp = web.Response(status=status, text=text, content_type="application/json")
    resp.headers["Cache-Control"] = "no-store"
    return resp
