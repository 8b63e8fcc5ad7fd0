"""fscache tier: Dovecot fs URLs, an async S3 client, and an LRU disk cache in front of it."""

from __future__ import annotations

from .fscache import FsCache
from .s3client import AccessDenied, FsError, NotFound, ObjectStat, PreconditionFailed, S3Client, Unavailable
from .url import FsCacheUrl, FsUrlError, S3Url, parse

__all__ = ["open_fs", "FsCache", "S3Client", "FsError", "NotFound", "AccessDenied", "PreconditionFailed",
           "Unavailable", "ObjectStat", "FsUrlError"]


def open_fs(url: str | S3Url | FsCacheUrl) -> S3Client | FsCache:
    """The storage stack a Dovecot-style fs URL names."""
    spec = parse(url) if isinstance(url, str) else url
    if isinstance(spec, FsCacheUrl):
        return FsCache(S3Client(spec.parent), spec.path, spec.size)
    return S3Client(spec)
