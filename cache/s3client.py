"""An async S3 client shaped like Dovecot's fs-s3 driver.

Signs with the gateway's own protocol code (gateway.s3: SigV2 without a region,
SigV4 with one), keeps connections alive, and retries what is transient:
5xx, 408 and connection failures, with Dovecot's backoff (50 ms, 500 ms, 5 s,
10 s, ...) inside one absolute deadline, honouring Retry-After.  4xx answers
are final and never retried.  Errors surface as typed exceptions.
"""

from __future__ import annotations

import asyncio
import base64
import email.header
import email.utils
import hashlib
import ssl as ssl_mod
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Self
from urllib.parse import quote, unquote_plus

from gateway.s3 import sigv2, sigv4
from gateway.s3.http import http_date

from .http1 import Http1Pool
from .url import S3Url

_SIGNED = frozenset({"host", "content-md5", "content-type"})
BACKOFF = (0.05, 0.5, 5.0, 10.0)  # Dovecot fs-s3's retry delays
META = "x-amz-meta-"


class FsError(Exception):
    """A storage operation failed; `code` is the S3 error code when there is one."""

    def __init__(self, message: str, *, code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.code, self.status = code, status


class NotFound(FsError):
    pass


class AccessDenied(FsError):
    pass


class PreconditionFailed(FsError):
    pass


class Unavailable(FsError):
    """The storage did not answer usefully within the deadline (retry later)."""


@dataclass(frozen=True, slots=True)
class ObjectStat:
    key: str
    size: int
    etag: str
    mtime: float
    content_type: str = ""
    metadata: dict[str, str] = field(default_factory=dict)  # x-amz-meta-* without the prefix


@dataclass(frozen=True, slots=True)
class ListEntry:
    key: str  # a key, or a common prefix when is_prefix
    is_prefix: bool = False
    size: int = 0
    etag: str = ""


def _error_from(status: int, body: bytes, what: str) -> FsError:
    code = message = ""
    try:
        root = ET.fromstring(body) if body else None
        if root is not None:
            code = root.findtext("Code") or ""
            message = root.findtext("Message") or ""
    except ET.ParseError:
        pass
    text = f"{what}: {status} {code or ''} {message}".strip()
    if status == 404:
        return NotFound(text, code=code or "NoSuchKey", status=status)
    if status == 403:
        return AccessDenied(text, code=code or "AccessDenied", status=status)
    if status == 412:
        return PreconditionFailed(text, code=code, status=status)
    return FsError(text, code=code, status=status)


def _metadata(value: str) -> str:
    """A user metadata value as sent: S3 returns a non-ASCII one RFC 2047 encoded."""
    if not (value.startswith("=?") and value.endswith("?=")):
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (LookupError, UnicodeDecodeError, ValueError):
        return value


def _stat(key: str, headers: Mapping[str, str]) -> ObjectStat:
    lm = headers.get("Last-Modified")
    mtime = email.utils.parsedate_to_datetime(lm).timestamp() if lm else 0.0
    meta = {k[len(META):].lower(): _metadata(v) for k, v in headers.items() if k.lower().startswith(META)}
    return ObjectStat(key, int(headers.get("Content-Length", "0")), headers.get("ETag", ""), mtime,
                      headers.get("Content-Type", ""), meta)


class S3Client:
    def __init__(self, url: S3Url) -> None:
        self.url = url
        self._pool: Http1Pool | None = None
        self.requests = 0
        self.retries = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def pool(self) -> Http1Pool:
        if self._pool is None:
            ssl = None
            if self.url.scheme == "https":  # verified with the system's CAs, or with ca_file's
                ssl = ssl_mod.create_default_context(cafile=self.url.ca_file)
            self._pool = Http1Pool(self.url.host, self.url.port, ssl=ssl, limit=64, idle_seconds=30)
        return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        self._pool = None

    # ------------------------------------------------------------------ requests

    def _target(self, key: str | None) -> tuple[str, str, str | None]:
        """(wire path, Host header, bucket-in-host for SigV2)."""
        u = self.url
        hostport = f"{u.host}:{u.port}"
        obj = "" if key is None else quote(u.prefix + key, safe="/~")
        if u.path_style:
            return f"/{u.bucket}" + (f"/{obj}" if key is not None else ""), hostport, None
        return f"/{obj}", f"{u.bucket}.{hostport}", u.bucket

    def _sign(self, method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str],
              body: bytes, vhost: str | None) -> None:
        u = self.url
        if u.region:
            signed = {k: v for k, v in headers.items() if k.lower() in _SIGNED or k[:6].lower() == "x-amz-"}
            headers.update(sigv4.sign_headers(
                method, path, query, signed,
                u.access_key, u.secret, region=u.region, payload_hash=hashlib.sha256(body).hexdigest()))
        else:
            headers["Date"] = http_date(time.time())
            lower = {k.lower(): [v] for k, v in headers.items()}
            sts = sigv2.string_to_sign(method, lower, headers["Date"], sigv2.canonical_resource(path, vhost, query))
            headers["Authorization"] = f"AWS {u.access_key}:{sigv2.sign(u.secret, sts)}"

    async def request(self, method: str, key: str | None, *, query: list[tuple[str, str]] | None = None,
                      body: bytes = b"", headers: dict[str, str] | None = None,
                      ok: tuple[int, ...] = (200,)) -> tuple[int, Mapping[str, str], bytes]:
        """One S3 call with retries; returns (status, headers, body) for an `ok` status."""
        q = query or []
        path, host, vhost = self._target(key)
        qs = sigv4.canonical_query(q)
        target = path + (f"?{qs}" if qs else "")  # sent exactly as signed
        deadline = time.monotonic() + self.url.absolute_timeout
        what = f"{method} {key if key is not None else self.url.bucket}"
        attempt = 0
        while True:
            h = {"Host": host, **(headers or {})}
            if body:
                h.setdefault("Content-MD5", base64.b64encode(hashlib.md5(body).digest()).decode())
            self._sign(method, path, q, h, body, vhost)
            retry_after: float | None = None
            failure: str
            try:
                self.requests += 1
                timeout = min(self.url.timeout, max(0.1, deadline - time.monotonic()))
                async with asyncio.timeout(timeout):
                    resp = await self.pool().request(method, target, h, body)
                if resp.status in ok:
                    return resp.status, resp.headers, resp.body
                if resp.status < 500 and resp.status != 408:
                    raise _error_from(resp.status, resp.body, what)
                failure = f"{resp.status} {_error_from(resp.status, resp.body, what)}"
                ra = resp.headers.get("Retry-After", "")
                retry_after = float(ra) if ra.replace(".", "", 1).isdigit() else None
            except (TimeoutError, OSError) as exc:  # OSError: HttpError, TLS and socket errors
                failure = f"{type(exc).__name__}: {exc}"
            if attempt >= self.url.max_retries:
                raise Unavailable(f"{what}: gave up after {attempt + 1} attempts: {failure}", status=503)
            delay = BACKOFF[min(attempt, len(BACKOFF) - 1)]
            if retry_after is not None:
                delay = max(delay, retry_after)
            if time.monotonic() + delay >= deadline:
                raise Unavailable(f"{what}: no answer within {self.url.absolute_timeout:g}s: {failure}", status=503)
            attempt += 1
            self.retries += 1
            await asyncio.sleep(delay)

    # ------------------------------------------------------------------ operations

    async def get(self, key: str) -> tuple[bytes, ObjectStat]:
        _, headers, body = await self.request("GET", key)
        return body, _stat(key, headers)

    async def get_many(self, keys: list[str]) -> list[bytes]:
        """The bodies of several objects, fetched concurrently."""
        return [body for body, _ in await asyncio.gather(*(self.get(k) for k in keys))]

    async def stat(self, key: str) -> ObjectStat:
        _, headers, _ = await self.request("HEAD", key)
        return _stat(key, headers)

    async def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None,
                  content_type: str = "application/octet-stream") -> str:
        h = {"Content-Type": content_type, **{META + k: v for k, v in (metadata or {}).items()}}
        _, headers, _ = await self.request("PUT", key, body=data, headers=h)
        return headers.get("ETag", "")

    async def put_new(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> bool:
        """Write `key` only if it does not exist (If-None-Match: *): False when it does."""
        status, _, _ = await self.request("PUT", key, body=data, ok=(200, 412),
                                          headers={"Content-Type": content_type, "If-None-Match": "*"})
        return status == 200

    async def delete(self, key: str) -> None:
        await self.request("DELETE", key, ok=(200, 204, 404))

    async def delete_many(self, keys: list[str]) -> list[tuple[str, str]]:
        """Bulk delete in batches; returns the (key, error code) pairs that failed."""
        failed: list[tuple[str, str]] = []
        step = self.url.delete_max_keys
        for i in range(0, len(keys), step):
            batch = keys[i:i + step]
            doc = ("<Delete><Quiet>true</Quiet>" + "".join(
                f"<Object><Key>{_xml_escape(self.url.prefix + k)}</Key></Object>" for k in batch)
                    + "</Delete>").encode()
            _, _, body = await self.request("POST", None, query=[("delete", "")], body=doc,
                                            headers={"Content-Type": "application/xml"})
            root = ET.fromstring(body)
            for err in root.iter():
                if err.tag.endswith("Error"):
                    k = next((c.text or "" for c in err if c.tag.endswith("Key")), "")
                    c = next((c.text or "" for c in err if c.tag.endswith("Code")), "")
                    failed.append((k[len(self.url.prefix):], c))
        return failed

    async def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None) -> None:
        """Server-side copy; with `metadata`, replace it (x-amz-metadata-directive: REPLACE)."""
        h = {"x-amz-copy-source": quote(f"/{self.url.bucket}/{self.url.prefix}{src}", safe="/~")}
        if metadata is not None:
            h["x-amz-metadata-directive"] = "REPLACE"
            h.update({META + k: v for k, v in metadata.items()})
        _, _, body = await self.request("PUT", dst, headers=h)
        if b"<Error>" in body:  # S3 may report a failed copy inside a 200
            raise _error_from(500, body, f"COPY {src} -> {dst}")

    async def list(self, prefix: str = "", delimiter: str | None = None,
                   page_size: int = 1000) -> AsyncIterator[ListEntry]:
        """Every key (and common prefix) under `prefix`, ListObjects V1 with marker paging."""
        marker = ""
        full_prefix = self.url.prefix + prefix
        cut = len(self.url.prefix)
        while True:
            q = [("prefix", full_prefix), ("max-keys", str(page_size)), ("encoding-type", "url")]
            if delimiter:
                q.append(("delimiter", delimiter))
            if marker:
                q.append(("marker", marker))
            _, _, body = await self.request("GET", None, query=q)
            root = ET.fromstring(body)
            ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            last = ""
            for c in root.findall(f"{ns}Contents"):
                k = unquote_plus(c.findtext(f"{ns}Key") or "")
                last = k
                yield ListEntry(k[cut:], False, int(c.findtext(f"{ns}Size") or 0), c.findtext(f"{ns}ETag") or "")
            for p in root.findall(f"{ns}CommonPrefixes"):
                k = unquote_plus(p.findtext(f"{ns}Prefix") or "")
                last = max(last, k)
                yield ListEntry(k[cut:], True)
            if root.findtext(f"{ns}IsTruncated") != "true":
                return
            nxt = root.findtext(f"{ns}NextMarker")
            marker = unquote_plus(nxt) if nxt else last
            if not marker:
                return


def _xml_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
