"""Replays of what Dovecot's obox driver sends (see ../shared/OBOX.md), answer by answer.

Dovecot Pro is not available here, so the requests are made the way its fs-s3
driver documents them: SigV2 with a Date header by default (SigV4 when a
region is set), path style for `?bucket=` URLs and virtual-host style
otherwise, `x-amz-meta-dovecot-*` metadata, X-Dovecot-* trace headers, the
obox key layout, ListObjects V1 with percent-encoded prefixes and marker
paging, copy with REPLACE, bulk delete of 1000 keys, chunked PUTs of index
bundles.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import re
import socket
import time
import uuid
from urllib.parse import quote

import pytest
import urllib3

from conftest import GatewayProcess, client, create_key, engine_gateway, engine_key, mailstore
from gateway.s3 import sigv2, sigv4

USER = "alice@example.com"
HASH = hashlib.md5(USER.encode()).hexdigest()[:8]
INBOX = uuid.uuid4().hex
ARCHIVE = uuid.uuid4().hex


class Obox:
    """Makes requests shaped like Dovecot fs-s3's, in one of its signing/addressing modes."""

    def __init__(self, endpoint: str, key, mode: str) -> None:  # type: ignore[no-untyped-def]
        self.endpoint, self.key, self.mode = endpoint, key, mode
        self.hostport = endpoint.split("//", 1)[1]
        self.http = urllib3.PoolManager()
        self.session = uuid.uuid4().hex[:12]

    def request(self, method: str, key: str | None, *, query: list[tuple[str, str]] = (), body: bytes = b"",  # type: ignore[assignment]
                headers: dict[str, str] | None = None, reason: str = "", chunked: bool = False):
        path_key = "/" + quote(key, safe="/") if key is not None else "/"
        h = {"X-Dovecot-Username": USER, "X-Dovecot-Session-Id": self.session, "X-Dovecot-Reason": reason,
             **(headers or {})}
        if self.mode == "v2-vhost":
            host, path, vhost = f"mail.s3.localhost:{self.hostport.rsplit(':', 1)[1]}", path_key, "mail"
        else:
            host, path, vhost = self.hostport, "/mail" + (path_key if key is not None else ""), None
        h["Host"] = host
        qs = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" if v else quote(k, safe="") for k, v in query)
        if self.mode.startswith("v2"):
            h["Date"] = email.utils.formatdate(usegmt=True)
            lower = {k.lower(): [v] for k, v in h.items()}
            sts = sigv2.string_to_sign(method, lower, h["Date"], sigv2.canonical_resource(path, vhost, list(query)))
            h["Authorization"] = f"AWS {self.key.access_key}:{sigv2.sign(self.key.secret, sts)}"
        else:
            h.update(sigv4.sign_headers(method, path, list(query), {"host": host, **{k: v for k, v in h.items()
                                        if k.lower().startswith("x-amz-")}}, self.key.access_key,
                                        self.key.secret, region="eu", payload_hash=sigv4.UNSIGNED_PAYLOAD))
        url = f"http://127.0.0.1:{self.hostport.rsplit(':', 1)[1]}{path}" + (f"?{qs}" if qs else "")
        if chunked:
            return self.http.request(method, url, body=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                                     headers=h, chunked=True, retries=False)
        return self.http.request(method, url, body=body or None, headers=h, retries=False)


def mail_key(folder: str, oid: str) -> str:
    return f"{HASH}/{USER}/mailboxes/{folder}/{oid}"


def dovecot_meta(guid: str, size: int, folder: str) -> dict[str, str]:
    now = int(time.time())
    return {"x-amz-meta-dovecot-username": USER, "x-amz-meta-dovecot-guid": guid,
            "x-amz-meta-dovecot-size": str(size), "x-amz-meta-dovecot-received": str(now),
            "x-amz-meta-dovecot-saved": str(now), "x-amz-meta-dovecot-origbox": folder,
            "x-amz-meta-dovecot-mailbox-guid": folder}


def listed_keys(xml: bytes) -> list[str]:
    return [m.decode() for m in re.findall(rb"<Key>([^<]*)</Key>", xml)]


@pytest.fixture(scope="module", params=["local", "rados"])
def env(tmp_path_factory, request):  # type: ignore[no-untyped-def]
    """Our gateway on either engine; on RADOS the bucket is made as an operator would for
    mail (index shards chosen by <hash>/<user>, so one user's listing asks one shard)."""
    data = tmp_path_factory.mktemp("obox") / "data"
    key = engine_key(request.param, data, request)
    gw = engine_gateway(request.param, data, request)
    if request.param == "rados":
        cluster = request.getfixturevalue("rados_store")
        mailstore("rados", "bucket-create", "mail", "--shards", "8", "--shard-depth", "2", *cluster.args)
    else:
        client(gw.endpoint, key).create_bucket(Bucket="mail")
    yield gw, key
    gw.stop()


@pytest.mark.parametrize("mode", ["v2-path", "v2-vhost", "v4-region"])
def test_obox_request_sequence(env, mode):
    gw, key = env
    ob = Obox(gw.endpoint, key, mode)
    box = f"{INBOX}{mode[-2:]}"  # a folder per mode keeps the runs apart
    mails = {}
    # 1. delivery: one object per message, obox metadata, never overwritten
    for i in range(25):
        oid = uuid.uuid4().hex
        body = f"From: bob@example.com\r\nSubject: {i}\r\n\r\nhello {i}\r\n".encode() * (i + 1)
        k = mail_key(box, oid)
        r = ob.request("PUT", k, body=body, headers={**dovecot_meta(oid, len(body), box),
                       "Content-Type": "application/octet-stream",
                       "Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode()}, reason="lmtp")
        assert r.status == 200, r.data
        assert r.headers["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
        mails[k] = (oid, body)
    # 2. a mailbox listing, prefix slashes percent-encoded, paged by marker
    prefix = f"{HASH}/{USER}/mailboxes/{box}/"
    seen, marker = [], ""
    while True:
        q = [("prefix", prefix), ("max-keys", "10")] + ([("marker", marker)] if marker else [])
        r = ob.request("GET", None, query=q, reason="mailbox list")
        assert r.status == 200, r.data
        page = listed_keys(r.data)
        seen += page
        if b"<IsTruncated>true</IsTruncated>" not in r.data:
            break
        marker = page[-1]
    assert seen == sorted(mails)
    # an unknown prefix is an empty 200, not an error
    r = ob.request("GET", None, query=[("prefix", f"{HASH}/nobody@example.com/")])
    assert r.status == 200 and listed_keys(r.data) == []
    # 3. HEAD for size and metadata; GET of whole objects; metadata unchanged
    k0 = sorted(mails)[0]
    oid0, body0 = mails[k0]
    r = ob.request("HEAD", k0)
    assert r.status == 200 and int(r.headers["Content-Length"]) == len(body0)
    assert r.headers["x-amz-meta-dovecot-guid"] == oid0 and r.headers["x-amz-meta-dovecot-username"] == USER
    r = ob.request("GET", k0, reason="fetch")
    assert r.status == 200 and r.data == body0 and r.headers["x-amz-meta-dovecot-origbox"] == box
    assert ob.request("GET", mail_key(box, "0" * 32)).status == 404
    # 4. an index bundle, size unknown to the sender: Transfer-Encoding: chunked
    bundle = f"{HASH}/{USER}/mailboxes/{box}/idx/bundle.{int(time.time()):x}.{123456:x}.host1"
    blob = bytes(range(256)) * 8192  # 2 MiB
    r = ob.request("PUT", bundle, body=blob, chunked=True, reason="index")
    assert r.status == 200, r.data
    # index discovery lists with a delimiter
    r = ob.request("GET", None, query=[("prefix", f"{HASH}/{USER}/mailboxes/"), ("delimiter", "/")])
    assert r.status == 200 and f"<Prefix>{HASH}/{USER}/mailboxes/{box}/</Prefix>".encode() in r.data
    r = ob.request("GET", None, query=[("prefix", prefix + "idx/")])
    assert listed_keys(r.data) == [bundle]
    assert ob.request("GET", bundle).data == blob
    # 5. copy to another folder with REPLACE metadata (a move)
    dest = mail_key(f"{ARCHIVE}{mode[-2:]}", oid0)
    r = ob.request("PUT", dest, headers={"x-amz-copy-source": quote(f"/mail/{k0}"),
                                          "x-amz-metadata-directive": "REPLACE",
                                          **dovecot_meta(oid0, len(body0), f"{ARCHIVE}{mode[-2:]}")}, reason="copy")
    assert r.status == 200 and b"<CopyObjectResult" in r.data, r.data
    r = ob.request("HEAD", dest)
    assert r.headers["x-amz-meta-dovecot-origbox"] == f"{ARCHIVE}{mode[-2:]}"
    # 6. expunge: a single DELETE, a DELETE of something already gone, then bulk delete
    assert ob.request("DELETE", k0, reason="expunge").status == 204
    assert ob.request("DELETE", k0, reason="expunge").status == 204
    rest = sorted(mails)[1:] + [bundle, dest]
    doc = ("<Delete><Quiet>true</Quiet>" + "".join(f"<Object><Key>{k}</Key></Object>" for k in rest)
           + "</Delete>").encode()
    r = ob.request("POST", None, query=[("delete", "")], body=doc,
                   headers={"Content-MD5": base64.b64encode(hashlib.md5(doc).digest()).decode(),
                            "Content-Type": "application/xml"}, reason="expunge")
    assert r.status == 200 and b"<Error>" not in r.data, r.data
    r = ob.request("GET", None, query=[("prefix", f"{HASH}/{USER}/mailboxes/{box}")])
    assert listed_keys(r.data) == []


def test_bulk_delete_of_1000_keys(env):
    gw, key = env
    s3 = client(gw.endpoint, key)
    keys = [mail_key(INBOX + "bulk", f"{i:032x}") for i in range(1000)]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket="mail", Key=k, Body=b"m"), keys))
    ob = Obox(gw.endpoint, key, "v2-path")
    doc = ("<Delete>" + "".join(f"<Object><Key>{k}</Key></Object>" for k in keys) + "</Delete>").encode()
    r = ob.request("POST", None, query=[("delete", "")], body=doc,
                   headers={"Content-MD5": base64.b64encode(hashlib.md5(doc).digest()).decode()})
    assert r.status == 200 and len(re.findall(rb"<Deleted>", r.data)) == 1000
    too_many = ("<Delete>" + "".join(f"<Object><Key>k{i}</Key></Object>" for i in range(1001)) + "</Delete>").encode()
    r = ob.request("POST", None, query=[("delete", "")], body=too_many,
                   headers={"Content-MD5": base64.b64encode(hashlib.md5(too_many).digest()).decode()})
    assert r.status == 400 and b"<Code>MalformedXML</Code>" in r.data


def test_trace_headers_are_logged(env):
    gw, key = env
    ob = Obox(gw.endpoint, key, "v2-path")
    ob.session = "trace-session-4711"
    assert ob.request("GET", None, query=[("prefix", "x")], reason="why-not").status == 200
    time.sleep(0.3)
    gw.log.flush()
    log = open(gw.log.name).read()
    assert "session=trace-session-4711" in log and f"user={USER}" in log and "reason=why-not" in log


def test_overload_answers_slowdown_with_retry_after(tmp_path):
    data = tmp_path / "data"
    key = create_key(data)
    gw = GatewayProcess(data, "--max-inflight", "2")
    try:
        client(gw.endpoint, key).create_bucket(Bucket="mail")
        host, port = "127.0.0.1", gw.port
        held = []
        for i in range(2):  # two uploads that stall mid-body occupy both slots
            h = {"Host": f"{host}:{port}"}
            h.update(sigv4.sign_headers("PUT", f"/mail/slow{i}", [], h, key.access_key, key.secret))
            s = socket.create_connection((host, port))
            s.sendall((f"PUT /mail/slow{i} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
                       + "Content-Length: 10\r\n\r\n12345").encode())
            held.append(s)
        time.sleep(0.5)
        r = Obox(gw.endpoint, key, "v2-path").request("GET", None, query=[("prefix", "")])
        assert r.status == 503 and r.headers.get("Retry-After") and b"<Code>SlowDown</Code>" in r.data
        for s in held:  # the stalled uploads finish normally
            s.sendall(b"67890")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            s.close()
        assert Obox(gw.endpoint, key, "v2-path").request("GET", None, query=[("prefix", "")]).status == 200
    finally:
        gw.stop()
