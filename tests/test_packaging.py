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
from appliance.parts import NAMES
from cache.url import FsCacheUrl, parse
from conftest import ROOT

PACKAGING = ROOT / "packaging"
UNITS = sorted((PACKAGING / "systemd").glob("mailstore-*.service"))


def unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(path.read_text())
    return cp


@pytest.mark.parametrize("path", UNITS, ids=[u.name for u in UNITS])
def test_systemd_units_run_real_commands(path):
    """Every unit runs `mailstore part NAME --data-dir /var/lib/mailstore`: the addresses, the
    engine and the metadata store come from mailstore.toml alone (tests/test_operations.py
    starts these very command lines on a directory `mailstore init` made)."""
    u = unit(path)
    line = u["Service"]["ExecStart"].replace("%i", "1")
    argv = shlex.split(line)
    assert argv[0] == "/opt/mailstore/venv/bin/mailstore"
    args = parser().parse_args(argv[1:])  # exits on any unknown option
    assert args.command == "part" and args.name in NAMES and args.data_dir == "/var/lib/mailstore"
    assert not re.search(r"\d+\.\d+\.\d+\.\d+:\d+", line), "an address in a unit: it belongs in mailstore.toml"
    assert u["Install"]["WantedBy"] == "mailstore.target"
    assert u["Service"]["User"] == "mailstore" and u["Service"]["UMask"] == "0077"
    assert "/var/lib/mailstore" in u["Service"]["ReadWritePaths"]
    if args.name.startswith("gateway"):  # stopping must outlast the drain (20 s)
        assert float(u["Service"]["TimeoutStopSec"]) > 3 + 20


def test_target_wants_every_unit():
    wants = unit(PACKAGING / "systemd" / "mailstore.target")["Unit"]["Wants"].split()
    assert {"mailstore-gateway@1.service", "mailstore-gateway@2.service", "mailstore-haproxy.service"} <= set(wants)
    assert {u.name for u in UNITS if "@" not in u.name} <= set(wants)


def test_example_config_loads(tmp_path):
    shutil.copy(PACKAGING / "mailstore.toml.example", tmp_path / "mailstore.toml")
    cfg = load(tmp_path)
    assert cfg.gateways == ("127.0.0.1:8001", "127.0.0.1:8002") and cfg.cache_size == "8G"


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
    text = (PACKAGING / "haproxy.cfg").read_text() + (PACKAGING / "haproxy-mail.cfg").read_text()
    optional = re.sub(r"^\.if defined.*?^\.endif", "", text, flags=re.MULTILINE | re.DOTALL)  # [s3] https
    used = set(re.findall(r"\$\{(\w+)\}", optional))
    assert used <= set(env)
    conf = tmp_path / "mailstore.d"
    conf.mkdir()
    shutil.copy(PACKAGING / "haproxy.cfg", conf / "10-s3.cfg")
    shutil.copy(PACKAGING / "haproxy-mail.cfg", conf / "20-mail.cfg")
    loopback = {k: re.sub(r"^[\d.]+", "127.0.0.1", v) for k, v in env.items() if k != "CONFIG"}
    out = subprocess.run(["haproxy", "-c", "-f", str(conf)], env={**os.environ, **loopback},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


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
