"""PostgreSQL restarted under the shim (issue 15): while it is down, deliveries answer 451 4.3.0
and IMAP commands NO [UNAVAILABLE]; after it is back both work again on new connections, and
every message acknowledged with 250 is there exactly once."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import tempfile
import time
from pathlib import Path

from bench.lmtp import free_port
from imapdiff import Raw, status
from mailstore.db import MetaStore
from runtime.postgres import PrivatePostgres
from test_lmtp import DOMAIN, Shim

USER = f"restart@{DOMAIN}"


def send(port: int, n: int) -> str:
    """One delivery; the LMTP reply code."""
    try:
        c = smtplib.LMTP("127.0.0.1", port)
        try:
            c.sendmail("s@example.org", [USER], f"Message-ID: <r{n}@example.org>\r\nSubject: {n}\r\n\r\nx\r\n")
        finally:
            c.close()
        return "250"
    except smtplib.SMTPRecipientsRefused as exc:
        return str(exc.recipients[USER][0])
    except smtplib.SMTPDataError as exc:
        return str(exc.smtp_code)


def test_postgresql_restart_during_deliveries(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    pg = PrivatePostgres(Path(tempfile.mkdtemp(prefix="mailstore-pg-")), free_port())
    pg.start()
    passfile = tmp_path / "pgpass"  # this cluster's password, for the shim's processes
    passfile.write_text(f"127.0.0.1:{pg.port}:*:{pg.user}:{pg.password}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    shim = Shim(tmp_path / "shim", metadata=f"postgresql://{pg.user}@127.0.0.1:{pg.port}/{pg.database}")
    imap_proc = None
    try:
        shim.add_user(USER)
        imap_proc, info = shim.start_imap()
        a = Raw(info["port"])
        assert status(a.cmd(f"LOGIN {USER} pw")).startswith(b"OK")
        a.cmd("SELECT INBOX")
        acked = [n for n in range(5) if send(shim.port, n) == "250"]
        assert acked == list(range(5))
        pg.stop()
        down = [send(shim.port, n) for n in range(5, 8)]
        assert set(down) == {"451"}, down  # 4.3.0: the MTA keeps the mail and retries
        assert status(a.cmd("NOOP")) == b"NO [UNAVAILABLE]"
        pg.start()
        deadline = time.monotonic() + 30
        n = 8
        while time.monotonic() < deadline:  # the MTA's retry: succeeds once PostgreSQL is back
            code = send(shim.port, n)
            if code == "250":
                acked.append(n)
                break
            n += 1
            time.sleep(0.5)
        assert acked[-1] == n
        acked += [m for m in range(n + 1, n + 4) if send(shim.port, m) == "250"]
        assert len(acked) == 5 + 1 + 3
        assert status(a.cmd("NOOP")).startswith(b"OK")  # the IMAP session goes on, on a new connection
        meta = MetaStore(shim.db)
        box = meta.mailbox(USER, "INBOX")
        assert box is not None
        fetched = b"".join(a.cmd("FETCH 1:* (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])"))
        ids = sorted(int(x) for x in re.findall(rb"<r(\d+)@example\.org>", fetched))
        assert ids == sorted(acked)  # every acknowledged message, once; nothing else
        assert len(meta.messages(box.id)) == len(acked)
        a.close()
    finally:
        if imap_proc is not None:
            imap_proc.send_signal(signal.SIGTERM)
            imap_proc.wait(timeout=30)
        shim.stop()
        pg.remove()
        assert not os.path.exists(pg.root)
