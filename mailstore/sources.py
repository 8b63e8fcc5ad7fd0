"""Where imported mail comes from: a Maildir, an mbox file, or an IMAP server.

Each source lists folders, lists a folder's messages (item id, flags, date,
size; no bodies), and loads the bodies of the messages the importer wants.
Offline sources give messages CRLF line ends, as an IMAP server serves them
(Dovecot keeps bare LF on disk and adds the CR on the wire).  Folder names
stay in IMAP's modified UTF-7 (Dovecot's Maildir++ directories use it too),
the form our IMAP server stores.
"""

from __future__ import annotations

import asyncio
import calendar
import email.utils
import hashlib
import re
import ssl as ssl_mod
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aioimaplib

from .imap import mutf7
from .importing import SourceFolder, SourceMessage

_BARE_LF = re.compile(rb"(?<!\r)\n")
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
SPECIAL = ("\\Drafts", "\\Sent", "\\Trash", "\\Junk", "\\Archive", "\\All", "\\Flagged")


def crlf(data: bytes) -> bytes:
    return _BARE_LF.sub(b"\r\n", data)


def message_id(data: bytes) -> str | None:
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    m = _MESSAGE_ID.search(head)
    return re.sub(r"\s+", "", m.group(1).decode("ascii", "replace")) if m else None


# ------------------------------------------------------------------ Maildir

MAILDIR_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted",
                 "P": "$Forwarded"}


class MaildirSource:
    """A Maildir++ tree: cur/new at the top is INBOX, ".A.B" directories are folders A/B.

    Flags come from the ":2," suffix (and Dovecot's dovecot-keywords for a-z),
    the date from the file's mtime, the item id from the unique base name.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.id = f"maildir:{root.resolve()}"

    def _dirs(self) -> list[tuple[str, Path]]:
        out = [("INBOX", self.root)] if (self.root / "cur").is_dir() or (self.root / "new").is_dir() else []
        for d in sorted(self.root.iterdir()):
            if d.is_dir() and d.name.startswith(".") and d.name not in (".", "..") and (d / "cur").is_dir():
                out.append((d.name[1:].replace(".", "/"), d))
        return out

    async def folders(self) -> list[SourceFolder]:
        return [SourceFolder(name, _guess_special(name), "") for name, _ in self._dirs()]

    def _path(self, folder: SourceFolder) -> Path:
        return dict(self._dirs())[folder.name]

    async def messages(self, folder: SourceFolder) -> list[SourceMessage]:
        d = self._path(folder)
        keywords = _dovecot_keywords(d / "dovecot-keywords")
        uidls = _dovecot_pop3_uidls(d / "dovecot-uidlist")
        out = []
        for sub in ("new", "cur"):
            if not (d / sub).is_dir():
                continue
            for f in sorted((d / sub).iterdir()):
                if not f.is_file():
                    continue
                base, _, info = f.name.partition(":2,")
                flags = [] if sub == "new" else [MAILDIR_FLAGS[c] for c in info if c in MAILDIR_FLAGS]
                flags += [keywords[c] for c in info if c in keywords]
                st = f.stat()
                item = base.split(":", 1)[0]
                out.append(SourceMessage(item, tuple(flags), st.st_mtime, st.st_size, path=f,
                                         pop3_uidl=uidls.get(item)))
        return out

    async def load(self, folder: SourceFolder, wanted: list[SourceMessage]) -> AsyncIterator[SourceMessage]:
        for m in wanted:
            assert m.path is not None
            m.data = crlf(await asyncio.to_thread(m.path.read_bytes))
            m.size = len(m.data)
            m.message_id = message_id(m.data)
            yield m

    async def reader(self) -> MaildirSource:
        return self

    async def close(self) -> None:
        pass


def _dovecot_pop3_uidls(path: Path) -> dict[str, str]:
    """The POP3 UIDLs Dovecot's dovecot-uidlist keeps (a "P<uidl>" field, as migrations from
    other POP3 servers leave them), by the file's base name."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines()[1:]:
        fields, sep, name = line.partition(" :")
        if not sep:
            fields, sep, name = line.partition(":")
        uidl = next((f[1:] for f in fields.split()[1:] if f.startswith("P") and len(f) > 1), None)
        if uidl and sep:
            out[name.split(":", 1)[0]] = uidl
    return out


def _dovecot_keywords(path: Path) -> dict[str, str]:
    """Dovecot's keyword letters: line "N name" means letter chr(ord('a') + N)."""
    out = {}
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            n, _, name = line.partition(" ")
            if n.isdigit() and int(n) < 26 and name:
                out[chr(ord("a") + int(n))] = name
    return out


def _guess_special(name: str) -> str | None:
    return {"drafts": "\\Drafts", "sent": "\\Sent", "trash": "\\Trash", "junk": "\\Junk", "spam": "\\Junk",
            "archive": "\\Archive"}.get(name.lower())


# ------------------------------------------------------------------ mbox

class MboxSource:
    """One mbox file as one folder (named after the file, or INBOX).

    Messages start at "From " lines after an empty line (or at the start);
    ">From " quoting is undone (mboxrd: one ">" less on any ">...>From " line).
    Flags come from the Status (R: \\Seen) and X-Status (A, F, T, D) headers,
    the date from the From_ line.  Item ids are content digests (a repeated
    identical message gets its ordinal), so a re-import finds what it has.
    """

    def __init__(self, path: Path, folder: str = "INBOX") -> None:
        self.path = path
        self.folder = mutf7.encode(folder)  # mailbox names are stored as IMAP sends them
        self.id = f"mbox:{path.resolve()}"
        self._messages: list[SourceMessage] | None = None  # parsed once, bodies included

    async def folders(self) -> list[SourceFolder]:
        return [SourceFolder(self.folder, _guess_special(self.folder), "")]

    def _parse(self) -> list[SourceMessage]:
        raw = self.path.read_bytes()
        out: list[SourceMessage] = []
        seen: dict[str, int] = {}
        starts = [m.start() for m in re.finditer(rb"(?:\A|(?<=\n\n)|(?<=\n\r\n))From ", raw)]
        for i, start in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else len(raw)
            chunk = raw[start:end]
            from_line, _, body = chunk.partition(b"\n")
            if body.endswith(b"\r\n\r\n"):  # the empty line before the next From_ is not the message's
                body = body[:-2]
            elif body.endswith(b"\n\n"):
                body = body[:-1]
            body = re.sub(rb"(?m)^>(>*From )", rb"\1", body)
            data = crlf(body)
            digest = hashlib.sha256(data).hexdigest()[:32]
            n = seen.get(digest, 0)
            seen[digest] = n + 1
            head = data.split(b"\r\n\r\n", 1)[0]
            out.append(SourceMessage(f"{digest}-{n}", _mbox_flags(head), _from_line_date(from_line, head),
                                     len(data), message_id(data), data,
                                     pop3_uidl=_header(head, b"X-UIDL") or None))  # (what POP3 clients write)
        return out

    async def messages(self, folder: SourceFolder) -> list[SourceMessage]:
        if self._messages is None:
            self._messages = await asyncio.to_thread(self._parse)
        return self._messages

    async def load(self, folder: SourceFolder, wanted: list[SourceMessage]) -> AsyncIterator[SourceMessage]:
        for m in wanted:  # the whole file was read to split it: bodies are there already
            yield m

    async def reader(self) -> MboxSource:
        return self

    async def close(self) -> None:
        pass


def _header(head: bytes, name: bytes) -> str:
    m = re.search(rb"(?im)^" + name + rb":[ \t]*(.*)$", head)
    return m.group(1).decode("ascii", "replace").strip() if m else ""


def _mbox_flags(head: bytes) -> tuple[str, ...]:
    status, xstatus = _header(head, b"Status"), _header(head, b"X-Status")
    flags = ["\\Seen"] if "R" in status else []
    flags += [f for c, f in (("A", "\\Answered"), ("F", "\\Flagged"), ("T", "\\Draft"), ("D", "\\Deleted"))
              if c in xstatus]
    keywords = _header(head, b"X-Keywords")
    flags += [k for k in re.split(r"[\s,]+", keywords) if k]
    return tuple(flags)


def _from_line_date(from_line: bytes, head: bytes) -> float:
    """The date on the From_ line ("From sender Mon Jan  1 00:00:00 2024"), else the Date header, else now."""
    parts = from_line.decode("ascii", "replace").split()
    if len(parts) >= 7:
        try:  # asctime, UTC by convention
            return calendar.timegm(time.strptime(" ".join(parts[2:7]), "%a %b %d %H:%M:%S %Y"))
        except ValueError:
            pass
    date = _header(head, b"Date")
    try:
        return email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return time.time()


# ------------------------------------------------------------------ IMAP

@dataclass
class ImapUrl:
    tls: bool
    host: str
    port: int
    user: str
    password: str

    @classmethod
    def parse(cls, url: str) -> ImapUrl:
        u = urlsplit(url)
        if u.scheme not in ("imap", "imaps") or not u.hostname or u.username is None or u.password is None:
            raise ValueError(f"--from wants imap[s]://USER:PASS@HOST[:PORT], got {url!r}")
        tls = u.scheme == "imaps"
        return cls(tls, u.hostname, u.port or (993 if tls else 143), unquote(u.username), unquote(u.password))

    @property
    def id(self) -> str:
        return f"imap{'s' if self.tls else ''}://{self.user}@{self.host}:{self.port}"


_LIST = re.compile(rb'^\((?P<attrs>[^)]*)\) (?:"(?P<delim>(?:[^"\\]|\\.)*)"|NIL) (?P<name>.*)$')
_FETCH_HEAD = re.compile(rb"^\d+ FETCH \((?P<items>.*)$")


def _astring(raw: bytes) -> str:
    raw = raw.strip()
    if raw.startswith(b'"') and raw.endswith(b'"'):
        raw = re.sub(rb"\\(.)", rb"\1", raw[1:-1])
    return raw.decode("utf-8", "replace")


class ImapSource:
    """An IMAP server read through aioimaplib, only ever with EXAMINE and BODY.PEEK."""

    BATCH_MESSAGES = 50
    BATCH_BYTES = 16 * 1024 * 1024

    def __init__(self, url: ImapUrl, *, timeout: float = 120.0) -> None:
        self.url = url
        self.id = url.id
        self.timeout = timeout

    async def reader(self) -> ImapReader:

        u = self.url
        if u.tls:
            client = aioimaplib.IMAP4_SSL(u.host, u.port, ssl_context=ssl_mod.create_default_context(),
                                          timeout=self.timeout)
        else:
            client = aioimaplib.IMAP4(u.host, u.port, timeout=self.timeout)
        await client.wait_hello_from_server()
        r = await client.login(u.user, u.password)
        if r.result != "OK":
            raise ConnectionError(f"{u.id}: login refused: {_text(r.lines)}")
        return ImapReader(client)

    async def folders(self) -> list[SourceFolder]:
        reader = await self.reader()
        try:
            return await reader.folders()
        finally:
            await reader.close()


def _text(lines: list[bytes | bytearray]) -> str:
    return " ".join(bytes(x).decode("utf-8", "replace") for x in lines)[:300]


class ImapReader:
    def __init__(self, client: aioimaplib.IMAP4) -> None:
        self.client = client

    async def close(self) -> None:
        try:
            await self.client.logout()
        except (TimeoutError, OSError, aioimaplib.AioImapException):
            pass  # the connection is going away either way

    async def folders(self) -> list[SourceFolder]:
        r = await self.client.list('""', "*")
        if r.result != "OK":
            raise ConnectionError(f"LIST failed: {_text(r.lines)}")
        out = []
        lines = list(r.lines[:-1])
        i = 0
        while i < len(lines):
            line = bytes(lines[i])
            i += 1
            m = _LIST.match(line)
            if m is None:
                continue
            raw = m.group("name")
            if raw.endswith(b"}") and i < len(lines) and isinstance(lines[i], bytearray):  # a literal name
                raw, i = b'"' + bytes(lines[i]).replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"', i + 1
            wire = _astring(raw)
            delim = _astring(b'"' + m.group("delim") + b'"') if m.group("delim") is not None else ""
            attrs = m.group("attrs").decode("ascii", "replace").split()
            # Local names are kept as IMAP sends them (modified UTF-7), as our IMAP server stores them
            local = "INBOX" if wire.upper() == "INBOX" else (wire.replace("/", "_").replace(delim, "/") if delim
                                                             else wire)
            special = next((a for a in attrs if a in SPECIAL), None) or _guess_special(local)
            out.append(SourceFolder(local, special, "", wire=wire,
                                    selectable=not any(a.lower() in ("\\noselect", "\\nonexistent") for a in attrs)))
        return out

    async def messages(self, folder: SourceFolder) -> list[SourceMessage]:

        if not folder.selectable:
            return []
        r = await self.client.examine(_quote(folder.wire))
        if r.result != "OK":
            raise ConnectionError(f"EXAMINE {folder.name} failed: {_text(r.lines)}")
        # aioimaplib's examine() leaves its state at AUTH; the server has the folder selected (read-only)
        self.client.protocol.state = aioimaplib.aioimaplib.SELECTED
        for line in r.lines:
            m = re.search(rb"\[UIDVALIDITY (\d+)\]", bytes(line))
            if m:
                folder.validity = m.group(1).decode()
        r = await self.client.uid("fetch", "1:*", "(UID FLAGS INTERNALDATE RFC822.SIZE)")
        if r.result != "OK":
            raise ConnectionError(f"FETCH in {folder.name} failed: {_text(r.lines)}")
        out = []
        for line in r.lines[:-1]:
            line = bytes(line)
            uid = re.search(rb"\bUID (\d+)", line)
            if uid is None:
                continue
            flags = re.search(rb"\bFLAGS \(([^)]*)\)", line)
            date = re.search(rb'\bINTERNALDATE "([^"]+)"', line)
            size = re.search(rb"\bRFC822\.SIZE (\d+)", line)
            out.append(SourceMessage(
                uid.group(1).decode(),
                tuple(f for f in (flags.group(1).decode("utf-8", "replace").split() if flags else ())
                      if f != "\\Recent"),
                _internal_date(date.group(1).decode()) if date else 0.0,
                int(size.group(1)) if size else 0))
        return out

    async def message_ids(self, messages: list[SourceMessage]) -> None:
        """Message-IDs of a folder's messages (matching after a UIDVALIDITY change)."""
        got = await self._fetch_literals("1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        by_uid = {m.item: m for m in messages}
        for uid, data in got:
            if uid in by_uid:
                by_uid[uid].message_id = message_id(data + b"\r\n")

    async def load(self, folder: SourceFolder, wanted: list[SourceMessage]) -> AsyncIterator[SourceMessage]:
        """Bodies in batches (a bounded number of messages and bytes per FETCH), in UID order."""
        batch: list[SourceMessage] = []
        size = 0
        for m in sorted(wanted, key=lambda m: int(m.item)):
            batch.append(m)
            size += m.size
            if len(batch) >= ImapSource.BATCH_MESSAGES or size >= ImapSource.BATCH_BYTES:
                async for done in self._load_batch(batch):
                    yield done
                batch, size = [], 0
        if batch:
            async for done in self._load_batch(batch):
                yield done

    async def _load_batch(self, batch: list[SourceMessage]) -> AsyncIterator[SourceMessage]:
        got = dict(await self._fetch_literals(",".join(m.item for m in batch), "(UID BODY.PEEK[])"))
        for m in batch:
            data = got.get(m.item)
            if data is None:  # expunged on the source meanwhile
                continue
            m.data, m.size, m.message_id = data, len(data), message_id(data)
            yield m

    async def _fetch_literals(self, uids: str, items: str) -> list[tuple[str, bytes]]:
        r = await self.client.uid("fetch", uids, items)
        if r.result != "OK":
            raise ConnectionError(f"FETCH failed: {_text(r.lines)}")
        out = []
        lines = r.lines
        for i, line in enumerate(lines):
            if isinstance(line, bytearray) or not _FETCH_HEAD.match(bytes(line)):
                continue
            if not (bytes(line).endswith(b"}") and i + 1 < len(lines) and isinstance(lines[i + 1], bytearray)):
                continue
            # UID comes before the literal (Dovecot) or after it, on the closing line
            after = bytes(lines[i + 2]) if i + 2 < len(lines) and not isinstance(lines[i + 2], bytearray) else b""
            uid = re.search(rb"\bUID (\d+)", bytes(line)) or re.search(rb"\bUID (\d+)", after)
            if uid:
                out.append((uid.group(1).decode(), bytes(lines[i + 1])))
        return out


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _internal_date(text: str) -> float:
    """RFC 3501 date-time: "21-Nov-2026 03:55:08 +0000"."""
    import datetime

    return datetime.datetime.strptime(text.strip(), "%d-%b-%Y %H:%M:%S %z").timestamp()
