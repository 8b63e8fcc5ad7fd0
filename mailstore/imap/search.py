"""SEARCH and UID SEARCH (RFC 3501 §6.4.4): flag-only keys compiled once, the rest per message."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, date, datetime

from ..db import Message
from ..mime import decoded
from . import response as R
from . import thread as threading
from .reader import Command, SearchKey, Section, SequenceSet
from .sort import key as sort_key
from .sort import sent_date
from .state import ImapBad, ImapNo, Reply, SearchContext, SelectedView, SessionBase
from .thread import ThreadInput


class SearchCommands(SessionBase):
    async def _found(self, cmd: Command) -> list[tuple[int, int]]:
        """(sequence number, UID) of the messages the command's search keys match."""
        assert self.view is not None
        charset = cmd.args.get("charset")
        if self.utf8_accept and (charset != "UTF-8" if cmd.name.endswith(("SORT", "THREAD")) else charset is not None):
            raise ImapBad("With UTF8=ACCEPT, strings are UTF-8: no other CHARSET (RFC 9755 §3)")
        if charset not in (None, "UTF-8", "US-ASCII"):
            raise ImapNo(f"Charset {charset} is not supported", "BADCHARSET (UTF-8 US-ASCII)")
        v = self.view
        if _flags_only(cmd.args["keys"]):  # flags and numbers: the view knows enough, no rows, no awaits
            largest = v.uids[-1] if v.uids else 0
            test = _flag_test(cmd.args["keys"], len(v.uids), largest, v.saved)
            found = [(i, u) for i, u in enumerate(v.uids, 1) if test(i, u, v.flags[u], u in v.recent)]
        else:
            msgs = await self._messages(list(v.uids))
            found = []
            for i, u in enumerate(v.uids, 1):
                m = msgs.get(u)
                if m is not None and await self._matches(cmd.args["keys"], m, i):
                    found.append((i, u))
        return found

    async def _search(self, cmd: Command, uid: bool) -> Reply:
        assert self.view is not None
        v = self.view
        found = await self._found(cmd)
        returns = cmd.args.get("return")
        if returns is None and self.rev2:  # RFC 9051 §6.4.4: IMAP4rev2 answers every SEARCH with ESEARCH
            returns = ["ALL"]
        # RFC 7162 §3.1.5: a search by MODSEQ tells the highest MODSEQ of what it found
        modseq = ""
        if found and _uses(cmd.args["keys"], "MODSEQ"):
            msgs = await self._messages([u for _, u in found])
            modseq = f"MODSEQ {max(m.modseq for m in msgs.values())}" if msgs else ""
        if returns is None:
            hits = "".join(f" {u if uid else i}" for i, u in found) + (f" ({modseq})" if modseq else "")
            return [f"* SEARCH{hits}\r\n".encode()], f"{cmd.name} completed"
        lines = _esearch(cmd.tag, v, found, uid, returns, cmd.args.get("partial"))
        if lines and modseq:
            lines[0] = lines[0][:-2] + f" {modseq}\r\n".encode()
        if "UPDATE" in returns:  # RFC 5267 §4: the result is kept and its changes reported
            v.contexts[cmd.tag] = SearchContext(cmd.args["keys"], uid, {u for _, u in found})
        return lines, f"{cmd.name} completed"

    async def do_cancelupdate(self, cmd: Command) -> Reply:
        """RFC 5267 §4.2: stop reporting changes to the searches these tags started."""
        assert self.view is not None
        unknown = [t for t in cmd.args["tags"] if t not in self.view.contexts]
        if unknown:
            raise ImapNo(f"Unknown tag {unknown[0]}")
        for tag in cmd.args["tags"]:
            del self.view.contexts[tag]
        return [], "CANCELUPDATE completed"

    def context_removals(self, gone: list[int]) -> list[bytes]:
        """REMOVEFROM for kept searches that held messages now expunged: sent before the EXPUNGEs,
        while their sequence numbers still hold."""
        v = self.view
        if v is None or not v.contexts:
            return []
        lines = []
        for tag, ctx in v.contexts.items():
            hit = sorted(u for u in gone if u in ctx.uids)
            ctx.uids.difference_update(hit)
            if hit:
                lines.append(_update_line(tag, ctx, "REMOVEFROM", hit if ctx.uid else [v.seq_of(u) for u in hit]))
        return lines

    async def context_changes(self, uids: list[int]) -> list[bytes]:
        v = self.view
        if v is None or not v.contexts or not uids:
            return []
        msgs = await self._messages(sorted(set(uids)))
        lines = []
        for tag, ctx in v.contexts.items():
            added, removed = [], []
            for u, m in sorted(msgs.items()):
                if u not in v.flags:
                    continue
                hit = await self._matches(ctx.keys, m, v.seq_of(u))
                if hit and u not in ctx.uids:
                    added.append(u)
                elif not hit and u in ctx.uids:
                    removed.append(u)
            ctx.uids.update(added)
            ctx.uids.difference_update(removed)
            for kind, which in (("REMOVEFROM", removed), ("ADDTO", added)):
                if which:
                    lines.append(_update_line(tag, ctx, kind, which if ctx.uid else [v.seq_of(u) for u in which]))
        return lines

    async def _matches(self, key: SearchKey, m: Message, seq: int) -> bool:
        assert self.view is not None
        n = key.name
        flags = set(self.view.flags.get(m.uid, m.flags))
        recent = m.uid in self.view.recent
        simple = {"ALL": True, "ANSWERED": "\\Answered" in flags, "DELETED": "\\Deleted" in flags,
                  "DRAFT": "\\Draft" in flags, "FLAGGED": "\\Flagged" in flags, "SEEN": "\\Seen" in flags,
                  "UNANSWERED": "\\Answered" not in flags, "UNDELETED": "\\Deleted" not in flags,
                  "UNDRAFT": "\\Draft" not in flags, "UNFLAGGED": "\\Flagged" not in flags,
                  "UNSEEN": "\\Seen" not in flags, "NEW": recent and "\\Seen" not in flags,
                  "RECENT": recent, "OLD": not recent}
        if n in simple:
            return simple[n]
        if n == "AND":
            for k in key.args:
                if not await self._matches(k, m, seq):
                    return False
            return True
        if n == "OR":
            return await self._matches(key.args[0], m, seq) or await self._matches(key.args[1], m, seq)
        if n == "NOT":
            return not await self._matches(key.args[0], m, seq)
        if n in ("SEQSET", "UID"):
            ranges: SequenceSet = key.args[0]
            if ranges.last_result:
                return m.uid in self.view.saved
            if n == "SEQSET":
                return ranges.contains(seq, len(self.view.uids))
            return ranges.contains(m.uid, self.view.uids[-1] if self.view.uids else 0)
        if n in ("KEYWORD", "UNKEYWORD"):
            return (key.args[0] in flags) == (n == "KEYWORD")
        if n in ("LARGER", "SMALLER", "MODSEQ"):
            bound: int = key.args[0]
            return {"LARGER": m.size > bound, "SMALLER": m.size < bound, "MODSEQ": m.modseq >= bound}[n]
        if n in ("OLDER", "YOUNGER"):  # RFC 5032: by INTERNALDATE, in seconds from now
            age, limit = time.time() - m.internal_date, int(key.args[0])
            return age >= limit if n == "OLDER" else age <= limit
        if n in ("BEFORE", "ON", "SINCE"):
            day = datetime.fromtimestamp(m.internal_date, UTC).date()
            return _date_cmp(n, day, key.args[0].date())
        if n in ("SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"):  # RFC 8514: the day it was saved here
            return _date_cmp(n[5:], datetime.fromtimestamp(m.saved, UTC).date(), key.args[0].date())
        if n == "SAVEDATESUPPORTED":  # every mailbox keeps save dates
            return True
        if n == "EMAILID":  # RFC 8474 §6
            return bool(key.args[0] == R.email_id(m.guid))
        if n == "THREADID":  # no thread ids (FETCH THREADID is NIL): nothing matches
            return False
        if n in _ADDRESS_FIELDS or n == "SUBJECT":
            needle = key.args[-1].decode("utf-8", "replace").lower() if isinstance(key.args[-1], bytes) else ""
            return needle in await self._envelope_text(m, n)
        body = (await self.ctx.fs.get(m.object_key))[0]
        _, text = R._split(body)
        if n in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            import email.utils
            date_line = R.section_bytes(body, _fields_section(("DATE",))).decode("utf-8", "replace")
            try:
                sent = email.utils.parsedate_to_datetime(date_line.split(":", 1)[1].strip()).date()
            except (IndexError, TypeError, ValueError):
                return False
            return _date_cmp(n[4:], sent, key.args[0].date())
        needle = key.args[-1].decode("utf-8", "replace").lower() if isinstance(key.args[-1], bytes) else ""
        if n == "HEADER":
            field_bytes = R.section_bytes(body, _fields_section((key.args[0].upper(),)))
            return bool(field_bytes.strip()) and needle in field_bytes.decode("utf-8", "replace").lower()
        if n == "BODY":
            return needle in text.decode("utf-8", "replace").lower()
        if n == "TEXT":
            return needle in body.decode("utf-8", "replace").lower()
        raise ImapBad(f"Unsupported search key {n}")

    async def _envelope_text(self, m: Message, field: str) -> str:
        """What SEARCH FROM/TO/CC/BCC/SUBJECT look in, lower case: the parsed addresses as
        "name <mailbox@host>" with encoded-words decoded, or the decoded subject (as Dovecot:
        a comment or a route in the header is not part of an address)."""
        parsed = (await self._parsed([m.uid], {m.uid: m})).get(m.uid)
        if parsed is None:
            return ""
        env = json.loads(parsed[0])
        if field == "SUBJECT":
            return decoded(env[1]).lower()
        texts = []
        for name, _route, mailbox, host in env[_ADDRESS_FIELDS[field]] or []:
            if host is None:  # a group's start (its name in the mailbox field) or end marker
                if mailbox:
                    texts.append(decoded(mailbox))
                continue
            texts.append(f"{decoded(name)} <{mailbox or ''}@{host}>")
        return ", ".join(texts).lower()

    async def _sort(self, cmd: Command, uid: bool) -> Reply:
        """SORT (RFC 5256, SORT=DISPLAY): the matches, ordered by the criteria, then by number.
        SORT RETURN (...) answers ESEARCH in sort order (RFC 5267 ESORT): MIN and MAX are the
        first and the last sorted, ALL keeps the order."""
        assert self.view is not None
        found = await self._found(cmd)
        msgs = await self._messages([u for _, u in found])
        parsed = await self._parsed([u for _, u in found if u in msgs], msgs)
        rows = [(i, u) for i, u in found if u in parsed]
        criteria: list[str] = cmd.args["criteria"]
        keys: list[tuple[str, bool]] = []  # (criterion, reverse), most significant first
        reverse = False
        for c in criteria:
            if c == "REVERSE":
                reverse = True
                continue
            keys.append((c, reverse))
            reverse = False
        envelopes = {u: json.loads(parsed[u][0]) for _, u in rows}
        ordered = sorted(rows)  # ties end in sequence order
        for c, rev in reversed(keys):  # stable sorts, least significant first
            values = {u: sort_key(c, envelopes[u], msgs[u].internal_date, msgs[u].size) for _, u in rows}
            ordered.sort(key=lambda r: values[r[1]], reverse=rev)
        if cmd.args.get("return") is not None:
            if "UPDATE" in cmd.args["return"]:  # CONTEXT=SORT (positions in the sort order) is not offered
                raise ImapBad("RETURN (UPDATE) is for SEARCH only here (CONTEXT=SEARCH)")
            return _esearch(cmd.tag, self.view, ordered, uid, cmd.args["return"], cmd.args.get("partial")), \
                f"{cmd.name} completed"
        numbers = [u if uid else i for i, u in ordered]
        return [f"* SORT{''.join(f' {n}' for n in numbers)}\r\n".encode()], f"{cmd.name} completed"

    async def _thread(self, cmd: Command, uid: bool) -> Reply:
        """THREAD (RFC 5256 §4): the matches as threads; REFERENCES reads the References headers."""
        assert self.view is not None
        found = await self._found(cmd)
        msgs = await self._messages([u for _, u in found])
        parsed = await self._parsed([u for _, u in found if u in msgs], msgs)
        rows = [(i, u) for i, u in found if u in parsed]
        refs: dict[int, str | None] = {}
        if cmd.args["algorithm"] in ("REFERENCES", "REFS") and rows:
            bodies = await self.ctx.fs.get_many([msgs[u].object_key for _, u in rows])
            for (_, u), raw in zip(rows, bodies, strict=True):
                field = R.section_bytes(raw, _fields_section(("REFERENCES",))).decode("utf-8", "replace")
                refs[u] = field.split(":", 1)[1] if ":" in field else None
        inputs = []
        for i, u in rows:
            env = json.loads(parsed[u][0])
            inputs.append(ThreadInput(u if uid else i, sent_date(env, msgs[u].internal_date), env[1], env[9],
                                      refs.get(u), env[8]))
        if cmd.args["algorithm"] == "ORDEREDSUBJECT":
            tree = threading.ordered_subject(inputs)
        else:
            tree = threading.references(inputs, algorithm=cmd.args["algorithm"])
        return [f"* THREAD {tree}\r\n".encode() if tree else b"* THREAD\r\n"], f"{cmd.name} completed"

    async def do_thread(self, cmd: Command) -> Reply:
        return await self._thread(cmd, uid=False)

    async def do_uid_thread(self, cmd: Command) -> Reply:
        return await self._thread(cmd, uid=True)

    async def do_sort(self, cmd: Command) -> Reply:
        return await self._sort(cmd, uid=False)

    async def do_uid_sort(self, cmd: Command) -> Reply:
        return await self._sort(cmd, uid=True)

    async def do_search(self, cmd: Command) -> Reply:
        return await self._search(cmd, uid=False)

    async def do_uid_search(self, cmd: Command) -> Reply:
        return await self._search(cmd, uid=True)


def _uses(key: SearchKey, name: str) -> bool:
    return key.name == name or any(isinstance(a, SearchKey) and _uses(a, name) for a in key.args)


def _update_line(tag: str, ctx: SearchContext, kind: str, numbers: list[int]) -> bytes:
    """An unsolicited ESEARCH for a kept search; position 0: "not known" (RFC 5267 §4.3, as Dovecot)."""
    return f'* ESEARCH (TAG "{tag}"){" UID" if ctx.uid else ""} {kind} (0 {R.uid_set(sorted(numbers))})\r\n'.encode()


def _partial(numbers: list[int], window: tuple[int, int]) -> list[int]:
    """The results at positions lo..hi (1-based; negative counts from the last: RFC 5267 §4.4)."""
    lo, hi = sorted(window, key=abs)
    if lo > 0:
        return numbers[lo - 1:hi]
    n = len(numbers)
    return numbers[max(n + hi, 0):max(n + lo + 1, 0)]


def _esearch(tag: str, view: SelectedView, found: list[tuple[int, int]], uid: bool, returns: list[str],
             partial: tuple[int, int] | None = None) -> list[bytes]:
    """SEARCH RETURN (...) (RFC 4731 ESEARCH; SAVE: RFC 5182 SEARCHRES; PARTIAL and UPDATE: RFC 5267).
    RETURN () means ALL; RETURN (UPDATE) alone returns nothing yet."""
    wanted = set(returns) or {"ALL"}
    unknown = wanted - {"MIN", "MAX", "ALL", "COUNT", "SAVE", "PARTIAL", "UPDATE"}
    if unknown:
        raise ImapBad(f"Unknown RETURN option {sorted(unknown)[0]}")
    if "SAVE" in wanted:  # with MIN/MAX but neither ALL nor COUNT, only those are saved (RFC 5182 §2.4)
        uids = [u for _, u in found]
        if wanted & {"MIN", "MAX"} and not wanted & {"ALL", "COUNT"}:
            uids = [u for u, keep in ((uids[0], "MIN" in wanted), (uids[-1], "MAX" in wanted)) if keep] if uids else []
        view.saved = set(uids)
        if wanted == {"SAVE"}:
            return []  # RFC 5182 §2.4: SAVE alone returns no ESEARCH
    numbers = [u if uid else i for i, u in found]
    parts = [f'* ESEARCH (TAG "{tag}")' + (" UID" if uid else "")]
    if numbers and "MIN" in wanted:
        parts.append(f"MIN {numbers[0]}")
    if numbers and "MAX" in wanted:
        parts.append(f"MAX {numbers[-1]}")
    if numbers and "ALL" in wanted:
        parts.append(f"ALL {R.uid_set(numbers)}")
    if partial is not None:
        window = _partial(numbers, partial)
        shown = R.uid_set(window)
        parts.append(f"PARTIAL ({partial[0]}:{partial[1]} {shown or 'NIL'})")
    if "COUNT" in wanted:
        parts.append(f"COUNT {len(numbers)}")
    return [(" ".join(parts) + "\r\n").encode()]


_ADDRESS_FIELDS = {"FROM": 2, "TO": 5, "CC": 6, "BCC": 7}  # their place in an ENVELOPE


_FLAG_KEYS = {"ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "SEEN", "UNANSWERED", "UNDELETED", "UNDRAFT",
              "UNFLAGGED", "UNSEEN", "NEW", "RECENT", "OLD", "KEYWORD", "UNKEYWORD", "SEQSET", "UID"}


def _flags_only(key: SearchKey) -> bool:
    if key.name in ("AND", "OR", "NOT"):
        return all(_flags_only(k) for k in key.args)
    return key.name in _FLAG_KEYS


_SYSTEM = {"ANSWERED": "\\Answered", "DELETED": "\\Deleted", "DRAFT": "\\Draft", "FLAGGED": "\\Flagged",
           "SEEN": "\\Seen"}
FlagTest = Callable[[int, int, tuple[str, ...], bool], bool]  # (seq, uid, flags, recent) -> matches


def _flag_presence(key: SearchKey) -> tuple[str, bool] | None:
    """(flag, wanted) when the key asks only whether one flag is set (SEEN, UNSEEN, KEYWORD x, ...)."""
    name = key.name
    if name in ("KEYWORD", "UNKEYWORD"):
        return key.args[0], name == "KEYWORD"
    if name in _SYSTEM:
        return _SYSTEM[name], True
    if name.startswith("UN") and name[2:] in _SYSTEM:
        return _SYSTEM[name[2:]], False
    return None


def _flag_test(key: SearchKey, n: int, largest: int, saved: set[int]) -> FlagTest:
    """Compile a flags-and-numbers search key once; the mailbox is then one cheap call per message."""
    name = key.name
    if name in ("AND", "OR"):
        parts = [_flag_test(k, n, largest, saved) for k in key.args]
        if len(parts) == 1:
            return parts[0]
        if name == "AND":
            return lambda seq, uid, flags, recent: all(t(seq, uid, flags, recent) for t in parts)
        return lambda seq, uid, flags, recent: any(t(seq, uid, flags, recent) for t in parts)
    if name == "NOT":
        inner = _flag_test(key.args[0], n, largest, saved)
        return lambda seq, uid, flags, recent: not inner(seq, uid, flags, recent)
    if name in ("SEQSET", "UID") and key.args[0].last_result:  # "$" (RFC 5182)
        return lambda seq, uid, flags, recent: uid in saved
    if name == "SEQSET":
        seqs = key.args[0]
        return lambda seq, uid, flags, recent: seqs.contains(seq, n)
    if name == "UID":
        uids = key.args[0]
        return lambda seq, uid, flags, recent: uids.contains(uid, largest)
    presence = _flag_presence(key)
    if presence is not None:
        flag, wanted = presence
        if not wanted:
            return lambda seq, uid, flags, recent: flag not in flags
        return lambda seq, uid, flags, recent: flag in flags
    if name == "ALL":
        return lambda seq, uid, flags, recent: True
    if name == "RECENT":
        return lambda seq, uid, flags, recent: recent
    if name == "OLD":
        return lambda seq, uid, flags, recent: not recent
    assert name == "NEW", name
    return lambda seq, uid, flags, recent: recent and "\\Seen" not in flags


def _date_cmp(op: str, day: date, ref: date) -> bool:
    return {"BEFORE": day < ref, "ON": day == ref, "SINCE": day >= ref}[op]


def _fields_section(names: tuple[str, ...]) -> Section:
    return Section((), "HEADER.FIELDS", names)
