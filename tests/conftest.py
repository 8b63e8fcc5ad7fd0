"""Fixtures: real gateway processes on 127.0.0.1 port 0, real boto3 clients."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def mailstore(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "mailstore"), *args], capture_output=True, text=True, check=check,
                          timeout=300)


@dataclass
class Key:
    access_key: str
    secret: str


def new_engine(data_dir: Path) -> None:
    """An empty local engine in data_dir, as a gateway's first start makes it (the admin
    commands only work on an engine that exists)."""
    from gateway.engine.local import LocalEngine, is_engine

    if not is_engine(data_dir):
        LocalEngine(data_dir).close()


def create_key(data_dir: Path, name: str = "test") -> Key:
    new_engine(data_dir)
    out = json.loads(mailstore("key", "create", "--data-dir", str(data_dir), "--name", name).stdout)
    return Key(out["AccessKeyId"], out["SecretAccessKey"])


class GatewayProcess:
    def __init__(self, data_dir: Path, *extra: str, engine: list[str] | None = None) -> None:
        """`engine`: the arguments naming the engine, in place of `--data-dir data_dir`
        (whose parent then only holds the log)."""
        self.data_dir = data_dir
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(data_dir.parent / f"gateway-{os.getpid()}-{time.monotonic_ns()}.log", "w+")
        where = engine if engine is not None else ["--data-dir", str(data_dir)]
        self.proc = subprocess.Popen(
            [str(BIN / "mailstore"), "gateway", *where, "--listen", "127.0.0.1:0", *extra],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.log.seek(0)
            raise RuntimeError(f"gateway did not start: {self.log.read()}")
        info = json.loads(line)
        self.endpoint: str = info["endpoint"]
        self.port: int = info["port"]
        self.engine: str = info["engine"]

    def stop(self, sig: int = signal.SIGINT) -> None:  # SIGTERM would drain first (health.py)
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()


def client(endpoint: str, key: Key, verify: str | bool | None = None, **config: object):  # type: ignore[no-untyped-def]
    config.setdefault("s3", {"addressing_style": "path"})
    cfg = Config(retries={"max_attempts": 1, "mode": "standard"},
                 connect_timeout=5, read_timeout=60, **config)  # type: ignore[arg-type]
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key.access_key,
                        aws_secret_access_key=key.secret, region_name="us-east-1", config=cfg, verify=verify)


def make_tls_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost (tests only)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailstore test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.DNSName("s3.localhost"), x509.DNSName("*.s3.localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="session", autouse=True)
def _no_proxy_env() -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        os.environ.pop(var, None)
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gw") / "data"


@pytest.fixture(scope="module")
def engine_kind() -> str:
    """The engine under the module's gateway; a module runs on both with
    `engine_kind = both_engines` (the S3 suite does)."""
    return "local"


@pytest.fixture(scope="module", params=["local", "rados"])
def both_engines(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def key(engine_kind: str, data_dir: Path, request: pytest.FixtureRequest) -> Key:
    return engine_key(engine_kind, data_dir, request)


@pytest.fixture(scope="module")
def gateway(engine_kind: str, data_dir: Path, key: Key, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    gw = engine_gateway(engine_kind, data_dir, request)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def s3(gateway: GatewayProcess, key: Key):  # type: ignore[no-untyped-def]
    return client(gateway.endpoint, key)


_bucket_counter = [0]


@pytest.fixture
def bucket(s3) -> str:  # type: ignore[no-untyped-def]
    _bucket_counter[0] += 1
    name = f"b{os.getpid()}-{_bucket_counter[0]}"
    s3.create_bucket(Bucket=name)
    return name


# ------------------------------------------------------------------ PostgreSQL (issue 15)

@pytest.fixture(scope="session")
def postgres():  # type: ignore[no-untyped-def]
    """One private PostgreSQL for the whole session (runtime/postgres.py), removed at the end."""
    import tempfile

    from bench.lmtp import free_port
    from runtime.postgres import PrivatePostgres
    server = PrivatePostgres(Path(tempfile.mkdtemp(prefix="mailstore-pg-")), free_port())
    server.start()
    # The commands the tests run name the store by a URL without the password; libpq reads
    # it from PGPASSFILE, as an operator's hosts would.
    passfile = server.root / "pgpass"
    passfile.write_text(f"127.0.0.1:{server.port}:*:{server.user}:{server.password}\n")
    passfile.chmod(0o600)
    os.environ["PGPASSFILE"] = str(passfile)
    yield server
    os.environ.pop("PGPASSFILE", None)
    server.remove()


# ------------------------------------------------------------------ Ceph (issue 16)

@pytest.fixture(scope="session")
def ceph():  # type: ignore[no-untyped-def]
    """One throw-away Ceph cluster for the whole session (runtime/ceph.py), removed at the end."""
    import tempfile

    from runtime.ceph import PrivateCeph
    cluster = PrivateCeph(Path(tempfile.mkdtemp(prefix="mailstore-ceph-")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@dataclass
class RadosCluster:
    """Pools, a cephx user limited to them and a master key on the session's cluster: what an
    operator sets up once for every gateway host (README: "Gateways on Ceph RADOS")."""

    args: list[str]  # `mailstore gateway --engine rados ...` / `mailstore rados ...` cluster arguments
    master_key: Path
    namespace: str = ""

    def within(self, namespace: str) -> RadosCluster:
        """The same pools, another store: its own RADOS namespace."""
        return RadosCluster([*self.args, "--namespace", namespace], self.master_key, namespace)

    def ioctx(self, conn: object, pool: str = "--data-pool"):  # type: ignore[no-untyped-def]
        args = dict(zip(self.args[::2], self.args[1::2], strict=True))
        io = conn.open_ioctx(args[pool])  # type: ignore[attr-defined]
        io.set_namespace(self.namespace)
        return io

    def connect(self):  # type: ignore[no-untyped-def]
        import rados

        args = dict(zip(self.args[::2], self.args[1::2], strict=True))
        conn = rados.Rados(conffile=args["--ceph-conf"], name=args["--ceph-user"], conf={"keyring": args["--keyring"]})
        conn.connect(timeout=30)
        return conn

    def gateway_args(self) -> list[str]:
        return ["--engine", "rados", *self.args, "--master-key", str(self.master_key)]

    def dump_pools(self) -> list[bytes]:
        """Every object of this store in its pools (data, index, meta), whole: what a copy of
        the cluster's disks would hold of it."""
        conn = self.connect()
        out = []
        try:
            for pool in ("--data-pool", "--index-pool", "--meta-pool"):
                io = self.ioctx(conn, pool)
                try:
                    for obj in io.list_objects():
                        size, _ = io.stat(obj.key)
                        out.append(bytes(io.read(obj.key, max(size, 1))) if size else b"")
                        out.extend(v for _, v in io.get_xattrs(obj.key))
                finally:
                    io.close()
        finally:
            conn.shutdown()
        return out

    def create_key(self, name: str = "test") -> Key:
        out = json.loads(mailstore("rados", "key-create", name, *self.args, "--master-key",
                                   str(self.master_key)).stdout)
        return Key(out["AccessKeyId"], out["SecretAccessKey"])


@pytest.fixture(scope="session")
def rados_cluster(ceph, tmp_path_factory: pytest.TempPathFactory) -> RadosCluster:  # type: ignore[no-untyped-def]
    pools = {"--data-pool": "gw-data", "--index-pool": "gw-index", "--meta-pool": "gw-meta"}
    for pool in pools.values():
        ceph.create_pool(pool)
    keyring = ceph.create_user("client.gateways", list(pools.values()))
    master = tmp_path_factory.mktemp("rados") / "master.key"
    mailstore("rados", "master-key", str(master))
    args = ["--ceph-conf", str(ceph.conf), "--ceph-user", "client.gateways", "--keyring", str(keyring)]
    return RadosCluster(args + [a for kv in pools.items() for a in kv], master)


@pytest.fixture(scope="module")
def rados_store(rados_cluster: RadosCluster, request: pytest.FixtureRequest) -> RadosCluster:
    """The module's own store on the session's pools (a RADOS namespace per module)."""
    return rados_cluster.within(request.module.__name__.rsplit(".", 1)[-1])


def engine_key(kind: str, data_dir: Path, request: pytest.FixtureRequest) -> Key:
    """A fresh administrator key on the engine of `kind` ("local": in data_dir)."""
    if kind == "rados":
        cluster: RadosCluster = request.getfixturevalue("rados_store")
        return cluster.create_key()
    return create_key(data_dir)


def engine_gateway(kind: str, data_dir: Path, request: pytest.FixtureRequest, *extra: str) -> GatewayProcess:
    if kind == "rados":
        cluster: RadosCluster = request.getfixturevalue("rados_store")
        return GatewayProcess(data_dir, *extra, engine=cluster.gateway_args())
    return GatewayProcess(data_dir, *extra)


def new_metadata(request, base: Path, kind: str | None = None) -> str:  # type: ignore[no-untyped-def]
    """A fresh metadata store for a test module: a SQLite file under `base`, or (when the
    request's param is "postgresql") a new database of the session's PostgreSQL, as a URL
    without its password."""
    if (kind or getattr(request, "param", "sqlite")) == "sqlite":
        return str(base / "meta.db")
    import uuid

    import psycopg
    pg = request.getfixturevalue("postgres")
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg.url("postgres"), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://{pg.user}@127.0.0.1:{pg.port}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def metadata(request, tmp_path):  # type: ignore[no-untyped-def]
    """Where a test's MetaStore lives: a SQLite file, or a fresh database of the session's PostgreSQL."""
    if request.param == "sqlite":
        yield tmp_path / "meta.db"
        return
    import uuid

    import psycopg
    pg = request.getfixturevalue("postgres")
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg.url("postgres"), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield pg.url(name)
    with psycopg.connect(pg.url("postgres"), autocommit=True) as c:
        c.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
