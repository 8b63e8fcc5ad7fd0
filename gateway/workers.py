"""Several gateway processes behind one listening socket (`--workers N`).

A Python process uses one core; the engine was built for several gateway
processes on one data directory (each with its own committer and segment, the
index arbitrating), so the way to use every core is processes.  The parent
binds the socket, forks the workers (before it has any thread, event loop or
database connection), and supervises:

- each worker serves the inherited socket with its own LocalEngine;
- a worker dies with the parent (PR_SET_PDEATHSIG), so `kill -9` of the
  parent is a crash of the whole gateway, as an operator expects;
- SIGTERM/SIGINT to the parent is passed to the workers, which drain and exit;
- a worker that dies unexpectedly is replaced.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import time

from .config import GatewayConfig

log = logging.getLogger("gateway.workers")

PR_SET_PDEATHSIG = 1


def bind(config: GatewayConfig) -> socket.socket:
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # pragma: no cover - non-glibc systems
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _worker(config: GatewayConfig, sock: socket.socket, parent: int) -> None:
    _die_with_parent(parent)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    from .server import install_uvloop, serve

    install_uvloop()
    try:
        asyncio.run(serve(config, sock=sock, announce=False))
    except BaseException:
        log.exception("worker %d failed", os.getpid())
        os._exit(1)
    os._exit(0)


def run_workers(config: GatewayConfig, workers: int) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    sock = bind(config)
    port = sock.getsockname()[1]
    host = f"[{config.host}]" if ":" in config.host else config.host
    parent = os.getpid()
    children: set[int] = set()
    stopping = False

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            _worker(config, sock, parent)
        children.add(pid)

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(workers):
        spawn()
    scheme = "https" if config.tls_cert else "http"
    print(json.dumps({"event": "listening", "endpoint": f"{scheme}://{host}:{port}", "port": port,
                      "data_dir": str(config.data_dir), "workers": workers}), flush=True)
    last_respawn = 0.0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        children.discard(pid)
        if not stopping:
            log.error("worker %d exited (status %d); replacing it", pid, status)
            if time.monotonic() - last_respawn < 1.0:
                time.sleep(1.0)  # do not spin if workers die at once on start
            last_respawn = time.monotonic()
            spawn()
    sock.close()
