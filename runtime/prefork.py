"""Several worker processes behind one listening socket (a leaf module: imports no part).

A Python process uses one core; the way to use every core is processes.  The
parent binds the socket, forks the workers before it has any thread, event
loop or database connection, and supervises:

- a worker dies with the parent (PR_SET_PDEATHSIG), so `kill -9` of the
  parent is a crash of the whole service, as an operator expects;
- SIGTERM/SIGINT to the parent is passed to the workers, which drain and exit;
- SIGHUP reopens the log file in the parent and every worker (runtime/logs.py);
- a worker that dies unexpectedly is replaced.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable

from . import logs

log = logging.getLogger("prefork")

PR_SET_PDEATHSIG = 1


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
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


def run(sock: socket.socket, workers: int, child: Callable[[socket.socket], None],
        announce: dict[str, object]) -> None:
    """Fork `workers` processes running child(sock); print `announce` as JSON; supervise."""
    parent = os.getpid()
    children: set[int] = set()
    stopping = False

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            _die_with_parent(parent)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            try:
                child(sock)
            except BaseException:
                log.exception("worker %d failed", os.getpid())
                os._exit(1)
            os._exit(0)
        children.add(pid)

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signum)  # SIGTERM drains, SIGINT stops at once
            except ProcessLookupError:
                pass

    def reopen(signum: int, frame: object) -> None:  # logrotate moved the log: every process reopens it
        logs.reopen()
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reopen)
    for _ in range(workers):
        spawn()
    print(json.dumps({**announce, "workers": workers}), flush=True)
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
