"""Run a gateway: the composition root for `mailstore gateway` (one process, or prefork workers)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket

from aiohttp import web

from runtime import logs, prefork

from .app import build_server
from .compact import Compactor
from .config import GatewayConfig, ssl_context
from .engine.api import Engine, ThreadRunner
from .engine.local import LocalEngine
from .engine.local_api import LocalGateway
from .filemodes import too_open
from .lifecycle import Lifecycle

log = logging.getLogger("gateway")


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(config: GatewayConfig, *, ready: dict[str, object] | None = None,
                sock: socket.socket | None = None, announce: bool = True) -> None:
    """Serve until SIGINT/SIGTERM; on `sock` when given (a worker), else bind config's address."""
    threads = ThreadRunner()
    engine = open_engine(config, threads)
    compactor = None
    if isinstance(engine, LocalGateway):
        for problem in too_open(config.data_dir):
            log.warning("other users may read the data: %s", problem)
        if config.compaction:
            compactor = Compactor(engine.local, interval=config.compaction_interval)
    server, gateway = build_server(config, engine, threads)
    gateway.compactor = compactor
    lifecycle = gateway.lifecycle = Lifecycle(engine, gateway.bucket_lifecycle, config.lifecycle_interval or 3600.0,
                                                   gateway.bucket_versioning)
    runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=config.drain_timeout)
    await runner.setup()
    site: web.BaseSite
    tls = ssl_context(config)
    if sock is not None:
        site = web.SockSite(runner, sock, ssl_context=tls)
    else:
        site = web.TCPSite(runner, config.host, config.port, backlog=1024, reuse_address=True, ssl_context=tls)
    await site.start()
    bound = runner.addresses  # what the listening sockets are bound to, (host, port, ...) each
    port = int(bound[0][1]) if bound else config.port
    host = f"[{config.host}]" if ":" in config.host else config.host
    scheme = "https" if tls is not None else "http"
    info = {"event": "listening", "endpoint": f"{scheme}://{host}:{port}", "port": port,
            "engine": engine.kind, "data_dir": str(config.data_dir) if engine.kind == "local" else None}
    if ready is not None:
        ready.update(info)
    if announce:
        print(json.dumps(info), flush=True)
    logs.event(log, logging.INFO, "listening", endpoint=info["endpoint"], engine=engine.kind,
               data_dir=info["data_dir"] or "-")
    if compactor is not None:
        compactor.start()
    if config.lifecycle_interval > 0:
        lifecycle.start()
    # SIGINT stops at once (in-flight requests still finish); SIGTERM drains
    # first: ready answers 404 for drain_grace so the balancer moves new
    # requests elsewhere, then the listener closes and in-flight requests have
    # drain_timeout to finish.
    stop, drain = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, drain.set)
    logs.reopen_on_sighup(loop)
    try:
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(drain.wait())]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if drain.is_set() and not stop.is_set():
            gateway.draining = True
            log.info("draining: /health/ready answers 404; stopping in %.1fs", config.drain_grace)
            await asyncio.wait([waits[0]], timeout=config.drain_grace)
        for w in waits:
            w.cancel()
    finally:
        logs.event(log, logging.INFO, "stopping", draining=gateway.draining)
        if compactor is not None:
            compactor.stop()
        await lifecycle.stop()
        await runner.cleanup()
        gateway.access_log.flush()
        threads.shutdown()
        engine.close()


def open_engine(config: GatewayConfig, runner: ThreadRunner) -> Engine:
    """The engine the configuration names: the local data directory, or a Ceph cluster."""
    if config.rados is not None:
        from .engine.rados import RadosStore
        from .engine.rados_api import RadosGateway

        r = config.rados
        store = RadosStore(r.conf, r.user, r.keyring, data_pool=r.data_pool, index_pool=r.index_pool,
                           meta_pool=r.meta_pool, namespace=r.namespace)
        engine = RadosGateway(store, r.master_key)
        try:
            engine.master_key()  # refuse to start without it, not at the first request
        except BaseException:
            engine.close()
            raise
        return engine
    return LocalGateway(LocalEngine(config.data_dir), runner)


def run(config: GatewayConfig, workers: int = 1) -> None:
    if workers > 1:
        run_workers(config, workers)
        return
    install_uvloop()
    asyncio.run(serve(config))


def run_workers(config: GatewayConfig, workers: int) -> None:
    """`mailstore gateway --workers N`: N gateway processes behind one socket.

    Each worker serves the inherited socket with its own LocalEngine (its own
    committer and segment; the index arbitrates).  Supervision is runtime.prefork's.
    """

    def child(sock: socket.socket) -> None:
        install_uvloop()
        asyncio.run(serve(config, sock=sock, announce=False))

    sock = prefork.bind(config.host, config.port)
    port = sock.getsockname()[1]
    host = f"[{config.host}]" if ":" in config.host else config.host
    scheme = "https" if config.tls_cert else "http"
    kind = "rados" if config.rados is not None else "local"
    prefork.run(sock, workers, child, {"event": "listening", "endpoint": f"{scheme}://{host}:{port}", "port": port,
                                       "engine": kind, "data_dir": str(config.data_dir) if kind == "local" else None})
