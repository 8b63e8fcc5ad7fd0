"""fscache tier: Dovecot fs URLs, an async S3 client, and an LRU disk cache in front of it."""

from __future__ import annotations

from pathlib import Path

from .compress import Compressed
from .fscache import FsCache
from .mailcrypt import MailCrypt, mail_crypt_of
from .s3client import AccessDenied, FsError, NotFound, ObjectStat, PreconditionFailed, S3Client, Unavailable
from .url import CompressUrl, FsCacheUrl, FsSpec, FsUrlError, MailCryptUrl, S3Url, parse

__all__ = [
    "AccessDenied",
    "CompressUrl",
    "Compressed",
    "Fs",
    "FsCache",
    "FsError",
    "FsSpec",
    "FsUrlError",
    "MailCrypt",
    "NotFound",
    "ObjectStat",
    "PreconditionFailed",
    "S3Client",
    "S3Url",
    "Unavailable",
    "has_mail_crypt",
    "mail_crypt_of",
    "open_fs",
    "read_url",
]


Fs = S3Client | FsCache | Compressed | MailCrypt  # what open_fs gives: the same calls (store.Store) either way


def read_url(text: str) -> str:
    """`text`, or with "@PATH" the URL kept in that file.

    An fs URL carries the S3 secret; on a command line every local user reads
    it in `ps`.  Processes are given "@/path/to/file" (mode 0600) instead.
    """
    if not text.startswith("@"):
        return text
    path = Path(text[1:])
    try:
        mode = path.stat().st_mode
        url = path.read_text().strip()
    except OSError as exc:
        raise FsUrlError(f"cannot read the fs URL from {path}: {exc.strerror}") from None
    if mode & 0o007:
        raise FsUrlError(f"{path} holds a secret but other users may read it: chmod 600 {path}")
    return url


def has_mail_crypt(url: str) -> bool:
    """Whether an fs URL (or @FILE) has a mail-crypt: layer."""
    spec: FsSpec = parse(read_url(url))
    while not isinstance(spec, S3Url):
        if isinstance(spec, MailCryptUrl):
            return True
        spec = spec.parent
    return False


def open_fs(url: str | FsSpec) -> Fs:
    """The storage stack a Dovecot-style fs URL names ("@PATH": the URL in that file)."""
    spec = parse(read_url(url)) if isinstance(url, str) else url
    if isinstance(spec, FsCacheUrl):
        return FsCache(open_fs(spec.parent), spec.path, spec.size)
    if isinstance(spec, CompressUrl):
        return Compressed(open_fs(spec.parent), spec.algorithm, spec.level)
    if isinstance(spec, MailCryptUrl):
        return MailCrypt(open_fs(spec.parent))
    return S3Client(spec)
