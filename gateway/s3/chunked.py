"""aws-chunked bodies: the framing S3 clients stream uploads in (sans-I/O).

Wire format (AWS S3 API Reference, "Transferring Payload in Multiple Chunks"
and "Signature calculations for trailing headers"):

    <hex size>[;chunk-signature=<64 hex>]\\r\\n<data>\\r\\n      repeated
    0[;chunk-signature=<64 hex>]\\r\\n                         final chunk
    [<trailer name>:<value>\\r\\n ...                           optional trailers
     [x-amz-trailer-signature:<64 hex>\\r\\n]]
    \\r\\n

Signed chunks chain: chunk n is signed over the signature of chunk n-1 (the
seed is the request's own signature), so chunks cannot be dropped, reordered
or altered.  A chunk's bytes are released only after its signature checks,
so nothing unverified reaches storage.  Sizes are checked before buffering.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from .errors import S3Error
from .numbers import hexadecimal

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_HEADER_LINE = 4096
MAX_CHUNK = 16 << 20
MAX_TRAILER = 16 << 10


@dataclass(slots=True)
class ChunkSigner:
    """Verifies the chain of chunk signatures of one request."""

    key: bytes  # the request's SigV4 signing key
    amz_date: str
    scope: str
    previous: str  # seed: the request signature; then each chunk's

    def _sign(self, kind: str, digest: str) -> str:
        sts = "\n".join([kind, self.amz_date, self.scope, self.previous, digest])
        return hmac.new(self.key, sts.encode(), hashlib.sha256).hexdigest()

    def chunk(self, data: bytes, claimed: str) -> None:
        want = self._sign("AWS4-HMAC-SHA256-PAYLOAD", EMPTY_SHA256 + "\n" + hashlib.sha256(data).hexdigest())
        self._check(want, claimed)

    def trailer(self, canonical: bytes, claimed: str) -> None:
        want = self._sign("AWS4-HMAC-SHA256-TRAILER", hashlib.sha256(canonical).hexdigest())
        self._check(want, claimed)

    def _check(self, want: str, claimed: str) -> None:
        if not hmac.compare_digest(want.encode(), claimed.encode()):
            raise S3Error("SignatureDoesNotMatch", "The chunk signature does not match")
        self.previous = want


@dataclass(slots=True)
class AwsChunkedDecoder:
    """Feed wire bytes; get back verified payload bytes; read trailers at the end."""

    signer: ChunkSigner | None = None
    expect_trailer: bool = False
    trailers: dict[str, str] = field(default_factory=dict)
    done: bool = False
    _buf: bytearray = field(default_factory=bytearray)
    _state: str = "header"  # header | data | trailer | end
    _size: int = 0
    _sig: str = ""
    _trailer_text: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[bytes]:
        if self.done:
            if data:
                raise S3Error("InvalidRequest", "Data after the end of an aws-chunked body")
            return []
        self._buf += data
        out: list[bytes] = []
        while not self.done:
            if self._state == "header":
                line = self._line()
                if line is None:
                    break
                self._header(line)
            elif self._state == "data":
                need = self._size + 2
                if len(self._buf) < need:
                    break
                chunk = bytes(self._buf[: self._size])
                if self._buf[self._size:need] != b"\r\n":
                    raise S3Error("InvalidRequest", "A chunk's data must end with CRLF")
                del self._buf[:need]
                if self.signer is not None:
                    self.signer.chunk(chunk, self._sig)
                out.append(chunk)
                self._state = "header"
            elif self._state == "trailer":
                line = self._line()
                if line is None:
                    break
                self._trailer(line)
            else:  # "end": the CRLF after a final chunk with no trailers
                if len(self._buf) < 2:
                    break
                if self._buf[:2] != b"\r\n":
                    raise S3Error("InvalidRequest", "Malformed end of an aws-chunked body")
                del self._buf[:2]
                self._finish()
        return out

    def finish(self) -> None:
        """The stream ended: it must have ended where the framing says it ends."""
        if not self.done:
            raise S3Error("IncompleteBody", "The aws-chunked body ended before its final chunk")

    # ------------------------------------------------------------------ parts

    def _line(self) -> bytes | None:
        i = self._buf.find(b"\r\n")
        if i < 0:
            if len(self._buf) > MAX_HEADER_LINE:
                raise S3Error("InvalidRequest", "An aws-chunked header line is too long")
            return None
        line = bytes(self._buf[:i])
        del self._buf[: i + 2]
        return line

    def _header(self, line: bytes) -> None:
        size_text, _, ext = line.partition(b";")
        size = hexadecimal(size_text.strip().decode("latin-1"))
        if size is None:
            raise S3Error("InvalidRequest", f"Invalid aws-chunked chunk size {size_text[:20]!r}")
        if size > MAX_CHUNK:
            raise S3Error("InvalidRequest", "An aws-chunked chunk is larger than this server accepts")
        sig = ""
        if ext:
            name, _, value = ext.decode("latin-1").partition("=")
            if name.strip() == "chunk-signature":
                sig = value.strip()
        if self.signer is not None and not sig:
            raise S3Error("SignatureDoesNotMatch", "A chunk is missing its chunk-signature")
        self._size, self._sig = size, sig
        if size:
            self._state = "data"
            return
        if self.signer is not None:
            self.signer.chunk(b"", sig)
        self._state = "trailer" if self.expect_trailer else "end"

    def _trailer(self, line: bytes) -> None:
        if not line:
            self._finish()
            return
        if len(self._trailer_text) + len(line) > MAX_TRAILER:
            raise S3Error("InvalidRequest", "The trailing headers are too large")
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon:
            raise S3Error("InvalidRequest", "Malformed trailing header")
        name = name.strip().lower()
        if name == "x-amz-trailer-signature":
            if self.signer is not None:
                self.signer.trailer(bytes(self._trailer_text), value.strip())
            self.trailers[name] = value.strip()
            return
        self.trailers[name] = value.strip()
        self._trailer_text += f"{name}:{value.strip()}\n".encode("latin-1")

    def _finish(self) -> None:
        if self.signer is not None and self.expect_trailer and "x-amz-trailer-signature" not in self.trailers:
            raise S3Error("SignatureDoesNotMatch", "The trailing headers are not signed")
        self.done = True
        self._state = "done"
