"""FETCH and UID FETCH (RFC 3501 §6.4.5, §7.4.2; CONDSTORE MODSEQ)."""

from __future__ import annotations

import asyncio
import json

from cache import NotFound

from .. import cte, folders
from ..db import Message
from ..preview import preview
from . import response as R
from .reader import Command, FetchAttribute, Section
from .state import ImapBad, ImapNo, Reply, SessionBase


class FetchCommands(SessionBase):
    async def _fetch(self, cmd: Command, uid: bool) -> Reply:
        assert self.view is not None
        atts: list[FetchAttribute] = list(cmd.args["attributes"])
        if uid and not any(a.name == "UID" for a in atts):
            atts.insert(0, FetchAttribute("UID"))
        if cmd.args.get("changedsince") is not None and not any(a.name == "MODSEQ" for a in atts):
            atts.append(FetchAttribute("MODSEQ"))
        lines: list[bytes] = []
        if cmd.args.get("vanished"):  # RFC 7162 §3.2.6: what of the set is gone since CHANGEDSINCE
            if not uid or not self.qresync:
                raise ImapBad("VANISHED needs UID FETCH and ENABLE QRESYNC")
            top = max(self.view.uids[-1] if self.view.uids else 0, *(u for r in cmd.args["set"].ranges
                                                                     for u in r if u is not None))
            lines += self.vanished_earlier(cmd.args["changedsince"], self._ranges(cmd.args["set"], top))
        uids = self._uids(cmd.args["set"], uid=uid)
        msgs = await self._messages(uids)
        parsed: dict[int, tuple[str, str]] = {}
        if any(a.name in ("ENVELOPE", "BODYSTRUCTURE") or (a.name == "BODY" and a.section is None) for a in atts):
            parsed = await self._parsed(uids, msgs)
            gone = [u for u in msgs if u not in parsed]  # expunged between the two reads
            for u in gone:
                del msgs[u]
        seen_set: dict[int, None] = {}  # the messages this FETCH marks \Seen, in order
        failed: list[int] = []  # a part with an unknown transfer encoding (BINARY)
        bodies: dict[int, bytes] = {}
        # RFC 3501 §6.4.5: BODY[...] without .PEEK (and RFC822, RFC822.TEXT) sets \Seen,
        # and the FETCH response shows the flags it set.
        marking = not self.view.readonly and any(
            (a.section is not None and not a.peek and a.name != "BINARY.SIZE") or a.name in ("RFC822", "RFC822.TEXT")
            for a in atts)
        reading = [a for a in atts if a.section is not None or a.name == "PREVIEW"
                   or (a.name.startswith("RFC822") and a.name != "RFC822.SIZE")]
        if reading:
            wanted = [u for u in uids if u in msgs]
            if all(_header_only(a) for a in reading):  # each "body" is then the message's header block
                bodies = await self._headers(msgs, wanted)
            else:
                bodies = await self._bodies(msgs, wanted)
        missing = [u for u in uids if u not in msgs or (bodies and u not in bodies)]
        for u in uids:
            m = msgs.get(u)
            if m is None or (bodies and u not in bodies):
                continue
            if cmd.args.get("changedsince") is not None and m.modseq <= cmd.args["changedsince"]:
                continue
            body: bytes | None = bodies.get(u)
            items: list[bytes] = []
            for a in atts:
                if a.name == "UID":
                    items.append(f"UID {m.uid}".encode())
                elif a.name == "FLAGS":
                    items.append(b"FLAGS " + R.flag_list(self._shown_flags(u, m.flags, marking)))
                elif a.name == "INTERNALDATE":
                    items.append(b"INTERNALDATE " + R.internal_date(m.internal_date))
                elif a.name == "SAVEDATE":  # RFC 8514
                    items.append(b"SAVEDATE " + R.internal_date(m.saved))
                elif a.name == "EMAILID":  # RFC 8474 §5.1
                    items.append(f"EMAILID ({R.email_id(m.guid)})".encode())
                elif a.name == "THREADID":  # RFC 8474 §5.2: NIL where the server keeps no thread ids
                    items.append(b"THREADID NIL")
                elif a.name == "RFC822.SIZE":
                    items.append(f"RFC822.SIZE {m.size}".encode())
                elif a.name == "MODSEQ":
                    items.append(f"MODSEQ ({m.modseq})".encode())
                elif a.name == "ENVELOPE":
                    items.append(b"ENVELOPE " + R.envelope(json.loads(parsed[u][0])))
                elif a.name == "BODYSTRUCTURE" or (a.name == "BODY" and a.section is None):
                    items.append(a.name.encode() + b" " + R.bodystructure(json.loads(parsed[u][1]),
                                                                       extended=a.name == "BODYSTRUCTURE"))
                else:
                    if body is None:
                        body = (await self.ctx.fs.get(m.object_key))[0]
                    try:
                        item, marks = _body_item(a, body)
                    except cte.UnknownEncoding:
                        failed.append(u)
                        break
                    items.append(item)
                    if marks and not self.view.readonly and "\\Seen" not in self.view.flags.get(u, m.flags):
                        seen_set[u] = None
            else:  # every item answered
                if u in seen_set and not any(a.name == "FLAGS" for a in atts):
                    items.append(b"FLAGS " + R.flag_list(self._shown_flags(u, m.flags, True)))
                lines.append(f"* {self.view.seq_of(u)} FETCH (".encode() + b" ".join(items) + b")\r\n")
                continue
            seen_set.pop(u, None)  # RFC 3516 §4.2: a message with a part that cannot be decoded is not answered
        if seen_set:
            done, _ = await asyncio.to_thread(folders.store_flags, self.ctx.meta, self.view.box_id, list(seen_set),
                                              "+FLAGS", ["\\Seen"])
            for u, (flags, modseq) in done.items():
                self.view.flags[u] = flags  # already shown: refresh must not report it again
                if self.view.condstore:  # RFC 7162 §3.1: an implicit \Seen is a change the client hears of
                    lines.append(f"* {self.view.seq_of(u)} FETCH (UID {u} MODSEQ ({modseq}))\r\n".encode())
            lines += await self.context_changes(list(done))
        if failed:
            raise ImapNo("Unknown Content-Transfer-Encoding", "UNKNOWN-CTE", lines)
        if missing:  # RFC 2180 §4.1.2: what is left is answered, the rest is refused
            raise ImapNo("Some of the requested messages no longer exist", "EXPUNGEISSUED", lines)
        return lines, f"{cmd.name} completed"

    def _shown_flags(self, uid: int, flags: tuple[str, ...], marking: bool) -> tuple[str, ...]:
        assert self.view is not None
        shown = self.view.flags.get(uid, flags)
        if marking and "\\Seen" not in shown:
            shown = (*shown, "\\Seen")
        return self.view.flags_of(uid, shown)

    async def _bodies(self, msgs: dict[int, Message], wanted: list[int]) -> dict[int, bytes]:
        """The objects of `wanted`, in one cache batch; one expunged meanwhile is left out."""
        try:
            got = await self.ctx.fs.get_many([msgs[u].object_key for u in wanted])
            return dict(zip(wanted, got, strict=True))
        except NotFound:
            out: dict[int, bytes] = {}
            for u in wanted:
                try:
                    out[u] = (await self.ctx.fs.get(msgs[u].object_key))[0]
                except NotFound:
                    continue
            return out

    async def _headers(self, msgs: dict[int, Message], wanted: list[int]) -> dict[int, bytes]:
        """The header blocks of `wanted`: from the process's header cache, the rest cut from
        their objects (one cache batch) and kept."""
        cache = self.ctx.headers
        out: dict[int, bytes] = {}
        cold: list[int] = []
        for u in wanted:
            block = cache.get(msgs[u].object_key)
            if block is None:
                cold.append(u)
            else:
                out[u] = block
        if cold:
            for u, body in (await self._bodies(msgs, cold)).items():
                out[u] = block = R.header_block(body)
                cache.put(msgs[u].object_key, block)
        return out

    async def do_fetch(self, cmd: Command) -> Reply:
        return await self._fetch(cmd, uid=False)

    async def do_uid_fetch(self, cmd: Command) -> Reply:
        return await self._fetch(cmd, uid=True)


_HEADER_SECTIONS = ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT")


def _header_only(a: FetchAttribute) -> bool:
    """Whether the item answers from the message's header block alone (top-level sections)."""
    if a.name == "RFC822.HEADER":
        return True
    return a.name == "BODY" and a.section is not None and not a.section.parts and a.section.text in _HEADER_SECTIONS


def _body_item(a: FetchAttribute, message: bytes) -> tuple[bytes, bool]:
    """One item that answers with message bytes: (the item, whether it sets \\Seen)."""
    if a.name == "RFC822":
        return b"RFC822 " + R.literal(message), True
    if a.name == "PREVIEW":  # RFC 8970: computed from the object each time; LAZY asks no less of us
        return b"PREVIEW " + R.astring(preview(message)), False
    if a.name == "RFC822.HEADER":
        return b"RFC822.HEADER " + R.literal(R.section_bytes(message, Section(text="HEADER"))), False
    if a.name == "RFC822.TEXT":
        return b"RFC822.TEXT " + R.literal(R.section_bytes(message, Section(text="TEXT"))), True
    assert a.section is not None
    sec = a.section
    spec = ".".join(str(p) for p in sec.parts)
    if sec.text:
        spec = f"{spec}.{sec.text}" if spec else sec.text
    if sec.fields:
        spec += " (" + " ".join(sec.fields) + ")"
    if a.name == "BINARY.SIZE":  # RFC 3516 §4.2
        data, _ = R.binary_section(message, sec)
        return f"BINARY.SIZE[{spec}] {len(data)}".encode(), False
    origin = f"<{a.partial[0]}>" if a.partial else ""
    if a.name == "BINARY":
        data, decoded = R.binary_section(message, sec)
        # a literal8 where a transfer encoding was removed or the section has a NUL (RFC 3516 §4.2), the
        # same for any partial of it, as Dovecot sends it
        eight = decoded or b"\0" in data
        data = R.partial(data, a.partial)
        return f"BINARY[{spec}]{origin} ".encode() + (R.literal8(data) if eight else R.literal(data)), not a.peek
    return f"BODY[{spec}]{origin} ".encode() + R.literal(R.partial(R.section_bytes(message, sec), a.partial)), \
        not a.peek
