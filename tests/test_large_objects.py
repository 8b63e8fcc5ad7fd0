"""Index bundles reach hundreds of MB: they stream through in bounded memory."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from conftest import client, engine_gateway, engine_key

SIZE = 300 * 1024 * 1024
CHUNK = 1024 * 1024


class Pattern(io.RawIOBase):
    """A deterministic, seekable 300 MiB stream that never sits in memory whole."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.size + offset}[whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        n = min(len(b), self.size - self.pos)
        block = self.pos // CHUNK
        data = (hashlib.sha256(str(block).encode()).digest() * (CHUNK // 32 + 1))
        start = self.pos % CHUNK
        n = min(n, CHUNK - start)
        b[:n] = data[start:start + n]
        self.pos += n
        return n


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # peak resident set
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.parametrize("engine", ["local", "rados"])
def test_300mib_put_and_get_stream_in_bounded_memory(tmp_path, engine, request):
    data = tmp_path / "data"
    key = engine_key(engine, data, request)
    gw = engine_gateway(engine, data, request)
    try:
        s3 = client(gw.endpoint, key)
        s3.create_bucket(Bucket="bundles")
        src = Pattern(SIZE)
        want = hashlib.md5()
        while chunk := src.read(CHUNK):
            want.update(chunk)
        src.seek(0)
        key_name = "ab12cd34/user/mailboxes/" + "0" * 32 + "/idx/bundle.5f3a.1b2c.host"
        put = s3.put_object(Bucket="bundles", Key=key_name, Body=src, ContentLength=SIZE)
        assert put["ETag"] == f'"{want.hexdigest()}"'
        got = hashlib.md5()
        body = s3.get_object(Bucket="bundles", Key=key_name)["Body"]
        n = 0
        for chunk in body.iter_chunks(CHUNK):
            got.update(chunk)
            n += len(chunk)
        assert n == SIZE and got.hexdigest() == want.hexdigest()
        part = s3.get_object(Bucket="bundles", Key=key_name, Range=f"bytes={SIZE - 10}-")["Body"].read()
        src.seek(SIZE - 10)
        assert part == src.read(10)
        assert rss_mb(gw.proc.pid) < 200, "the gateway must stream, not buffer, large bodies"
        if engine == "rados":
            store = request.getfixturevalue("rados_store")
            conn = store.connect()
            try:
                io = store.ioctx(conn)
                tails = [o.key for o in io.list_objects() if ".t" in o.key]
                io.close()
            finally:
                conn.shutdown()
            assert len(tails) >= SIZE // (4 * CHUNK)  # striped into 4 MiB tails
        s3.delete_object(Bucket="bundles", Key=key_name)
        if engine == "local":
            assert not list((data / "blobs").glob("*/*.blob")), "deleting the object frees its blob"
        else:
            conn = store.connect()
            try:
                io = store.ioctx(conn)
                assert not [o.key for o in io.list_objects()], "deleting the object frees its head and tails"
                io.close()
            finally:
                conn.shutdown()
    finally:
        gw.stop()
