"""The mail-crypt: fs wrapper (issue 20): each user's mail encrypted to the user's own key pair,
whose private key only the user's password opens. Delivered over LMTP without the password,
read over IMAP after a login, and by `mailstore fs get` with it; what the raw data files of
the gateway hold; tampering; password changes and resets."""

from __future__ import annotations

import asyncio
import imaplib
import json
import smtplib
import subprocess
from pathlib import Path

import pytest

from cache import MailCrypt, open_fs
from cache.mailcrypt import (
    MAGIC,
    CorruptObject,
    KeyLocked,
    WrongPassword,
    decrypt,
    encrypt,
    key_object,
    new_key_pair,
    open_private,
    user_of,
)
from cache.url import FsUrlError, MailCryptUrl, parse
from conftest import BIN, client, mailstore
from mailstore import layout
from test_lmtp import DOMAIN, Shim

SECRET_LINE = b"The launch code is MAILCRYPT-PLAINTEXT-MARKER-4711, do not tell anyone.\r\n"
MAIL = (b"From: a@example.com\r\nTo: b@example.com\r\nSubject: MAILCRYPT-SUBJECT-MARKER\r\n\r\n"
        + SECRET_LINE * 50)


def test_format_and_keys():
    user = "ann@example.com"
    # (spaces and punctuation: no base64 or hex field of the stored key can hold it by chance,
    # as "pw" once was, inside a public key)
    password = "pw, #1 never stored"
    private, stored = new_key_pair(user, password)
    assert password.encode() not in stored and json.loads(stored)["alg"] == "x25519"
    opened = open_private(user, stored, password)
    with pytest.raises(WrongPassword):
        open_private(user, stored, "not it")
    with pytest.raises(WrongPassword):
        open_private("bob@example.com", stored, password)  # sealed for ann, not bob
    public = json.loads(stored)["public"]
    import base64
    sealed = encrypt(base64.b64decode(public), MAIL)
    assert sealed.startswith(MAGIC) and b"MAILCRYPT" not in sealed
    assert decrypt(opened, sealed, "k") == MAIL
    for at in (20, 60, len(sealed) - 1):  # the ephemeral key, the body, its tag
        bad = bytearray(sealed)
        bad[at] ^= 1
        with pytest.raises(CorruptObject):
            decrypt(opened, bytes(bad), "k")
    other, _ = new_key_pair(user, "pw")
    with pytest.raises(CorruptObject):
        decrypt(other, sealed, "k")
    assert decrypt(opened, b"plain", "k") == b"plain"  # stored before mail-crypt was on
    key = layout.message_key(user, "0" * 32, "1" * 32)
    assert user_of(key) == user and key_object(user).startswith(layout.user_prefix(user))
    for bad_key in ("x/y/z", "00000000/ann@example.com/mailboxes/a"):
        with pytest.raises(Exception, match="names no user"):
            user_of(bad_key)


def test_urls():
    u = parse("compress:zstd:3:mail-crypt:fscache:1G:/c:s3:http://K:S@h/?bucket=b")
    assert isinstance(u.parent, MailCryptUrl)  # type: ignore[union-attr]
    for bad, words in [("fscache:1G:/c:mail-crypt:s3:http://K:S@h/?bucket=b", "decrypted mail on the local disk"),
                       ("fscache:1G:/c:compress:gz:6:mail-crypt:s3:http://K:S@h/?bucket=b", "local disk"),
                       ("mail-crypt:compress:gz:6:s3:http://K:S@h/?bucket=b", "do not compress")]:
        with pytest.raises(FsUrlError, match=words):
            parse(bad)


def _raw_files(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def _password_file(path: Path, password: str) -> str:
    path.write_text(password + "\n")
    path.chmod(0o600)
    return str(path)


def test_delivered_encrypted_read_over_imap(tmp_path):
    """LMTP stores encrypted without the password; the gateway's data files and the shim's cache
    hold no plaintext; IMAP reads after a login; a user without a key is deferred (4.3.0)."""
    shim = Shim(tmp_path / "shim", outer="compress:zstd:3:mail-crypt:")
    user, late = f"ann@{DOMAIN}", f"late@{DOMAIN}"
    made = json.loads(mailstore("user", "add", "--db", shim.db, "--fs", shim.fs, user, "--password", "pw").stdout)
    assert made["mail_key"] == "made"
    mailstore("user", "add", "--db", shim.db, late, "--password", "pw2")  # no --fs: no key yet
    imap, info = shim.start_imap()
    try:
        with smtplib.LMTP("127.0.0.1", shim.port) as lmtp:
            lmtp.sendmail("a@example.com", [user], MAIL)
            with pytest.raises(smtplib.SMTPDataError) as e:  # LMTP: the recipient's reply after DATA
                lmtp.sendmail("a@example.com", [late], MAIL)
            assert e.value.smtp_code == 451, e.value
        assert shim.gateway is not None
        s3 = client(shim.gateway.endpoint, shim.key)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mail")["Contents"] if "/mailboxes/" in o["Key"]]
        assert len(keys) == 1 and user_of(keys[0]) == user
        stored = s3.get_object(Bucket="mail", Key=keys[0])["Body"].read()
        assert stored.startswith(MAGIC)
        raw = _raw_files(shim.gw_data) + _raw_files(tmp_path / "shim" / "cache")
        assert b"MAILCRYPT-PLAINTEXT-MARKER" not in raw and b"MAILCRYPT-SUBJECT-MARKER" not in raw
        assert b"launch code" not in raw
        m = imaplib.IMAP4("127.0.0.1", int(info["port"]))
        m.login(user, "pw")
        m.select("INBOX")
        typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[TEXT])")
        assert typ == "OK" and b"MAILCRYPT-SUBJECT-MARKER" in data[0][1]
        assert data[1][1].startswith(SECRET_LINE)
        m.logout()
        # the late user's first login makes the key; deliveries go through from then on
        m = imaplib.IMAP4("127.0.0.1", int(info["port"]))
        m.login(late, "pw2")
        with smtplib.LMTP("127.0.0.1", shim.port) as lmtp:
            lmtp.sendmail("a@example.com", [late], MAIL)
        m.select("INBOX")
        assert m.fetch("1", "(BODY.PEEK[TEXT])")[1][0][1].startswith(SECRET_LINE)
        m.logout()
        # a changed ciphertext is a failed read, never other bytes (read past the cache, which
        # holds what was written)
        bad = bytearray(stored)
        bad[len(bad) // 2] ^= 1
        s3.put_object(Bucket="mail", Key=keys[0], Body=bytes(bad))
        url = Path(shim.fs[1:]).read_text().replace(f"fscache:64M:{tmp_path / 'shim' / 'cache'}:", "")
        direct = tmp_path / "direct.url"
        direct.write_text(url)
        direct.chmod(0o600)
        pw = _password_file(tmp_path / "pw", "pw")
        out = subprocess.run([str(BIN / "mailstore"), "fs", "get", f"@{direct}", keys[0], "--password-file", pw],
                             capture_output=True)
        assert out.returncode == 1 and b"does not open" in out.stderr and out.stdout == b""
    finally:
        imap.terminate()
        imap.wait(timeout=30)
        shim.stop()


def test_fs_get_and_password_changes(tmp_path):
    """`mailstore fs get` reads with the user's password and not without; a password change
    through `user passwd --fs` keeps the mail readable; one without --fs leaves the key under
    the old password (IMAP says so) until `user passwd --fs` reseals it; --reset-mail-key makes
    a new key and the old mail stays unreadable."""
    shim = Shim(tmp_path / "shim", outer="mail-crypt:")
    user = f"cat@{DOMAIN}"
    mailstore("user", "add", "--db", shim.db, "--fs", shim.fs, user, "--password", "one")
    imap, info = shim.start_imap()
    try:
        with smtplib.LMTP("127.0.0.1", shim.port) as lmtp:
            lmtp.sendmail("a@example.com", [user], MAIL)
        key = shim.rows(user)[0][5]
        locked = mailstore("fs", "get", shim.fs, key, check=False)
        assert locked.returncode == 1 and "KeyLocked" not in locked.stdout and "not open" in locked.stderr
        one = _password_file(tmp_path / "one", "one")
        got = subprocess.run([str(BIN / "mailstore"), "fs", "get", shim.fs, key, "--password-file", one],
                             capture_output=True, check=True).stdout
        assert got.endswith(SECRET_LINE)
        wrong = _password_file(tmp_path / "wrong", "nope")
        bad = mailstore("fs", "get", shim.fs, key, "--password-file", wrong, check=False)
        assert bad.returncode == 1 and "does not open" in bad.stderr
        # passwd with the old password: the mail key follows
        out = mailstore("user", "passwd", "--db", shim.db, "--fs", shim.fs, user, "--password", "two",
                        "--old-password-file", one)
        assert json.loads(out.stdout)["mail_key"] == "resealed"
        m = imaplib.IMAP4("127.0.0.1", int(info["port"]))
        m.login(user, "two")
        m.select("INBOX")
        assert m.fetch("1", "(BODY.PEEK[TEXT])")[1][0][1].startswith(SECRET_LINE)
        m.logout()
        # a wrong old password changes nothing at all
        refused = mailstore("user", "passwd", "--db", shim.db, "--fs", shim.fs, user, "--password", "three",
                            "--old-password-file", wrong, check=False)
        assert refused.returncode != 0
        # passwd without --fs: the database takes the new password, the key keeps the old one
        mailstore("user", "passwd", "--db", shim.db, user, "--password", "three")
        m = imaplib.IMAP4("127.0.0.1", int(info["port"]))
        with pytest.raises(imaplib.IMAP4.error, match="mail key"):
            m.login(user, "three")
        two = _password_file(tmp_path / "two", "two")
        mailstore("user", "passwd", "--db", shim.db, "--fs", shim.fs, user, "--password", "three",
                  "--old-password-file", two)
        m = imaplib.IMAP4("127.0.0.1", int(info["port"]))
        m.login(user, "three")
        m.select("INBOX")
        assert m.fetch("1", "(BODY.PEEK[TEXT])")[1][0][1].startswith(SECRET_LINE)
        m.logout()
        # a reset: a new key; what was stored before does not open any more
        out = mailstore("user", "passwd", "--db", shim.db, "--fs", shim.fs, user, "--password", "four",
                        "--reset-mail-key")
        assert "cannot be read" in json.loads(out.stdout)["mail_key"]
        four = _password_file(tmp_path / "four", "four")
        gone = mailstore("fs", "get", shim.fs, key, "--password-file", four, check=False)
        assert gone.returncode == 1 and "another key" in gone.stderr
    finally:
        imap.terminate()
        imap.wait(timeout=30)
        shim.stop()


def test_locked_reads_and_copies(tmp_path):
    """Without unlock nothing reads; a copy to another user's mail is refused (it could not open it)."""
    shim = Shim(tmp_path / "shim", outer="mail-crypt:")

    async def main() -> None:
        fs = open_fs(shim.fs)
        assert isinstance(fs, MailCrypt)
        try:
            a, b = f"a@{DOMAIN}", f"b@{DOMAIN}"
            assert await fs.create_key(a, "pa") and await fs.create_key(b, "pb")
            assert not await fs.create_key(a, "other")  # one key pair per user
            ka = layout.message_key(a, "0" * 32, "1" * 32)
            kb = layout.message_key(b, "0" * 32, "1" * 32)
            await fs.put(ka, MAIL)
            with pytest.raises(KeyLocked):
                await fs.get(ka)
            await fs.unlock(a, "pa")
            assert (await fs.get(ka))[0] == MAIL
            with pytest.raises(Exception, match="within its user"):
                await fs.copy(ka, kb)
            fs.release(a)
            with pytest.raises(KeyLocked):
                await fs.get(ka)
            with pytest.raises(WrongPassword):
                await fs.unlock(b, "pa")
        finally:
            await fs.close()
    try:
        asyncio.run(main())
    finally:
        shim.stop()


def test_appliance_config_builds_the_chain(tmp_path):
    from appliance.config import ConfigError, load
    from appliance.setup import shim_fs_url
    from cache.url import CompressUrl, FsCacheUrl, S3Url

    (tmp_path / "mailstore.toml").write_text('[mail]\ncompress = "zstd:3"\nmail_crypt = true\n')
    cfg = load(tmp_path)
    secrets = {"shim": {"access_key": "K", "secret_key": "S"}}
    spec = parse(shim_fs_url(tmp_path, cfg, secrets))  # type: ignore[arg-type]
    assert isinstance(spec, CompressUrl) and isinstance(spec.parent, MailCryptUrl)
    assert isinstance(spec.parent.parent, FsCacheUrl) and isinstance(spec.parent.parent.parent, S3Url)
    (tmp_path / "mailstore.toml").write_text('[mail]\ncompress = "lz4:1"\n')
    with pytest.raises(ConfigError, match="lz4"):
        load(tmp_path)
    (tmp_path / "mailstore.toml").write_text('[mail]\nmail_crypt = "yes"\n')
    with pytest.raises(ConfigError, match="true or false"):
        load(tmp_path)
