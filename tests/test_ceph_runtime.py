"""The throw-away Ceph cluster (runtime/ceph.py) that the RADOS engine's tests run on:
healthy, loopback only, keys in 0600 files and never on a command line, a cephx user
limited to its pools, an OSD that can stop and come back."""

from __future__ import annotations

import re
import subprocess

import pytest


def test_the_cluster_is_healthy_and_private(ceph) -> None:  # type: ignore[no-untyped-def]
    status = ceph.status()
    assert status["quorum_names"] == ["a"]
    assert status["osdmap"]["num_up_osds"] == ceph.osds
    assert status["mgrmap"]["available"]
    listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    pids = {str(p.pid) for p in ceph.procs.values()}
    mine = [line for line in listening.splitlines() if any(f"pid={pid}," in line for pid in pids)]
    assert mine, listening
    for line in mine:  # every daemon binds loopback only
        local = line.split()[3]
        assert local.startswith("127.") or local.startswith("[::1]"), line
    for path in (ceph.root / "keys").iterdir():
        assert path.stat().st_mode & 0o077 == 0, path
    assert ceph.root.stat().st_mode & 0o077 == 0
    for p in ceph.procs.values():  # no key on any daemon's command line
        argv = open(f"/proc/{p.pid}/cmdline", "rb").read().split(b"\0")
        assert not any(re.fullmatch(rb"[A-Za-z0-9+/]{38}==", a) for a in argv), argv


def test_librados_writes_atomically_with_a_limited_user(ceph) -> None:  # type: ignore[no-untyped-def]
    """Debian's python3-rados from the project's environment: data and xattr in one write
    operation as a user whose caps name one pool; another pool is refused."""
    import rados
    ceph.create_pool("rt-data")
    ceph.create_pool("rt-other")
    keyring = ceph.create_user("client.rt", ["rt-data"])
    with rados.Rados(conffile=str(ceph.conf), name="client.rt", conf={"keyring": str(keyring)}) as cluster:
        with cluster.open_ioctx("rt-data") as io:
            with rados.WriteOpCtx() as op:
                op.write_full(b"hello mail")
                op.set_xattr("meta", b'{"s": 10}')
                io.operate_write_op(op, "obj")
            assert io.read("obj") == b"hello mail"
            assert io.get_xattr("obj", "meta") == b'{"s": 10}'
        with cluster.open_ioctx("rt-other") as io, pytest.raises(rados.PermissionError):
            io.write_full("obj", b"x")


def test_an_osd_stops_and_comes_back(ceph) -> None:  # type: ignore[no-untyped-def]
    import rados
    ceph.create_pool("rt-restart")
    ceph.stop_daemon("osd.0")
    ceph.start_osd(0)
    ceph.wait_clean(180)
    with rados.Rados(conffile=str(ceph.conf), name="client.admin") as cluster, \
            cluster.open_ioctx("rt-restart") as io:
        io.write_full("after", b"back")
        assert io.read("after") == b"back"
