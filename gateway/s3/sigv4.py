"""AWS Signature Version 4 for S3: canonicalization, verification and signing.

Pure functions over strings and bytes; the gateway verifies with them and the
clients in this project (cache/, bench/) sign with them, so there is one copy.

References: AWS General Reference "Create a canonical request for Signature
Version 4", and the S3 specifics in "Authenticating Requests (AWS Signature
Version 4)":
- S3 does not normalize the path ("/a//b/../c" is signed as sent) and encodes
  each path byte except unreserved characters and "/".
- The query string is sorted by encoded name, then encoded value.
- Header values are trimmed and inner runs of spaces collapse to one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from urllib.parse import quote, unquote, unquote_plus

from .errors import S3Error
from .numbers import decimal

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
STREAMING_PREFIX = "STREAMING-"
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600  # AWS: presigned URLs live at most 7 days
MAX_SKEW_SECONDS = 15 * 60  # AWS: RequestTimeTooSkewed beyond 15 minutes

_UNRESERVED = "-_.~"
_SPACES = re.compile(r" +")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def uri_encode(value: str, *, keep_slash: bool) -> str:
    """AWS UriEncode: every byte but A-Za-z0-9-_.~ is %XX (uppercase hex)."""
    return quote(value, safe=_UNRESERVED + ("/" if keep_slash else ""))


_CANONICAL_AS_IS = re.compile(r"[A-Za-z0-9\-._~/]*")


def canonical_uri(raw_path: str) -> str:
    """The canonical URI of an S3 request from the path as it came on the wire.

    The wire form may encode more or fewer characters than AWS does, so decode
    once and re-encode by AWS's rules ('+' in a path is a literal plus).  A
    path of unreserved characters only is already canonical.
    """
    if _CANONICAL_AS_IS.fullmatch(raw_path):
        return raw_path
    return uri_encode(unquote(raw_path), keep_slash=True)


def parse_query(raw_query: str) -> list[tuple[str, str]]:
    """Decode a query string into (name, value) pairs, keeping blanks and order.

    '+' decodes to a space, as in AWS's own servers and Go's ParseQuery.  Bytes
    that are not UTF-8 are InvalidURI: decoding them with replacement
    characters would make two different requests one.
    """
    pairs: list[tuple[str, str]] = []
    if not raw_query:
        return pairs
    try:
        for part in raw_query.split("&"):
            if not part:
                continue
            name, _, value = part.partition("=")
            pairs.append((unquote_plus(name, errors="strict"), unquote_plus(value, errors="strict")))
            if not (name.isascii() and value.isascii()):
                pairs[-1][0].encode()
                pairs[-1][1].encode()
    except UnicodeError:
        raise S3Error("InvalidURI", "The query string is not valid UTF-8") from None
    return pairs


def canonical_query(pairs: list[tuple[str, str]], *, skip: str | None = None) -> str:
    if not pairs:
        return ""
    encoded = sorted(
        (uri_encode(k, keep_slash=False), uri_encode(v, keep_slash=False))
        for k, v in pairs
        if k != skip
    )
    return "&".join(f"{k}={v}" for k, v in encoded)


def _trim(value: str) -> str:
    value = value.strip()
    return _SPACES.sub(" ", value) if "  " in value else value


def canonical_header_value(values: list[str]) -> str:
    if len(values) == 1:
        return _trim(values[0])
    return ",".join(_trim(v) for v in values)


def canonical_request(
    method: str,
    raw_path: str,
    query: list[tuple[str, str]],
    headers: dict[str, list[str]],
    signed_headers: list[str],
    payload_hash: str,
    *,
    skip_query: str | None = None,
) -> str:
    """`headers` maps lower-case names to every value sent under that name."""
    lines = [method, canonical_uri(raw_path), canonical_query(query, skip=skip_query)]
    for name in signed_headers:
        lines.append(f"{name}:{canonical_header_value(headers.get(name, []))}")
    lines.append("")
    lines.append(";".join(signed_headers))
    lines.append(payload_hash)
    return "\n".join(lines)


@lru_cache(maxsize=1024)
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    k = hmac.new(("AWS4" + secret).encode(), date.encode(), hashlib.sha256).digest()
    k = hmac.new(k, region.encode(), hashlib.sha256).digest()
    k = hmac.new(k, service.encode(), hashlib.sha256).digest()
    return hmac.new(k, b"aws4_request", hashlib.sha256).digest()


def string_to_sign(amz_date: str, scope: str, creq: str) -> str:
    return "\n".join(
        [ALGORITHM, amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()]
    )


def signature(key: bytes, sts: str) -> str:
    return hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Credential:
    access_key: str
    date: str  # YYYYMMDD
    region: str
    service: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"

    @classmethod
    def parse(cls, text: str, *, error_code: str) -> Credential:
        parts = text.split("/")
        if len(parts) != 5 or parts[4] != "aws4_request" or not parts[0]:
            raise S3Error(error_code, f"Malformed credential: {text!r}")
        if parts[3] != "s3":
            raise S3Error(error_code, f"Wrong service in credential: {parts[3]!r}; expecting 's3'")
        if not re.fullmatch(r"\d{8}", parts[1]):
            raise S3Error(error_code, f"Invalid date in credential: {parts[1]!r}")
        return cls(parts[0], parts[1], parts[2], parts[3])


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """What a SigV4 request claims: who signed, when, over which headers."""

    credential: Credential
    amz_date: str  # YYYYMMDDTHHMMSSZ
    signed_headers: list[str]
    signature: str
    payload_hash: str
    presigned: bool
    expires: int = 0  # seconds, presigned only


@lru_cache(maxsize=4096)
def amz_epoch(value: str) -> float:
    """Seconds since the epoch of an ISO 8601 basic timestamp (20130524T000000Z).

    Hand-parsed and cached: strptime cost more than the HMACs on the hot path,
    and every request of one second carries the same string.
    """
    if len(value) != 16 or value[8] != "T" or value[15] != "Z" or decimal(value[:8] + value[9:15]) is None:
        raise S3Error("AccessDenied", f"Invalid date format: {value!r}")
    try:
        dt = datetime(int(value[0:4]), int(value[4:6]), int(value[6:8]), int(value[9:11]),
                      int(value[11:13]), int(value[13:15]), tzinfo=UTC)
    except ValueError:
        raise S3Error("AccessDenied", f"Invalid date format: {value!r}") from None
    return dt.timestamp()


def parse_amz_date(value: str) -> datetime:
    return datetime.fromtimestamp(amz_epoch(value), UTC)


def parse_authorization_header(value: str, amz_date: str, payload_hash: str) -> SignedRequest:
    """Parse `AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...`."""
    head, sig = _split_signature(value)
    cred, signed = _credential_and_headers(head)
    if sig is None:
        raise S3Error("AuthorizationHeaderMalformed", "The authorization header is missing Signature")
    if not amz_date:
        raise S3Error("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header")
    if cred.date != amz_date[:8]:
        raise S3Error(
            "AuthorizationHeaderMalformed",
            f"Invalid credential date {cred.date!r}: it must match x-amz-date {amz_date[:8]!r}",
        )
    if not payload_hash:
        raise S3Error("InvalidRequest", "Missing required header for this request: x-amz-content-sha256")
    if payload_hash != UNSIGNED_PAYLOAD and not payload_hash.startswith(STREAMING_PREFIX) \
            and not _HEX64.match(payload_hash):
        raise S3Error("InvalidArgument",
                      "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-... or a SHA-256 hex digest")
    return SignedRequest(cred, amz_date, list(signed), sig, payload_hash, presigned=False)


def _split_signature(value: str) -> tuple[str, str | None]:
    """(the header without its Signature field, the signature) when the signature is the last
    field, as every SDK sends it; else (the header, None from a missing field), parsed whole."""
    head, eq, sig = value.rpartition("Signature=")
    if not eq or "," in sig or "=" in sig:
        fields = _fields(value)
        return value, fields.get("Signature")
    return head, sig.strip()


@lru_cache(maxsize=4096)
def _credential_and_headers(head: str) -> tuple[Credential, tuple[str, ...]]:
    """The Credential and SignedHeaders fields: the same for every request a client signs with
    one key on one day, so parsed once (3 us a request)."""
    fields = _fields(head)
    try:
        cred = Credential.parse(fields["Credential"], error_code="AuthorizationHeaderMalformed")
        signed = tuple(fields["SignedHeaders"].split(";"))
    except KeyError as missing:
        raise S3Error(
            "AuthorizationHeaderMalformed", f"The authorization header is missing {missing.args[0]}"
        ) from None
    return cred, signed


def _fields(value: str) -> dict[str, str]:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise S3Error("AuthorizationHeaderMalformed", f"Unsupported algorithm {algorithm!r}")
    fields: dict[str, str] = {}
    for item in rest.split(","):
        name, eq, val = item.strip().partition("=")
        if eq:
            fields[name] = val.strip()
    return fields


def parse_presigned_query(query: dict[str, str]) -> SignedRequest:
    """The X-Amz-* query parameters of a presigned URL."""
    err = "AuthorizationQueryParametersError"
    if query.get("X-Amz-Algorithm") != ALGORITHM:
        raise S3Error(err, "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"")
    try:
        cred = Credential.parse(query["X-Amz-Credential"], error_code=err)
        amz_date = query["X-Amz-Date"]
        expires_text = query["X-Amz-Expires"]
        signed = query["X-Amz-SignedHeaders"].split(";")
        sig = query["X-Amz-Signature"]
    except KeyError as missing:
        raise S3Error(
            err,
            "Query-string authentication version 4 requires the X-Amz-Algorithm, "
            "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, "
            f"and X-Amz-Expires parameters (missing {missing.args[0]}).",
        ) from None
    expires = decimal(expires_text)
    if expires is None:
        raise S3Error(err, "X-Amz-Expires should be a number")
    if expires > MAX_PRESIGN_EXPIRES:
        raise S3Error(err, "X-Amz-Expires must be less than a week (in seconds) that is 604800")
    if cred.date != amz_date[:8]:
        raise S3Error(err, "Invalid credential date: it must match X-Amz-Date")
    payload_hash = query.get("X-Amz-Content-Sha256", UNSIGNED_PAYLOAD)
    return SignedRequest(cred, amz_date, signed, sig, payload_hash, presigned=True, expires=expires)


def check_time(req: SignedRequest, now: datetime | float) -> None:
    now_ts = now.timestamp() if isinstance(now, datetime) else now
    delta = now_ts - amz_epoch(req.amz_date)
    if req.presigned:
        if delta < -MAX_SKEW_SECONDS:
            raise S3Error("AccessDenied", "Request is not valid yet")
        if delta > req.expires:
            expired_at = amz_epoch(req.amz_date) + req.expires
            raise S3Error("AccessDenied", "Request has expired",
                          extra={"X-Amz-Expires": str(req.expires),
                                 "Expires": _iso(expired_at), "ServerTime": _iso(now_ts)})
    elif abs(delta) > MAX_SKEW_SECONDS:
        raise S3Error("RequestTimeTooSkewed", extra={
            "RequestTime": req.amz_date,
            "ServerTime": _iso(now_ts),
            "MaxAllowedSkewMilliseconds": str(MAX_SKEW_SECONDS * 1000),
        })


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expected_signature(
    req: SignedRequest,
    secret: str,
    method: str,
    raw_path: str,
    query: list[tuple[str, str]],
    headers: dict[str, list[str]],
) -> str:
    creq = canonical_request(
        method, raw_path, query, headers, req.signed_headers, req.payload_hash,
        skip_query="X-Amz-Signature" if req.presigned else None,
    )
    key = signing_key(secret, req.credential.date, req.credential.region, req.credential.service)
    return signature(key, string_to_sign(req.amz_date, req.credential.scope, creq))


def verify_signature(req: SignedRequest, expected: str) -> None:
    # Constant-time: the comparison must not leak how many leading chars match.
    if not hmac.compare_digest(expected.encode(), req.signature.encode()):
        raise S3Error("SignatureDoesNotMatch")


# ----------------------------------------------------------------- signing side

def amz_now(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def sign_headers(
    method: str,
    url_path: str,
    query: list[tuple[str, str]],
    headers: dict[str, str],
    access_key: str,
    secret: str,
    *,
    region: str = "us-east-1",
    payload_hash: str = UNSIGNED_PAYLOAD,
    amz_date: str | None = None,
) -> dict[str, str]:
    """Headers to add to a request (x-amz-date, x-amz-content-sha256, Authorization).

    `url_path` is the path as it will be sent (already percent-encoded);
    `headers` must include Host.  Every given header is signed.
    """
    amz_date = amz_date or amz_now()
    all_headers = {k.lower(): v for k, v in headers.items()}
    all_headers["x-amz-date"] = amz_date
    all_headers["x-amz-content-sha256"] = payload_hash
    signed = sorted(all_headers)
    cred = Credential(access_key, amz_date[:8], region, "s3")
    creq = canonical_request(
        method, url_path, query, {k: [v] for k, v in all_headers.items()}, signed, payload_hash
    )
    sig = signature(signing_key(secret, cred.date, region, "s3"), string_to_sign(amz_date, cred.scope, creq))
    return {
        "x-amz-date": amz_date,
        "x-amz-content-sha256": payload_hash,
        "Authorization": f"{ALGORITHM} Credential={access_key}/{cred.scope}, "
        f"SignedHeaders={';'.join(signed)}, Signature={sig}",
    }


def presign_query(
    method: str,
    url_path: str,
    host: str,
    access_key: str,
    secret: str,
    *,
    expires: int = 3600,
    region: str = "us-east-1",
    query: list[tuple[str, str]] | None = None,
    amz_date: str | None = None,
) -> str:
    """The query string of a presigned URL for `url_path` on `host`."""
    amz_date = amz_date or amz_now()
    cred = Credential(access_key, amz_date[:8], region, "s3")
    params = list(query or []) + [
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", f"{access_key}/{cred.scope}"),
        ("X-Amz-Date", amz_date),
        ("X-Amz-Expires", str(expires)),
        ("X-Amz-SignedHeaders", "host"),
    ]
    creq = canonical_request(method, url_path, params, {"host": [host]}, ["host"], UNSIGNED_PAYLOAD)
    sig = signature(signing_key(secret, cred.date, region, "s3"), string_to_sign(amz_date, cred.scope, creq))
    params.append(("X-Amz-Signature", sig))
    return canonical_query(params)
