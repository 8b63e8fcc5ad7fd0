"""A private PostgreSQL: its own data directory, loopback port and password, started and
stopped by PID (issue 15: mail metadata shared by several shim hosts).

What `mailstore up --hosts N` and the tests run when no PostgreSQL is given, the
way HAProxy is run: Debian's `postgresql` package provides the programs
(/usr/lib/postgresql/<version>/bin); nothing of the system cluster is used.

- `initdb` makes the cluster with SCRAM passwords for everything, TCP and the
  socket alike (the password goes in through `--pwfile`, a 0600 file removed
  right after, never on a command line).
- `postgres` runs in the foreground (so a supervisor owns its PID), listening on
  127.0.0.1 and a socket in the cluster's own directory, with fsync and
  synchronous commit on: an acknowledged delivery's row is on disk.
- PostgreSQL refuses to run as root: as root, the programs run as the `postgres`
  system user the package creates, which then owns the directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

DEFAULT_USER = "mailstore"


class PostgresError(RuntimeError):
    pass


def bindir() -> Path:
    """The newest installed server's programs."""
    root = Path("/usr/lib/postgresql")
    versions = sorted((p for p in root.glob("*/bin") if (p / "postgres").exists()),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if not versions:
        raise PostgresError("PostgreSQL is not installed: apt-get install postgresql")
    return versions[-1]


class PrivatePostgres:
    def __init__(self, root: Path, port: int, *, user: str = DEFAULT_USER, database: str = "mailstore") -> None:
        self.root = root
        self.data = root / "data"
        self.port = port
        self.user = user
        self.database = database
        self.proc: subprocess.Popen[bytes] | None = None
        self._password_file = root / "password"  # the client's copy (0600), read by `url`

    @property
    def _as_owner(self) -> list[str]:
        """Run as the cluster's owner: the `postgres` system user when we are root."""
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _own(self, path: Path) -> None:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(path, pw.pw_uid, pw.pw_gid)

    @property
    def password(self) -> str:
        return self._password_file.read_text().strip()

    def url(self, database: str | None = None) -> str:
        """The libpq URL of the database (it carries the password: keep it out of argv and logs)."""
        return (f"postgresql://{quote(self.user)}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/"
                f"{quote(database or self.database)}")

    def init(self) -> None:
        """Make the cluster once (a no-op when it exists)."""
        if (self.data / "PG_VERSION").exists():
            return
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        if not self._password_file.exists():
            fd = os.open(self._password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24))
        self._own(self.root)
        pwfile = self.root / ".initdb-password"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        self._own(pwfile)
        if self._as_owner and subprocess.run([*self._as_owner, "test", "-r", str(pwfile)]).returncode != 0:
            pwfile.unlink(missing_ok=True)
            raise PostgresError(f"the postgres user cannot reach {self.root}: every directory above it must "
                                "be searchable by it (chmod o+x)")
        try:
            subprocess.run([*self._as_owner, str(bindir() / "initdb"), "-D", str(self.data), "-U", self.user,
                            "--pwfile", str(pwfile), "-A", "scram-sha-256", "-E", "UTF8", "--locale", "C"],
                           check=True, capture_output=True, timeout=120)
        except subprocess.CalledProcessError as exc:
            raise PostgresError(f"initdb failed: {exc.stderr.decode(errors='replace')[-2000:]}") from None
        finally:
            pwfile.unlink(missing_ok=True)

    def command(self) -> list[str]:
        """The foreground server, for a supervisor (or `start`)."""
        return [*self._as_owner, str(bindir() / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-k", str(self.root), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=on",
                "-c", "synchronous_commit=on", "-c", "max_connections=200"]

    def start(self, timeout: float = 30.0) -> None:
        """Start in the background and wait until it takes connections (the database made once)."""
        self.init()
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 - the server writes it while it runs
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PostgresError(f"postgres exited: {self.log_tail()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                if self._ready():
                    self._create_database()
                    return
            time.sleep(0.1)
        self.stop()
        raise PostgresError(f"postgres did not start within {timeout:g}s: {self.log_tail()}")

    def _ready(self) -> bool:
        import psycopg  # the driver the metadata backend uses
        try:
            psycopg.connect(self.url("postgres"), connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def _create_database(self) -> None:
        import psycopg
        with psycopg.connect(self.url("postgres"), autocommit=True) as c:
            if c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone() is None:
                c.execute(f'CREATE DATABASE "{self.database}"')

    def log_tail(self, size: int = 2000) -> str:
        try:
            return (self.root / "postgres.log").read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: sessions end, everything committed stays), by PID."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running(root: Path, port: int) -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres(root, port)
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()
