"""Several clients on one mailbox at once, checked against a model of the mailbox (issue 14).

A seeded generator drives three real connections to our IMAP server: APPEND with
flags and keywords, STORE (+/-/=), EXPUNGE, MOVE out and COPY back, FETCH, SEARCH,
NOOP.  After every step each client syncs (NOOP) and fetches everything; what it
sees must equal the model: the same UIDs (ascending, never reused), the same
flags, sequence numbers that are positions, every keyword announced in a
FLAGS response before that client saw it used, and never BAD or SERVERBUG.
A second test runs three clients in threads at once, each on its own
messages, while a fourth stays in IDLE and must end with the same mailbox
from the updates pushed to it alone.
"""

from __future__ import annotations

import random
import re
import threading
import time

import pytest

from imapdiff import Raw, status
from test_lmtp import DOMAIN, imap_server

USER = f"model@{DOMAIN}"
KEYWORDS = ["$Work", "$Todo", "Later", "$Label1"]
SYSTEM = ["\\Seen", "\\Flagged", "\\Answered", "\\Draft"]


class Client:
    def __init__(self, port: int) -> None:
        self.raw = Raw(port)
        assert status(self.raw.cmd(f"LOGIN {USER} pw")).startswith(b"OK")
        self.known_keywords: set[str] = set()

    def cmd(self, text: str, *literals: bytes) -> list[bytes]:
        lines = self.raw.cmd(text, *literals)
        for line in lines:
            assert b"SERVERBUG" not in line and not line.startswith(b"* BAD"), (text, line)
            if m := re.match(rb"\* FLAGS \(([^)]*)\)", line):
                self.known_keywords = {f.decode() for f in m.group(1).split() if not f.startswith(b"\\")}
            if m := re.match(rb"\* \d+ FETCH \(.*?FLAGS \(([^)]*)\)", line, re.S):
                used = {f.decode() for f in m.group(1).split() if not f.startswith(b"\\")}
                assert used <= self.known_keywords, (text, line, self.known_keywords)
        assert lines[-1].split(b" ")[1] in (b"OK", b"NO"), (text, lines[-1])
        return lines

    def snapshot(self) -> dict[int, frozenset[str]]:
        """uid -> flags (\\Recent left out), checking sequence numbers are positions."""
        self.cmd("NOOP")
        lines = self.cmd("FETCH 1:* (UID FLAGS)")
        seen: list[tuple[int, int, frozenset[str]]] = []
        for line in lines:
            m = re.match(rb"\* (\d+) FETCH \((.*)\)\r\n", line)
            if m:
                uid = int(re.search(rb"UID (\d+)", m.group(2)).group(1))  # type: ignore[union-attr]
                flags = re.search(rb"FLAGS \(([^)]*)\)", m.group(2)).group(1)  # type: ignore[union-attr]
                seen.append((int(m.group(1)), uid,
                             frozenset(f.decode() for f in flags.split() if f != b"\\Recent")))
        seen.sort()
        assert [s for s, _, _ in seen] == list(range(1, len(seen) + 1)), seen
        assert [u for _, u, _ in seen] == sorted(u for _, u, _ in seen)
        return {u: f for _, u, f in seen}


@pytest.fixture(scope="module")
def port(tmp_path_factory):  # type: ignore[no-untyped-def]
    with imap_server(tmp_path_factory.mktemp("stateful"), USER) as p:
        yield p


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_three_clients_agree_with_the_model(port: int, seed: int) -> None:
    rng = random.Random(seed)
    box = f"model{seed}"
    clients = [Client(port) for _ in range(3)]
    clients[0].cmd(f"CREATE {box}")
    clients[0].cmd(f"CREATE {box}-other")
    for c in clients:
        assert status(c.cmd(f"SELECT {box}")).startswith(b"OK")
    model: dict[int, frozenset[str]] = {}
    issued: set[int] = set()
    for step in range(120):
        c = rng.choice(clients)
        op = rng.choice(["append", "append", "store", "store", "expunge", "move", "copy", "fetch", "search"])
        uids = sorted(model)
        if op == "append" or not uids:
            flags = rng.sample(SYSTEM + KEYWORDS, rng.randint(0, 3))
            lines = c.cmd(f"APPEND {box} ({' '.join(flags)}) \x00LIT\x00", f"Subject: {step}\r\n\r\nx\r\n".encode())
            uid = int(re.search(rb"APPENDUID \d+ (\d+)", lines[-1]).group(1))  # type: ignore[union-attr]
            assert uid not in issued and all(uid > u for u in issued), (uid, issued)
            issued.add(uid)
            model[uid] = frozenset(flags)
        elif op == "store":
            target = rng.choice(uids)
            action = rng.choice(["+FLAGS", "-FLAGS", "FLAGS"])
            flags = rng.sample(SYSTEM + KEYWORDS + ["\\Deleted"], rng.randint(1, 3))
            stored = c.cmd(f"UID STORE {target} {action} ({' '.join(flags)})")
            assert status(stored).startswith(b"OK"), (target, action, flags, stored)  # else the model lies
            if action == "+FLAGS":
                model[target] = model[target] | set(flags)
            elif action == "-FLAGS":
                model[target] = model[target] - set(flags)
            else:
                model[target] = frozenset(flags)
        elif op == "expunge":
            c.cmd("EXPUNGE")
            model = {u: f for u, f in model.items() if "\\Deleted" not in f}
        elif op == "move":
            target = rng.choice(uids)
            lines = c.cmd(f"UID MOVE {target} {box}-other")
            del model[target]
            back = c.cmd(f"STATUS {box}-other (MESSAGES)")
            assert status(back).startswith(b"OK")
        elif op == "copy":  # copy from the other mailbox back in, if anything is there
            c.cmd(f"EXAMINE {box}-other")
            lines = c.cmd("UID SEARCH ALL")
            found = [int(x) for x in lines[0].split()[2:]] if lines[0].startswith(b"* SEARCH") else []
            moved_flags = {}
            if found:
                src = rng.choice(found)
                fl = c.cmd(f"UID FETCH {src} FLAGS")
                moved_flags = {f.decode() for f in re.search(rb"FLAGS \(([^)]*)\)", fl[0]).group(1).split()  # type: ignore[union-attr]
                               if f != b"\\Recent"}
                lines = c.cmd(f"UID COPY {src} {box}")
                m = re.search(rb"COPYUID \d+ \d+ (\d+)", lines[-1])
                assert m, lines
                uid = int(m.group(1))
                assert uid not in issued and all(uid > u for u in issued)
                issued.add(uid)
                model[uid] = frozenset(moved_flags)
            assert status(c.cmd(f"SELECT {box}")).startswith(b"OK")
        elif op == "fetch":
            c.cmd("FETCH 1:* (UID FLAGS BODY.PEEK[HEADER] ENVELOPE)")
        else:
            c.cmd("SEARCH KEYWORD $Work")
        for client in clients:
            assert client.snapshot() == model, (seed, step, op)
    for c in clients:
        c.raw.close()


class Idler:
    """A client in IDLE (with QRESYNC, so updates carry UIDs) that keeps its own picture of the
    mailbox from what the server pushes: EXISTS, VANISHED, FETCH (UID FLAGS), FLAGS."""

    def __init__(self, port: int, box: str) -> None:
        self.raw = Raw(port)
        assert status(self.raw.cmd(f"LOGIN {USER} pw")).startswith(b"OK")
        self.raw.cmd("ENABLE QRESYNC")
        lines = self.raw.cmd(f"SELECT {box}")
        self.keywords: set[str] = set()
        self._flags(lines)
        count = int(next(re.match(rb"\* (\d+) EXISTS", x).group(1) for x in lines if re.match(rb"\* \d+ EXISTS", x)))  # type: ignore[union-attr]
        self.uids: list[int | None] = [None] * count  # by position; None until a FETCH names it
        self.flags: dict[int, frozenset[str]] = {}
        self.raw.send(b"i1 IDLE\r\n")
        assert self.raw._line().startswith(b"+")
        self.errors: list[bytes] = []
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _flags(self, lines: list[bytes]) -> None:
        for line in lines:
            if m := re.match(rb"\* FLAGS \(([^)]*)\)", line):
                self.keywords = {f.decode() for f in m.group(1).split() if not f.startswith(b"\\")}

    def _listen(self) -> None:
        while True:
            line = self.raw._line()
            if line.startswith(b"i1 "):
                return
            if b"SERVERBUG" in line or line.startswith(b"* BAD") or line.startswith(b"* BYE"):
                self.errors.append(line)
            self._flags([line])
            if m := re.match(rb"\* (\d+) EXISTS", line):
                self.uids += [None] * (int(m.group(1)) - len(self.uids))
            elif m := re.match(rb"\* VANISHED (?:\(EARLIER\) )?([\d:,]+)", line):
                gone = set()
                for part in m.group(1).split(b","):
                    a, _, b = part.partition(b":")
                    gone.update(range(int(a), int(b or a) + 1))
                self.uids = [u for u in self.uids if u not in gone]
                for u in gone:
                    self.flags.pop(u, None)
            elif m := re.match(rb"\* (\d+) FETCH \((.*)\)\r\n", line):
                uid = int(re.search(rb"UID (\d+)", m.group(2)).group(1))  # type: ignore[union-attr]
                flags = {f.decode() for f in re.search(rb"FLAGS \(([^)]*)\)", m.group(2)).group(1).split()  # type: ignore[union-attr]
                         if f != b"\\Recent"}
                if not {f for f in flags if not f.startswith("\\")} <= self.keywords:
                    self.errors.append(b"keyword before FLAGS: " + line)
                self.uids[int(m.group(1)) - 1] = uid
                self.flags[uid] = frozenset(flags)

    def done(self) -> None:
        self.raw.send(b"DONE\r\n")
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def test_clients_at_once_and_an_idler_agree_with_the_model(port: int) -> None:
    """Three clients in three threads at once, each on its own messages (APPEND, STORE, UID EXPUNGE,
    MOVE out, FETCH, SEARCH) so the end state does not depend on the interleaving, and a fourth in
    IDLE the whole time: all four end with the model's mailbox, the idler from pushed updates alone."""
    box = "concurrent"
    setup = Client(port)
    setup.cmd(f"CREATE {box}")
    setup.cmd(f"CREATE {box}-out")
    idler = Idler(port, box)
    models: list[dict[int, frozenset[str]]] = [{} for _ in range(3)]
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            rng = random.Random(100 + n)
            c = Client(port)
            assert status(c.cmd(f"SELECT {box}")).startswith(b"OK")
            mine = models[n]
            for step in range(40):
                op = rng.choice(["append", "append", "store", "store", "expunge", "move", "fetch", "search"])
                if op == "append" or not mine:
                    flags = rng.sample(SYSTEM + KEYWORDS, rng.randint(0, 2))
                    lines = c.cmd(f"APPEND {box} ({' '.join(flags)}) \x00LIT\x00",
                                  f"Subject: w{n} {step}\r\n\r\nx\r\n".encode())
                    mine[int(re.search(rb"APPENDUID \d+ (\d+)", lines[-1]).group(1))] = frozenset(flags)  # type: ignore[union-attr]
                elif op == "store":
                    target = rng.choice(sorted(mine))
                    flags = rng.sample(SYSTEM + KEYWORDS + ["\\Deleted"], rng.randint(1, 2))
                    action = rng.choice(["+FLAGS", "-FLAGS", "FLAGS"])
                    stored = c.cmd(f"UID STORE {target} {action}.SILENT ({' '.join(flags)})")
                    assert status(stored).startswith(b"OK"), (target, action, flags, stored)  # else the model lies
                    mine[target] = (mine[target] | set(flags) if action == "+FLAGS" else
                                    mine[target] - set(flags) if action == "-FLAGS" else frozenset(flags))
                elif op == "expunge":  # UIDPLUS: only this client's deleted messages
                    doomed = [u for u, f in mine.items() if "\\Deleted" in f]
                    if doomed:
                        gone = c.cmd(f"UID EXPUNGE {','.join(map(str, doomed))}")
                        assert status(gone).startswith(b"OK"), (doomed, gone)
                        for u in doomed:
                            del mine[u]
                elif op == "move":
                    target = rng.choice(sorted(mine))
                    assert status(c.cmd(f"UID MOVE {target} {box}-out")).startswith(b"OK")
                    del mine[target]
                elif op == "fetch":
                    c.cmd(f"UID FETCH {','.join(map(str, sorted(mine)))} (FLAGS BODY.PEEK[HEADER])")
                else:
                    c.cmd("UID SEARCH KEYWORD $Todo")
            c.raw.close()
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=300)
    assert not failures, failures
    model = {u: f for m in models for u, f in m.items()}
    end = time.monotonic() + 10  # IDLE polls: the last changes arrive within a poll or two
    while time.monotonic() < end and (len(idler.uids) != len(model) or idler.flags != {
            u: f for u, f in model.items() if u in idler.flags}):
        time.sleep(0.2)
    idler.done()
    assert not idler.errors, idler.errors
    assert len(idler.uids) == len(model)
    assert {u: f for u, f in idler.flags.items() if u in model} == {u: model[u] for u in idler.flags if u in model}
    assert set(idler.flags) <= set(model)  # nothing it holds was expunged without a VANISHED
    setup.cmd(f"SELECT {box}")
    assert setup.snapshot() == model
    setup.raw.close()


def test_a_store_right_after_an_append_is_not_lost_behind_another_delivery(tmp_path) -> None:
    """While another delivery holds a lower UID's reservation, the rows above it are hidden from
    readers (UIDs appear in order). An APPEND waits for it, so the UID STORE its client sends
    next, on the UID it was just given, reaches the message: before, it found no such message in
    the session's view, answered OK and changed nothing (seen as a rare flake of the test above)."""
    from mailstore.db import MetaStore
    from test_lmtp import Shim

    shim = Shim(tmp_path / "shim")
    user = f"held@{DOMAIN}"
    shim.add_user(user)
    proc, info = shim.start_imap()
    try:
        meta = MetaStore(shim.db)
        ((box, held),) = meta.reserve_uids([(user, "INBOX")])  # a delivery in flight

        def finish_delivery() -> None:
            time.sleep(0.5)
            MetaStore(shim.db).commit_messages([], [(box.id, held)])  # its upload failed: dropped
        releaser = threading.Thread(target=finish_delivery)
        c = Raw(int(info["port"]))
        assert status(c.cmd(f"LOGIN {user} pw")).startswith(b"OK")
        assert status(c.cmd("SELECT INBOX")).startswith(b"OK")
        releaser.start()
        lines = c.cmd("APPEND INBOX (\\Draft $Label1) \x00LIT\x00", b"Subject: held\r\n\r\nx\r\n")
        uid = int(re.search(rb"APPENDUID \d+ (\d+)", lines[-1]).group(1))  # type: ignore[union-attr]
        assert uid > held
        assert status(c.cmd(f"UID STORE {uid} -FLAGS.SILENT (\\Draft)")).startswith(b"OK")
        releaser.join()
        fetched = b"".join(c.cmd(f"UID FETCH {uid} (FLAGS)"))
        assert b"\\Draft" not in fetched and b"$Label1" in fetched, fetched
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shim.stop()
