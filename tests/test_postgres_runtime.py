"""The private PostgreSQL that the tests (and later `mailstore up --hosts N`) run (issue 15)."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import psycopg
import pytest

from bench.lmtp import free_port
from runtime.postgres import PrivatePostgres


@pytest.fixture(scope="module")
def pg():  # type: ignore[no-untyped-def]
    server = PrivatePostgres(Path(tempfile.mkdtemp(prefix="mailstore-pg-")), free_port())
    server.start()
    yield server
    server.remove()


def test_a_private_cluster_on_loopback_with_a_password(pg: PrivatePostgres) -> None:
    with psycopg.connect(pg.url()) as c:
        assert c.execute("SELECT current_database(), current_user").fetchone() == ("mailstore", "mailstore")
        assert c.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert c.execute("SHOW fsync").fetchone() == ("on",)
        assert c.execute("SHOW synchronous_commit").fetchone() == ("on",)
        assert c.execute("SHOW password_encryption").fetchone() == ("scram-sha-256",)
    wrong = pg.url().replace(pg.password, "not-the-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5)
    # the socket needs the password too (initdb -A scram-sha-256 for every method)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"host={pg.root} port={pg.port} user={pg.user} dbname=postgres", connect_timeout=5)


def test_files_are_private_and_the_password_is_on_no_command_line(pg: PrivatePostgres) -> None:
    assert stat.S_IMODE(pg.root.stat().st_mode) == 0o700
    assert stat.S_IMODE((pg.root / "password").stat().st_mode) == 0o600
    assert stat.S_IMODE(pg.data.stat().st_mode) == 0o700
    assert not (pg.root / ".initdb-password").exists()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert pg.password.encode() not in cmdline, pid


def test_stopped_by_pid_and_started_again_with_its_data(tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    root = Path(tempfile.mkdtemp(prefix="mailstore-pg-"))
    server = PrivatePostgres(root, free_port())
    try:
        server.start()
        with psycopg.connect(server.url()) as c:
            c.execute("CREATE TABLE kept(x int)")
            c.execute("INSERT INTO kept VALUES (42)")
        pid = server.proc.pid  # type: ignore[union-attr]
        server.stop()
        assert server.proc is not None and server.proc.poll() is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        server.start()  # the same cluster: initdb is not run again, the row is there
        with psycopg.connect(server.url()) as c:
            assert c.execute("SELECT x FROM kept").fetchone() == (42,)
    finally:
        server.remove()
