"""A message's preview text (IMAP PREVIEW, RFC 8970): what a client shows under the subject.

Made as Dovecot makes its snippets, so both servers show a user the same
line: the first text/* part of the message (not looking inside attached
messages), its transfer encoding and charset removed, HTML reduced to its
text (tags are word breaks; style, script and blockquote are left out;
entities decoded), quoted lines (starting with ">") left out unless nothing
else is there, whitespace runs made one space, at most 200 characters
(RFC 8970 §3 allows 256).
"""

from __future__ import annotations

import codecs
import re
from html.entities import html5
from html.parser import HTMLParser

from . import cte, mime

MAX_CHARS = 200
_SPACE = re.compile(r"[ \t\r\n\v\f]+")  # ASCII whitespace only: a no-break space is text


def preview(data: bytes) -> str:
    part = _first_text(mime.parse(data))
    if part is None:
        return ""
    try:
        raw = cte.decode(data[part.body:part.end], cte.encoding(part))
    except cte.UnknownEncoding:
        return ""
    text = _decode_charset(raw, part)
    if part.ctype == "text/html":
        return _squeeze(_html_text(text))
    return _plain(text)


def _first_text(part: mime.Part) -> mime.Part | None:
    if part.multipart:
        for child in part.children:
            found = _first_text(child)
            if found is not None:
                return found
        return None
    return part if part.ctype.startswith("text/") else None


def _decode_charset(raw: bytes, part: mime.Part) -> str:
    charset = part.header.get_param("charset")
    name = str(charset).strip().lower() if isinstance(charset, str) else "us-ascii"
    if name in ("us-ascii", "ascii"):
        name = "utf-8"  # 8-bit text labelled ASCII is, in practice, UTF-8
    try:
        codecs.lookup(name)
    except LookupError:
        name = "utf-8"
    return raw.decode(name, "replace").lstrip("\ufeff")


def _squeeze(text: str) -> str:
    return _SPACE.sub(" ", text).strip()[:MAX_CHARS].rstrip()


def _plain(text: str) -> str:
    """Unquoted lines make the preview; the quoted ones (">") only when there is nothing else."""
    own: list[str] = []
    quoted: list[str] = []
    for line in text.splitlines():
        if line.startswith(">"):
            quoted.append(line[1:])
        else:
            own.append(line)
    shown = _squeeze(" ".join(own))
    if shown or not quoted:
        return shown
    return _squeeze(">" + " ".join(quoted))


class _HtmlText(HTMLParser):
    SKIPPED = frozenset({"style", "script", "blockquote"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.out: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag in self.SKIPPED:
            self.skipping += 1
        self.out.append(" ")

    def handle_startendtag(self, tag: str, attrs: object) -> None:
        self.out.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIPPED and self.skipping:
            self.skipping -= 1
        self.out.append(" ")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.out.append(data)

    def handle_entityref(self, name: str) -> None:
        if not self.skipping:
            self.out.append(html5.get(name + ";", ""))  # an unknown entity is dropped, as Dovecot does

    def handle_charref(self, name: str) -> None:
        if self.skipping:
            return
        try:
            self.out.append(chr(int(name[1:], 16) if name[:1] in ("x", "X") else int(name)))
        except (ValueError, OverflowError):
            pass  # an impossible code point adds nothing


def _html_text(html: str) -> str:
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    return "".join(parser.out)
