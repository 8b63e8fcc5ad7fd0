"""Who is asking: every request is authenticated here, or denied.

Deny by default: a request with no signature is AccessDenied.  Signature V4 in
the Authorization header or in a presigned query is verified against the
secret the engine keeps (shared by every gateway on the data directory).
Signature V2 and streaming-chunk signatures slot in as further `_verify_*`
methods; access policies are evaluated on the returned `Principal`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from multidict import CIMultiDictProxy

from .access import ANONYMOUS
from .keys import AccessKey, KeyStore
from .s3 import numbers, sigv2, sigv4
from .s3.chunked import ChunkSigner
from .s3.errors import S3Error
from .s3.http import parse_any_date

KEY_CACHE_SECONDS = 2.0  # a deleted key stops working everywhere within this


@dataclass(frozen=True, slots=True)
class Principal:
    key: AccessKey
    payload_hash: str  # what the signature says about the body
    presigned: bool
    # For STREAMING-AWS4-HMAC-SHA256-PAYLOAD: what chains the chunk signatures.
    chunk_seed: ChunkSigner | None = None


class Authenticator:
    def __init__(self, keys: KeyStore, clock: Callable[[], float] = time.time) -> None:
        self.keys = keys
        self.clock = clock
        self._cache: dict[str, tuple[float, AccessKey | None]] = {}

    def forget(self, access_key: str) -> None:
        """Drop a cached key at once (this process changed it)."""
        self._cache.pop(access_key, None)

    async def lookup(self, access_key: str) -> AccessKey:
        now = self.clock()
        hit = self._cache.get(access_key)
        if hit is None or now - hit[0] > KEY_CACHE_SECONDS:
            if len(self._cache) > 10_000:
                self._cache.clear()
            hit = (now, await self.keys.get(access_key))
            self._cache[access_key] = hit
        if hit[1] is None:
            raise S3Error("InvalidAccessKeyId", extra={"AWSAccessKeyId": access_key})
        return hit[1]

    async def authenticate(self, method: str, raw_path: str, pairs: list[tuple[str, str]],
                     query: Mapping[str, str], headers: CIMultiDictProxy[str],
                     vhost_bucket: str | None = None) -> Principal:
        """`pairs` is the decoded query in wire order, `query` the same as a mapping;
        `vhost_bucket` the bucket when it came from the Host header (SigV2 signs it)."""
        _refuse_repeats(headers, pairs)
        _refuse_undecodable(headers)
        authz = headers.get("authorization")
        if authz is not None:
            if authz.startswith(sigv4.ALGORITHM):
                amz_date = headers.get("x-amz-date") or _date_to_amz(headers.get("date"))
                signed = sigv4.parse_authorization_header(
                    authz, amz_date, headers.get("x-amz-content-sha256", ""))
            elif authz.startswith("AWS "):
                return await self._v2_header(authz, method, raw_path, pairs, headers, vhost_bucket)
            else:
                raise S3Error("AccessDenied", "Unsupported Authorization type")
        elif "X-Amz-Signature" in query or "X-Amz-Algorithm" in query:
            signed = sigv4.parse_presigned_query(dict(query))
        elif "Signature" in query and "AWSAccessKeyId" in query:
            return await self._v2_query(query, method, raw_path, pairs, headers, vhost_bucket)
        else:  # anonymous: only what a bucket policy grants "*" (access.py)
            return Principal(ANONYMOUS, sigv4.UNSIGNED_PAYLOAD, False)
        key = await self.lookup(signed.credential.access_key)
        sigv4.check_time(signed, self.clock())
        for required in ("host",):
            if required not in signed.signed_headers:
                raise S3Error("AccessDenied", f"The {required} header must be signed")
        _refuse_unsigned_amz(headers, signed)
        hdrs = {name: headers.getall(name, []) for name in signed.signed_headers}
        expected = sigv4.expected_signature(signed, key.secret, method, raw_path, pairs, hdrs)
        sigv4.verify_signature(signed, expected)
        seed = None
        if signed.payload_hash.startswith("STREAMING-AWS4-HMAC-SHA256-PAYLOAD"):
            c = signed.credential
            seed = ChunkSigner(sigv4.signing_key(key.secret, c.date, c.region, c.service),
                               signed.amz_date, c.scope, expected)
        return Principal(key, signed.payload_hash, signed.presigned, seed)


    # ------------------------------------------------------------ Signature V2

    async def _v2_header(self, authz: str, method: str, raw_path: str, pairs: list[tuple[str, str]],
                   headers: CIMultiDictProxy[str], vhost_bucket: str | None) -> Principal:
        akid, claimed = sigv2.parse_header(authz)
        key = await self.lookup(akid)
        when_text = headers.get("x-amz-date") or headers.get("date")
        when = parse_any_date(when_text) if when_text else None
        if when is None:
            raise S3Error("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header")
        if abs(self.clock() - when.timestamp()) > sigv4.MAX_SKEW_SECONDS:
            raise S3Error("RequestTimeTooSkewed", extra={"RequestTime": when_text or ""})
        hdrs = _v2_headers(headers)
        date = "" if "x-amz-date" in hdrs else (headers.get("date") or "")
        sigv2.verify(key.secret, [sigv2.string_to_sign(method, hdrs, date, r)
                                  for r in sigv2.resource_forms(raw_path, vhost_bucket, pairs)], claimed)
        return Principal(key, sigv4.UNSIGNED_PAYLOAD, presigned=False)

    async def _v2_query(self, query: Mapping[str, str], method: str, raw_path: str, pairs: list[tuple[str, str]],
                  headers: CIMultiDictProxy[str], vhost_bucket: str | None) -> Principal:
        key = await self.lookup(query["AWSAccessKeyId"])
        expires = query.get("Expires", "")
        expires_at = numbers.decimal(expires)
        if expires_at is None:
            raise S3Error("AccessDenied", "Query-string authentication requires the Expires parameter")
        if self.clock() > expires_at:
            raise S3Error("AccessDenied", "Request has expired", extra={"Expires": expires})
        hdrs = _v2_headers(headers)
        sigv2.verify(key.secret, [sigv2.string_to_sign(method, hdrs, expires, r)
                                  for r in sigv2.resource_forms(raw_path, vhost_bucket, pairs)], query["Signature"])
        return Principal(key, sigv4.UNSIGNED_PAYLOAD, presigned=True)


# Authentication inputs that may appear once: with two, one copy would be
# checked and the other obeyed.
_ONCE_HEADERS = ("authorization", "x-amz-date", "x-amz-content-sha256", "date")
_ONCE_QUERY = frozenset({"X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                         "X-Amz-SignedHeaders", "X-Amz-Signature", "X-Amz-Content-Sha256",
                         "X-Amz-Security-Token", "AWSAccessKeyId", "Signature", "Expires"})


def _refuse_repeats(headers: CIMultiDictProxy[str], pairs: list[tuple[str, str]]) -> None:
    for name in _ONCE_HEADERS:
        if len(headers.getall(name, ())) > 1:
            raise S3Error("InvalidArgument", f"The {name} header may appear only once",
                          extra={"ArgumentName": name})
    seen: set[str] = set()
    for name, _ in pairs:
        if name in _ONCE_QUERY:
            if name in seen:
                raise S3Error("InvalidArgument", f"The {name} parameter may appear only once",
                              extra={"ArgumentName": name})
            seen.add(name)


def _refuse_undecodable(headers: CIMultiDictProxy[str]) -> None:
    """Header bytes that are not UTF-8 (aiohttp hands them over as surrogates) are a 400.

    What a signature covers is bytes; a value that cannot be turned back into
    the bytes that were sent cannot be checked, nor stored and served again.
    """
    for name, value in headers.items():
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                raise S3Error("InvalidArgument", f"The {name} header is not valid UTF-8",
                              extra={"ArgumentName": name}) from None


def _refuse_unsigned_amz(headers: CIMultiDictProxy[str], signed: sigv4.SignedRequest) -> None:
    """AWS: every x-amz-* header present must be covered by the signature.

    An unsigned one could be added by anybody between the signer and us (a
    presigned URL is a bearer token): x-amz-copy-source would turn a PUT into a
    copy with the signer's rights.  With header signing, x-amz-content-sha256
    and x-amz-date are covered anyway: their values are lines of what is signed.
    """
    covered = set(signed.signed_headers)
    if not signed.presigned:
        covered |= {"x-amz-content-sha256", "x-amz-date"}
    unsigned = sorted({n.lower() for n in headers if n[:6].lower() == "x-amz-"} - covered)
    if unsigned:
        raise S3Error("AccessDenied", "There were headers present in the request which were not signed",
                      extra={"HeadersNotSigned": ", ".join(unsigned)})


def _v2_headers(headers: CIMultiDictProxy[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in headers.items():
        lname = name.lower()
        if lname.startswith("x-amz-") or lname in ("content-md5", "content-type"):
            out.setdefault(lname, []).append(value)
    return out


def _date_to_amz(value: str | None) -> str:
    if not value:
        return ""
    dt = parse_any_date(value)
    return dt.strftime("%Y%m%dT%H%M%SZ") if dt else ""
