"""Property-based fuzzing of every parser that reads untrusted bytes (hypothesis).

The property is the same everywhere: whatever arrives, the parser answers with
a value or its protocol's typed error (S3Error, ParseError, FramingError),
never another exception, and what it keeps stays bounded.  Then the same
against running servers: a gateway never answers 500 to a signed request
built from S3's own vocabulary of odd values, and an LMTP server answers
every command line with a reply code and no traceback.

Example counts are bounded so the suite stays fast.
"""

from __future__ import annotations

import hashlib
import socket
import string
from urllib.parse import quote, urlparse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.s3 import numbers, sigv2, sigv4, xml
from gateway.s3.chunked import AwsChunkedDecoder, ChunkSigner
from gateway.s3.errors import S3Error
from gateway.s3.http import decode_path, header_value, parse_range
from gateway.s3.ops import operation, parse_copy_source
from mailstore.imap.framing import CommandFramer, Framed, FramingError
from mailstore.imap.parser import parse_command
from mailstore.imap.reader import ParseError

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SERVER = settings(max_examples=120, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Text an attacker sends: ASCII, digits of every script, controls, surrogate-escaped bytes.
nasty_chars = st.one_of(st.characters(codec="ascii"), st.sampled_from("²٣０𝟗_+-x ,;=\"'\\\x00\r\n\t\x7f\u00e9\ufffd"),
                        st.characters(min_codepoint=0xdc80, max_codepoint=0xdcff))
nasty = st.text(nasty_chars, max_size=40)
numberish = st.one_of(st.integers(-5, 1 << 70).map(str), nasty, st.just("9" * 5000), st.just("0x3e8"))


def only(errors: tuple[type[BaseException], ...], fn, *args, **kw):  # type: ignore[no-untyped-def]
    try:
        return fn(*args, **kw)
    except errors:
        return None


# ------------------------------------------------------------------ numbers and HTTP values

@FAST
@given(numberish)
def test_numbers(text: str) -> None:
    n = numbers.decimal(text)
    assert n is None or (text.isascii() and text.isdigit() and n == int(text) and len(text) <= 19)
    h = numbers.hexadecimal(text)
    assert h is None or (h >= 0 and len(text) <= 16)
    v = only((S3Error,), numbers.argument, text, "x", low=1, high=10_000)
    assert v is None or 1 <= v <= 10_000


@FAST
@given(st.one_of(nasty, st.builds(lambda a, b: f"bytes={a}-{b}", numberish, numberish)), st.integers(0, 1 << 40))
def test_range(header: str, size: int) -> None:
    r = only((S3Error,), parse_range, header, size)
    if r is not None:
        assert 0 <= r.start <= r.end < size


@FAST
@given(nasty)
def test_paths_headers_and_copy_sources(text: str) -> None:
    path = only((S3Error,), decode_path, "/" + quote(text.encode("utf-8", "surrogateescape"), safe="/%"))
    assert path is None or "\ufffd" not in path or "\ufffd" in text
    ok = only((S3Error,), header_value, text, "x")
    assert ok is None or not any(c in ok for c in "\r\n\x00")
    only((S3Error,), parse_copy_source, text)
    only((S3Error,), operation, "PUT", text or None, text or None, {text: text})


# ------------------------------------------------------------------ signatures

@FAST
@given(nasty, nasty, nasty)
def test_sigv4_header_parsing(authz: str, date: str, payload: str) -> None:
    only((S3Error,), sigv4.parse_authorization_header, "AWS4-HMAC-SHA256 " + authz, date, payload)
    only((S3Error,), sigv4.parse_authorization_header, authz, date, payload)


@FAST
@given(st.dictionaries(st.sampled_from(["X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                                        "X-Amz-SignedHeaders", "X-Amz-Signature", "X-Amz-Content-Sha256"]),
                       st.one_of(nasty, st.just("AWS4-HMAC-SHA256"), st.just("a/20260101/us-east-1/s3/aws4_request"),
                                 st.just("20260101T000000Z"))))
def test_sigv4_presigned_parsing(query: dict[str, str]) -> None:
    signed = only((S3Error,), sigv4.parse_presigned_query, query)
    if signed is not None:
        only((S3Error,), sigv4.check_time, signed, 1.7e9)


@FAST
@given(st.text(st.characters(codec="ascii"), max_size=60), nasty)
def test_query_and_canonical_request(raw_query: str, header: str) -> None:
    pairs = only((S3Error,), sigv4.parse_query, raw_query)
    if pairs is None:
        return
    creq = sigv4.canonical_request("GET", "/b/" + quote(header.encode("utf-8", "surrogateescape")), pairs,
                                   {"host": ["h"], "x-amz-a": [header.encode("utf-8", "replace").decode()]},
                                   ["host", "x-amz-a"], sigv4.UNSIGNED_PAYLOAD)
    sigv4.string_to_sign("20260101T000000Z", "20260101/us-east-1/s3/aws4_request", creq)


@FAST
@given(nasty, st.dictionaries(st.sampled_from(["x-amz-meta-a", "x-amz-date", "content-md5", "content-type"]),
                              st.lists(st.text(st.characters(codec="ascii"), max_size=20), min_size=1, max_size=3)),
       st.lists(st.tuples(st.sampled_from(sorted(sigv2.SUBRESOURCES) + ["x"]), nasty), max_size=4))
def test_sigv2(authz: str, headers: dict[str, list[str]], raw: list[tuple[str, str]]) -> None:
    only((S3Error,), sigv2.parse_header, "AWS " + authz)
    # The query as the gateway has it: decoded from the wire (undecodable bytes refused there).
    wire = "&".join(f"{k}={quote(v.encode('utf-8', 'surrogateescape'))}" for k, v in raw)
    query = only((S3Error,), sigv4.parse_query, wire)
    if query is None:
        return
    for resource in sigv2.resource_forms("/b/k", None, query):
        sts = sigv2.string_to_sign("GET", headers, "date", resource)
        only((S3Error,), sigv2.verify, "secret", [sts], "sig")


# ------------------------------------------------------------------ aws-chunked

def chunked(payload: bytes, sizes: list[int], trailer: bytes) -> bytes:
    out, pos = [], 0
    for n in sizes:
        piece = payload[pos:pos + n]
        pos += len(piece)
        out.append(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    out.append(b"0\r\n" + trailer + b"\r\n")
    return b"".join(out)


@FAST
@given(st.binary(max_size=300), st.lists(st.integers(1, 64), max_size=8), st.binary(max_size=40),
       st.lists(st.integers(0, 400), max_size=6), st.integers(0, 60), st.binary(max_size=8), st.booleans())
def test_aws_chunked(payload: bytes, sizes: list[int], trailer: bytes, splits: list[int], flip_at: int,
                     flip: bytes, signed: bool) -> None:
    wire = bytearray(chunked(payload, sizes, trailer))
    if flip:
        wire[flip_at:flip_at] = flip
    signer = ChunkSigner(b"k" * 32, "20260101T000000Z", "20260101/us-east-1/s3/aws4_request", "0" * 64) \
        if signed else None
    dec = AwsChunkedDecoder(signer=signer, expect_trailer=bool(trailer))
    got = bytearray()
    try:
        cuts = sorted({min(s, len(wire)) for s in splits} | {0, len(wire)})
        for a, b in zip(cuts, cuts[1:]):
            for piece in dec.feed(bytes(wire[a:b])):
                got += piece
            assert len(dec._buf) <= len(wire) + 2  # never more than what was sent
        dec.finish()
    except S3Error:
        return
    if not flip and not signed and not trailer:
        assert bytes(got) == payload[:sum(sizes)]


# ------------------------------------------------------------------ XML bodies

def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


xml_text = st.one_of(
    nasty.map(_b),
    st.builds(lambda tag, inner: _b(f"<{tag}>{inner}</{tag}>"),
              st.sampled_from(["Delete", "CompleteMultipartUpload", "CreateBucketConfiguration"]),
              st.lists(st.builds(lambda t, v: f"<{t}>{v}</{t}>",
                                 st.sampled_from(["Object", "Part", "Key", "PartNumber", "ETag", "Quiet",
                                                  "LocationConstraint"]),
                                 st.one_of(nasty.map(lambda s: s.replace("<", "").replace("&", "")),
                                           st.just("<Key>k</Key>"), st.just("<PartNumber>²</PartNumber><ETag>e</ETag>"))),
                       max_size=6).map("".join)),
    st.just(b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><Delete>&b;</Delete>'))


@FAST
@given(xml_text)
def test_xml_bodies(body: bytes) -> None:
    only((S3Error,), xml.parse_delete, body)
    parts = only((S3Error,), xml.parse_complete_multipart, body)
    assert parts is None or all(p.number >= 0 for p in parts)
    only((S3Error,), xml.parse_location_constraint, body)


# ------------------------------------------------------------------ IMAP

imap_lines = st.lists(st.one_of(
    st.binary(max_size=80),
    st.builds(lambda tag, cmd, rest: f"{tag} {cmd} {rest}".encode("utf-8", "surrogateescape"),
              st.text(string.ascii_letters + string.digits + "*+", min_size=0, max_size=5),
              st.sampled_from(["LOGIN", "SELECT", "FETCH", "UID FETCH", "SEARCH", "STORE", "APPEND", "COPY",
                               "LIST", "STATUS", "AUTHENTICATE", "ID", "ENABLE", "IDLE", "SETQUOTA", "SORT",
                               "UID SORT", "X"]),
              st.text(st.one_of(st.sampled_from('()[]<>{}"\\*%.:,0123456789 '), nasty_chars), max_size=60))),
    max_size=5)


@FAST
@given(imap_lines, st.lists(st.integers(0, 300), max_size=5))
def test_imap_framer_and_parser(lines: list[bytes], splits: list[int]) -> None:
    wire = b"".join(line.replace(b"\r\n", b"") + b"\r\n" for line in lines)
    framer = CommandFramer(max_line=200, max_literal=1000)
    cuts = sorted({min(s, len(wire)) for s in splits} | {0, len(wire)})
    for a, b in zip(cuts, cuts[1:]):
        for ev in framer.feed(wire[a:b]):
            if isinstance(ev, Framed):
                try:
                    cmd = parse_command(ev.data)
                except ParseError as exc:
                    assert exc.tag and "\r" not in exc.text and "\n" not in exc.text
                else:
                    assert cmd.tag and cmd.name
            elif isinstance(ev, FramingError):
                assert ev.tag and "\n" not in ev.text
        assert len(framer._buf) <= 200 + len(wire) and len(framer._done) <= 2000


# ------------------------------------------------------------------ against running servers

S3_PARAMS = ["uploads", "uploadId", "partNumber", "max-keys", "max-parts", "max-uploads", "part-number-marker",
             "prefix", "delimiter", "marker", "start-after", "continuation-token", "list-type", "encoding-type",
             "response-content-type", "response-expires", "delete", "acl", "location", "versionId", "tagging"]
S3_HEADERS = ["Range", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since", "Content-MD5",
              "Content-Type", "x-amz-meta-a", "x-amz-copy-source", "x-amz-copy-source-range",
              "x-amz-metadata-directive", "x-amz-checksum-crc32", "x-amz-checksum-sha256", "x-amz-trailer",
              "x-amz-decoded-content-length", "Content-Encoding", "Expect", "x-amz-checksum-mode"]
printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=30)


def _raw_request(gateway, key, method: str, path: str, query: list[tuple[str, str]],  # type: ignore[no-untyped-def]
                 headers: dict[str, str], body: bytes) -> int:
    u = urlparse(gateway.endpoint)
    host = f"{u.hostname}:{u.port}"
    h = {"Host": host, **headers}
    h.update(sigv4.sign_headers(method, path, query, h, key.access_key, key.secret,
                                payload_hash=hashlib.sha256(body).hexdigest()))
    qs = sigv4.canonical_query(query)
    head = [f"{method} {path}{'?' + qs if qs else ''} HTTP/1.1", *(f"{k}: {v}" for k, v in h.items()),
            f"Content-Length: {len(body)}", "Connection: close"]
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        first = s.recv(64)
        return int(first.split()[1])


@SERVER
@given(st.sampled_from(["GET", "PUT", "HEAD", "DELETE", "POST"]),
       st.one_of(st.just("/fuzz"), st.just("/fuzz/k"), st.just("/"), st.just("/_admin/keys"),
                 printable.map(lambda t: "/fuzz/" + quote(t, safe="/"))),
       st.lists(st.tuples(st.sampled_from(S3_PARAMS), printable), max_size=4),
       st.dictionaries(st.sampled_from(S3_HEADERS), printable, max_size=4),
       st.one_of(st.just(b""), st.binary(max_size=64), xml_text))
def test_gateway_never_answers_500(gateway, key, s3, method, path, query, headers, body):  # type: ignore[no-untyped-def]
    if not getattr(test_gateway_never_answers_500, "made", False):
        try:
            s3.create_bucket(Bucket="fuzz")
        except Exception:
            pass
        s3.put_object(Bucket="fuzz", Key="k", Body=b"0123456789")
        test_gateway_never_answers_500.made = True  # type: ignore[attr-defined]
    status = _raw_request(gateway, key, method, path, query, headers, body)
    assert status < 500 or status in (501, 503), (method, path, query, headers, body)


def test_gateway_log_has_no_traceback_after_fuzzing(gateway) -> None:  # type: ignore[no-untyped-def]
    gateway.log.flush()
    text = open(gateway.log.name).read()
    assert "Traceback" not in text, text[-3000:]


@pytest.fixture(scope="module")
def lmtp_shim(tmp_path_factory):  # type: ignore[no-untyped-def]
    from test_lmtp import DOMAIN, Shim

    s = Shim(tmp_path_factory.mktemp("fuzz-lmtp"))
    s.add_user(f"fuzz@{DOMAIN}")
    yield s
    s.stop()


lmtp_lines = st.lists(st.one_of(
    st.binary(max_size=60).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.builds(lambda verb, arg: f"{verb}{arg}".encode("utf-8", "surrogateescape"),
              st.sampled_from(["LHLO ", "MAIL FROM:", "RCPT TO:", "DATA", "RSET", "NOOP", "VRFY ", "HELO ", "EHLO ",
                               "BDAT ", "AUTH ", "STARTTLS", "HELP "]),
              st.one_of(printable, st.just("<fuzz@example.com>"), st.just("<a@b> SIZE=²"),
                        st.just("<a@b> BODY=8BITMIME"), st.just("<\x00@x>"), st.just("<" + "a" * 600 + "@x>")))),
    min_size=1, max_size=6)


@SERVER
@given(lmtp_lines)
def test_lmtp_answers_every_command_line(lmtp_shim, lines):  # type: ignore[no-untyped-def]
    with socket.create_connection(("127.0.0.1", lmtp_shim.port), timeout=20) as s:
        f = s.makefile("rb")
        assert f.readline()[:3] == b"220"
        s.sendall(b"LHLO fuzz\r\n")
        while f.readline()[3:4] == b"-":
            pass
        in_data = False
        last = b""
        for cmd in lines:
            try:
                s.sendall(cmd + b"\r\n")
                reply = f.readline()
            except ConnectionError:
                reply = b""
            if not reply:  # the server may hang up, but only after saying so (a flood of bogus commands)
                assert last[:3] in (b"421", b"502"), (cmd, last)
                return
            assert reply[:3].isdigit(), (cmd, reply)
            while reply[3:4] == b"-":
                reply = f.readline()
            last = reply
            in_data = reply[:3] == b"354"
            if in_data:
                s.sendall(b"Subject: fuzz\r\n\r\nx\r\n.\r\n")
                while True:  # one reply per accepted recipient
                    r = f.readline()
                    assert r[:3].isdigit()
                    s.settimeout(0.3)
                    try:
                        peek = s.recv(1, socket.MSG_PEEK)
                    except socket.timeout:
                        peek = b""
                    s.settimeout(20)
                    if not peek:
                        break
                in_data = False
        s.sendall(b"QUIT\r\n")


def test_lmtp_log_has_no_traceback_after_fuzzing(lmtp_shim) -> None:  # type: ignore[no-untyped-def]
    text = (lmtp_shim.base / "lmtp.log").read_text()
    assert "Traceback" not in text, text[-3000:]
