"""The appliance's one configuration file: DATA_DIR/mailstore.toml.

Written with the embedded defaults on first run (everything on 127.0.0.1),
read and validated once at start; unknown sections or keys are an error that
names them.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from runtime import logs

DEFAULT_TOML = """\
# mailstore appliance configuration, read by `mailstore up`.
# Written with the embedded defaults on first run; edit it and restart.

[s3]
listen = "{s3}"            # HAProxy's front: the S3 endpoint clients use
gateways = ["{gw1}", "{gw2}"]   # the gateway pair behind it
lb_stats = "{stats}"          # HAProxy's stats page (/stats)
https = ""                      # HAProxy's HTTPS front too, e.g. "0.0.0.0:443" (needs [tls])
bucket = "mail"
region = "us-east-1"

[mail]
lmtp = "{lmtp}"              # LMTP ingest (Postfix: lmtp:inet:...)
imap = "{imap}"              # IMAP (STARTTLS with [tls])
imaps = ""                            # IMAP over implicit TLS too, e.g. "0.0.0.0:993" (needs [tls])
pop3 = "{pop3}"              # POP3 on the INBOX (STLS with [tls]); "" for none
pop3s = ""                            # POP3 over implicit TLS too, e.g. "0.0.0.0:995" (needs [tls])
managesieve = "{managesieve}"       # ManageSieve: users' Sieve filters (STARTTLS with [tls]); "" for none
submission = ""                       # the SMTP relay Sieve redirects and vacation replies go to, e.g. "127.0.0.1:25"
domain = "example.com"                # the domain of bare local parts
cache_size = "1G"                     # the shim's fscache in DATA_DIR/cache
compress = ""                         # the shim's objects compressed: "zstd:3" (or "gz:6", "bz2:9", "xz:6")
mail_crypt = false                    # each user's mail encrypted to their own key pair (README: mail-crypt)
lmtp_metrics = "{lmtp_metrics}"      # Prometheus /metrics of the LMTP process
imap_metrics = "{imap_metrics}"      # ...and of the IMAP process (gateways: /metrics on their own port)
pop3_metrics = "{pop3_metrics}"      # ...and of the POP3 process
managesieve_metrics = "{managesieve_metrics}"   # ...and of the ManageSieve process
max_recipients = 100                  # LMTP RCPTs per transaction; past it 452 4.5.3 (RFC 5321)
state_record_interval = 300           # seconds: changed users' flags recorded in the bucket (for reindex)

[tls]
cert = ""   # PEM certificate chain: STARTTLS on LMTP and IMAP, [mail] imaps and [s3] https
key = ""    # its private key (PEM, 0600); both read again on SIGHUP (a renewed certificate)

[dashboard]
listen = "{dashboard}"           # the ops dashboard (admin login in DATA_DIR/secrets.json)
interval = 5                          # seconds between its scrapes of every part

[metadata]
url = ""        # "": SQLite in DATA_DIR/meta.db; or "postgresql://user@host:port/db" (several hosts)
passfile = ""   # PostgreSQL's password, as libpq reads it (a 0600 PGPASSFILE): never in the url
private = "{postgres}"   # `mailstore up --hosts 2` without a url: its own PostgreSQL, here

[engine]
kind = "local"     # "local": objects in DATA_DIR/engine; "rados": on a Ceph cluster (`mailstore up --engine rados`)
ceph_conf = ""     # "": with kind "rados", the appliance's own single-host cluster in DATA_DIR/ceph
ceph_user = "client.mailstore"   # the cephx user of the gateways
keyring = ""       # its keyring file (0600); "": /etc/ceph/ceph.<user>.keyring (own cluster: its own)
data_pool = "mailstore-data"
index_pool = "mailstore-index"   # OMAP: put it on fast media (README: "Gateways on Ceph RADOS")
meta_pool = "mailstore-meta"
namespace = ""     # a RADOS namespace in the pools (several stores on one set of pools)
master_key = ""    # "": DATA_DIR/master.key, made on first run (the same file on every gateway host)

[log]
level = "info"     # every part's; per logger too: "info,s3.access=warning,mailstore.imap=debug"
format = "text"    # "text" lines, or "json" lines; files in DATA_DIR/logs, reopened on SIGHUP
"""

DEFAULT_PORTS = {"s3": 8000, "gw1": 8001, "gw2": 8002, "stats": 8404, "lmtp": 2424, "imap": 1143,
                 "lmtp_metrics": 9124, "imap_metrics": 9143, "dashboard": 8080, "postgres": 5433, "pop3": 1110,
                 "pop3_metrics": 9110, "managesieve": 4190, "managesieve_metrics": 9190}


class ConfigError(ValueError):
    pass


def metadata(cfg: ApplianceConfig, data_dir: Path) -> str:
    """Where the mail metadata lives: what every `--db` of the appliance's parts gets.  A
    [metadata] passfile becomes this process's PGPASSFILE (libpq reads the password there;
    the parts inherit it)."""
    if cfg.metadata_passfile:
        os.environ["PGPASSFILE"] = cfg.metadata_passfile
    return cfg.metadata_url or str(data_dir / "meta.db")


@dataclass(frozen=True, slots=True)
class ApplianceConfig:
    s3_listen: str
    gateways: tuple[str, str]
    lb_stats: str
    bucket: str
    region: str
    lmtp: str
    imap: str
    domain: str
    cache_size: str
    lmtp_metrics: str
    imap_metrics: str
    dashboard: str
    dashboard_interval: float
    max_recipients: int = 100
    metadata_url: str = ""  # "": DATA_DIR/meta.db
    metadata_passfile: str = ""
    private_postgres: str = "127.0.0.1:5433"  # --hosts 2 without a url: the appliance's own cluster
    engine: str = "local"  # "local" or "rados"
    rados: dict[str, str] = field(default_factory=dict)  # [engine]'s other keys, as written
    log_level: str = "info"  # runtime/logs.py's level spec, for every part
    log_format: str = "text"
    s3_https: str = ""  # HAProxy's HTTPS front ("": none)
    imaps: str = ""  # IMAP over implicit TLS ("": none)
    tls_cert: str = ""  # [tls]: "" for no TLS
    tls_key: str = ""
    state_record_interval: float = 300.0  # seconds between the IMAP server's state records; 0: none
    compress: str = ""  # the shim's compress: wrapper ("zstd:3"); "": none
    mail_crypt: bool = False  # the shim's mail-crypt: wrapper
    pop3: str = ""  # POP3 ("": none)
    pop3s: str = ""  # POP3 over implicit TLS ("": none)
    pop3_metrics: str = ""
    managesieve: str = ""  # ManageSieve ("": none)
    managesieve_metrics: str = ""
    submission: str = ""  # Sieve's SMTP relay ("": redirects and vacation replies are not sent)


def default_text(ports: dict[str, int] | None = None) -> str:
    p = {**DEFAULT_PORTS, **(ports or {})}
    return DEFAULT_TOML.format(**{k: f"127.0.0.1:{v}" for k, v in p.items()})


def load(data_dir: Path) -> ApplianceConfig:
    """DATA_DIR/mailstore.toml, written with the defaults when it does not exist."""
    path = data_dir / "mailstore.toml"
    if not path.exists():
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_text(default_text())
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    known = {"s3": {"listen", "gateways", "lb_stats", "bucket", "region", "https"},
             "tls": {"cert", "key"},
             "mail": {"lmtp", "imap", "imaps", "domain", "cache_size", "lmtp_metrics", "imap_metrics",
                      "max_recipients", "state_record_interval", "compress", "mail_crypt", "pop3", "pop3s",
                      "pop3_metrics", "managesieve", "managesieve_metrics", "submission"},
             "dashboard": {"listen", "interval"}, "metadata": {"url", "passfile", "private"},
             "engine": {"kind", "ceph_conf", "ceph_user", "keyring", "data_pool", "index_pool", "meta_pool",
                        "namespace", "master_key"},
             "log": {"level", "format"}}
    for section, values in doc.items():
        if section not in known:
            raise ConfigError(f"{path}: unknown section [{section}]")
        extra = set(values) - known[section]
        if extra:
            raise ConfigError(f"{path}: unknown key(s) in [{section}]: {', '.join(sorted(extra))}")
    defaults = tomllib.loads(default_text())

    def value(sec: str, name: str) -> object:
        return doc.get(sec, {}).get(name, defaults[sec][name])

    def text(sec: str, name: str) -> str:
        v = value(sec, name)
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{path}: [{sec}] {name} must be a non-empty string")
        return v

    gateways = value("s3", "gateways")
    if not isinstance(gateways, list) or len(gateways) != 2 or \
            not all(isinstance(g, str) and g for g in gateways):
        raise ConfigError(f"{path}: [s3] gateways must list two HOST:PORT addresses")
    interval = value("dashboard", "interval")
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0.2 <= interval <= 300:
        raise ConfigError(f"{path}: [dashboard] interval must be seconds between 0.2 and 300")
    max_recipients = value("mail", "max_recipients")
    if isinstance(max_recipients, bool) or not isinstance(max_recipients, int) or \
            not 1 <= max_recipients <= 100_000:
        raise ConfigError(f"{path}: [mail] max_recipients must be a whole number from 1 to 100000")
    url, passfile = value("metadata", "url"), value("metadata", "passfile")
    if not isinstance(url, str) or (url and not url.startswith(("sqlite:///", "postgresql://"))):
        raise ConfigError(f"{path}: [metadata] url must be empty, sqlite:///PATH or postgresql://user@host:port/db")
    if url.startswith("postgresql://") and urlsplit(url).password is not None:
        raise ConfigError(f"{path}: [metadata] url must not hold the password (it would be on command lines): "
                          "put it in the passfile")
    if not isinstance(passfile, str):
        raise ConfigError(f"{path}: [metadata] passfile must be a path")
    kind = value("engine", "kind")
    if kind not in ("local", "rados"):
        raise ConfigError(f"{path}: [engine] kind must be \"local\" or \"rados\"")
    rados: dict[str, str] = {}
    for name in ("ceph_conf", "ceph_user", "keyring", "data_pool", "index_pool", "meta_pool", "namespace",
                 "master_key"):
        v = value("engine", name)
        if not isinstance(v, str):
            raise ConfigError(f"{path}: [engine] {name} must be a string")
        rados[name] = v
    for name in ("ceph_user", "data_pool", "index_pool", "meta_pool"):
        if not rados[name]:
            raise ConfigError(f"{path}: [engine] {name} must be a non-empty string")
    log_level, log_format = text("log", "level"), text("log", "format")
    try:
        logs.parse_levels(log_level)
    except ValueError as exc:
        raise ConfigError(f"{path}: [log] level: {exc}") from None
    if log_format not in logs.FORMATS:
        raise ConfigError(f"{path}: [log] format must be \"text\" or \"json\"")
    record = value("mail", "state_record_interval")
    if isinstance(record, bool) or not isinstance(record, (int, float)) or not 0 <= record <= 86400:
        raise ConfigError(f"{path}: [mail] state_record_interval must be seconds from 0 (never) to 86400")
    compress, mail_crypt = value("mail", "compress"), value("mail", "mail_crypt")
    if not isinstance(mail_crypt, bool):
        raise ConfigError(f"{path}: [mail] mail_crypt must be true or false")
    if not isinstance(compress, str):
        raise ConfigError(f"{path}: [mail] compress must be a string like \"zstd:3\"")
    if compress:
        from cache.url import FsUrlError, parse
        try:
            parse(f"compress:{compress}:s3:http://K:S@h/?bucket=b")
        except FsUrlError as exc:
            raise ConfigError(f"{path}: [mail] compress: {exc}") from None
    https, imaps, cert, key = (value(*k) for k in (("s3", "https"), ("mail", "imaps"), ("tls", "cert"),
                                                    ("tls", "key")))
    pop3, pop3s, pop3_metrics = (value("mail", k) for k in ("pop3", "pop3s", "pop3_metrics"))
    sieve, sieve_metrics, submission = (value("mail", k) for k in ("managesieve", "managesieve_metrics",
                                                                   "submission"))
    for name, v in (("[s3] https", https), ("[mail] imaps", imaps), ("[tls] cert", cert), ("[tls] key", key),
                    ("[mail] pop3", pop3), ("[mail] pop3s", pop3s), ("[mail] pop3_metrics", pop3_metrics),
                    ("[mail] managesieve", sieve), ("[mail] managesieve_metrics", sieve_metrics),
                    ("[mail] submission", submission)):
        if not isinstance(v, str):
            raise ConfigError(f"{path}: {name} must be a string")
    if bool(cert) != bool(key):
        raise ConfigError(f"{path}: [tls] needs both cert and key")
    if (https or imaps or pop3s) and not cert:
        raise ConfigError(f"{path}: [s3] https, [mail] imaps and pop3s need [tls] cert and key")
    if pop3s and not pop3:
        raise ConfigError(f"{path}: [mail] pop3s needs [mail] pop3 (the POP3 server it belongs to)")
    for name, v in (("cert", cert), ("key", key)):
        if v and not Path(str(v)).is_file():
            raise ConfigError(f"{path}: [tls] {name}: no such file {v}")
    cfg = ApplianceConfig(text("s3", "listen"), (gateways[0], gateways[1]), text("s3", "lb_stats"),
                          text("s3", "bucket"), text("s3", "region"), text("mail", "lmtp"), text("mail", "imap"),
                          text("mail", "domain"), text("mail", "cache_size"), text("mail", "lmtp_metrics"),
                          text("mail", "imap_metrics"), text("dashboard", "listen"), float(interval),
                          max_recipients, url, passfile, text("metadata", "private"), str(kind), rados,
                          log_level, log_format, str(https), str(imaps), str(cert), str(key), float(record),
                          compress, mail_crypt, str(pop3), str(pop3s), str(pop3_metrics), str(sieve),
                          str(sieve_metrics), str(submission))
    optional = ("s3_https", "imaps", "pop3", "pop3s", "pop3_metrics", "managesieve", "managesieve_metrics",
                "submission")
    for name in ("s3_listen", "lb_stats", "lmtp", "imap", "lmtp_metrics", "imap_metrics", "dashboard", "gateways",
                 "private_postgres", *optional):
        for addr in (getattr(cfg, name) if name == "gateways" else (getattr(cfg, name),)):
            if not addr and name in optional:
                continue
            host, _, port = addr.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"{path}: {name} wants HOST:PORT, got {addr!r}")
    return cfg
