"""Dovecot lib-fs URLs: which storage stack to build (pure; no I/O).

    s3:http[s]://KEY:SECRET@host[:port]/[prefix/]?bucket=NAME&region=R&timeout=10s&max_retries=4
    fscache:SIZE:PATH:<parent URL>                 e.g. fscache:1G:/var/cache/mail:s3:http://...
    compress:ALGORITHM:LEVEL:<parent URL>          e.g. compress:zstd:3:s3:http://...
    mail-crypt:<parent URL>                        e.g. compress:zstd:3:mail-crypt:s3:http://...

As in Dovecot's fs-s3: credentials are URL-escaped; `bucket=` selects path
style, otherwise the bucket is the first DNS label of the host (virtual-host
style); without `region=` requests are signed with Signature V2, with it V4.
An unknown parameter is an error that names it, so a typo never silently
changes behaviour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "": 1}


class FsUrlError(ValueError):
    """The URL cannot be used; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class S3Url:
    scheme: str  # http | https
    host: str  # where to connect (for virtual-host style, without the bucket label)
    port: int
    access_key: str
    secret: str
    bucket: str
    path_style: bool
    prefix: str  # prepended to every key ("" or ending in "/")
    region: str | None  # None: Signature V2
    timeout: float = 10.0  # per request, seconds
    max_retries: int = 4
    absolute_timeout: float = 60.0  # a whole call, retries included
    delete_max_keys: int = 1000
    ca_file: str | None = None

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class FsCacheUrl:
    size: int  # bytes
    path: str
    parent: FsSpec


@dataclass(frozen=True, slots=True)
class CompressUrl:
    algorithm: str  # zstd | gz | bz2 | xz
    level: int
    parent: FsSpec


@dataclass(frozen=True, slots=True)
class MailCryptUrl:
    parent: FsSpec


FsSpec = S3Url | FsCacheUrl | CompressUrl | MailCryptUrl
COMPRESS_LEVELS = {"zstd": (1, 22), "gz": (1, 9), "bz2": (1, 9), "xz": (0, 9)}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)(i?B)?", text.strip(), re.IGNORECASE)
    if not m:
        raise FsUrlError(f"invalid size {text!r} (like 512M or 1G)")
    return int(m.group(1)) * SIZE_UNITS[m.group(2).upper()]


def parse_duration(text: str, name: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)?", text.strip())
    if not m:
        raise FsUrlError(f"{name}={text!r} is not a duration (like 10s or 500ms)")
    return float(m.group(1)) * DURATION_UNITS[m.group(2) or ""]


_S3_PARAMS = {"bucket", "region", "timeout", "max_retries", "absolute_timeout", "delete_max_keys", "ca_file"}


def parse_s3(url: str) -> S3Url:
    if not url.startswith("s3:"):
        raise FsUrlError(f"not an s3: URL: {url[:20]!r}")
    parts = urlsplit(url[3:])
    if parts.scheme not in ("http", "https"):
        raise FsUrlError("s3: URLs are s3:http://... or s3:https://...")
    if parts.username is None or parts.password is None:
        raise FsUrlError("s3: URLs carry the credentials: s3:http://KEY:SECRET@host/")
    if not parts.hostname:
        raise FsUrlError("s3: URL without a host")
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(params) - _S3_PARAMS)
    if unknown:
        raise FsUrlError(f"unknown s3 parameter(s): {', '.join(unknown)} (known: {', '.join(sorted(_S3_PARAMS))})")
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    bucket = params.get("bucket")
    path_style = bucket is not None
    if bucket is None:  # virtual-host style: the bucket is the host's first label
        label, dot, rest = host.partition(".")
        if not dot or not rest:
            raise FsUrlError("no ?bucket= and the host has no bucket label (virtual-host style: BUCKET.host)")
        bucket, host = label, rest
    if not bucket:
        raise FsUrlError("empty bucket name")
    prefix = unquote(parts.path.lstrip("/"))
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    try:
        max_retries = int(params.get("max_retries", "4"))
        delete_max_keys = int(params.get("delete_max_keys", "1000"))
    except ValueError as exc:
        raise FsUrlError(f"not a number: {exc}") from None
    if not 1 <= delete_max_keys <= 1000:
        raise FsUrlError("delete_max_keys must be between 1 and 1000")
    return S3Url(
        scheme=parts.scheme, host=host, port=port,
        access_key=unquote(parts.username), secret=unquote(parts.password),
        bucket=bucket, path_style=path_style, prefix=prefix, region=params.get("region") or None,
        timeout=parse_duration(params["timeout"], "timeout") if "timeout" in params else 10.0,
        max_retries=max_retries,
        absolute_timeout=(parse_duration(params["absolute_timeout"], "absolute_timeout")
                          if "absolute_timeout" in params else 60.0),
        delete_max_keys=delete_max_keys, ca_file=params.get("ca_file"),
    )


def parse(url: str) -> FsSpec:
    """An s3: URL, or a chain of fscache:, compress: and mail-crypt: wrappers in front of one."""
    if url.startswith("fscache:"):
        try:
            _, size, rest = url.split(":", 2)
            path, parent = rest.split(":", 1)
        except ValueError:
            raise FsUrlError("fscache URLs are fscache:SIZE:PATH:<parent URL>") from None
        if not path:
            raise FsUrlError("fscache: needs a cache directory")
        inner = parse(parent)
        if isinstance(inner, FsCacheUrl):
            raise FsUrlError("fscache: inside fscache: caches the same bytes twice")
        below: FsSpec = inner
        while not isinstance(below, S3Url):
            if isinstance(below, MailCryptUrl):
                raise FsUrlError("fscache: above mail-crypt: would keep decrypted mail on the local disk: put it "
                                 "below (mail-crypt:fscache:SIZE:PATH:s3:...)")
            below = below.parent
        return FsCacheUrl(parse_size(size), path, inner)
    if url.startswith("compress:"):
        try:
            _, algorithm, level_text, parent = url.split(":", 3)
        except ValueError:
            raise FsUrlError("compress URLs are compress:ALGORITHM:LEVEL:<parent URL>, e.g. compress:zstd:3:s3:...") \
                from None
        if algorithm == "lz4":
            raise FsUrlError("compress:lz4 is Dovecot's own framing and is not supported: use zstd, gz, bz2 or xz")
        if algorithm not in COMPRESS_LEVELS:
            raise FsUrlError(f"unknown compression {algorithm!r} (known: {', '.join(COMPRESS_LEVELS)})")
        low, high = COMPRESS_LEVELS[algorithm]
        if not level_text.isdigit() or not low <= int(level_text) <= high:
            raise FsUrlError(f"compress:{algorithm} level must be a number from {low} to {high}, not {level_text!r}")
        return CompressUrl(algorithm, int(level_text), parse(parent))
    if url.startswith("mail-crypt:"):
        inner = parse(url.removeprefix("mail-crypt:"))
        if not isinstance(inner, S3Url | FsCacheUrl):
            raise FsUrlError("mail-crypt: goes right above s3: (or an fscache: of it): encrypted bytes do not "
                             "compress, so compress: goes above mail-crypt:")
        return MailCryptUrl(inner)
    if url.startswith("s3:"):
        return parse_s3(url)
    driver = url.split(":", 1)[0]
    raise FsUrlError(f"unknown fs driver {driver!r} (this build knows s3:, fscache:, compress: and mail-crypt:)")


def s3_of(spec: FsSpec) -> S3Url:
    """The s3: URL at the bottom of a chain."""
    while not isinstance(spec, S3Url):
        spec = spec.parent
    return spec
