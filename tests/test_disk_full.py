"""A full disk: every write is a 503 with Retry-After (clients and Dovecot retry), counted in a
metric, and nothing acknowledged before is lost.

The data directory lives on a small tmpfs mounted for this test (the suite runs as root,
as CI does), so the kernel's own ENOSPC is what the engine meets: in blob files, in
segments and in SQLite's WAL alike.
"""

from __future__ import annotations

import os
import subprocess
import urllib.request
from pathlib import Path

import botocore.exceptions
import pytest

from conftest import GatewayProcess, client, create_key


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_is_503_with_retry_after_and_loses_nothing(small_disk: Path) -> None:
    data = small_disk / "data"
    key = create_key(data)
    gw = GatewayProcess(data, "--no-compaction", "--min-free", "0")
    try:
        s3 = client(gw.endpoint, key)
        s3.create_bucket(Bucket="mail")
        acked: dict[str, bytes] = {}
        refused = []
        for i in range(200):
            name = f"m{i}" + ("-big" if i % 5 == 4 else "")
            body = os.urandom(1_500_000 if name.endswith("big") else 200_000)  # blobs and inline records
            try:
                s3.put_object(Bucket="mail", Key=name, Body=body)
                acked[name] = body
            except botocore.exceptions.ClientError as exc:
                meta = exc.response["ResponseMetadata"]
                assert meta["HTTPStatusCode"] == 503, exc.response
                assert exc.response["Error"]["Code"] == "ServiceUnavailable"
                assert meta["HTTPHeaders"].get("retry-after"), meta["HTTPHeaders"]
                refused.append(name)
                if len(refused) >= 6:
                    break
        assert acked and len(refused) >= 6, (len(acked), refused)
        assert any(n.endswith("big") for n in refused) or any(not n.endswith("big") for n in refused)
        for name, body in acked.items():
            assert s3.get_object(Bucket="mail", Key=name)["Body"].read() == body
        for name in refused:
            with pytest.raises(botocore.exceptions.ClientError):
                s3.head_object(Bucket="mail", Key=name)
        metrics = urllib.request.urlopen(gw.endpoint + "/metrics", timeout=10).read().decode()
        line = next(ln for ln in metrics.splitlines() if ln.startswith("mailstore_engine_storage_full_total"))
        assert float(line.split()[-1]) >= len(refused)
    finally:
        gw.stop()
    log = Path(gw.log.name).read_text()
    assert "Traceback" not in log, log[-2000:]
