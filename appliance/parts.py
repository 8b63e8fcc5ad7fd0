"""Each part's command line, from DATA_DIR/mailstore.toml alone.

`mailstore up` starts them all and supervises them; `mailstore part NAME` becomes one of
them (exec), which is what the systemd units run, so every listening address is written
once, in mailstore.toml.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import RadosSettings
from gateway.rados_cli import rados_argv

from .config import ApplianceConfig, ConfigError, load, metadata
from .setup import Secrets, shim_fs_url, write_private_text

ROOT = Path(__file__).resolve().parents[1]
HAPROXY_CFG = ROOT / "packaging" / "haproxy.cfg"
HAPROXY_MAIL_CFG = ROOT / "packaging" / "haproxy-mail.cfg"  # TCP fronts over several shim hosts
HAPROXY_POP3_CFG = ROOT / "packaging" / "haproxy-pop3.cfg"  # ... and POP3's
HAPROXY_SIEVE_CFG = ROOT / "packaging" / "haproxy-managesieve.cfg"  # ... and ManageSieve's
BIN = Path(sys.executable).parent
NAMES = ("gateway1", "gateway2", "haproxy", "lmtp", "imap", "pop3", "managesieve", "dashboard")


@dataclass
class Part:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    announces: bool = True  # prints one JSON "listening" line when it is up
    proc: subprocess.Popen[bytes] | None = None  # when running under up.Supervisor
    restarts: int = 0


def shifted(addr: str, by: int) -> str:
    host, _, port = addr.rpartition(":")
    return f"{host}:{int(port) + by}"


def _log_argv(data_dir: Path, cfg: ApplianceConfig, part: str, journal: bool) -> list[str]:
    """A part's log options: its file in DATA_DIR/logs (reopened on SIGHUP), level and format;
    `journal`: the lines also on stderr (systemd's journal), the file a copy."""
    where = "--log-copy" if journal else "--log-file"
    return [where, str(data_dir / "logs" / f"{part}.log"), "--log-level", cfg.log_level,
            "--log-format", cfg.log_format]


def parts(data_dir: Path, cfg: ApplianceConfig, sec: Secrets, db: str, hosts: int = 1,
          rados: RadosSettings | None = None, journal: bool = False) -> list[Part]:
    mailstore = str(BIN / "mailstore")
    engine = ["--data-dir", str(data_dir / "engine")] if rados is None else ["--engine", "rados", *rados_argv(rados)]
    gateways = [Part(f"gateway{i}", [mailstore, "gateway", *engine, "--listen", addr, "--region", cfg.region,
                                     *_tls_argv(cfg, "gateway")])
                for i, addr in enumerate(cfg.gateways, 1)]
    # master-worker (-W): SIGUSR2 reloads (a renewed certificate) without dropping connections
    haproxy = Part("haproxy", [shutil.which("haproxy") or "/usr/sbin/haproxy", "-f", str(HAPROXY_CFG), "-db", "-W"],
                   env={"MAILSTORE_S3_BIND": cfg.s3_listen, "MAILSTORE_GW1": cfg.gateways[0],
                        "MAILSTORE_GW2": cfg.gateways[1], "MAILSTORE_LB_STATS": cfg.lb_stats},
                   announces=False)
    if cfg.s3_https:  # HAProxy terminates S3's TLS; the certificate and key as one PEM it reads
        haproxy.env.update({"MAILSTORE_S3_HTTPS_BIND": cfg.s3_https, "MAILSTORE_TLS_PEM": str(tls_pem(data_dir))})
    if hosts > 1:  # the LMTP and IMAP addresses become HAProxy's TCP fronts over the shim hosts
        haproxy.argv[3:3] = ["-f", str(HAPROXY_MAIL_CFG)]
        haproxy.env.update({"MAILSTORE_LMTP_BIND": cfg.lmtp, "MAILSTORE_IMAP_BIND": cfg.imap})
        for k in (1, 2):
            haproxy.env[f"MAILSTORE_LMTP{k}"] = shifted(cfg.lmtp, 10 * k)
            haproxy.env[f"MAILSTORE_IMAP{k}"] = shifted(cfg.imap, 10 * k)
        if cfg.pop3:
            haproxy.argv[5:5] = ["-f", str(HAPROXY_POP3_CFG)]
            haproxy.env.update({"MAILSTORE_POP3_BIND": cfg.pop3, **{f"MAILSTORE_POP3{k}": shifted(cfg.pop3, 10 * k)
                                                                     for k in (1, 2)}})
        if cfg.managesieve:
            haproxy.argv[5:5] = ["-f", str(HAPROXY_SIEVE_CFG)]
            haproxy.env.update({"MAILSTORE_SIEVE_BIND": cfg.managesieve,
                                **{f"MAILSTORE_SIEVE{k}": shifted(cfg.managesieve, 10 * k) for k in (1, 2)}})
    shims: list[Part] = []
    for k in range(1, hosts + 1):
        # One host: the configured addresses. Several: host k 10*k ports above them (the
        # configured ones are HAProxy's fronts), each with its own cache; host 1 keeps the
        # configured metrics addresses (the dashboard reads them), host 2 10 above.
        suffix = "" if hosts == 1 else str(k)
        # The URL holds the shim's S3 secret: the processes read it from a 0600 file,
        # never from their command line (which every local user sees in ps).
        fs_file = data_dir / f"shim-fs{suffix}.url"
        if hosts > 1:
            write_private_text(fs_file, shim_fs_url(data_dir, cfg, sec, f"cache{k}") + "\n")
        fs = f"@{fs_file}"
        lmtp_at, imap_at = (cfg.lmtp, cfg.imap) if hosts == 1 else (shifted(cfg.lmtp, 10 * k),
                                                                    shifted(cfg.imap, 10 * k))
        metrics_by = 10 * (k - 1)
        shims.append(Part(f"lmtp{suffix}", [mailstore, "lmtp", "--db", db, "--fs", fs, "--listen", lmtp_at,
                                            "--domain", cfg.domain, "--max-recipients", str(cfg.max_recipients),
                                            "--metrics-listen", shifted(cfg.lmtp_metrics, metrics_by),
                                            *(["--submission", cfg.submission] if cfg.submission else []),
                                            *_tls_argv(cfg, "lmtp")]))
        shims.append(Part(f"imap{suffix}", [mailstore, "imap", "--db", db, "--fs", fs, "--listen", imap_at,
                                            "--domain", cfg.domain,
                                            "--metrics-listen", shifted(cfg.imap_metrics, metrics_by),
                                            "--state-record-interval", f"{cfg.state_record_interval:g}",
                                            *_tls_argv(cfg, "imap")]))
        if cfg.pop3:
            shims.append(Part(f"pop3{suffix}", [mailstore, "pop3", "--db", db, "--fs", fs, "--listen",
                                                cfg.pop3 if hosts == 1 else shifted(cfg.pop3, 10 * k),
                                                "--domain", cfg.domain,
                                                *(["--metrics-listen", shifted(cfg.pop3_metrics, metrics_by)]
                                                  if cfg.pop3_metrics else []),
                                                *_tls_argv(cfg, "pop3")]))
        if cfg.managesieve:  # (scripts are in the metadata store: no fs)
            shims.append(Part(f"managesieve{suffix}", [
                mailstore, "managesieve", "--db", db, "--listen",
                cfg.managesieve if hosts == 1 else shifted(cfg.managesieve, 10 * k), "--domain", cfg.domain,
                *(["--metrics-listen", shifted(cfg.managesieve_metrics, metrics_by)] if cfg.managesieve_metrics
                  else []),
                *_tls_argv(cfg, "managesieve")]))
    dashboard = Part("dashboard", [mailstore, "dashboard", "--data-dir", str(data_dir), "--interval",
                                   str(cfg.dashboard_interval)],
                     env={"MAILSTORE_METADATA": db})  # the store this run uses (also a private PostgreSQL)
    for part in [*gateways, *shims, dashboard]:
        part.argv += _log_argv(data_dir, cfg, part.name, journal)
    return [*gateways, haproxy, *shims, dashboard]


def _tls_argv(cfg: ApplianceConfig, part: str) -> list[str]:
    """[tls] cert and key for the mail parts (STARTTLS; IMAP also on [mail] imaps); the gateways
    stay plain HTTP behind HAProxy, which terminates S3's TLS itself."""
    if not cfg.tls_cert or part == "gateway":
        return []
    argv = ["--tls-cert", cfg.tls_cert, "--tls-key", cfg.tls_key]
    if part == "imap" and cfg.imaps:
        argv += ["--listen-tls", cfg.imaps]
    if part == "pop3" and cfg.pop3s:
        argv += ["--listen-tls", cfg.pop3s]
    return argv


def tls_pem(data_dir: Path) -> Path:
    return data_dir / "run" / "s3-tls.pem"


def write_tls_pem(data_dir: Path, cfg: ApplianceConfig) -> None:
    """[tls] cert and key joined for HAProxy (`crt` wants both in one file), 0600; written at
    start and again before HAProxy reloads (SIGHUP of `up`, the unit's ExecReload)."""
    if cfg.s3_https:
        text = Path(cfg.tls_cert).read_text().rstrip("\n") + "\n" + Path(cfg.tls_key).read_text()
        write_private_text(tls_pem(data_dir), text)


def exec_part(data_dir: Path, name: str, prepare: bool = False) -> None:
    """Become part NAME of the appliance in DATA_DIR (made by `mailstore init`): what the
    systemd units run.  Its lines go to stderr (the journal) and to DATA_DIR/logs/NAME.log."""
    import json

    from .setup import configured_rados

    if name not in NAMES:
        raise ConfigError(f"no part {name!r}: one of {', '.join(NAMES)}")
    secrets_file = data_dir / "secrets.json"
    if not secrets_file.exists():
        raise ConfigError(f"{data_dir} is not set up (no secrets.json): run `mailstore init --data-dir "
                          f"{data_dir}` first, as the user the parts run as")
    cfg = load(data_dir)
    sec: Secrets = json.loads(secrets_file.read_text())
    rados = configured_rados(data_dir, cfg) if cfg.engine == "rados" else None
    part = next(p for p in parts(data_dir, cfg, sec, metadata(cfg, data_dir), rados=rados, journal=True)
                if p.name == name)
    if name == "haproxy":  # master-worker: systemd's reload (SIGUSR2) re-reads the configuration
        write_tls_pem(data_dir, cfg)
        part.argv = [a for a in part.argv if a not in ("-db", "-W")] + ["-Ws"]  # -Ws: sd_notify
    if prepare:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(part.argv[0], part.argv, {**os.environ, **part.env})
