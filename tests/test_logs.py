"""runtime/logs.py: the one line format of every part (text and JSON), values that cannot break
a line or pass for another field, level specs, and a log file reopened by name on SIGHUP
(a gateway process, as logrotate's postrotate would signal it)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, Key, client, new_engine
from runtime import logs


@pytest.fixture
def text_format():  # type: ignore[no-untyped-def]
    saved = (logs.STATE.part, logs.STATE.format)
    logs.STATE.part, logs.STATE.format = "test", "text"
    yield
    logs.STATE.part, logs.STATE.format = saved


def test_text_values_are_escaped_so_no_field_can_forge_another_or_a_line(text_format):
    line = logs.render(0.5, "WARNING", "mailstore.auth", "login failed",
                       {"remote": "203.0.113.7", "user": 'x remote=198.51.100.1\n2026 "WARNING"', "n": 3,
                        "empty": "", "utf8": "Jürgen", "plain": "bob@example.org"})
    assert "\n" not in line
    assert line == (f"1970-01-01T00:00:00.500Z WARNING test[{os.getpid()}] mailstore.auth: login failed "
                    'remote=203.0.113.7 user="x remote=198.51.100.1\\n2026 \\"WARNING\\"" n=3 empty="" '
                    'utf8="J\\u00fcrgen" plain=bob@example.org')
    assert logs.value_text("a=b") == '"a=b"' and logs.value_text("a\\b") == '"a\\\\b"'


def test_json_lines_carry_the_fields_as_keys():
    saved = logs.STATE.format
    logs.STATE.format = "json"
    try:
        doc = json.loads(logs.render(1.0, "INFO", "s3.access", "GetObject", {"status": 200, "object": "a\nb"}))
    finally:
        logs.STATE.format = saved
    assert doc["level"] == "INFO" and doc["logger"] == "s3.access" and doc["message"] == "GetObject"
    assert doc["status"] == 200 and doc["object"] == "a\nb" and doc["time"] == "1970-01-01T00:00:01.000Z"


def test_level_specs():
    assert logs.parse_levels("info") == (logging.INFO, {})
    assert logs.parse_levels("warning,s3.access=error, mailstore.imap=debug") == (
        logging.WARNING, {"s3.access": logging.ERROR, "mailstore.imap": logging.DEBUG})
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        logs.parse_levels("loud")


def test_gateway_log_file_json_access_lines_and_reopen_on_sighup(tmp_path: Path):
    data, log = tmp_path / "data", tmp_path / "gateway.log"
    new_engine(data)
    made = json.loads(subprocess.run([str(BIN / "mailstore"), "key", "create", "--data-dir", str(data), "--name",
                                      "t"], capture_output=True, text=True, check=True).stdout)
    key = Key(made["AccessKeyId"], made["SecretAccessKey"])
    proc = subprocess.Popen([str(BIN / "mailstore"), "gateway", "--data-dir", str(data), "--listen", "127.0.0.1:0",
                             "--log-file", str(log), "--log-format", "json", "--log-level", "info,gateway=warning"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        endpoint = json.loads(proc.stdout.readline())["endpoint"]
        s3 = client(endpoint, key)
        s3.create_bucket(Bucket="logged")
        rid = s3.put_object(Bucket="logged", Key="k", Body=b"abc")["ResponseMetadata"]["HTTPHeaders"][
            "x-amz-request-id"]

        def lines(path: Path) -> list[dict[str, object]]:
            return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

        def wait(path: Path, rid: str) -> dict[str, object]:
            deadline = time.monotonic() + 10
            while not any(d.get("rid") == rid for d in lines(path)):
                assert time.monotonic() < deadline, path.read_text()
                time.sleep(0.05)
            return next(d for d in lines(path) if d.get("rid") == rid)
        line = wait(log, rid)
        assert line["logger"] == "s3.access" and line["message"] == "PutObject" and line["part"] == "gateway"
        assert (line["status"], line["in"], line["bucket"], line["object"], line["access_key"], line["method"]) == \
            (200, 3, "logged", "k", key.access_key, "PUT")
        assert not [d for d in lines(log) if d["logger"] == "gateway"]  # gateway=warning: no "listening"
        assert oct(log.stat().st_mode & 0o777) == "0o600"
        assert key.secret not in log.read_text()
        log.rename(tmp_path / "gateway.log.1")
        os.kill(proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while not log.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        rid2 = s3.get_object(Bucket="logged", Key="k")["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
        assert wait(log, rid2)["message"] == "GetObject"
        assert not any(d.get("rid") == rid2 for d in lines(tmp_path / "gateway.log.1"))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_a_bad_level_spec_is_a_usage_error(tmp_path: Path):
    res = subprocess.run([str(BIN / "mailstore"), "gateway", "--data-dir", str(tmp_path / "d"), "--listen",
                          "127.0.0.1:0", "--log-level", "verbose"], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "unknown log level 'verbose'" in res.stderr
    assert "Traceback" not in res.stderr
    assert re.search(r"mailstore", res.stderr)
