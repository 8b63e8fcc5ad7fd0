"""The fscache tier: fs URLs, the S3 client, the LRU disk cache, the `mailstore fs` tool."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from urllib.parse import quote

import pytest
from aiohttp import ClientSession, web
from yarl import URL

from cache import AccessDenied, FsCache, NotFound, S3Client, Unavailable, open_fs
from cache.url import FsCacheUrl, FsUrlError, S3Url, parse
from conftest import BIN, GatewayProcess, client, create_key


def s3_url(endpoint: str, key, bucket: str = "mail", extra: str = "", prefix: str = "") -> str:  # type: ignore[no-untyped-def]
    hostport = endpoint.split("//", 1)[1]
    return (f"s3:http://{quote(key.access_key, safe='')}:{quote(key.secret, safe='')}@{hostport}/{prefix}"
            f"?bucket={bucket}{extra}")


# ------------------------------------------------------------------ URLs (pure)

def test_parse_urls():
    u = parse("s3:https://AK%2B:SE%2FCRET@s3.example.com:8443/pre/fix?bucket=mail&region=eu&timeout=2s&max_retries=3")
    assert isinstance(u, S3Url)
    assert (u.scheme, u.host, u.port, u.access_key, u.secret) == ("https", "s3.example.com", 8443, "AK+", "SE/CRET")
    assert (u.bucket, u.path_style, u.prefix, u.region, u.timeout, u.max_retries) == ("mail", True, "pre/fix/", "eu", 2.0, 3)
    v = parse("s3:http://K:S@mail.s3.example.com/")
    assert isinstance(v, S3Url) and (v.bucket, v.host, v.path_style, v.region, v.port) == ("mail", "s3.example.com", False, None, 80)
    c = parse("fscache:512M:/var/cache/mails:s3:http://K:S@127.0.0.1:9000/?bucket=b&timeout=500ms")
    assert isinstance(c, FsCacheUrl) and c.size == 512 << 20 and c.path == "/var/cache/mails"
    assert c.parent.timeout == 0.5 and c.parent.bucket == "b"
    assert parse("fscache:1G:/c:s3:http://K:S@h.example/?bucket=b").size == 1 << 30  # type: ignore[union-attr]
    for bad, words in [("s3:http://K:S@h/?bucket=b&bukcet=x", "bukcet"), ("s3:http://h/?bucket=b", "credentials"),
                       ("s3:ftp://K:S@h/?bucket=b", "s3:http"), ("fscache:lots:/c:s3:http://K:S@h/?bucket=b", "size"),
                       ("posix:/var/mail", "unknown fs driver"), ("s3:http://K:S@localhost/", "bucket label"),
                       ("s3:http://K:S@h/?bucket=b&timeout=soon", "duration")]:
        with pytest.raises(FsUrlError) as e:
            parse(bad)
        assert words in str(e.value), (bad, str(e.value))


# ------------------------------------------------------------------ against a gateway

@pytest.fixture(scope="module")
def gw(tmp_path_factory):  # type: ignore[no-untyped-def]
    data = tmp_path_factory.mktemp("fsc") / "data"
    key = create_key(data)
    g = GatewayProcess(data)
    client(g.endpoint, key).create_bucket(Bucket="mail")
    yield g, key
    g.stop()


async def exercise(fs, tag: str) -> None:  # type: ignore[no-untyped-def]
    body = os.urandom(40_000)
    etag = await fs.put(f"{tag}/m@1", body, {"dovecot-guid": "g1"}, "message/rfc822")
    assert etag.strip('"')
    got, st = await fs.get(f"{tag}/m@1")
    assert got == body and st.size == len(body) and st.metadata == {"dovecot-guid": "g1"}
    assert (await fs.stat(f"{tag}/m@1")).content_type == "message/rfc822"
    await fs.copy(f"{tag}/m@1", f"{tag}/moved", {"dovecot-guid": "g2"})
    assert (await fs.stat(f"{tag}/moved")).metadata == {"dovecot-guid": "g2"}
    await fs.copy(f"{tag}/m@1", f"{tag}/plain-copy")
    assert (await fs.stat(f"{tag}/plain-copy")).metadata == {"dovecot-guid": "g1"}
    keys = [f"{tag}/bulk/{i:04d}" for i in range(2500)]  # three bulk-delete batches
    sem = asyncio.Semaphore(32)

    async def put(k: str) -> None:
        async with sem:
            await fs.put(k, b"x")
    await asyncio.gather(*(put(k) for k in keys))
    listed = [e.key async for e in fs.list(f"{tag}/bulk/")]
    assert listed == keys
    top = [(e.key, e.is_prefix) async for e in fs.list(f"{tag}/", "/")]
    assert (f"{tag}/bulk/", True) in top and (f"{tag}/m@1", False) in top
    assert await fs.delete_many(keys) == []
    assert [e async for e in fs.list(f"{tag}/bulk/")] == []
    await fs.delete(f"{tag}/m@1")
    await fs.delete(f"{tag}/m@1")  # deleting what is gone is fine
    with pytest.raises(NotFound):
        await fs.get(f"{tag}/m@1")
    with pytest.raises(NotFound):
        await fs.stat(f"{tag}/m@1")


@pytest.mark.parametrize("signing", ["v2", "v4"])
def test_client_every_operation(gw, signing):
    g, key = gw
    extra = "&region=us-east-1" if signing == "v4" else ""

    async def main() -> None:
        fs = open_fs(s3_url(g.endpoint, key, extra=extra, prefix="tenant/"))
        assert isinstance(fs, S3Client)
        try:
            await exercise(fs, f"client-{signing}")
        finally:
            await fs.close()
        # the URL prefix really is a prefix of the stored keys
        keys = [o["Key"] for o in client(g.endpoint, key).list_objects_v2(Bucket="mail", Prefix="tenant/")["Contents"]]
        assert f"tenant/client-{signing}/moved" in keys and all(k.startswith("tenant/client-") for k in keys)
        assert not client(g.endpoint, key).list_objects_v2(Bucket="mail", Prefix=f"client-{signing}").get("Contents")
    asyncio.run(main())


def test_fscache_every_operation_and_hits(gw, tmp_path):
    g, key = gw

    async def main() -> None:
        fs = open_fs(f"fscache:64M:{tmp_path / 'cache'}:" + s3_url(g.endpoint, key))
        assert isinstance(fs, FsCache)
        try:
            await exercise(fs, "cached")
            await fs.put("hot", b"hot body", {"a": "b"})
            before = fs.parent.requests
            for _ in range(20):
                body, st = await fs.get("hot")
                assert body == b"hot body" and st.metadata == {"a": "b"}
            assert fs.parent.requests == before  # written through, then served from the cache
            stats = await fs.stats()
            assert stats["hits"] >= 20 and stats["entries"] >= 1
            # a corrupt entry is dropped and fetched again, never served
            raw = bytearray(fs.cache.get("hot"))
            raw[-1] ^= 0xFF
            fs.cache.set("hot", bytes(raw))
            assert (await fs.get("hot"))[0] == b"hot body"
            assert fs.counters.corrupt == 1 and fs.parent.requests == before + 1
            # concurrent misses on one key make one request
            client(g.endpoint, key).put_object(Bucket="mail", Key="cold", Body=b"cold body")
            before = fs.parent.requests
            bodies = await asyncio.gather(*(fs.get("cold") for _ in range(20)))
            assert all(b == b"cold body" for b, _ in bodies) and fs.parent.requests == before + 1
            await fs.delete("cold")  # deletes invalidate
            with pytest.raises(NotFound):
                await fs.get("cold")
        finally:
            await fs.close()
    asyncio.run(main())


def test_eviction_keeps_the_cache_under_its_bound(gw, tmp_path):
    g, key = gw
    limit = 2 << 20

    async def main() -> None:
        fs = open_fs(f"fscache:2M:{tmp_path / 'small'}:" + s3_url(g.endpoint, key))
        assert isinstance(fs, FsCache)
        try:
            for i in range(120):  # ~6 MiB through a 2 MiB cache
                await fs.put(f"churn/{i:03d}", os.urandom(50_000))
                if i % 3 == 0:
                    await fs.get(f"churn/{i // 2:03d}")
                assert fs.cache.volume() <= limit + 60_000  # at most one entry over, culled at once
            stats = await fs.stats()
            assert stats["evictions"] > 0 and stats["bytes"] <= limit
            # eviction makes room, it does not empty the cache: most of 2 MiB stays in use
            assert stats["bytes"] > limit // 2 and 20 <= stats["entries"] < 120
            assert (await fs.get("churn/000"))[0]  # evicted entries come back from S3
        finally:
            await fs.close()
    asyncio.run(main())


# ------------------------------------------------------------------ fault injection

class FaultProxy:
    """A pass-through proxy to a real gateway that fails the first N requests per path with 503."""

    def __init__(self, upstream: str, fail_first: int) -> None:
        self.upstream = upstream
        self.fail_first = fail_first
        self.seen: dict[str, int] = {}
        self.requests = 0

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.requests += 1
        n = self.seen[request.raw_path] = self.seen.get(request.raw_path, 0) + 1
        if n <= self.fail_first:
            return web.Response(status=503, headers={"Retry-After": "0"},
                                body=b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>")
        body = await request.read()
        async with ClientSession(auto_decompress=False) as s:
            async with s.request(request.method, URL(self.upstream + request.raw_path, encoded=True),
                                 headers=request.headers, data=body or None,
                                 skip_auto_headers=("Content-Type",)) as r:
                return web.Response(status=r.status, body=await r.read(),
                                    headers={k: v for k, v in r.headers.items()
                                             if k.lower() not in ("content-length", "transfer-encoding",
                                                                  "connection", "content-encoding")})

    async def start(self) -> str:
        self.runner = web.ServerRunner(web.Server(self.handle, access_log=None))
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


def test_retries_503_then_success_and_no_retry_of_403(gw):
    g, key = gw

    async def main() -> None:
        proxy = FaultProxy(g.endpoint, fail_first=2)
        ep = await proxy.start()
        try:
            fs = S3Client(parse(s3_url(ep, key, extra="&region=us-east-1")))  # type: ignore[arg-type]
            t0 = time.monotonic()
            await fs.put("retry/one", b"persisted after two 503s")
            assert fs.retries == 2 and fs.requests == 3
            assert time.monotonic() - t0 >= 0.05 + 0.5 - 0.01  # Dovecot's 50 ms then 500 ms
            assert (await fs.get("retry/one"))[0] == b"persisted after two 503s"
            await fs.close()
            bad = S3Client(parse(s3_url(ep, type(key)(key.access_key, "wrong-secret"))))  # type: ignore[arg-type]
            proxy.fail_first = 0
            with pytest.raises(AccessDenied):
                await bad.get("retry/one")
            assert bad.requests == 1 and bad.retries == 0  # 4xx is final
            await bad.close()
            proxy.fail_first = 100  # a gateway that never recovers: Unavailable within the deadline
            slow = S3Client(parse(s3_url(ep, key, extra="&max_retries=2")))  # type: ignore[arg-type]
            with pytest.raises(Unavailable):
                await slow.get("retry/never")
            assert slow.requests == 3
            await slow.close()
        finally:
            await proxy.stop()
    asyncio.run(main())


def test_gateway_stopped_cached_reads_go_on(tmp_path):
    data = tmp_path / "data"
    key = create_key(data)
    g = GatewayProcess(data)
    client(g.endpoint, key).create_bucket(Bucket="mail")
    url = f"fscache:16M:{tmp_path / 'c'}:" + s3_url(g.endpoint, key, extra="&absolute_timeout=2s&timeout=1s")

    async def fill() -> None:
        fs = open_fs(url)
        try:
            await fs.put("kept", b"cached before the outage")
            client(g.endpoint, key).put_object(Bucket="mail", Key="never-read", Body=b"x")
        finally:
            await fs.close()
    asyncio.run(fill())
    g.stop()

    async def outage() -> None:
        fs = open_fs(url)
        try:
            assert (await fs.get("kept"))[0] == b"cached before the outage"
            t0 = time.monotonic()
            with pytest.raises(Unavailable) as e:
                await fs.get("never-read")
            assert time.monotonic() - t0 < 5 and "never-read" in str(e.value)
        finally:
            await fs.close()
    asyncio.run(outage())
    # a second process shares the cache directory: it reads the cached object too
    res = subprocess.run([str(BIN / "mailstore"), "fs", "get", url, "kept"], capture_output=True, timeout=60)
    assert res.returncode == 0 and res.stdout == b"cached before the outage"
    res = subprocess.run([str(BIN / "mailstore"), "fs", "get", url, "never-read"], capture_output=True, timeout=60)
    assert res.returncode == 75 and b"unavailable" in res.stderr


def test_fs_tool(gw, tmp_path):
    g, key = gw
    url = s3_url(g.endpoint, key)
    src = tmp_path / "mail.eml"
    src.write_bytes(b"Subject: hi\r\n\r\nbody\r\n")

    def fs(*args: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([str(BIN / "mailstore"), "fs", *args], capture_output=True, input=data, timeout=60)

    assert fs("put", url, "tool/a", str(src), "--meta", "dovecot-guid=x").returncode == 0
    assert fs("put", url, "tool/b", "-", data=b"from stdin").returncode == 0
    st = json.loads(fs("stat", url, "tool/a").stdout)
    assert st["size"] == src.stat().st_size and st["metadata"] == {"dovecot-guid": "x"}
    assert fs("get", url, "tool/b").stdout == b"from stdin"
    assert fs("cp", url, "tool/a", "tool/c", "--meta", "k=v").returncode == 0
    assert fs("ls", url, "tool/").stdout.decode().split("\n")[:3] == [f"tool/a\t{st['size']}", "tool/b\t10", f"tool/c\t{st['size']}"]
    assert fs("rm", url, "tool/a", "tool/b", "tool/c").returncode == 0
    assert fs("ls", url, "tool/").stdout == b""
    missing = fs("get", url, "tool/a")
    assert missing.returncode == 1 and b"not found" in missing.stderr
    typo = fs("ls", url + "&bukcet=x")
    assert typo.returncode == 2 and b"unknown s3 parameter(s): bukcet" in typo.stderr


def test_recently_read_entries_outlive_unread_ones(gw, tmp_path, monkeypatch):
    """LRU to the minute: a hit re-stores an entry last stored in an earlier minute,
    so under churn it outlives entries stored after it but not read since."""
    import cache.fscache as fsc

    g, key = gw
    now = [1000]
    monkeypatch.setattr(fsc, "_minute", lambda: now[0])

    async def main() -> None:
        fs = open_fs(f"fscache:1M:{tmp_path / 'lru'}:" + s3_url(g.endpoint, key))
        assert isinstance(fs, FsCache)
        try:
            await fs.put("lru/read", os.urandom(10_000))
            await fs.put("lru/unread", os.urandom(10_000))
            for i in range(30):
                await fs.put(f"lru/old{i}", os.urandom(10_000))
            now[0] += 5  # minutes later, one of the oldest two is read
            before = fs.parent.requests
            await fs.get("lru/read")
            assert fs.parent.requests == before  # a hit
            await asyncio.sleep(0.2)  # the touch is queued behind the read
            for i in range(200):  # churn until eviction reaches the old entries
                await fs.put(f"lru/new{i}", os.urandom(10_000))
                if "lru/unread" not in fs.cache:
                    break
            for _ in range(100):  # the fill that culled counts it when it resumes: let it
                if fs.counters.evictions:
                    break
                await asyncio.sleep(0.05)
            assert fs.counters.evictions > 0 and "lru/unread" not in fs.cache
            assert "lru/read" in fs.cache and "lru/old29" in fs.cache  # eviction took the least recent only
        finally:
            await fs.close()
    asyncio.run(main())
