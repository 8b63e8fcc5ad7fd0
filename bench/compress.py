"""Compression of mail (the compress: fs wrapper): ratio and CPU per algorithm and level.

    python -m bench.compress [--messages 400] [--seed 20]

The corpus is built here, the same for every run with a seed, from real text and real files
on a Debian machine, as MIME messages made with the stdlib `email` package:
- 60 %: text/plain mail of 2-20 KB: prose taken from the licenses in /usr/share/common-licenses
  and the Debian changelogs in /usr/share/doc, with a realistic header block (Received chain,
  DKIM-Signature, Message-ID, List-* headers on some);
- 25 %: multipart/alternative, the same prose as text and as the HTML a mail client makes of it;
- 15 %: text plus a base64 attachment of a real file from /usr/share/doc (PNG, PDF, gzip'd
  changelogs: already compressed, as most attachments are), 20-500 KB.

Prints, per algorithm and level (as `compress:ALGORITHM:LEVEL:` would store them): the stored
size as a share of the original, compress and decompress CPU per message and per MB, and the
ratio per kind of message for zstd:3.
"""

from __future__ import annotations

import argparse
import gzip
import random
import sys
import time
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

from cache.compress import compressor, decompress

LEVELS = [("zstd", 1), ("zstd", 3), ("zstd", 9), ("gz", 6), ("bz2", 9), ("xz", 6)]


def prose_sources() -> list[str]:
    texts = [p.read_text(errors="replace") for p in sorted(Path("/usr/share/common-licenses").glob("*"))
             if p.is_file()]
    for p in sorted(Path("/usr/share/doc").glob("*/changelog.Debian.gz"))[:300]:
        try:
            texts.append(gzip.decompress(p.read_bytes()).decode("utf-8", "replace"))
        except (OSError, EOFError):
            continue
    lines = [line.rstrip() for t in texts for line in t.splitlines() if line.strip()]
    if not lines:
        raise SystemExit("no text found under /usr/share: this bench reads Debian's licenses and changelogs")
    return lines


def attachment_files() -> list[Path]:
    found = [p for pattern in ("*.png", "*.pdf", "*.gz") for p in Path("/usr/share/doc").rglob(pattern)
             if 20_000 <= p.stat().st_size <= 500_000]
    return sorted(found)[:200]


def headers(m: EmailMessage, rng: random.Random, n: int) -> None:
    hosts = ["mx1.example.net", "mail.example.org", "relay.example.com", "smtp.example.de"]
    for i in range(rng.randint(2, 5)):
        m["Received"] = (f"from {rng.choice(hosts)} ([192.0.2.{rng.randint(1, 254)}]) by {rng.choice(hosts)} "
                         f"with ESMTPS id {rng.getrandbits(48):012x} for <user{n}@example.com>; "
                         f"{format_datetime(_date(rng))}")
    m["DKIM-Signature"] = ("v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=mail; h=from:to:subject:date; "
                           f"bh={rng.randbytes(32).hex()}; b={rng.randbytes(128).hex()}")
    m["From"] = f"Sender {n % 37} <sender{n % 37}@example.org>"
    m["To"] = f"user{n}@example.com"
    m["Subject"] = f"Re: report {n} on the release"
    m["Date"] = format_datetime(_date(rng))
    m["Message-ID"] = make_msgid(domain="example.org")
    if n % 3 == 0:
        m["List-Id"] = "<dev.lists.example.org>"
        m["List-Unsubscribe"] = "<mailto:dev-unsubscribe@lists.example.org>"


def _date(rng: random.Random):  # type: ignore[no-untyped-def]
    import datetime
    return datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(
        seconds=rng.randint(0, 300 * 86400))


def corpus(n: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    lines = prose_sources()
    files = attachment_files()
    out = []
    for i in range(n):
        start = rng.randrange(len(lines))
        size = rng.randint(2_000, 20_000)
        text, j = [], start
        while sum(len(t) + 1 for t in text) < size:
            text.append(lines[j % len(lines)])
            j += 1
        body = "\n".join(text) + "\n"
        m = EmailMessage()
        headers(m, rng, i)
        roll = rng.random()
        if roll < 0.60 or (roll >= 0.85 and not files):
            kind = "text"
            m.set_content(body)
        elif roll < 0.85:
            kind = "html"
            m.set_content(body)
            html = "".join(f'<p style="font-family: Arial, sans-serif; margin: 0 0 8px 0">{t}</p>\n' for t in text)
            m.add_alternative(f"<html><body>{html}</body></html>", subtype="html")
        else:
            kind = "attachment"
            m.set_content(body)
            f = rng.choice(files)
            sub = {".png": "png", ".pdf": "pdf", ".gz": "gzip"}[f.suffix]
            maintype = "image" if sub == "png" else "application"
            m.add_attachment(f.read_bytes(), maintype=maintype, subtype=sub, filename=f.name)
        out.append((kind, m.as_bytes()))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=400)
    ap.add_argument("--seed", type=int, default=20)
    args = ap.parse_args()
    mails = corpus(args.messages, args.seed)
    total = sum(len(m) for _, m in mails)
    kinds = sorted({k for k, _ in mails})
    print(f"corpus: {len(mails)} messages, {total / 1e6:.1f} MB "
          + ", ".join(f"{k} {sum(1 for x, _ in mails if x == k)}" for k in kinds))
    print(f"{'algorithm':<10}{'stored':>9}{'compress':>14}{'':>10}{'decompress':>14}{'':>10}")
    print(f"{'':<10}{'of orig':>9}{'us/msg':>14}{'MB/s':>10}{'us/msg':>14}{'MB/s':>10}")
    for algorithm, level in LEVELS:
        squeeze = compressor(algorithm, level)
        c0 = time.process_time()
        packed = [squeeze(m) for _, m in mails]
        c1 = time.process_time()
        for p, (_, m) in zip(packed, mails, strict=True):
            assert decompress(p) == m
        c2 = time.process_time()
        stored = sum(len(p) for p in packed)
        name = f"{algorithm}:{level}"
        print(f"{name:<10}{100 * stored / total:>8.1f}%{(c1 - c0) / len(mails) * 1e6:>14.0f}"
              f"{total / 1e6 / (c1 - c0):>10.0f}{(c2 - c1) / len(mails) * 1e6:>14.0f}{total / 1e6 / (c2 - c1):>10.0f}")
        if (algorithm, level) == ("zstd", 3):
            by_kind = {k: (sum(len(p) for p, (x, _) in zip(packed, mails, strict=True) if x == k),
                           sum(len(m) for x, m in mails if x == k)) for k in kinds}
    print("zstd:3 by kind: " + ", ".join(f"{k} {100 * s / o:.0f}%" for k, (s, o) in by_kind.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
