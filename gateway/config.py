"""The gateway's one validated configuration (built once, at start)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class RadosSettings:
    """A Ceph cluster as the engine (gateway/engine/rados_api.py): its ceph.conf, a cephx user
    and its keyring file (the key never on a command line), the three pools, and the master
    key that seals access-key secrets (the same 32 bytes on every gateway host, 0600)."""

    conf: str = "/etc/ceph/ceph.conf"
    user: str = "client.mailstore"
    keyring: str = "/etc/ceph/ceph.client.mailstore.keyring"
    data_pool: str = "mailstore-data"
    index_pool: str = "mailstore-index"
    meta_pool: str = "mailstore-meta"
    master_key: Path = Path("/etc/mailstore/master.key")
    namespace: str = ""  # a RADOS namespace in the pools: several stores on one set of pools


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    data_dir: Path  # the local engine's data directory (unused on RADOS)
    host: str = "127.0.0.1"
    port: int = 8000
    region: str = "us-east-1"
    # Virtual-host style addressing: a Host of "<bucket>.<domain>" names the bucket.
    base_domains: tuple[str, ...] = field(default=("s3.localhost",))
    compaction: bool = True
    compaction_interval: float = 30.0
    lifecycle_interval: float = 3600.0  # seconds between lifecycle passes (gateway/lifecycle.py); 0: none
    # Overload: past this many requests in flight a gateway answers 503 SlowDown
    # with Retry-After (Dovecot and the SDKs back off and retry) instead of queueing.
    max_inflight: int = 1024
    tls_cert: Path | None = None  # serve HTTPS with this certificate chain (PEM)...
    tls_key: Path | None = None  # ...and this private key (PEM)
    # Health and drain (gateway/health.py).  A load balancer must time out a
    # server after the gateway gives up on a request, and close idle keep-alive
    # connections before the gateway does (packaging/haproxy.cfg: 310 s, 10 s).
    min_free_bytes: int = 256 * 1024 * 1024  # /health/ready fails below this much free disk
    request_timeout: float = 300.0  # one request, headers to last byte of the answer
    idle_timeout: float = 75.0  # an idle keep-alive connection is closed after this
    drain_grace: float = 3.0  # after SIGTERM: answer 404 on ready this long before closing the listener
    drain_timeout: float = 20.0  # then in-flight requests have this long to finish
    rados: RadosSettings | None = None  # objects on this Ceph cluster instead of data_dir

    def __post_init__(self) -> None:
        if not (0 <= self.port < 65536):
            raise ValueError(f"port out of range: {self.port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key")
        for d in self.base_domains:
            if not d or d.startswith(".") or "/" in d:
                raise ValueError(f"invalid base domain: {d!r}")


def ssl_context(config: GatewayConfig) -> ssl.SSLContext | None:
    """A server TLS context (TLS 1.2+), or None for plain HTTP."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(config.tls_cert), str(config.tls_key))
    return ctx


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT, with [::1]:PORT for IPv6."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, got {text!r}")
    return host, int(port)


def parse_bytes(text: str) -> int:
    """A byte count: 1073741824, 512M, 1G (binary units)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B")
    if t[-1:] in units and t[:-1].isdigit():
        return int(t[:-1]) * units[t[-1]]
    if t.isdigit():
        return int(t)
    raise ValueError(f"not a size: {text!r} (like 512M or 1G)")
