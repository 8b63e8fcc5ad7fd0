"""Users: passwords (scrypt) and how an envelope address finds its user.

An address resolves, in order: the exact address, its alias, then with the
`+tag` detail removed (RFC 5233 subaddressing; the delimiter is configurable).
A bare local part takes the default domain.  Addresses compare case-folded.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from .db import MetaStore

SCRYPT = {"n": 1 << 14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **SCRYPT, dklen=32)
    return f"$scrypt${SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}${base64.b64encode(salt).decode()}$" \
           f"{base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        _, kind, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if kind != "scrypt":
        return False
    got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                         dklen=len(base64.b64decode(digest)))
    return hmac.compare_digest(got, base64.b64decode(digest))


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    default_domain: str = "localhost"
    recipient_delimiter: str = "+"  # "" disables subaddressing

    def normalize(self, address: str) -> str:
        a = address.strip().strip("<>").lower()
        if "@" not in a:
            a = f"{a}@{self.default_domain}"
        return a

    def without_detail(self, address: str) -> str:
        local, _, domain = address.rpartition("@")
        if self.recipient_delimiter and self.recipient_delimiter in local:
            local = local.split(self.recipient_delimiter, 1)[0]
        return f"{local}@{domain}"


def resolve(meta: MetaStore, policy: AddressPolicy, address: str) -> str | None:
    """The user an envelope recipient delivers to, or None."""
    a = policy.normalize(address)
    for candidate in dict.fromkeys((a, policy.without_detail(a))):
        if meta.get_user(candidate) is not None:
            return candidate
        target = meta.resolve_alias(candidate)
        if target is not None:
            return target
    return None
