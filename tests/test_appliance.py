"""The appliance as an operator runs it: `mailstore up` (HAProxy from Debian in
front of two gateways on one engine, the LMTP + IMAP shim through it), health
and drain, and failover under a steady boto3 load."""

from __future__ import annotations

import base64
import imaplib
import json
import os
import poplib
import re
import signal
import smtplib
import socket
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from urllib.parse import quote

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config
from conftest import BIN, ROOT, GatewayProcess, Key, client, create_key, new_metadata

from appliance.config import default_text
from gateway.config import GatewayConfig

HAPROXY_CFG = ROOT / "packaging" / "haproxy.cfg"


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def metric_values(text: bytes) -> dict[str, float]:
    """Prometheus text format: {'name{label="v",...}': value} with labels sorted as written."""
    out = {}
    for line in text.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


# ------------------------------------------------------------------ packaging

def test_shipped_haproxy_cfg_is_valid_and_its_timeouts_are_ordered():
    env = {**os.environ, "MAILSTORE_S3_BIND": "127.0.0.1:18000", "MAILSTORE_GW1": "127.0.0.1:18001",
           "MAILSTORE_GW2": "127.0.0.1:18002", "MAILSTORE_LB_STATS": "127.0.0.1:18404"}
    out = subprocess.run(["haproxy", "-c", "-f", str(HAPROXY_CFG)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    text = HAPROXY_CFG.read_text()

    def seconds(name: str) -> float:
        m = re.search(rf"^\s*timeout {name} (\d+)(ms|s|m)?\s*$", text, re.MULTILINE)
        assert m, name
        return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 0.001}[m.group(2)]
    gw = GatewayConfig(Path("."))
    assert seconds("server") > gw.request_timeout  # the gateway gives up first
    assert seconds("http-keep-alive") < gw.idle_timeout  # HAProxy drops idle connections first
    assert "http-check disable-on-404" in text and "option httpchk GET /health/ready" in text
    assert "retry-on conn-failure" in text and "option redispatch" in text


def test_shipped_mail_fronts_are_valid_beside_the_s3_config():
    """packaging/haproxy-mail.cfg: TCP fronts for LMTP and IMAP over two shim hosts (issue 15),
    loaded beside haproxy.cfg; checks that expect each protocol's greeting."""
    env = {**os.environ, "MAILSTORE_S3_BIND": "127.0.0.1:18000", "MAILSTORE_GW1": "127.0.0.1:18001",
           "MAILSTORE_GW2": "127.0.0.1:18002", "MAILSTORE_LB_STATS": "127.0.0.1:18404",
           "MAILSTORE_LMTP_BIND": "127.0.0.1:19024", "MAILSTORE_IMAP_BIND": "127.0.0.1:19143",
           "MAILSTORE_LMTP1": "127.0.0.1:19025", "MAILSTORE_LMTP2": "127.0.0.1:19026",
           "MAILSTORE_IMAP1": "127.0.0.1:19144", "MAILSTORE_IMAP2": "127.0.0.1:19145",
           "MAILSTORE_POP3_BIND": "127.0.0.1:19110", "MAILSTORE_POP31": "127.0.0.1:19111",
           "MAILSTORE_POP32": "127.0.0.1:19112", "MAILSTORE_SIEVE_BIND": "127.0.0.1:19190",
           "MAILSTORE_SIEVE1": "127.0.0.1:19191", "MAILSTORE_SIEVE2": "127.0.0.1:19192"}
    mail_cfg = HAPROXY_CFG.parent / "haproxy-mail.cfg"
    out = subprocess.run(["haproxy", "-c", "-f", str(HAPROXY_CFG), "-f", str(mail_cfg), "-f",
                          str(HAPROXY_CFG.parent / "haproxy-pop3.cfg"), "-f",
                          str(HAPROXY_CFG.parent / "haproxy-managesieve.cfg")], env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0 and "Warning" not in out.stdout + out.stderr, out.stdout + out.stderr
    text = mail_cfg.read_text()
    assert "tcp-check expect string 220" in text and 'tcp-check expect string "* OK"' in text
    assert "timeout client 31m" in text  # IDLE lasts up to 29 minutes between renewals


# ------------------------------------------------------------------ one gateway: health and drain

def test_health_ready_drain_and_signed_requests_stay_s3(tmp_path):
    data = tmp_path / "data"
    key = create_key(data)
    gw = GatewayProcess(data, "--drain-grace", "2")
    try:
        assert get(gw.endpoint + "/health/live")[0] == 200
        status, body = get(gw.endpoint + "/health/ready")
        assert status == 200 and json.loads(body)["checks"]["engine"] == "ok"
        s3 = client(gw.endpoint, key)
        # a signed request for /health/... is S3 as usual: bucket "health"
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.get_object(Bucket="health", Key="ready")
        assert e.value.response["Error"]["Code"] == "NoSuchBucket"
        s3.create_bucket(Bucket="drain")
        gw.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 1.5
        while get(gw.endpoint + "/health/ready")[0] != 404:
            assert time.monotonic() < deadline, "ready never turned 404"
            time.sleep(0.05)
        assert json.loads(get(gw.endpoint + "/health/ready")[1])["status"] == "draining"
        s3.put_object(Bucket="drain", Key="during-drain", Body=b"still served")  # not refused while draining
        assert s3.get_object(Bucket="drain", Key="during-drain")["Body"].read() == b"still served"
        assert gw.proc.wait(timeout=30) == 0
    finally:
        gw.stop()
    low = GatewayProcess(data, "--min-free", "1000000G")  # more free disk than any machine has
    try:
        status, body = get(low.endpoint + "/health/ready")
        assert status == 503 and json.loads(body)["status"] == "not ready"
    finally:
        low.stop()


def test_a_request_past_the_timeout_gets_request_timeout(tmp_path):
    data = tmp_path / "data"
    key = create_key(data)
    gw = GatewayProcess(data, "--request-timeout", "1")
    try:
        s3 = client(gw.endpoint, key)
        s3.create_bucket(Bucket="slow")
        url = s3.generate_presigned_url("put_object", Params={"Bucket": "slow", "Key": "k"}, ExpiresIn=60)
        target = url.split(str(gw.port), 1)[1]
        with socket.create_connection(("127.0.0.1", gw.port)) as s:  # a body that stops after 10 of 100 bytes
            s.sendall(f"PUT {target} HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nContent-Length: 100\r\n\r\n"
                      "only ten b".encode())
            s.settimeout(10)
            t0 = time.monotonic()
            answer = s.recv(65536)
            assert time.monotonic() - t0 < 5
        assert answer.startswith(b"HTTP/1.1 400 ") and b"<Code>RequestTimeout</Code>" in answer
        assert get(gw.endpoint + "/health/live")[0] == 200  # and the gateway goes on
    finally:
        gw.stop()


# ------------------------------------------------------------------ the whole appliance

class Appliance:
    def __init__(self, data: Path, metadata: tuple[str, str] | None = None, hosts: int = 1,
                 engine: str | None = None, ports: dict[str, int] | None = None,
                 edits: dict[str, str] | None = None) -> None:
        """`metadata`: ([metadata] url, passfile) for mailstore.toml (default: SQLite in DATA_DIR);
        `engine`: `mailstore up --engine`; `ports`: those of an earlier run of the same DATA_DIR."""
        names = ("s3", "gw1", "gw2", "stats", "lmtp", "imap", "lmtp_metrics", "imap_metrics", "dashboard",
                 "postgres", "pop3", "pop3_metrics", "managesieve", "managesieve_metrics")
        ports = ports or dict(zip(names, free_ports(len(names))))
        data.mkdir(parents=True, mode=0o700, exist_ok=True)
        toml = default_text(ports).replace("interval = 5 ", "interval = 1 ")
        for old, new in (edits or {}).items():  # as an operator edits mailstore.toml
            assert old in toml, old
            toml = toml.replace(old, new)
        if metadata is not None:
            toml = toml.replace('url = ""', f'url = "{metadata[0]}"').replace('passfile = ""', f'passfile = "{metadata[1]}"')
        (data / "mailstore.toml").write_text(toml)
        (data / "mailstore.toml").chmod(0o600)  # as `mailstore up` writes it
        self.data, self.ports = data, ports
        self.out = open(data.parent / "up.out", "w+")
        (data / "endpoints.json").unlink(missing_ok=True)
        self.proc = subprocess.Popen([str(BIN / "mailstore"), "up", "--data-dir", str(data), "--hosts", str(hosts),
                                      *(["--engine", engine] if engine else [])],
                                     stdout=self.out, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + (300 if engine == "rados" else 60)  # rados: its own Ceph cluster first
        while not (data / "endpoints.json").exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log()
            time.sleep(0.1)
        self.endpoints = json.loads((data / "endpoints.json").read_text())

    def log(self) -> str:
        self.out.seek(0)
        return self.out.read()

    def pids(self) -> dict[str, int]:
        return json.loads((self.data / "run" / "processes.json").read_text())  # type: ignore[no-any-return]

    def lb_state(self) -> dict[str, str]:
        _, csv = get(f"http://127.0.0.1:{self.ports['stats']}/stats;csv")
        rows = [line.split(",") for line in csv.decode().splitlines()]
        return {r[1]: r[17] for r in rows if r[0] == "gateways" and r[1] in ("gw1", "gw2")}

    def wait_state(self, server: str, state: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.lb_state().get(server) != state:
            assert time.monotonic() < deadline, f"{server} never {state}: {self.lb_state()}"
            time.sleep(0.1)

    def s3(self, **config: object):  # type: ignore[no-untyped-def]
        s3 = self.endpoints["s3"]
        return boto3.client("s3", endpoint_url=s3["endpoint"], aws_access_key_id=s3["access_key"],
                            aws_secret_access_key=s3["secret_key"], region_name="us-east-1",
                            config=Config(s3={"addressing_style": "path"}, **config))  # type: ignore[arg-type]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=60)
        return self.proc.returncode


@pytest.fixture(scope="module")
def appliance(tmp_path_factory):  # type: ignore[no-untyped-def]
    a = Appliance(tmp_path_factory.mktemp("up") / "data")
    yield a
    a.stop()


def test_up_prints_and_writes_the_endpoints_and_serves_mail(appliance):
    ep = appliance.endpoints
    assert set(ep) >= {"s3", "gateways", "lmtp", "imap", "user"}
    assert set(ep["s3"]) == {"endpoint", "access_key", "secret_key", "bucket"}
    assert ep["gateways"] == [f"http://127.0.0.1:{appliance.ports['gw1']}", f"http://127.0.0.1:{appliance.ports['gw2']}"]
    assert ep["lmtp"] == {"host": "127.0.0.1", "port": appliance.ports["lmtp"]}
    assert ep["imap"] == {"host": "127.0.0.1", "port": appliance.ports["imap"]}
    assert ep["pop3"] == {"host": "127.0.0.1", "port": appliance.ports["pop3"]}
    out = appliance.log()
    assert ep["s3"]["secret_key"] in out and ep["user"]["password"] in out and "IMAP" in out
    # the balancer runs the shipped configuration file itself
    args = subprocess.run(["ps", "-o", "args=", "-p", str(appliance.pids()["haproxy"])], capture_output=True,
                          text=True).stdout
    assert f"-f {HAPROXY_CFG}" in args
    assert appliance.lb_state() == {"gw1": "UP", "gw2": "UP"}
    # health and metrics are served by each gateway, not through the public S3 endpoint
    for path in ("/health/ready", "/metrics"):
        assert get(ep["s3"]["endpoint"] + path)[0] == 403
        assert get(ep["gateways"][0] + path)[0] == 200
    with pytest.raises(botocore.exceptions.ClientError) as e:  # signed: S3 as usual, bucket "metrics"
        appliance.s3().list_objects_v2(Bucket="metrics")
    assert e.value.response["Error"]["Code"] == "NoSuchBucket"
    # mail in over LMTP, out over IMAP, stored as an object behind HAProxy
    user = ep["user"]
    message = b"From: a@example.org\r\nSubject: through the appliance\r\n\r\nhello\r\n"
    lmtp = smtplib.LMTP(ep["lmtp"]["host"], ep["lmtp"]["port"])
    assert lmtp.sendmail("a@example.org", [user["name"]], message) == {}
    lmtp.quit()
    imap = imaplib.IMAP4(ep["imap"]["host"], ep["imap"]["port"])
    imap.login(user["name"], user["password"])
    assert imap.select("INBOX")[1] == [b"1"]
    body = imap.fetch("1", "(BODY.PEEK[])")[1][0][1]
    assert body.endswith(message) and body.startswith(b"Return-Path: <a@example.org>\r\n")
    imap.logout()
    pop = poplib.POP3(ep["pop3"]["host"], ep["pop3"]["port"])  # the same INBOX over POP3 (issue 21)
    pop.user(user["name"])
    pop.pass_(user["password"])
    assert pop.stat()[0] == 1 and b"\r\n".join(pop.retr(1)[1]).endswith(message.rstrip(b"\r\n"))
    pop.quit()
    pop3_m = metric_values(get(f"http://127.0.0.1:{appliance.ports['pop3_metrics']}/metrics")[1])
    assert pop3_m["mailstore_pop3_logins_total"] == 1 and pop3_m["mailstore_pop3_retrieved_total"] == 1
    listed = appliance.s3().list_objects_v2(Bucket=ep["s3"]["bucket"])["Contents"]
    listed = [o for o in listed if "/index/" not in o["Key"]]  # the user's state record, once written
    assert len(listed) == 1 and f"/{user['name']}/mailboxes/" in listed[0]["Key"]
    # ...and counted on every process's /metrics
    lmtp_m = metric_values(get(f"http://127.0.0.1:{appliance.ports['lmtp_metrics']}/metrics")[1])
    assert lmtp_m['mailstore_lmtp_recipients_total{reason="",result="accepted"}'] == 1
    assert lmtp_m["mailstore_cache_inserts_total"] >= 1
    imap_m = metric_values(get(f"http://127.0.0.1:{appliance.ports['imap_metrics']}/metrics")[1])
    assert imap_m['mailstore_imap_commands_total{command="SELECT",result="OK"}'] == 1
    assert imap_m["mailstore_imap_sessions_opened_total"] == 1 and imap_m["mailstore_imap_sessions"] == 0
    puts = sum(metric_values(get(g + "/metrics")[1]).get('mailstore_s3_requests_total{operation="PutObject",status="200"}', 0)
               for g in ep["gateways"])
    assert puts == 1


def test_sse_c_keys_travel_only_over_tls(appliance):
    """HAProxy tells the gateways whether its client used TLS (X-Forwarded-Proto, set whatever the
    client sent): an SSE-C key sent to the plain-HTTP endpoint is refused, one sent to a gateway
    from this host is taken."""
    key = bytes(range(32))
    ssec = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": key.decode("latin-1")}
    s3 = appliance.s3()
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket="mail", Key="ssec/through-haproxy", Body=b"x", **ssec)
    assert e.value.response["Error"]["Code"] == "InvalidRequest"
    with pytest.raises(botocore.exceptions.ClientError):
        s3.head_object(Bucket="mail", Key="ssec/through-haproxy")  # nothing was stored
    ep = appliance.endpoints
    direct = boto3.client("s3", endpoint_url=ep["gateways"][0], aws_access_key_id=ep["s3"]["access_key"],
                          aws_secret_access_key=ep["s3"]["secret_key"], region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}))
    direct.put_object(Bucket="mail", Key="ssec/direct", Body=b"x", **ssec)
    assert direct.get_object(Bucket="mail", Key="ssec/direct", **ssec)["Body"].read() == b"x"
    spoofed = appliance.s3()  # a client claiming TLS it did not use (unsigned) is overruled by HAProxy
    spoofed.meta.events.register("before-send.s3.GetObject",
                                 lambda request, **_: request.headers.__setitem__("X-Forwarded-Proto", "https"))
    with pytest.raises(botocore.exceptions.ClientError) as e:
        spoofed.get_object(Bucket="mail", Key="ssec/direct", **ssec)
    assert e.value.response["Error"]["Code"] == "InvalidRequest"


def test_sse_c_through_haproxys_https_front(tmp_path):
    """With [s3] https and [tls]: HAProxy ends TLS and the gateways take SSE-C keys sent over it."""
    from conftest import make_tls_cert

    cert, key_file = make_tls_cert(tmp_path / "tls")
    (https_port,) = free_ports(1)
    a = Appliance(tmp_path / "data", edits={'https = ""': f'https = "127.0.0.1:{https_port}"',
                                             'cert = ""': f'cert = "{cert}"', 'key = ""': f'key = "{key_file}"'})
    try:
        ep = a.endpoints["s3"]
        tls = boto3.client("s3", endpoint_url=f"https://127.0.0.1:{https_port}", aws_access_key_id=ep["access_key"],
                           aws_secret_access_key=ep["secret_key"], region_name="us-east-1", verify=str(cert),
                           config=Config(s3={"addressing_style": "path"}))
        key = bytes(range(32))
        ssec = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": key.decode("latin-1")}
        tls.put_object(Bucket="mail", Key="ssec/tls", Body=b"sealed", **ssec)
        assert tls.get_object(Bucket="mail", Key="ssec/tls", **ssec)["Body"].read() == b"sealed"
        with pytest.raises(botocore.exceptions.ClientError) as e:  # the same key over the plain front
            a.s3().get_object(Bucket="mail", Key="ssec/tls", **ssec)
        assert e.value.response["Error"]["Code"] == "InvalidRequest"
    finally:
        a.stop()


def test_everything_up_creates_is_private_and_no_secret_is_in_ps(appliance):
    """Mail, password hashes, keys, cached bodies: 0600 files in 0700 directories; argv holds no secret."""
    # (the end-to-end test before this one delivered and read a message: segments, cache and meta.db hold it)
    modes = {}
    for path in [appliance.data, *appliance.data.rglob("*")]:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            continue
        modes[str(path.relative_to(appliance.data))] = stat.S_IMODE(st.st_mode)
    assert {"engine/index.db", "engine/master.key", "meta.db", "secrets.json", "shim-fs.url"} <= set(modes)
    assert any(p.startswith("engine/segments/") for p in modes) and any(p.startswith("cache") for p in modes)
    wide = {p: oct(m) for p, m in modes.items() if m & 0o077}
    assert not wide, wide
    sec = json.loads((appliance.data / "secrets.json").read_text())
    secrets_ = [sec["admin"]["secret_key"], sec["shim"]["secret_key"], sec["user"]["password"],
                sec["dashboard"]["password"]]
    ps = subprocess.run(["ps", "-eww", "-o", "args="], capture_output=True, text=True, check=True).stdout
    assert "mailstore lmtp" in ps and "mailstore imap" in ps
    for s in secrets_:
        assert s not in ps and quote(s, safe="") not in ps
    for name in ("gateway1.log", "gateway2.log", "lmtp.log", "imap.log", "dashboard.log"):
        text = (appliance.data / "logs" / name).read_text()
        for s in secrets_:
            assert s not in text, name


def test_dashboard_in_headless_chromium(appliance, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    dash = appliance.endpoints["dashboard"]
    assert dash["url"] == f"http://127.0.0.1:{appliance.ports['dashboard']}/" and dash["user"] == "admin"
    status, page = get(dash["url"])  # no session: the login form
    assert status == 200 and b"Sign in" in page
    assert get(dash["url"] + "api/state")[0] == 401
    assert b"mailstore_dashboard_scrapes_total" in get(dash["url"] + "metrics")[1]
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1500",
                f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(dash["url"])
        assert driver.current_url.endswith("/login")
        driver.find_element(By.ID, "user").send_keys("admin")
        driver.find_element(By.ID, "password").send_keys("not the password")
        driver.find_element(By.ID, "signin").click()
        # the refusal comes after the throttle's pause: wait for that page, not for the click
        WebDriverWait(driver, 30).until(lambda d: "Wrong user or password" in d.page_source)
        driver.find_element(By.ID, "user").send_keys(dash["user"])
        driver.find_element(By.ID, "password").send_keys(dash["password"])
        driver.find_element(By.ID, "signin").click()
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.find_elements(By.ID, "gw-gw2"))
        assert driver.find_element(By.ID, "gw-gw1").get_attribute("data-state") == "up"
        assert driver.find_element(By.ID, "gw-gw2").get_attribute("data-state") == "up"
        # the message delivered by the end-to-end test is counted, and its user listed
        wait.until(lambda d: "LMTP accepted 1" in d.find_element(By.ID, "activity").text.splitlines())
        assert appliance.endpoints["user"]["name"] in driver.find_element(By.ID, "users").text
        assert "No alerts." in driver.find_element(By.ID, "alerts").text
        # a mixed load: every kind of operation, a client's feature probe (501), a failed IMAP login
        s3 = appliance.s3()
        for i in range(40):
            s3.put_object(Bucket="mail", Key=f"dash/{i}", Body=b"x" * 100)
            s3.get_object(Bucket="mail", Key=f"dash/{i}")["Body"].read()
            s3.head_object(Bucket="mail", Key=f"dash/{i}")
            if i % 4 == 0:
                s3.list_objects_v2(Bucket="mail", Prefix="dash/")
                s3.delete_object(Bucket="mail", Key=f"dash/{i}")
        for _ in range(3):
            try:
                s3.get_bucket_cors(Bucket="mail")
            except botocore.exceptions.ClientError as exc:
                assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 501
        with imaplib.IMAP4("127.0.0.1", appliance.ports["imap"]) as m:
            with pytest.raises(imaplib.IMAP4.error):
                m.login(appliance.endpoints["user"]["name"], "wrong")
        wait.until(lambda d: all(g in d.find_element(By.ID, "legend-requests").text
                                 for g in ("read", "write", "list", "delete")))
        legend = driver.find_element(By.ID, "legend-errors").text
        assert "5xx server errors" in legend and "501 not implemented (feature probes)" in legend
        wait.until(lambda d: "127.0.0.1" in d.find_element(By.ID, "failed-logins").text)
        assert "No deliveries deferred." in driver.find_element(By.ID, "deferred").text
        shot = ROOT / "test-artifacts" / "dashboard.png"
        shot.parent.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(shot))
        print(f"dashboard screenshot: {shot}")
    finally:
        driver.quit()


def _log_lines(appliance, name: str) -> list[str]:  # type: ignore[no-untyped-def]
    return (appliance.data / "logs" / name).read_text().splitlines()


def _wait_for(appliance, name: str, needle: str, timeout: float = 10.0) -> str:  # type: ignore[no-untyped-def]
    """The first line of DATA_DIR/logs/NAME holding `needle` (the S3 access log is written in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in _log_lines(appliance, name) if needle in line]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no {needle!r} in {name}"
        time.sleep(0.1)


def test_logs_of_every_part_what_operators_and_fail2ban_read(appliance):
    """Issue 18: real traffic through `mailstore up` leaves one line per S3 request (request id,
    address, access key, operation, bucket, key, status, bytes, time, Dovecot's trace headers),
    per LMTP transaction and recipient (the MTA's queue id, our object), and per IMAP login,
    failed login and logout; packaging/fail2ban's filter finds the failed IMAP and dashboard
    logins and nothing a client wrote into a field; no secret is in any log; SIGHUP (as
    logrotate's postrotate sends it) makes every part write to a new file."""
    ep, user = appliance.endpoints, appliance.endpoints["user"]
    sec = json.loads((appliance.data / "secrets.json").read_text())
    # S3, straight to gateway 1, with Dovecot's trace headers and a key no line may split on
    s3 = client(ep["gateways"][0], Key(ep["s3"]["access_key"], ep["s3"]["secret_key"]))

    def trace(request, **kwargs):  # type: ignore[no-untyped-def]
        request.headers["X-Dovecot-Session-Id"] = "sess-42"
        request.headers["X-Dovecot-Username"] = "bob@example.com"
        request.headers["X-Dovecot-Reason"] = "mail save"
    s3.meta.events.register("before-sign.s3.PutObject", trace)
    put = s3.put_object(Bucket=ep["s3"]["bucket"], Key="logs/a b\n2026 WARNING forged", Body=b"12345")
    rid = put["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
    line = _wait_for(appliance, "gateway1.log", f"rid={rid}")
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO gateway\[\d+\] s3\.access: PutObject "
        rf"rid={rid} remote=127\.0\.0\.1 access_key={ep['s3']['access_key']} method=PUT bucket=mail "
        r'object="logs/a b\\n2026 WARNING forged" status=200 in=5 out=0 ms=[\d.]+ '
        r'session=sess-42 user=bob@example\.com reason="mail save"', line), line
    with pytest.raises(botocore.exceptions.ClientError):
        s3.get_object(Bucket=ep["s3"]["bucket"], Key="logs/missing")
    assert "status=404" in _wait_for(appliance, "gateway1.log", "object=logs/missing")
    assert "error=NoSuchKey" in _wait_for(appliance, "gateway1.log", "object=logs/missing")
    # LMTP: a transaction line with the relaying MTA's queue id, and one line per recipient
    message = (b"Received: from mx.example.org by relay.example.org (Postfix) with ESMTPS id 4XyZ1kP3qYz2\r\n"
               b"\tfor <x@example.com>; Mon, 30 Nov 2026 23:50:01 +0000\r\n"
               b"From: a@example.org\r\nSubject: logged\r\n\r\nhello\r\n")
    lmtp = smtplib.LMTP(ep["lmtp"]["host"], ep["lmtp"]["port"])
    refused = lmtp.sendmail("a@example.org", [user["name"], "nobody@example.com"], message)
    lmtp.quit()
    assert list(refused) == ["nobody@example.com"]
    delivered = _wait_for(appliance, "lmtp.log", f"queue_id=4XyZ1kP3qYz2 rcpt=<{user['name']}>")
    assert re.search(r"INFO lmtp\[\d+\] mailstore\.delivery: delivered session=\S+ queue_id=4XyZ1kP3qYz2 "
                     rf"rcpt=<{re.escape(user['name'])}> user={re.escape(user['name'])} "
                     rf'result="250 2\.0\.0" object=[0-9a-f]+/{re.escape(user["name"])}/mailboxes/\S+ size=\d+$', delivered), \
        delivered
    rejected = _wait_for(appliance, "lmtp.log", "rcpt=<nobody@example.com>")
    assert re.search(r"WARNING lmtp\[\d+\] mailstore\.lmtp: rejected session=\S+ remote=127\.0\.0\.1 "
                     r'rcpt=<nobody@example.com> result="550 5.1.1" reason=', rejected), rejected
    transaction = _wait_for(appliance, "lmtp.log", "queue_id=4XyZ1kP3qYz2 remote=")
    assert "queue_id=4XyZ1kP3qYz2 remote=127.0.0.1 from=<a@example.org> recipients=1 accepted=1" in transaction
    # IMAP: a login, two failed ones (one with a user name built to look like an address), a logout
    imap = imaplib.IMAP4(ep["imap"]["host"], ep["imap"]["port"])
    imap.login(user["name"], user["password"])
    imap.logout()
    for name in ("bob@example.com", '"x remote=198.51.100.7 "'):  # imaplib sends a user name as given
        bad = imaplib.IMAP4(ep["imap"]["host"], ep["imap"]["port"])
        with pytest.raises(imaplib.IMAP4.error):
            bad.login(name, "wrong-password-123")
        bad.logout()
    ok = _wait_for(appliance, "imap.log", f"mailstore.auth: login remote=127.0.0.1 user={user['name']}")
    assert "service=imap method=LOGIN" in ok
    failed = _wait_for(appliance, "imap.log", "login failed remote=127.0.0.1 user=bob@example.com")
    assert "WARNING imap[" in failed and "reason=unknown user" not in failed and 'reason="unknown user"' in failed
    assert 'user="x remote=198.51.100.7 "' in _wait_for(appliance, "imap.log", "198.51.100.7")
    assert "reason=logout" in _wait_for(appliance, "imap.log", "disconnected session=")
    # the dashboard: a failed login
    form = urllib.parse.urlencode({"user": "admin", "password": "not-the-password"}).encode()
    urllib.request.urlopen(urllib.request.Request(ep["dashboard"]["url"] + "login", data=form), timeout=10).read()
    _wait_for(appliance, "dashboard.log", "login failed remote=127.0.0.1 user=admin service=dashboard")
    # fail2ban (Debian's) finds every failed login (these, and earlier tests'), all from 127.0.0.1,
    # and nothing else: not the address in the user name, nor an S3 key or LMTP line
    for name, at_least in (("imap.log", 2), ("dashboard.log", 1)):
        failures = sum(1 for line in _log_lines(appliance, name) if "mailstore.auth: login failed " in line)
        assert failures >= at_least
        res = subprocess.run(["fail2ban-regex", "-o", "ip", str(appliance.data / "logs" / name),
                              str(ROOT / "packaging" / "fail2ban" / "filter.d" / "mailstore.conf")],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == ["127.0.0.1"] * failures, res.stdout
    # no secret in any log
    secrets_ = [sec["admin"]["secret_key"], sec["shim"]["secret_key"], sec["user"]["password"],
                sec["dashboard"]["password"], "wrong-password-123", "not-the-password"]
    for path in (appliance.data / "logs").iterdir():
        text = path.read_text()
        assert not [s for s in secrets_ if s in text], path.name
    # logrotate: move the files away, SIGHUP the supervisor (as the shipped postrotate does)
    for name in ("gateway1.log", "lmtp.log", "imap.log", "up.log"):
        (appliance.data / "logs" / name).rename(appliance.data / "logs" / f"{name}.1")
    pid = int((appliance.data / "run" / "up.pid").read_text())
    os.kill(pid, signal.SIGHUP)
    time.sleep(1.5)
    head = s3.head_object(Bucket=ep["s3"]["bucket"], Key="logs/a b\n2026 WARNING forged")
    _wait_for(appliance, "gateway1.log", f"rid={head['ResponseMetadata']['HTTPHeaders']['x-amz-request-id']}")
    imap = imaplib.IMAP4(ep["imap"]["host"], ep["imap"]["port"])
    imap.login(user["name"], user["password"])
    imap.logout()
    _wait_for(appliance, "imap.log", "mailstore.auth: login remote=127.0.0.1")
    assert oct(stat.S_IMODE((appliance.data / "logs" / "imap.log").stat().st_mode)) == "0o600"
    s3.delete_object(Bucket=ep["s3"]["bucket"], Key="logs/a b\n2026 WARNING forged")


def test_failover_under_load(appliance):
    """SIGTERM one gateway: no request fails.  kill -9 the other: no acknowledged
    write is lost and the pair keeps serving.  Both come back and rejoin."""
    s3 = appliance.s3(retries={"mode": "standard"})  # SDK defaults: 3 attempts
    bucket = appliance.endpoints["s3"]["bucket"]
    acked: dict[str, bytes] = {}
    failures: list[str] = []
    served = [0]
    stop = threading.Event()
    phase = ["steady"]

    def load(n: int) -> None:
        i = 0
        while not stop.is_set() and i < 20000:
            key, body = f"load/{n}/{i}", os.urandom(2048) + str(i).encode()
            try:
                s3.put_object(Bucket=bucket, Key=key, Body=body)
                acked[key] = body
                assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(body)
                assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
                served[0] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted, per phase
                failures.append(f"{phase[0]}: {type(exc).__name__}: {exc}")
            i += 1

    threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        old = appliance.pids()["gateway1"]
        phase[0] = "sigterm"
        os.kill(old, signal.SIGTERM)
        appliance.wait_state("gw1", "NOLB", timeout=10)
        deadline = time.monotonic() + 30
        while appliance.pids()["gateway1"] == old:  # the supervisor starts it again
            assert time.monotonic() < deadline
            time.sleep(0.1)
        appliance.wait_state("gw1", "UP")
        time.sleep(1)
        assert failures == [], failures[:5]
        before_kill = served[0]
        phase[0] = "kill-9"
        old2 = appliance.pids()["gateway2"]
        os.kill(old2, signal.SIGKILL)
        time.sleep(3)
        assert served[0] > before_kill  # the pair kept serving
        deadline = time.monotonic() + 30
        while appliance.pids()["gateway2"] == old2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        appliance.wait_state("gw2", "UP")
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    # nothing acknowledged is lost, through either gateway directly
    key = Key(appliance.endpoints["s3"]["access_key"], appliance.endpoints["s3"]["secret_key"])
    for endpoint in appliance.endpoints["gateways"]:
        direct = client(endpoint, key)
        for k, body in list(acked.items())[::7]:
            assert direct.get_object(Bucket=bucket, Key=k)["Body"].read() == body
    print(f"served {served[0]} put/head/get rounds, {len(acked)} acknowledged writes, "
          f"failures: {len(failures)} {failures[:3]}")
    assert not [f for f in failures if f.startswith("sigterm")]


def test_managesieve_scripts_file_what_lmtp_delivers(appliance):
    """Issue 21: a script put and activated over the appliance's ManageSieve files the next
    delivery (LMTP on the same metadata store); its process is counted on /metrics."""
    ep, user = appliance.endpoints, appliance.endpoints["user"]
    assert ep["managesieve"] == {"host": "127.0.0.1", "port": appliance.ports["managesieve"]}
    script = b'require ["fileinto", "mailbox"];\r\nif header :contains "subject" "[sieve]" { fileinto :create "Filed"; }\r\n'
    auth = base64.b64encode(f"\0{user['name']}\0{user['password']}".encode())
    with socket.create_connection((ep["managesieve"]["host"], ep["managesieve"]["port"]), timeout=30) as s:
        f = s.makefile("rb")
        while not f.readline().startswith(b"OK"):
            pass
        for command in (b'AUTHENTICATE "PLAIN" "' + auth + b'"\r\n',
                        b'PUTSCRIPT "main" {%d+}\r\n' % len(script) + script + b"\r\n", b'SETACTIVE "main"\r\n'):
            s.sendall(command)
            assert f.readline().startswith(b"OK"), command
    lmtp = smtplib.LMTP(ep["lmtp"]["host"], ep["lmtp"]["port"])
    assert lmtp.sendmail("a@example.org", [user["name"]], b"Subject: [sieve] filed\r\n\r\nhi\r\n") == {}
    lmtp.quit()
    imap = imaplib.IMAP4(ep["imap"]["host"], ep["imap"]["port"])
    imap.login(user["name"], user["password"])
    assert imap.select("Filed")[1] == [b"1"]
    imap.logout()
    m = metric_values(get(f"http://127.0.0.1:{appliance.ports['managesieve_metrics']}/metrics")[1])
    assert m["mailstore_managesieve_logins_total"] == 1
    assert m['mailstore_managesieve_commands_total{command="PUTSCRIPT"}'] == 1


def test_ctrl_c_stops_every_part(appliance):
    pids = appliance.pids()
    assert appliance.stop() == 0
    assert "mailstore: stopped" in appliance.log()
    for name, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower(), name


def test_up_with_the_metadata_in_postgresql(postgres, request, tmp_path):  # type: ignore[no-untyped-def]
    """[metadata] url = "postgresql://..." (issue 15): every part of `mailstore up` keeps the mail
    metadata there (its password from the passfile, on no command line), mail goes in and out."""
    import psycopg
    url = new_metadata(request, tmp_path, "postgresql")
    a = Appliance(tmp_path / "data", (url, os.environ["PGPASSFILE"]))
    try:
        ep = a.endpoints
        user = ep["user"]
        lmtp = smtplib.LMTP(ep["lmtp"]["host"], ep["lmtp"]["port"])
        assert lmtp.sendmail("a@example.org", [user["name"]], b"Subject: kept in PostgreSQL\r\n\r\nhi\r\n") == {}
        lmtp.quit()
        imap = imaplib.IMAP4(ep["imap"]["host"], ep["imap"]["port"])
        imap.login(user["name"], user["password"])
        assert imap.select("INBOX")[1] == [b"1"]
        imap.logout()
        with psycopg.connect(postgres.url(url.rsplit("/", 1)[1])) as c:
            assert c.execute("SELECT count(*) FROM messages").fetchone() == (1,)
            assert c.execute("SELECT name FROM users").fetchall() == [(user["name"],)]
        assert not (tmp_path / "data" / "meta.db").exists()
        for pid in a.pids().values():
            args = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert postgres.password.encode() not in args
    finally:
        assert a.stop() == 0


def test_up_with_two_hosts_on_a_private_postgresql(tmp_path):  # type: ignore[no-untyped-def]
    """`mailstore up --hosts 2` (issue 15): its own PostgreSQL, two shim hosts with their own caches,
    HAProxy's LMTP and IMAP fronts on the configured addresses; one host's LMTP killed -9, the mail
    still comes in through the other (and the supervisor starts it again)."""
    import contextlib
    import hashlib
    import shutil

    import psycopg
    data = tmp_path / "data"
    a = Appliance(data, hosts=2)
    try:
        pids = a.pids()
        assert {"postgres", "lmtp1", "imap1", "lmtp2", "imap2", "haproxy"} <= set(pids)
        ep, user = a.endpoints, a.endpoints["user"]
        assert ep["lmtp"] == {"host": "127.0.0.1", "port": a.ports["lmtp"]}  # the front

        def deliver(n: int) -> None:
            for _ in range(100):  # as an MTA retries
                try:
                    lmtp = smtplib.LMTP(ep["lmtp"]["host"], ep["lmtp"]["port"], timeout=10)
                    lmtp.sendmail("a@example.org", [user["name"]], f"Message-ID: <h{n}@x>\r\n\r\nx\r\n")
                    lmtp.quit()
                    return
                except (OSError, smtplib.SMTPException):
                    time.sleep(0.2)
            raise AssertionError(f"message {n} never delivered")

        for n in range(10):
            deliver(n)
        os.kill(pids["lmtp2"], signal.SIGKILL)
        for n in range(10, 20):
            deliver(n)
        imap = imaplib.IMAP4(ep["imap"]["host"], ep["imap"]["port"])  # through the IMAP front
        imap.login(user["name"], user["password"])
        assert imap.select("INBOX")[1] == [b"20"]
        imap.logout()
        pop = poplib.POP3("127.0.0.1", a.ports["pop3"])  # through HAProxy's POP3 front
        pop.user(user["name"])
        pop.pass_(user["password"])
        assert pop.stat()[0] == 20
        pop.quit()
        with socket.create_connection(("127.0.0.1", a.ports["managesieve"]), timeout=30) as s:  # ...ManageSieve's
            f = s.makefile("rb")
            assert f.readline() == b'"IMPLEMENTATION" "mailstore"\r\n'
            while not f.readline().startswith(b"OK"):
                pass
            s.sendall(b'AUTHENTICATE "PLAIN" "' + base64.b64encode(f"\0{user['name']}\0{user['password']}".encode())
                      + b'"\r\nLISTSCRIPTS\r\n')
            assert f.readline() == b'OK "Logged in."\r\n' and f.readline() == b'OK "Listscripts completed."\r\n'
        passfile = data / "pgpass"
        assert oct(passfile.stat().st_mode & 0o777) == "0o600"
        host, port = "127.0.0.1", a.ports["postgres"]
        pg_user, password = passfile.read_text().strip().rsplit(":", 2)[1:]
        with psycopg.connect(f"postgresql://{pg_user}@{host}:{port}/mailstore", password=password) as c:
            assert c.execute("SELECT count(*) FROM messages").fetchone() == (20,)
        for pid in a.pids().values():
            with contextlib.suppress(FileNotFoundError):  # lmtp2 may be between its kill and restart
                assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    finally:
        assert a.stop() == 0
        with pytest.raises(ProcessLookupError):
            os.kill(pids["postgres"], 0)
        tag = hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:12]
        shutil.rmtree(Path("/var/lib/postgresql") / f"mailstore-{tag}", ignore_errors=True)


def test_up_on_its_own_ceph_cluster(tmp_path):  # type: ignore[no-untyped-def]
    """`mailstore up --engine rados` with nothing configured (issue 16): the appliance makes and
    starts its own single-host Ceph cluster in DATA_DIR/ceph, the gateways keep every object
    there, mail goes in over LMTP and out over IMAP; stopped and started again, the cluster
    and the mail are still there, and nothing of it was left running in between."""
    data = tmp_path / "data"
    a = Appliance(data, engine="rados")
    try:
        ep = a.endpoints
        user = ep["user"]
        message = b"From: a@example.org\r\nSubject: kept in RADOS\r\n\r\nhello ceph\r\n"
        lmtp = smtplib.LMTP(ep["lmtp"]["host"], ep["lmtp"]["port"])
        assert lmtp.sendmail("a@example.org", [user["name"]], message) == {}
        lmtp.quit()
        gw_args = Path(f"/proc/{a.pids()['gateway1']}/cmdline").read_bytes().split(b"\0")
        assert b"--engine" in gw_args and b"rados" in gw_args and b"--data-dir" not in gw_args
        assert not (data / "engine").exists()
        assert (data / "ceph" / "ceph.conf").exists() and (data / "master.key").stat().st_mode & 0o777 == 0o600
    finally:
        assert a.stop() == 0
    assert not subprocess.run(["pgrep", "-f", str(data / "ceph")], capture_output=True).stdout
    b = Appliance(data, engine="rados", ports=a.ports)
    try:
        ep = b.endpoints
        imap = imaplib.IMAP4(ep["imap"]["host"], ep["imap"]["port"])
        imap.login(ep["user"]["name"], ep["user"]["password"])
        assert imap.select("INBOX")[1] == [b"1"]
        body = imap.fetch("1", "(BODY.PEEK[])")[1][0][1]
        assert body.endswith(message)
        imap.logout()
        listed = b.s3().list_objects_v2(Bucket=ep["s3"]["bucket"])["Contents"]
        listed = [o for o in listed if "/mailboxes/" in o["Key"]]  # not the user's state record (index/)
        assert len(listed) == 1
        # the bucket is laid out for mail: a user's listing asks one of its index shards
        buckets = json.loads(subprocess.run(
            [str(BIN / "mailstore"), "rados", "bucket-list", "--ceph-conf", str(data / "ceph" / "ceph.conf"),
             "--keyring", str(data / "ceph" / "keys" / "client.mailstore.keyring")],
            capture_output=True, text=True, check=True, timeout=120).stdout)
        assert [(x["bucket"], x["depth"]) for x in buckets] == [("mail", 2)]
    finally:
        assert b.stop() == 0
    assert not subprocess.run(["pgrep", "-f", str(data / "ceph")], capture_output=True).stdout
    again = subprocess.run([str(BIN / "mailstore"), "up", "--data-dir", str(data), "--engine", "local"],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "rados engine, not local" in again.stderr
