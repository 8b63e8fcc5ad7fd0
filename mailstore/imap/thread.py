"""THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256 §4): pure functions over messages.

Each message comes in as a `ThreadInput` (its number in the answer, sent date,
subject, Message-ID, References/In-Reply-To ids); out comes the THREAD
response body, e.g. "(2)(3 6 (4 23)(44 7 96))".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .sort import base_subject, casemap

_ID = re.compile(r"<[^<>\s]+>")
_REPLY = re.compile(r"^\s*(?:\[[^\]]*\]\s*)*(?:re|fwd?)\s*(?:\[[^\]]*\])?\s*:", re.I)


@dataclass(frozen=True)
class ThreadInput:
    number: int  # sequence number or UID, as answered
    date: float  # sent date (INTERNALDATE when there is none)
    subject: str | None
    message_id: str | None
    references: str | None
    in_reply_to: str | None


@dataclass(eq=False)
class _Node:
    msg: ThreadInput | None = None
    parent: _Node | None = None
    children: list[_Node] = field(default_factory=list)

    def first_msg(self) -> ThreadInput | None:
        if self.msg is not None:
            return self.msg
        return self.children[0].first_msg() if self.children else None

    def sort_key(self) -> tuple[float, int]:
        m = self.first_msg()
        return (m.date, m.number) if m is not None else (0.0, 0)


def is_reply(subject: str | None) -> bool:
    """A reply or forward: base-subject extraction removed "re:", "fwd:" or "(fwd)" (RFC 5256 §2.1)."""
    s = (subject or "").strip()
    return bool(_REPLY.match(s)) or s.lower().endswith("(fwd)") or s.lower().startswith("[fwd:")


def _ids(text: str | None) -> list[str]:
    return _ID.findall(text or "")


def _sort_tree(nodes: list[_Node]) -> None:
    for n in nodes:
        _sort_tree(n.children)
    nodes.sort(key=_Node.sort_key)


def _format(node: _Node) -> str:
    parts: list[str] = []
    cur = node
    while True:
        if cur.msg is not None:
            parts.append(str(cur.msg.number))
        if len(cur.children) == 1:
            cur = cur.children[0]
            continue
        if cur.children:
            parts.append("".join(f"({_format(c)})" for c in cur.children))
        return " ".join(parts)


def ordered_subject(msgs: list[ThreadInput]) -> str:
    """Threads of equal base subject, by date; the first message parents all the others."""
    groups: dict[str, list[ThreadInput]] = {}
    for m in sorted(msgs, key=lambda m: (casemap(base_subject(m.subject)), m.date, m.number)):
        groups.setdefault(casemap(base_subject(m.subject)), []).append(m)
    roots = []
    for members in groups.values():
        root = _Node(members[0])
        root.children = [_Node(m, root) for m in members[1:]]
        roots.append(root)
    roots.sort(key=_Node.sort_key)
    return "".join(f"({_format(r)})" for r in roots)


def _is_ancestor(a: _Node, b: _Node) -> bool:
    """Is a an ancestor of b (or b itself)?"""
    n: _Node | None = b
    while n is not None:
        if n is a:
            return True
        n = n.parent
    return False


def _link(parent: _Node, child: _Node) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    parent.children.append(child)


def references(msgs: list[ThreadInput], *, algorithm: str = "REFERENCES") -> str:
    """REFERENCES (RFC 5256 §4.2), or Dovecot's REFS: the same parent links, no gathering by
    subject, threads ordered by their latest message."""
    table: dict[str, _Node] = {}
    for m in sorted(msgs, key=lambda m: m.number):
        refs = _ids(m.references) or _ids(m.in_reply_to)[:1]
        prev: _Node | None = None
        for ref in refs:  # (1A) link the references in order, never over an existing parent, never a loop
            node = table.setdefault(ref, _Node())
            if prev is not None and node.parent is None and not _is_ancestor(node, prev):
                _link(prev, node)
            prev = node
        found = _ids(m.message_id)
        own = found[0] if found else None
        if own is None or (own in table and table[own].msg is not None):
            own = f"<\x00unique-{m.number}>"  # a missing or duplicate Message-ID: a message of its own
        node = table.setdefault(own, _Node())
        node.msg = m
        # (1B) the last reference is the parent (a truncated References breaks the old link)
        if prev is not None and prev is not node and not _is_ancestor(node, prev):
            _link(prev, node)
        elif prev is None and node.parent is not None:
            node.parent.children.remove(node)
            node.parent = None
    roots = [n for n in table.values() if n.parent is None]
    roots = _prune(roots, top=True)
    _sort_tree(roots)
    if algorithm == "REFS":
        roots.sort(key=_latest)
    else:
        roots = _by_subject(roots)
        _sort_tree(roots)
    return "".join(f"({_format(r)})" for r in roots)


def _latest(node: _Node) -> tuple[float, int]:
    """The sort key of the newest message of a thread."""
    keys = [node.sort_key()] if node.msg is not None else []
    keys += [_latest(c) for c in node.children]
    return max(keys, default=(0.0, 0))


def _prune(nodes: list[_Node], top: bool) -> list[_Node]:
    """(3) dummies without children go; a dummy's children take its place (at the top only
    when it has one child)."""
    out: list[_Node] = []
    for n in nodes:
        n.children = _prune(n.children, top=False)
        for c in n.children:
            c.parent = n
        if n.msg is not None:
            out.append(n)
        elif not n.children:
            continue
        elif top and len(n.children) > 1:
            out.append(n)
        else:
            for c in n.children:
                c.parent = n.parent
            out.extend(n.children)
    return out


def _by_subject(roots: list[_Node]) -> list[_Node]:
    """(5) threads whose roots share a base subject are gathered."""
    def subject(n: _Node) -> str:
        m = n.msg if n.msg is not None else (n.children[0].msg if n.children else None)
        return casemap(base_subject(m.subject)) if m is not None else ""

    def reply(n: _Node) -> bool:
        m = n.msg if n.msg is not None else (n.children[0].msg if n.children else None)
        return m is not None and is_reply(m.subject)

    table: dict[str, _Node] = {}
    for r in roots:
        s = subject(r)
        if not s:
            continue
        old = table.get(s)
        if old is None or (old.msg is not None and r.msg is None) or (reply(old) and not reply(r)):
            table[s] = r
    result = list(roots)
    for r in roots:
        s = subject(r)
        if not s or table[s] is r:
            continue
        head = table[s]
        if head.msg is None and r.msg is None:  # two dummies: one gets the other's children
            for c in list(r.children):
                _link(head, c)
        elif head.msg is None or (not reply(head) and reply(r)):
            _link(head, r)
        else:  # neither is the other's reply: siblings under a new dummy
            dummy = _Node()
            _link(dummy, head)
            _link(dummy, r)
            table[s] = dummy
            result.append(dummy)
    return [n for n in result if n.parent is None and (n.msg is not None or n.children)]
