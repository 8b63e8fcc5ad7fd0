"""`mailstore gateway --workers N`: N gateway processes behind one socket.

Each worker serves the inherited socket with its own LocalEngine (its own
committer and segment; the index arbitrates).  Supervision is appliance.prefork's.
"""

from __future__ import annotations

import asyncio
import socket

from .config import GatewayConfig


def run_workers(config: GatewayConfig, workers: int) -> None:
    from appliance import prefork  # a leaf module: no cycle, no part imported

    def child(sock: socket.socket) -> None:
        from .server import install_uvloop, serve

        install_uvloop()
        asyncio.run(serve(config, sock=sock, announce=False))

    sock = prefork.bind(config.host, config.port)
    port = sock.getsockname()[1]
    host = f"[{config.host}]" if ":" in config.host else config.host
    scheme = "https" if config.tls_cert else "http"
    prefork.run(sock, workers, child, {"event": "listening", "endpoint": f"{scheme}://{host}:{port}", "port": port,
                                       "data_dir": str(config.data_dir)})
