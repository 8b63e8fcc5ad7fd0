"""The compress: fs wrapper (issue 20): Dovecot's syntax and formats, checked against Dovecot's
own fs-compress (doveadm fs), and mail stored compressed and read back over IMAP."""

from __future__ import annotations

import asyncio
import imaplib
import os
import shutil
import signal
import smtplib
import subprocess
from pathlib import Path

import pytest

from cache import Compressed, CompressUrl, FsCache, S3Client, open_fs
from cache.compress import CorruptObject, compressor, decompress, detect
from cache.url import FsCacheUrl, FsUrlError, S3Url, parse
from conftest import GatewayProcess, client, create_key
from test_fscache import s3_url
from test_lmtp import DOMAIN, Shim

ALGORITHMS = {"zstd": 3, "gz": 6, "bz2": 9, "xz": 6}
MAIL = (b"From: a@example.com\r\nTo: b@example.com\r\nSubject: compress me\r\n\r\n"
        + b"The same line, again and again, as mail bodies often are.\r\n" * 400)


def test_parse_compress_urls():
    c = parse("compress:zstd:3:s3:http://K:S@127.0.0.1:9000/?bucket=b")
    assert isinstance(c, CompressUrl) and (c.algorithm, c.level) == ("zstd", 3) and isinstance(c.parent, S3Url)
    f = parse("fscache:1G:/var/cache/mail:compress:gz:6:s3:http://K:S@127.0.0.1:9000/?bucket=b")
    assert isinstance(f, FsCacheUrl) and isinstance(f.parent, CompressUrl) and f.parent.algorithm == "gz"
    outer = parse("compress:xz:0:fscache:1G:/c:s3:http://K:S@h.example/?bucket=b")
    assert isinstance(outer, CompressUrl) and isinstance(outer.parent, FsCacheUrl)
    for bad, words in [("compress:lz4:1:s3:http://K:S@h/?bucket=b", "lz4"),
                       ("compress:brotli:3:s3:http://K:S@h/?bucket=b", "unknown compression"),
                       ("compress:zstd:30:s3:http://K:S@h/?bucket=b", "from 1 to 22"),
                       ("compress:gz:x:s3:http://K:S@h/?bucket=b", "level"),
                       ("compress:zstd", "compress:ALGORITHM:LEVEL"),
                       ("fscache:1G:/c:fscache:1G:/d:s3:http://K:S@h/?bucket=b", "twice")]:
        with pytest.raises(FsUrlError) as e:
            parse(bad)
        assert words in str(e.value), (bad, str(e.value))


TOOLS = {"zstd": "zstd", "gz": "gzip", "bz2": "bzip2", "xz": "xz"}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_formats_are_the_standard_tools(algorithm):
    """What we write, the format's own tool reads; what it writes, we read."""
    tool = shutil.which(TOOLS[algorithm])
    assert tool, f"{TOOLS[algorithm]} is installed with Debian (and by ./dev)"
    ours = compressor(algorithm, ALGORITHMS[algorithm])(MAIL)
    assert subprocess.run([tool, "-d", "-c"], input=ours, capture_output=True, check=True).stdout == MAIL
    theirs = subprocess.run([tool, "-c"], input=MAIL, capture_output=True, check=True).stdout
    assert detect(theirs) == algorithm and decompress(theirs) == MAIL


@pytest.mark.parametrize("algorithm", ["zstd", "gz", "bz2"])  # Debian's Dovecot is built without xz
def test_formats_are_dovecots(algorithm, tmp_path):
    """What we write, Dovecot's fs-compress reads; what it writes, we read (doveadm fs, Dovecot CE)."""
    d = tmp_path / "objects"
    d.mkdir()
    conf = tmp_path / "dovecot.conf"
    conf.write_text(f"base_dir = {tmp_path}/run\nstate_dir = {tmp_path}/state\nlog_path = {tmp_path}/log\n")
    doveadm = shutil.which("doveadm")
    assert doveadm, "Dovecot CE is installed by the project's setup (./dev)"
    fs_args = f"{algorithm}:{ALGORITHMS[algorithm]}:posix:prefix={d}/"
    ours = compressor(algorithm, ALGORITHMS[algorithm])(MAIL)
    assert detect(ours) == algorithm and len(ours) < len(MAIL) // 5
    (d / "ours").write_bytes(ours)
    got = subprocess.run([doveadm, "-c", str(conf), "fs", "get", "compress", fs_args, "ours"],
                         capture_output=True, check=True).stdout
    assert got == MAIL
    (tmp_path / "mail.eml").write_bytes(MAIL)
    subprocess.run([doveadm, "-c", str(conf), "fs", "put", "compress", fs_args, str(tmp_path / "mail.eml"), "theirs"],
                   capture_output=True, check=True)
    theirs = (d / "theirs").read_bytes()
    assert detect(theirs) == algorithm and theirs != MAIL
    assert decompress(theirs) == MAIL


def test_plain_and_corrupt_objects():
    assert decompress(MAIL) == MAIL  # written before compression was on: read as it is
    for alg in ALGORITHMS:
        data = bytearray(compressor(alg, ALGORITHMS[alg])(os.urandom(5000)))
        bad = bytes(data[: len(data) // 2])  # cut short
        with pytest.raises(CorruptObject):
            decompress(bad, "k")


@pytest.fixture(scope="module")
def gw(tmp_path_factory):  # type: ignore[no-untyped-def]
    data = tmp_path_factory.mktemp("cmp") / "data"
    key = create_key(data)
    g = GatewayProcess(data)
    client(g.endpoint, key).create_bucket(Bucket="mail")
    yield g, key
    g.stop()


def test_through_a_gateway(gw, tmp_path):
    g, key = gw
    base = s3_url(g.endpoint, key)

    async def main() -> None:
        raw = open_fs(base)
        zfs = open_fs(f"compress:zstd:3:{base}")
        cached = open_fs(f"fscache:16M:{tmp_path / 'cache'}:compress:gz:6:{base}")
        assert isinstance(raw, S3Client) and isinstance(zfs, Compressed) and isinstance(cached, FsCache)
        try:
            await zfs.put("z/1", MAIL, {"dovecot-guid": "g"}, "message/rfc822")
            stored, st = await raw.get("z/1")
            assert detect(stored) == "zstd" and st.size == len(stored) < len(MAIL)
            body, st = await zfs.get("z/1")
            assert body == MAIL and st.metadata == {"dovecot-guid": "g"}
            await raw.put("z/plain", MAIL)  # written without compression
            await cached.put("z/gz", MAIL)
            assert detect((await raw.get("z/gz"))[0]) == "gz"
            assert await zfs.get_many(["z/plain", "z/gz", "z/1"]) == [MAIL, MAIL, MAIL]  # any format reads
            assert (await cached.get("z/1"))[0] == MAIL and (await cached.get("z/1"))[0] == MAIL
            await zfs.copy("z/1", "z/copy")
            assert (await zfs.get("z/copy"))[0] == MAIL
            big = os.urandom(300_000) + MAIL  # past ON_LOOP: (de)compressed on a worker thread
            await zfs.put("z/big", big)
            assert (await zfs.get("z/big"))[0] == big
            await raw.put("z/broken", compressor("zstd", 3)(MAIL)[:40])
            with pytest.raises(CorruptObject):
                await zfs.get("z/broken")
        finally:
            for fs in (raw, zfs, cached):
                await fs.close()
    asyncio.run(main())


def test_mail_stored_compressed_reads_back_over_imap(tmp_path):
    """LMTP delivers through compress:zstd:3:, the object in the bucket is zstd, IMAP serves it."""
    shim = Shim(tmp_path / "shim", wrap="compress:zstd:3:")
    user = f"zed@{DOMAIN}"
    shim.add_user(user)
    imap, info = shim.start_imap()
    try:
        with smtplib.LMTP("127.0.0.1", shim.port) as lmtp:
            lmtp.sendmail("a@example.com", [user], MAIL)
        assert shim.gateway is not None
        s3 = client(shim.gateway.endpoint, shim.key)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mail").get("Contents", [])
                if "/mailboxes/" in o["Key"]]
        assert len(keys) == 1
        stored = s3.get_object(Bucket="mail", Key=keys[0])["Body"].read()
        assert detect(stored) == "zstd" and len(stored) < len(MAIL) // 5
        assert decompress(stored).endswith(MAIL)
        m = imaplib.IMAP4("127.0.0.1", int(info["port"]))
        m.login(user, "pw")
        m.select("INBOX")
        typ, data = m.fetch("1", "(RFC822)")
        assert typ == "OK"
        served = data[0][1]  # with the Return-Path (and trace) headers LMTP delivery adds
        assert served.endswith(MAIL)
        typ, data = m.fetch("1", "(RFC822.SIZE)")
        assert f"RFC822.SIZE {len(served)}".encode() in data[0]  # the message's size, not the stored one
        m.logout()
    finally:
        imap.send_signal(signal.SIGTERM)
        imap.wait(timeout=30)
        shim.stop()
