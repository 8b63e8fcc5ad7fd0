"""The data files are the truth: whatever happens to index.db, nothing acknowledged is lost.

Each case is a mistake an operator makes or a crash leaves behind: the index
removed, restored from an older copy, overwritten with random bytes, cut
short, its -wal lost after a crash; each also with a torn last segment.  The
engine must refuse to open (naming the command that fixes it) without touching
a data file, and `fsck --rebuild-index` must bring back every acknowledged
object, bucket, key and policy, with fsck clean afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import GatewayProcess, mailstore, new_engine
from gateway import fsck
from gateway.engine.local import LocalEngine
from gateway.engine.model import ObjectMeta
from gateway.engine.recovery import IndexUnusable
from gateway.engine.local_api import LocalGateway, run_on
from gateway.keys import KeyStore
from gateway.policy import preset

ROOT = Path(__file__).resolve().parent.parent


def body(name: str) -> bytes:
    size = 2_000 + int(hashlib.md5(name.encode()).hexdigest()[:3], 16) * 10
    if name.endswith("big"):
        size += 1_100_000  # a blob file, not an inline record
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // 32 + 1))[:size]


def write(root: Path, names: list[str], delete: list[str] = (), *, crash: bool = False,  # type: ignore[assignment]
          checkpoint_after: int | None = None, segment_limit: int = 256 * 1024) -> None:
    """PUT `names` (and delete `delete`) in a child process; with crash, it dies without closing.

    checkpoint_after: after that many PUTs, copy the WAL into the main file, so a
    lost -wal afterwards loses only the later commits.
    """
    script = f"""
import asyncio, os, sys, time
sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'tests')!r})
from test_recovery import body
from gateway.engine.local import LocalEngine
from gateway.engine.model import ObjectMeta
names, delete, crash, ck = {names!r}, {list(delete)!r}, {crash!r}, {checkpoint_after!r}
e = LocalEngine(__import__('pathlib').Path({str(root)!r}))
e.committer.SEGMENT_LIMIT = {segment_limit!r}
async def go():
    if not e.bucket_exists('mail'):
        await e.create_bucket('mail', 'admin')
    for i, n in enumerate(names):
        b = body(n)
        if len(b) > 1 << 20:
            from gateway.engine.segments import BlobWriter
            w = BlobWriter(e.data); w.write(b); ref = w.finish()
            await e.put('mail', n, ObjectMeta(len(b), '"e"', time.time()), blobs=(ref,))
        else:
            await e.put('mail', n, ObjectMeta(len(b), '"e"', time.time()), b)
        if ck is not None and i + 1 == ck:
            e.committer.conn.execute('PRAGMA wal_checkpoint(FULL)')
    for n in delete:
        await e.delete('mail', n)
asyncio.run(go())
if crash:
    os._exit(0)
e.close()
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def snapshot(root: Path) -> dict[str, object]:
    e = LocalEngine(root, writer=False)
    try:
        page = e.list_objects("mail", "", "", None, 100_000)
        objects = {}
        for entry in page.entries:
            info = e.head("mail", entry.key)
            objects[entry.key] = (e.read_inline(info) if not info.blobs else
                                  b"".join(e.iter_body(info, 0, info.meta.size)))
        return {"buckets": [b.name for b in e.list_buckets()],
                "keys": {k.access_key: (k.name, k.secret, k.admin, k.describe().get("Policy"))
                         for k in run_on(e, lambda g: KeyStore(g).list())},
                "objects": objects}
    finally:
        e.close()


def data_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and p.parts[-2] in ("segments",)
            or p.suffix == ".blob"}


def base(root: Path) -> tuple[dict[str, bytes], list[str]]:
    """A store with keys (one scoped by a policy), a bucket, overwrites, a delete and a blob."""
    e = LocalEngine(root)
    try:
        async def make(g: LocalGateway) -> None:
            await KeyStore(g).create("admin")
            await KeyStore(g).create("shim", admin=False, policy=preset("bucket:mail"))

        run_on(e, make)
    finally:
        e.close()
    names = [f"u/{i}" for i in range(30)] + ["u/big"]
    write(root, names)
    write(root, ["u/1", "u/2"], delete=["u/3"])  # overwrites and a tombstone
    return {n: body(n) for n in names if n != "u/3"}, names


def remove_index(root: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{root}/index.db{suffix}").unlink(missing_ok=True)


def tear_last_segment(root: Path) -> None:
    last = max((root / "segments").glob("*.seg"))
    with open(last, "ab") as f:
        f.write(b"MSR1\x01\x00\x00\x00half a record that never finished")


def acked_after_stale_copy(root: Path, tmp: Path) -> dict[str, bytes]:
    """Copy the index while stopped, write 20 more (acknowledged), put the copy back."""
    saved = tmp / "index-copy.db"
    shutil.copy(root / "index.db", saved)
    more = [f"late/{i}" for i in range(20)]
    write(root, more)
    remove_index(root)
    shutil.copy(saved, root / "index.db")
    return {n: body(n) for n in more}


def checkpointed(root: Path) -> None:
    """Every committed page in index.db itself: damage to the file then hits live pages (a page
    still in index.db-wal would be read from there, and the index would rightly be usable)."""
    import sqlite3

    conn = sqlite3.connect(root / "index.db")
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()


def corrupt_random(root: Path) -> None:
    checkpointed(root)
    raw = bytearray((root / "index.db").read_bytes())
    for i in range(4096, len(raw), 997):
        raw[i] ^= 0x5A
    raw[0:16] = os.urandom(16)
    (root / "index.db").write_bytes(bytes(raw))


def truncate_half(root: Path) -> None:
    checkpointed(root)
    p = root / "index.db"
    os.truncate(p, p.stat().st_size // 2)


CASES = ["missing", "stale", "corrupt-random", "corrupt-truncated", "wal-lost"]


@pytest.mark.parametrize("torn", [False, True], ids=["clean", "torn-segment"])
@pytest.mark.parametrize("case", CASES)
def test_index_damage_never_loses_acknowledged_data(tmp_path: Path, case: str, torn: bool) -> None:
    root = tmp_path / "d"
    expect, _ = base(root)
    before = snapshot(root)
    assert before["objects"] == expect
    if case == "missing":
        remove_index(root)
    elif case == "stale":
        expect.update(acked_after_stale_copy(root, tmp_path))
    elif case == "corrupt-random":
        corrupt_random(root)
    elif case == "corrupt-truncated":
        truncate_half(root)
    elif case == "wal-lost":
        late = [f"wal/{i}" for i in range(40)]
        write(root, late, crash=True)  # dies with its commits only in index.db-wal
        expect.update({n: body(n) for n in late})
        for suffix in ("-wal", "-shm"):
            Path(f"{root}/index.db{suffix}").unlink(missing_ok=True)
    if torn:
        tear_last_segment(root)
    files = data_files(root)
    with pytest.raises(IndexUnusable) as refused:
        LocalEngine(root)
    assert f"mailstore fsck --data-dir {root} --rebuild-index" in str(refused.value)
    assert data_files(root) == files, "a refused open changed a data file"
    rep = fsck.rebuild(root)
    assert rep.live > 0
    after = snapshot(root)
    assert after["objects"] == expect
    assert after["buckets"] == ["mail"]
    assert after["keys"] == before["keys"]
    assert fsck.verify(root).ok, fsck.verify(root).problems
    if torn:
        assert list((root / "quarantine").glob("*.bin")), "the torn tail was not kept"


def test_lost_wal_after_a_checkpoint_is_adopted_at_open(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The index knows the active segment, but not its last commits: they are re-indexed, not cut."""
    root = tmp_path / "d"
    expect, _ = base(root)
    late = [f"wal/{i}" for i in range(40)]
    write(root, late, delete=["u/4"], crash=True, checkpoint_after=5, segment_limit=64 << 20)
    for suffix in ("-wal", "-shm"):
        Path(f"{root}/index.db{suffix}").unlink(missing_ok=True)
    expect.update({n: body(n) for n in late})
    del expect["u/4"]
    got = snapshot(root)["objects"]  # no rebuild needed: the open adopts the tail
    assert "adopted" in caplog.text
    assert got == expect
    assert fsck.verify(root).ok, fsck.verify(root).problems


def test_a_crash_between_sync_and_commit_is_adopted_or_cut_never_half(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A batch synced to the segment whose COMMIT never ran: adopted whole when nobody wrote since."""
    root = tmp_path / "d"
    e = LocalEngine(root)
    asyncio.run(e.create_bucket("mail", "a"))
    asyncio.run(e.put("mail", "k", ObjectMeta(1, '"e"', time.time()), b"1"))
    c = e.committer
    assert c is not None
    seg = c._segment
    assert seg is not None
    # The records of a batch, written and synced, but the index transaction lost.
    from gateway.engine import records
    seq = c.conn.execute("SELECT v FROM state").fetchone()[0]
    m = ObjectMeta(2, '"e"', time.time())
    raw = (records.encode(records.PUT, seq + 1, "mail", "k", records.meta_json(m), seq, (), b"22")
           + records.encode(records.PUT, seq + 2, "mail", "new", records.meta_json(m), None, (), b"33"))
    os.pwrite(seg.fd, raw + b"MSR1torn", seg.size)
    c._thread = None
    seg.close()
    e.committer = None
    e.close()
    e2 = LocalEngine(root)
    try:
        assert "adopted 2 synced records" in caplog.text
        assert e2.read_inline(e2.head("mail", "k")) == b"22"
        assert e2.read_inline(e2.head("mail", "new")) == b"33"
        asyncio.run(e2.put("mail", "after", m, b"44"))  # sequence numbers go on above the adopted
    finally:
        e2.close()
    assert fsck.verify(root).ok, fsck.verify(root).problems
    assert list((root / "quarantine").glob("*.bin"))


def test_a_flipped_header_mid_segment_costs_one_record(tmp_path: Path) -> None:
    root = tmp_path / "d"
    expect, _ = base(root)
    seg = max((root / "segments").glob("*.seg"), key=lambda p: p.stat().st_size)
    raw = bytearray(seg.read_bytes())
    second = raw.find(b"MSR1", 1)
    raw[second + 20] ^= 0xFF  # the header length field of the second record
    seg.write_bytes(bytes(raw))
    remove_index(root)
    rep = fsck.rebuild(root)
    got = snapshot(root)["objects"]
    lost = set(expect) - set(got)
    assert len(lost) <= 1, lost
    assert all(got[k] == expect[k] for k in got if k in expect)
    assert rep.problems


def test_cli_missing_index_is_rebuilt_not_deleted(tmp_path: Path) -> None:
    """The issue's transcript: key, bucket, rm index.db*, fsck --rebuild-index."""
    d = tmp_path / "D"
    new_engine(d)
    key = json.loads(mailstore("key", "create", "--data-dir", str(d), "--name", "a").stdout)
    mailstore("bucket", "create", "--data-dir", str(d), "mail")
    remove_index(d)
    refused = mailstore("bucket", "list", "--data-dir", str(d), check=False)
    assert refused.returncode == 4 and "--rebuild-index" in refused.stderr
    assert "Traceback" not in refused.stderr
    with pytest.raises(RuntimeError, match="rebuild-index"):
        GatewayProcess(d)
    assert any((d / "segments").iterdir())
    out = json.loads(mailstore("fsck", "--data-dir", str(d), "--rebuild-index", "--quiet").stdout)
    assert out["records"] >= 2 and out["live"] >= 2
    assert mailstore("bucket", "list", "--data-dir", str(d)).stdout.split() == ["mail"]
    listed = [json.loads(line) for line in mailstore("key", "list", "--data-dir", str(d)).stdout.splitlines()]
    assert [k["AccessKeyId"] for k in listed] == [key["AccessKeyId"]]
    assert json.loads(mailstore("fsck", "--data-dir", str(d), "--quiet").stdout)["result"] == "ok"


def test_cli_corrupt_index_is_rebuilt_without_a_traceback(tmp_path: Path) -> None:
    d = tmp_path / "D"
    new_engine(d)
    mailstore("bucket", "create", "--data-dir", str(d), "mail")
    (d / "index.db").write_bytes(os.urandom(8192))
    checked = mailstore("fsck", "--data-dir", str(d), "--quiet", check=False)
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert "unreadable" in json.loads(checked.stdout)["problems"][0]
    mailstore("fsck", "--data-dir", str(d), "--rebuild-index", "--quiet")
    assert mailstore("bucket", "list", "--data-dir", str(d)).stdout.split() == ["mail"]


def test_up_refuses_once_with_the_command_instead_of_restarting_gateways(tmp_path: Path) -> None:
    d = tmp_path / "data"
    new_engine(d / "engine")
    mailstore("bucket", "create", "--data-dir", str(d), "mail")  # the appliance's directory finds its engine
    remove_index(d / "engine")
    out = mailstore("up", "--data-dir", str(d), check=False)
    assert out.returncode == 4
    assert f"mailstore fsck --data-dir {d / 'engine'} --rebuild-index" in out.stderr
    assert not (d / "run" / "processes.json").exists()
