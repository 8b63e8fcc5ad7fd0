"""Server TLS for the mail parts: one context per process, its certificate read again on SIGHUP.

A renewed certificate (certbot's deploy hook, `systemctl reload`) takes effect for every
new handshake without a restart: `ssl.SSLContext.load_cert_chain` on the live context
replaces what new connections get; connections already up keep theirs.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from . import logs

log = logging.getLogger("mailstore.tls")


def server_context(cert: str | Path, key: str | Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def reloader(ctx: ssl.SSLContext, cert: str | Path, key: str | Path) -> logs.Hook:
    """For SIGHUP: the files read again; a broken new pair is logged and the old one kept."""
    def reload() -> None:
        try:
            ctx.load_cert_chain(str(cert), str(key))
        except (OSError, ssl.SSLError) as exc:
            logs.event(log, logging.ERROR, "certificate not reloaded; keeping the one in use", cert=str(cert),
                       error=str(exc))
            return
        logs.event(log, logging.INFO, "certificate reloaded", cert=str(cert))
    return reload
