"""What packaging/ ships is consistent with the code: every systemd unit's
command line parses with the real CLI, the example config loads, the Postfix
snippet uses only parameters Postfix knows, and the Dovecot obox fs URL parses
as the fscache tier reads it.  (haproxy.cfg: tests/test_appliance.py.)"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.cli import parser
from appliance.config import DEFAULT_PORTS, load
from cache.url import FsCacheUrl, parse
from conftest import ROOT

PACKAGING = ROOT / "packaging"
UNITS = sorted((PACKAGING / "systemd").glob("mailstore-*.service"))
EXAMPLE_ENV = {"GATEWAY_LISTEN": "127.0.0.1:8001", "MAILSTORE_METADATA": "/var/lib/mailstore/meta.db",
               "MAILSTORE_FS": "fscache:1G:/var/cache/mailstore:s3:http://K:S@127.0.0.1:8000/?bucket=mail"}


def unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(path.read_text())
    return cp


@pytest.mark.parametrize("path", UNITS, ids=[u.name for u in UNITS])
def test_systemd_units_run_real_commands(path):
    u = unit(path)
    line = re.sub(r"\$\{(\w+)\}", lambda m: EXAMPLE_ENV[m.group(1)], u["Service"]["ExecStart"])
    argv = shlex.split(line)
    assert argv[0].endswith("/mailstore")
    args = parser().parse_args(argv[1:])  # exits on any unknown option
    assert args.command in ("gateway", "lmtp", "imap", "dashboard")
    assert not re.search(r"://[^/@\s]+:[^/@\s]+@", line), "a secret on the command line (visible in ps)"
    if args.command in ("lmtp", "imap"):
        assert args.fs.startswith("@/"), "the fs URL (with its S3 secret) must come from a 0600 file"
    assert u["Install"]["WantedBy"] == "mailstore.target"
    for arg in argv:  # nothing listens beyond loopback by default
        if re.fullmatch(r"[\d.]+:\d+", arg):
            assert arg.startswith("127.0.0.1:")
    if args.command == "gateway":  # stopping must outlast the drain
        assert float(u["Service"]["TimeoutStopSec"]) > args.drain_grace + args.drain_timeout


def test_target_wants_every_unit():
    wants = unit(PACKAGING / "systemd" / "mailstore.target")["Unit"]["Wants"].split()
    assert {"mailstore-gateway@1.service", "mailstore-gateway@2.service", "haproxy.service"} <= set(wants)
    assert {u.name for u in UNITS if "@" not in u.name} <= set(wants)


def test_example_config_loads(tmp_path):
    shutil.copy(PACKAGING / "mailstore.toml.example", tmp_path / "mailstore.toml")
    cfg = load(tmp_path)
    assert cfg.gateways == ("127.0.0.1:8001", "127.0.0.1:8002") and cfg.cache_size == "8G"
    text = (PACKAGING / "systemd" / "haproxy.service.d" / "mailstore.conf").read_text()
    for name, addr in (("MAILSTORE_S3_BIND", cfg.s3_listen), ("MAILSTORE_GW1", cfg.gateways[0]),
                       ("MAILSTORE_GW2", cfg.gateways[1]), ("MAILSTORE_LB_STATS", cfg.lb_stats)):
        assert f"Environment={name}={addr}\n" in text


def test_postfix_snippet_uses_known_parameters():
    text = (PACKAGING / "postfix" / "main.cf").read_text()
    params = dict(re.findall(r"^(\w+)\s*=\s*(.+)$", text, re.MULTILINE))
    assert params["virtual_transport"] == f"lmtp:inet:127.0.0.1:{DEFAULT_PORTS['lmtp']}"
    for name in params:
        out = subprocess.run(["postconf", "-d", name], capture_output=True, text=True)
        assert out.returncode == 0 and "unknown parameter" not in out.stderr, (name, out.stderr)


def test_dovecot_obox_snippet_parses_as_fscache_url():
    text = (PACKAGING / "dovecot" / "obox.conf").read_text()
    url = re.search(r"^obox_fs = (\S+)$", text, re.MULTILINE).group(1)  # type: ignore[union-attr]
    spec = parse(url.replace("%4Nu", "x"))
    assert isinstance(spec, FsCacheUrl)
    assert spec.parent.bucket == "mail" and spec.parent.port == DEFAULT_PORTS["s3"] and spec.parent.region


def test_the_several_hosts_haproxy_dropin_loads_both_fronts(tmp_path):
    """mailstore-hosts.conf.example: haproxy -f on a directory with the S3 and mail configs,
    every variable they use set (issue 15)."""
    text = (PACKAGING / "systemd" / "haproxy.service.d" / "mailstore-hosts.conf.example").read_text()
    env = dict(re.findall(r"^Environment=(\w+)=(\S+)$", text, re.MULTILINE))
    used = set(re.findall(r"\$\{(\w+)\}", (PACKAGING / "haproxy.cfg").read_text()
                          + (PACKAGING / "haproxy-mail.cfg").read_text()))
    assert used <= set(env)
    conf = tmp_path / "mailstore.d"
    conf.mkdir()
    shutil.copy(PACKAGING / "haproxy.cfg", conf / "10-s3.cfg")
    shutil.copy(PACKAGING / "haproxy-mail.cfg", conf / "20-mail.cfg")
    loopback = {k: re.sub(r"^[\d.]+", "127.0.0.1", v) for k, v in env.items() if k != "CONFIG"}
    out = subprocess.run(["haproxy", "-c", "-f", str(conf)], env={**os.environ, **loopback},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", ["lmtp", "imap"])
def test_shim_units_run_on_postgresql_from_the_metadata_env_file(name, request, tmp_path):
    """A shim host of a cluster: the unit's own command line, with MAILSTORE_METADATA and PGPASSFILE
    from /etc/mailstore/metadata.env as systemd reads it, runs against a real PostgreSQL; the
    URL on the command line (what `ps` shows) carries no password."""
    import json

    from conftest import BIN, new_metadata
    from mailstore.db import MetaStore
    from mailstore.users import hash_password
    url = new_metadata(request, tmp_path, "postgresql")
    MetaStore(url).add_user("u@example.com", hash_password("pw"))
    env_file = tmp_path / "metadata.env"  # what the operator writes, in systemd's EnvironmentFile syntax
    env_file.write_text(f"# the shared metadata\nMAILSTORE_METADATA={url}\nPGPASSFILE={os.environ['PGPASSFILE']}\n")
    u = unit(PACKAGING / "systemd" / f"mailstore-{name}.service")
    env = {"PATH": os.environ["PATH"]}
    env.update(k.split("=", 1) for k in [u["Service"]["Environment"]])  # the SQLite default ...
    env.update(line.split("=", 1) for line in env_file.read_text().splitlines()  # ... overridden
               if line and not line.startswith("#"))
    fs_file = tmp_path / "fs.url"
    fs_file.write_text("s3:http://k:s@127.0.0.1:9/?bucket=mail")  # storage is not what this test is about
    fs_file.chmod(0o600)
    line = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], u["Service"]["ExecStart"])
    assert url in line and not re.search(r"://[^/@\s]+:[^/@\s]+@", line)
    argv = shlex.split(line)
    argv[0] = str(BIN / "mailstore")
    argv[argv.index("--fs") + 1] = f"@{fs_file}"
    for flag in ("--listen", "--metrics-listen"):
        argv[argv.index(flag) + 1] = "127.0.0.1:0"
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(json.loads(proc.stdout.readline())["port"])
        import socket
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            greeting = s.recv(200)
        assert greeting.startswith(b"220 " if name == "lmtp" else b"* OK"), greeting
        if name == "imap":  # any host authenticates any user: the user lives in PostgreSQL
            import imaplib
            m = imaplib.IMAP4("127.0.0.1", port)
            assert m.login("u@example.com", "pw")[0] == "OK"
            m.logout()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_logrotate_snippet_rotates_and_signals_the_supervisor(tmp_path):
    """packaging/logrotate/mailstore, run by Debian's logrotate on a copy pointed at tmp_path:
    the logs move to .1, new 0600 files are made, and the pid in run/up.pid gets SIGHUP."""
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "logs").mkdir()
    (tmp_path / "run").mkdir()
    for name in ("gateway1.log", "imap.log"):
        (tmp_path / "logs" / name).write_text("a line\n")
    hup = tmp_path / "hup"
    waiter = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys, time, pathlib\n"
        f"signal.signal(signal.SIGHUP, lambda *a: pathlib.Path({str(hup)!r}).write_text('hup'))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert waiter.stdout is not None and waiter.stdout.readline() == "ready\n"
        (tmp_path / "run" / "up.pid").write_text(f"{waiter.pid}\n")
        conf = tmp_path / "logrotate.conf"
        conf.write_text((PACKAGING / "logrotate" / "mailstore").read_text().replace("/var/lib/mailstore", str(tmp_path)))
        res = subprocess.run(["/usr/sbin/logrotate", "-f", "-s", str(tmp_path / "state"), str(conf)],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        deadline = time.monotonic() + 10
        while not hup.exists():
            assert time.monotonic() < deadline, "no SIGHUP"
            time.sleep(0.05)
        for name in ("gateway1.log", "imap.log"):
            assert (tmp_path / "logs" / f"{name}.1").read_text() == "a line\n"
            fresh = tmp_path / "logs" / name
            assert fresh.read_text() == "" and oct(fresh.stat().st_mode & 0o777) == "0o600"
    finally:
        waiter.send_signal(signal.SIGTERM)
        waiter.wait(timeout=10)
