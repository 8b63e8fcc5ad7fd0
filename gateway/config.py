"""The gateway's one validated configuration (built once, at start)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    region: str = "us-east-1"
    # Virtual-host style addressing: a Host of "<bucket>.<domain>" names the bucket.
    base_domains: tuple[str, ...] = field(default=("s3.localhost",))
    compaction: bool = True
    compaction_interval: float = 30.0

    def __post_init__(self) -> None:
        if not (0 <= self.port < 65536):
            raise ValueError(f"port out of range: {self.port}")
        for d in self.base_domains:
            if not d or d.startswith(".") or "/" in d:
                raise ValueError(f"invalid base domain: {d!r}")


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT, with [::1]:PORT for IPv6."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, got {text!r}")
    return host, int(port)
