"""Server-side encryption: SSE-S3 (store keys) and SSE-C (the customer's key, never stored).

Every encrypted object has its own random data key; its body is sealed with it in 64 KiB
AES-256-GCM chunks (runtime/sealing.py), so a ranged GET opens only the chunks it reads and
a changed byte fails the read. The data key is stored only wrapped:

- SSE-S3 (`x-amz-server-side-encryption: AES256`, or the bucket's default encryption): under
  the store's newest *store key*. Store keys are shared engine records (every gateway of a
  store sees them), each sealed under the master key; `rotate` makes a new one that new
  objects use, and older objects stay readable with theirs.
- SSE-C: under the key the client sends with every request (checked against its MD5); a
  wrong key fails to unwrap (403), and nothing that could recover the key is kept.

What is not encrypted, as on AWS: the object's key, size, dates, content type and user
metadata. The ETag of an SSE-C object is not the MD5 of its body (as on AWS): it is keyed
with the data key, so a listing does not reveal what the body is.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from runtime import sealing
from runtime.sealing import SecretBox

from .engine.api import Engine, Found, RunBlocking
from .engine.model import CorruptRecord, ObjectMeta, Sealing
from .kms import KeyNotFound, KmsKeys
from .s3.errors import S3Error

log = logging.getLogger("gateway.sse")

SSE_S3 = "AES256"
SSE_C = "SSE-C"
SSE_KMS = "aws:kms"
H_SSE = "x-amz-server-side-encryption"
H_KMS_KEY = "x-amz-server-side-encryption-aws-kms-key-id"
H_CONTEXT = "x-amz-server-side-encryption-context"
MAX_CONTEXT = 4096
H_ALGORITHM = "x-amz-server-side-encryption-customer-algorithm"
H_KEY = "x-amz-server-side-encryption-customer-key"
H_KEY_MD5 = "x-amz-server-side-encryption-customer-key-md5"
COPY_SOURCE = "x-amz-copy-source-"  # a copy's source SSE-C headers: x-amz-copy-source-server-side-...
NAMESPACE = "sse-key"  # engine records: one per store key, named by its id
ON_LOOP = 256 << 10  # sealed bytes opened on the event loop; more go to a worker thread
_LABELS = {SSE_S3: b"mailstore sse-s3 data key", SSE_C: b"mailstore sse-c data key",
           SSE_KMS: b"mailstore sse-kms data key"}


@dataclass(frozen=True, slots=True)
class CustomerKey:
    key: bytes
    md5: str  # base64, as the client sent it


@dataclass(frozen=True, slots=True)
class Wanted:
    """How a write asks its object to be encrypted."""

    mode: str  # SSE_S3, SSE_KMS or SSE_C
    customer: CustomerKey | None = None
    kms_key: str | None = None  # SSE-KMS: the key the request names (id, ARN, alias/NAME); None: aws/s3
    context: str = ""  # SSE-KMS: its encryption context, canonical JSON ("": none)


_CUSTOMER_HEADERS = {p: tuple(name.replace("x-amz-", p or "x-amz-", 1) for name in (H_ALGORITHM, H_KEY, H_KEY_MD5))
                     for p in ("", COPY_SOURCE)}


def customer_key(headers: Mapping[str, str], prefix: str = "") -> CustomerKey | None:
    """The SSE-C key a request sends (with `prefix`: a copy's source key), checked as AWS
    checks it; None when it sends none of the three headers."""
    h_algorithm, h_key, h_md5 = _CUSTOMER_HEADERS[prefix]
    algorithm = headers.get(h_algorithm)
    key_b64 = headers.get(h_key)
    md5_b64 = headers.get(h_md5)
    if algorithm is None and key_b64 is None and md5_b64 is None:
        return None
    if algorithm is None:
        raise S3Error("InvalidArgument", "Requests specifying Server Side Encryption with Customer provided keys "
                      "must provide a valid encryption algorithm.", extra={"ArgumentName": h_algorithm})
    if algorithm != "AES256":
        raise S3Error("InvalidEncryptionAlgorithmError",
                      "The Encryption request you specified is not valid. Supported value: AES256.",
                      extra={"ArgumentName": h_algorithm, "ArgumentValue": algorithm[:64]})
    if key_b64 is None:
        raise S3Error("InvalidArgument", "Requests specifying Server Side Encryption with Customer provided keys "
                      "must provide an appropriate secret key.", extra={"ArgumentName": h_key})
    if md5_b64 is None:
        raise S3Error("InvalidArgument", "Requests specifying Server Side Encryption with Customer provided keys "
                      "must provide the client calculated MD5 of the secret key.",
                      extra={"ArgumentName": h_md5})
    try:
        key = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != sealing.KEY_SIZE:
        raise S3Error("InvalidArgument", "The secret key was invalid for the specified algorithm.",
                      extra={"ArgumentName": h_key})
    if base64.b64encode(hashlib.md5(key).digest()).decode() != md5_b64.strip():
        raise S3Error("InvalidArgument", "The calculated MD5 hash of the key did not match the hash that was "
                      "provided.", extra={"ArgumentName": h_md5})
    return CustomerKey(key, md5_b64.strip())


def wanted(headers: Mapping[str, str], default: str | None, secure: bool) -> Wanted | None:
    """How a PutObject or CopyObject asks its object to be stored: its own headers, else the
    bucket's default encryption (`default`), else in plaintext (None)."""
    sse = headers.get(H_SSE)
    customer = customer_key(headers)
    if sse is not None and customer is not None:
        raise S3Error("InvalidArgument", "Server Side Encryption with Customer provided key is incompatible with "
                      "the encryption method specified", extra={"ArgumentName": H_SSE, "ArgumentValue": sse[:64]})
    kms_key = headers.get(H_KMS_KEY)
    context = encryption_context(headers.get(H_CONTEXT))
    if context and sse != SSE_KMS:
        raise S3Error("InvalidArgument", "An encryption context is given only with x-amz-server-side-encryption: "
                      "aws:kms", extra={"ArgumentName": H_CONTEXT})
    if kms_key is not None and sse != SSE_KMS:
        raise S3Error("InvalidArgument", "Server Side Encryption with AWS KMS managed key requires HTTP header "
                      "x-amz-server-side-encryption : aws:kms", extra={"ArgumentName": H_SSE})
    if customer is not None:
        if not secure:
            raise S3Error("InvalidRequest", "Requests specifying Server Side Encryption with Customer provided keys "
                          "must be made over a secure connection.")
        return Wanted(SSE_C, customer)
    if sse is not None:
        if sse == SSE_S3:
            return Wanted(SSE_S3)
        if sse == SSE_KMS:
            return Wanted(SSE_KMS, kms_key=kms_key.strip() if kms_key else None, context=context)
        if sse.startswith("aws:kms"):
            raise S3Error("NotImplemented", "Dual-layer server-side encryption (DSSE-KMS) is not supported",
                          extra={"Header": H_SSE})
        raise S3Error("InvalidArgument", "The encryption method specified is not supported",
                      extra={"ArgumentName": H_SSE, "ArgumentValue": sse[:64]})
    if default is None:
        return None
    algorithm, _, key = default.partition(" ")
    return Wanted(SSE_KMS, kms_key=key or None) if algorithm == SSE_KMS else Wanted(SSE_S3)


def encryption_context(text: str | None) -> str:
    """An SSE-KMS encryption context (AWS: base64 of a JSON object of strings) as canonical JSON
    (keys sorted), which is what is bound to the data key; "" for none."""
    if text is None:
        return ""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        value = json.loads(raw.decode()) if len(raw) <= MAX_CONTEXT else None
    except (binascii.Error, ValueError, UnicodeDecodeError):
        value = None
    if not isinstance(value, dict) or not value or \
            not all(isinstance(k, str) and isinstance(v, str) and k for k, v in value.items()):
        raise S3Error("InvalidArgument", "The header 'x-amz-server-side-encryption-context' shall be Base64-encoded "
                      "UTF-8 string holding JSON which represents a string-string map",
                      extra={"ArgumentName": H_CONTEXT})
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _label(s: Sealing | Wanted) -> bytes:
    """What a data key's wrapping is bound to: its mode, and an SSE-KMS encryption context."""
    return _LABELS[s.mode] + (b"\x00" + s.context.encode() if s.context else b"")


def refuse_on_read(headers: Mapping[str, str]) -> None:
    """GET and HEAD name an object's encryption by its SSE-C key only (AWS: InvalidArgument)."""
    for name in (H_SSE, H_KMS_KEY, "x-amz-server-side-encryption-bucket-key-enabled", H_CONTEXT):
        if name in headers:
            raise S3Error("InvalidArgument", f"{name} header is not supported for this operation.",
                          extra={"ArgumentName": name})


def response_headers(meta: ObjectMeta) -> dict[str, str]:
    """The SSE headers AWS sends with an object (PUT, GET, HEAD, copy)."""
    s = meta.sealing
    if s is None:
        return {}
    if s.mode == SSE_S3:
        return {"x-amz-server-side-encryption": SSE_S3}
    if s.mode == SSE_KMS:
        out = {"x-amz-server-side-encryption": SSE_KMS,
               "x-amz-server-side-encryption-aws-kms-key-id": s.key_id.rpartition("#")[0]}
        if s.context:
            out[H_CONTEXT] = base64.b64encode(s.context.encode()).decode()
        return out
    return {"x-amz-server-side-encryption-customer-algorithm": "AES256",
            "x-amz-server-side-encryption-customer-key-MD5": s.key_id}


class StoreKeys:
    """SSE-S3's key-encryption keys: engine records sealed under the master key (the key id as
    associated data), cached once read (a store key never changes). The newest is the one new
    objects use."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._master = SecretBox(engine.master_key())
        self._keys: dict[str, bytes] = {}
        self._newest: tuple[str, float] | None = None  # (id, when it was looked up)
        self._lock = asyncio.Lock()

    def _open(self, kid: str, fields: dict[str, str]) -> bytes:
        return self._master.open(fields["key_enc"], kid)

    async def get(self, kid: str) -> bytes:
        key = self._keys.get(kid)
        if key is None:
            fields = await self.engine.record(NAMESPACE, kid)
            if fields is None:
                raise LookupError(f"store key {kid} is missing")
            key = self._keys[kid] = self._open(kid, fields)
        return key

    async def all(self) -> list[tuple[str, float]]:
        """(id, created) of every store key, oldest first."""
        return sorted(((kid, float(f["created"])) for kid, f in await self.engine.records(NAMESPACE)),
                      key=lambda kc: (kc[1], kc[0]))

    async def describe(self) -> list[dict[str, object]]:
        """What an operator may see of the store keys, oldest first: never a key."""
        keys = await self.all()
        return [{"KeyId": kid, "Created": int(created), "Newest": i == len(keys) - 1}
                for i, (kid, created) in enumerate(keys)]

    async def newest(self) -> tuple[str, bytes]:
        """The key new objects are sealed under (made on first use); looked up again after 10 s,
        so a rotation on another gateway is taken up."""
        cached = self._newest
        if cached is None or time.monotonic() - cached[1] > 10:
            async with self._lock:
                keys = await self.all()
                kid = keys[-1][0] if keys else await self.rotate()
                self._newest = cached = (kid, time.monotonic())
        return cached[0], await self.get(cached[0])

    async def rotate(self) -> str:
        """A new store key, which new objects use from now on (every gateway within 10 s)."""
        while True:
            kid = "sk-" + secrets.token_hex(8)
            key = sealing.new_key()
            sealed = self._master.seal(key, kid)
            if await self.engine.swap_record(NAMESPACE, kid, None, {"key_enc": sealed, "created": repr(time.time())}):
                self._keys[kid] = key
                self._newest = (kid, time.monotonic())
                return kid


class UnreadableKey(CorruptRecord):
    """A stored data key that no store key opens: the store keys are damaged or missing."""


class Encryption:
    """Data keys for objects: made for a write, recovered for a read."""

    def __init__(self, engine: Engine, region: str = "us-east-1") -> None:
        self.store_keys = StoreKeys(engine)
        self.kms = KmsKeys(engine, region)

    async def new(self, w: Wanted) -> tuple[bytes, Sealing]:
        """A new data key and how it is kept (`stored` is filled in once the body is sealed)."""
        data_key = sealing.new_key()
        if w.mode == SSE_C:
            assert w.customer is not None
            wrapped = sealing.wrap(w.customer.key, data_key, _LABELS[SSE_C])
            key_id = w.customer.md5  # echoed on reads; it is a digest of the key, as AWS sends back
        elif w.mode == SSE_KMS:
            try:
                kms_id = await self.kms.resolve(w.kms_key)
                version, material = await self.kms.newest(kms_id)
            except KeyNotFound:
                raise S3Error("KMS.NotFoundException", f"Invalid keyId {(w.kms_key or '')[:128]}") from None
            wrapped = sealing.wrap(material, data_key, _label(w))
            key_id = f"{self.kms.arn(kms_id)}#{version}"
        else:
            key_id, kek = await self.store_keys.newest()
            wrapped = sealing.wrap(kek, data_key, _LABELS[SSE_S3])
        return data_key, Sealing(w.mode, key_id, base64.b64encode(wrapped).decode(), 0, context=w.context)

    async def rewrapped(self, meta: ObjectMeta) -> ObjectMeta | None:
        """`meta` with its data key wrapped again under the newest store key (SSE-S3) or the
        newest version of its KMS key; None when it already is (or is plaintext, or SSE-C,
        whose key the store never has). The body is not touched: its data key is the same."""
        s = meta.sealing
        if s is None or s.mode == SSE_C:
            return None
        if s.mode == SSE_KMS:
            arn, _, version = s.key_id.rpartition("#")
            kms_id = arn.rsplit(":key/", 1)[1]
            newest, kek = await self.kms.newest(kms_id)
            if str(newest) == version:
                return None
            key_id = f"{arn}#{newest}"
        else:
            key_id, kek = await self.store_keys.newest()
            if key_id == s.key_id:
                return None
        data_key = await self.data_key(meta, None)
        assert data_key is not None
        wrapped = base64.b64encode(sealing.wrap(kek, data_key, _label(s))).decode()
        return dataclasses.replace(meta, sealing=dataclasses.replace(s, key_id=key_id, wrapped=wrapped))

    async def data_key(self, meta: ObjectMeta, customer: CustomerKey | None) -> bytes | None:
        """The data key that opens an object's body (None: it is stored in plaintext), given
        the SSE-C key the request sent; the S3 error AWS answers when that key is missing,
        wrong, or sent for an object that is not SSE-C."""
        s = meta.sealing
        if s is None or s.mode != SSE_C:
            if customer is not None:
                raise S3Error("InvalidRequest", "The encryption parameters are not applicable to this object.")
            if s is None:
                return None
            try:
                if s.mode == SSE_KMS:
                    arn, _, version = s.key_id.rpartition("#")
                    kek = await self.kms.material(arn.rsplit(":key/", 1)[1], int(version))
                else:
                    kek = await self.store_keys.get(s.key_id)
                return sealing.unwrap(kek, base64.b64decode(s.wrapped), _label(s))
            except (LookupError, KeyNotFound, ValueError, sealing.SealError) as exc:
                raise UnreadableKey(str(exc)) from None
        if customer is None:
            raise S3Error("InvalidRequest", "The object was stored using a form of Server Side Encryption. "
                          "The correct parameters must be provided to retrieve the object.")
        try:
            return sealing.unwrap(customer.key, base64.b64decode(s.wrapped), _LABELS[SSE_C])
        except sealing.SealError:
            raise S3Error("AccessDenied", "The SSE-C key does not match the key the object was stored with") from None


def keyed_etag(data_key: bytes, md5_hex: str) -> str:
    """An SSE-C object's ETag: 32 hex digits keyed with its data key (not the body's MD5)."""
    return hmac.new(data_key, bytes.fromhex(md5_hex), hashlib.md5).hexdigest()


def is_secure(request_secure: bool, remote: str | None, forwarded_proto: str | None = None) -> bool:
    """Whether SSE-C keys may travel on this connection: TLS to this gateway, or a connection
    from the host itself: a local client, or the balancer on this host, which says in
    X-Forwarded-Proto whether its client used TLS (packaging/haproxy.cfg sets it always)."""
    if request_secure:
        return True
    if not ((remote or "").startswith("127.") or remote == "::1"):
        return False
    return forwarded_proto is None or forwarded_proto.strip().lower() == "https"


def _layout(meta: ObjectMeta) -> list[tuple[int, int]]:
    """(stream, plaintext size) of each sealed stream of an object, in order."""
    assert meta.sealing is not None
    if meta.sealing.streams:
        return list(zip(meta.sealing.streams, meta.part_sizes, strict=True))
    return [(0, meta.size)]


def _corrupt(engine: Engine, found: Found, exc: sealing.SealError) -> CorruptRecord:
    engine.metrics["checksum_errors"] = engine.metrics.get("checksum_errors", 0) + 1
    log.error("sealed body of %s failed to open: %s", getattr(found, "key", "?"), exc)
    return CorruptRecord(str(exc))


def open_whole(meta: ObjectMeta, whole: bytes, data_key: bytes, start: int, end: int) -> bytes:
    """The plaintext bytes [start, end) of an object whose sealed bytes are all in `whole`
    (SealError when a chunk fails to open)."""
    if start == 0 and end == meta.size and meta.sealing is not None and not meta.sealing.streams:
        return sealing.open_all(data_key, whole, meta.size)  # the usual read: a whole small object
    out = []
    plain_at = sealed_at = 0
    for stream, size in _layout(meta):
        a, b = max(start, plain_at) - plain_at, min(end, plain_at + size) - plain_at
        if a < b:
            lo, hi, first = sealing.span(a, b, size)
            opener = sealing.Opener(data_key, size, first, stream)
            plain = opener.feed(whole[sealed_at + lo:sealed_at + hi])
            opener.finish()
            skip = a - first * sealing.CHUNK
            out.append(plain[skip:skip + b - a])
        plain_at += size
        sealed_at += sealing.sealed_size(size)
    return b"".join(out)


async def read_opened(engine: Engine, run: RunBlocking, found: Found, data_key: bytes, start: int,
                      end: int) -> bytes:
    """The plaintext bytes [start, end) of a sealed object the engine reads whole (not
    `streamed`); CorruptRecord when a chunk fails to open."""
    whole = await engine.read(found)
    try:
        if end - start <= ON_LOOP:
            return open_whole(found.meta, whole, data_key, start, end)
        return await run(open_whole, found.meta, whole, data_key, start, end)
    except sealing.SealError as exc:
        raise _corrupt(engine, found, exc) from None


async def opened(engine: Engine, run: RunBlocking, found: Found, data_key: bytes, start: int,
                 end: int) -> AsyncIterator[bytes]:
    """The plaintext bytes [start, end) of a sealed object, piece by piece, reading and opening
    only the chunks they fall in (a multipart object's parts are sealed one by one, each as its
    own stream); CorruptRecord, before the piece is sent, when a chunk fails to open."""
    if not engine.streamed(found):
        yield await read_opened(engine, run, found, data_key, start, end)
        return
    try:
        plain_at = sealed_at = 0
        for stream, size in _layout(found.meta):
            a, b = max(start, plain_at) - plain_at, min(end, plain_at + size) - plain_at
            if a < b:
                lo, hi, first = sealing.span(a, b, size)
                opener = sealing.Opener(data_key, size, first, stream)
                skip, left = a - first * sealing.CHUNK, b - a
                async for piece in engine.stream(found, sealed_at + lo, sealed_at + hi):
                    plain = opener.feed(piece) if len(piece) <= ON_LOOP else await run(opener.feed, piece)
                    if skip:
                        plain, skip = plain[skip:], max(0, skip - len(plain))
                    if plain and left > 0:
                        yield plain[:left]
                        left -= len(plain)
                opener.finish()
            plain_at += size
            sealed_at += sealing.sealed_size(size)
    except sealing.SealError as exc:
        raise _corrupt(engine, found, exc) from None
