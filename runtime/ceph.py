"""A throw-away Ceph cluster: one monitor, one manager and N BlueStore OSDs on sparse files,
everything on 127.0.0.1, started and stopped by PID (issue 16: the gateway on RADOS).

What the tests, the benchmarks and `mailstore up --engine rados` run when no cluster is
given. Debian's packages provide the programs (`ceph-mon`, `ceph-mgr`, `ceph-osd`,
`ceph-common`); nothing of /etc/ceph or systemd is used:

- one `ceph.conf` in the cluster's own directory, binding every daemon to loopback, one
  copy of each object (`osd_pool_default_size = 1`, allowed for a single host);
- keys made by `ceph-authtool` into 0600 keyring files, never on a command line; each
  OSD's secret goes to `ceph osd new` in a 0600 JSON file;
- the daemons run in the foreground (`-f`), each in its own process group, so a
  supervisor owns their PIDs; `stop` ends OSDs, manager and monitor in that order;
- ready means, in this order: the monitor in quorum, every OSD up and in, the manager
  active, and every placement group active+clean.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ADMIN = "client.admin"


class CephError(RuntimeError):
    pass


def installed() -> bool:
    return all(shutil.which(p) for p in ("ceph-mon", "ceph-mgr", "ceph-osd", "ceph", "ceph-authtool", "monmaptool"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrivateCeph:
    def __init__(self, root: Path, *, osds: int = 1, osd_size_gib: int = 10, mon_port: int | None = None) -> None:
        self.root = root
        self.osds = osds
        self.osd_size_gib = osd_size_gib
        self.conf = root / "ceph.conf"
        self.mon_port = mon_port or self._made_port() or _free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}  # daemon name ("mon.a", "osd.0") -> process

    def _made_port(self) -> int | None:
        """The monitor's port of a cluster made before (its monmap holds it for good)."""
        try:
            text = self.conf.read_text()
        except FileNotFoundError:
            return None
        for line in text.splitlines():
            if line.startswith("mon_host = v2:127.0.0.1:"):
                return int(line.rsplit(":", 1)[1])
        return None

    # ------------------------------------------------------------------ paths

    def keyring(self, name: str) -> Path:
        """The keyring file of an entity ("client.admin", "osd.0"): 0600, in the cluster's directory."""
        return self.root / "keys" / f"{name}.keyring"

    def _config(self, fsid: str) -> str:
        r = self.root
        return f"""# a private, single-host test cluster (runtime/ceph.py): loopback only
[global]
fsid = {fsid}
mon_host = v2:127.0.0.1:{self.mon_port}
public_network = 127.0.0.0/8
cluster_network = 127.0.0.0/8
ms_bind_ipv6 = false
ms_bind_msgr1 = false
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
keyring = {r}/keys/$name.keyring
run_dir = {r}/run
admin_socket = {r}/run/$name.asok
log_file = {r}/log/$name.log
pid_file = {r}/run/$name.pid
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 5
# a client never waits for ever: a missing cap or a stopped OSD ends in an error
client_mount_timeout = 30
rados_mon_op_timeout = 30
rados_osd_op_timeout = 30
osd_crush_chooseleaf_type = 0
osd_pool_default_pg_autoscale_mode = off
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8

[mon]
mon_data = {r}/mon/$id
mon_cluster_log_file = {r}/log/cluster.log

[mgr]
mgr_data = {r}/mgr/$id

[osd]
osd_data = {r}/osd/$id
osd_objectstore = bluestore
bluestore_block_path = {r}/osd/$id.block
bluestore_block_create = true
bluestore_block_size = {self.osd_size_gib << 30}
bluestore_fsck_on_mkfs = false
osd_memory_target = 1073741824
"""

    # ------------------------------------------------------------------ making it

    def _run(self, *argv: str, stdin: bytes | None = None, timeout: float = 120) -> str:
        try:
            done = subprocess.run(list(argv), input=stdin, capture_output=True, timeout=timeout, check=True)
        except subprocess.CalledProcessError as exc:
            raise CephError(f"{argv[0]} failed: {exc.stderr.decode(errors='replace')[-2000:]}") from None
        except subprocess.TimeoutExpired:
            raise CephError(f"{argv[0]} did not finish within {timeout:g}s") from None
        return done.stdout.decode()

    def ceph(self, *args: str, timeout: float = 60) -> str:
        """The `ceph` command line tool as client.admin on this cluster."""
        return self._run("ceph", "-c", str(self.conf), "-n", ADMIN, "--connect-timeout", "15", *args,
                         timeout=timeout)

    def ceph_json(self, *args: str) -> object:
        return json.loads(self.ceph(*args, "--format", "json"))

    def _new_keyring(self, name: str, *caps: str) -> Path:
        path = self.keyring(name)
        self._run("ceph-authtool", "--create-keyring", str(path), "--gen-key", "-n", name, *caps)
        path.chmod(0o600)
        return path

    def init(self) -> None:
        """Make the cluster once: config, keys, monitor store, OSD stores (a no-op when it exists)."""
        if (self.root / "mon" / "a" / "store.db").exists():
            return
        if not installed():
            raise CephError("Ceph is not installed: apt-get install --no-install-recommends "
                            "ceph-mon ceph-mgr ceph-osd ceph-common")
        for d in ("keys", "run", "log", "mon", "mgr", "osd"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        for private in (self.root, self.root / "keys"):
            private.chmod(0o700)
        fsid = str(uuid.uuid4())
        self.conf.write_text(self._config(fsid))
        self.conf.chmod(0o600)
        mon = self._new_keyring("mon.", "--cap", "mon", "allow *")
        admin = self._new_keyring(ADMIN, "--cap", "mon", "allow *", "--cap", "osd", "allow *",
                                  "--cap", "mds", "allow *", "--cap", "mgr", "allow *")
        self._run("ceph-authtool", str(mon), "--import-keyring", str(admin))
        monmap = self.root / "monmap"
        self._run("monmaptool", "--create", "--addv", "a", f"[v2:127.0.0.1:{self.mon_port}]", "--fsid", fsid,
                  str(monmap))
        self._run("ceph-mon", "-c", str(self.conf), "--mkfs", "-i", "a", "--monmap", str(monmap),
                  "--keyring", str(mon))
        monmap.unlink()

    def _spawn(self, name: str, *argv: str) -> None:
        log = open(self.root / "log" / f"{name}.stderr", "ab")  # noqa: SIM115 - the daemon writes it while it runs
        self.procs[name] = subprocess.Popen([*argv, "-c", str(self.conf), "-f"], stdout=log, stderr=log,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def _add_osd(self, n: int) -> None:
        """Register OSD n with the monitor (its secret through a 0600 file) and make its BlueStore."""
        name = f"osd.{n}"
        osd_uuid = str(uuid.uuid4())
        key = self._new_keyring(name)
        secret = next(line.split("=", 1)[1].strip() for line in key.read_text().splitlines()
                      if line.strip().startswith("key"))
        request = self.root / "keys" / f"{name}.json"
        request.write_text(json.dumps({"cephx_secret": secret}))
        request.chmod(0o600)
        try:
            got = self.ceph("osd", "new", osd_uuid, str(n), "-i", str(request)).strip()
        finally:
            request.unlink()
        if got != str(n):
            raise CephError(f"the monitor gave OSD id {got}, not {n}")
        (self.root / "osd" / str(n)).mkdir(exist_ok=True)
        self._run("ceph-osd", "-c", str(self.conf), "-i", str(n), "--mkfs", "--osd-uuid", osd_uuid, timeout=300)

    def start(self, timeout: float = 180.0) -> None:
        """Start every daemon (making the cluster first if needed) and wait until it is healthy."""
        self.init()
        deadline = time.monotonic() + timeout
        self._spawn("mon.a", "ceph-mon", "-i", "a")
        self._wait(lambda s: "a" in s.get("quorum_names", []), deadline, "the monitor in quorum")
        if not self.keyring("mgr.x").exists():
            self._new_keyring("mgr.x", "--cap", "mon", "allow profile mgr", "--cap", "osd", "allow *",
                              "--cap", "mds", "allow *")
            self.ceph("auth", "import", "-i", str(self.keyring("mgr.x")))
        self._spawn("mgr.x", "ceph-mgr", "-i", "x")
        for n in range(self.osds):
            if not (self.root / "osd" / f"{n}.block").exists():
                self._add_osd(n)
            self._spawn(f"osd.{n}", "ceph-osd", "-i", str(n))
        self._wait(lambda s: s["osdmap"].get("num_up_osds") == self.osds == s["osdmap"].get("num_in_osds"),
                   deadline, f"{self.osds} OSD(s) up and in")
        self._wait(lambda s: bool(s["mgrmap"].get("available")), deadline, "the manager active")
        self.wait_clean(deadline - time.monotonic())

    def status(self) -> dict[str, object]:
        status = self.ceph_json("status")
        assert isinstance(status, dict)
        return status

    def _wait(self, ready: object, deadline: float, what: str) -> None:
        assert callable(ready)
        last = ""
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise CephError(f"{name} exited ({proc.returncode}): {self.log_tail(name)}")
            try:
                if ready(self.status()):
                    return
            except (CephError, KeyError, ValueError) as exc:
                last = str(exc)
            time.sleep(0.5)
        raise CephError(f"waited in vain for {what}; {last}")

    def wait_clean(self, timeout: float = 120.0) -> None:
        """Every placement group active+clean (after creating pools, or an OSD restart)."""
        def clean(s: dict[str, object]) -> bool:
            pgmap = s["pgmap"]
            assert isinstance(pgmap, dict)
            total = pgmap.get("num_pgs", 0)
            states = {x["state_name"]: x["count"] for x in pgmap.get("pgs_by_state", [])}
            return bool(states.get("active+clean", 0) == total)
        self._wait(clean, time.monotonic() + timeout, "every placement group active+clean")

    def create_pool(self, name: str, pg_num: int = 8, application: str = "mailstore") -> None:
        """A replicated pool (size 1 here), idempotent, tagged with its application."""
        self.ceph("osd", "pool", "create", name, str(pg_num), str(pg_num))
        self.ceph("osd", "pool", "application", "enable", name, application, "--yes-i-really-mean-it")
        self.wait_clean()

    def create_user(self, name: str, pools: list[str]) -> Path:
        """A cephx user that reads the cluster maps and reads and writes `pools` only; its keyring
        file (0600)."""
        caps = ", ".join(f"allow rwx pool={p}" for p in pools)  # x: object classes (omap comparisons)
        path = self.keyring(name)
        out = self.ceph("auth", "get-or-create", name, "mon", "allow r", "osd", caps)
        path.write_text(out)
        path.chmod(0o600)
        return path

    def start_rgw(self, port: int, timeout: float = 120.0) -> tuple[str, str]:
        """Ceph's own S3 gateway (radosgw, beast frontend) on 127.0.0.1:`port`, the peer the RADOS
        engine is measured against; an S3 user made for it. Returns (access key, secret)."""
        name = "client.rgw.x"
        if not self.keyring(name).exists():
            self._new_keyring(name, "--cap", "mon", "allow rw", "--cap", "osd", "allow rwx", "--cap", "mgr", "allow rw")
            self.ceph("auth", "import", "-i", str(self.keyring(name)))
        (self.root / "rgw").mkdir(exist_ok=True)
        self._spawn("rgw.x", "radosgw", "-n", name, "--rgw_frontends", f"beast endpoint=127.0.0.1:{port}",
                    "--rgw_data", str(self.root / "rgw"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # it makes its pools, then listens
            if self.procs["rgw.x"].poll() is not None:
                raise CephError(f"radosgw exited: {self.log_tail('rgw.x')}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.5)
        else:
            raise CephError(f"radosgw did not listen within {timeout:g}s: {self.log_tail('rgw.x')}")
        admin = ["radosgw-admin", "-c", str(self.conf), "-n", ADMIN]
        try:
            user = json.loads(self._run(*admin, "user", "info", "--uid", "bench"))
        except CephError:
            user = json.loads(self._run(*admin, "user", "create", "--uid", "bench", "--display-name", "bench"))
        key = user["keys"][0]
        return key["access_key"], key["secret_key"]

    def osd_ops(self) -> dict[str, int]:
        """The OSDs' client operation counters (reads, writes, read-modify-writes), summed."""
        total = {"op_r": 0, "op_w": 0, "op_rw": 0}
        for n in range(self.osds):
            dump = json.loads(self._run("ceph", "--admin-daemon", str(self.root / "run" / f"osd.{n}.asok"),
                                        "perf", "dump"))
            for k in total:
                total[k] += int(dump["osd"][k])
        return total

    def log_tail(self, name: str, size: int = 2000) -> str:
        text = ""
        for f in (self.root / "log" / f"{name}.stderr", self.root / "log" / f"{name}.log"):
            with contextlib.suppress(OSError):
                text += f.read_text(errors="replace")[-size:]
        return text

    # ------------------------------------------------------------------ stopping it

    def stop_daemon(self, name: str, sig: int = signal.SIGTERM, timeout: float = 60.0) -> None:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def start_osd(self, n: int) -> None:
        """Start OSD n again (after stop_daemon)."""
        self._spawn(f"osd.{n}", "ceph-osd", "-i", str(n))

    def stop(self) -> None:
        """radosgw and the OSDs first, then the manager, the monitor last; by PID."""
        for name in sorted(self.procs, key=lambda n: ("rgw", "osd", "mgr", "mon").index(n.split(".")[0])):
            self.stop_daemon(name)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running(root: Path, *, osds: int = 1) -> Iterator[PrivateCeph]:
    cluster = PrivateCeph(root, osds=osds)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
