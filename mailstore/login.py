"""A password login, the same for every mail service (IMAP, POP3, ManageSieve): the throttle
of failed attempts per address and per user, the user resolved from what was typed, the
password checked, the user's mail-crypt: key opened, and each refusal in the auth log that
packaging/fail2ban reads. Each service words the refusal in its own protocol."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from cache import Fs, FsError, mail_crypt_of
from cache.mailcrypt import WrongPassword
from runtime import logs

from .db import MetaStore
from .throttle import Busy, LoginLimiter
from .users import AddressPolicy, resolve, verify_password

auth_log = logging.getLogger("mailstore.auth")  # logins of every service


class LoginRefused(Exception):
    """`kind`: "throttled" (too many failures), "failed" (unknown user or wrong password),
    "key" (the password does not open the mail-crypt key), "unavailable" (the key's storage)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


async def password_login(meta: MetaStore, policy: AddressPolicy, throttle: LoginLimiter, fs: Fs | None, *,
                         user: str, password: str, peer: str, service: str, method: str, session: str,
                         metrics: Any = None) -> str:
    """The user's name when `password` is theirs (and, with a mail-crypt: `fs`, their key is
    open until the caller releases it); LoginRefused otherwise, logged."""
    def refused(level: int, kind: str, reason: str, who: str = user) -> LoginRefused:
        logs.event(auth_log, level, "login failed", remote=peer or "-", user=who, service=service, method=method,
                   reason=reason, session=session)
        return LoginRefused(kind)

    # Failed logins from this address or for this user: a growing pause, one attempt at a time.
    try:
        async with throttle.attempt(f"addr:{peer}", f"user:{user.lower()}") as attempt:
            name = await asyncio.to_thread(resolve, meta, policy, user)
            stored = await asyncio.to_thread(meta.password_hash, name) if name else None
            ok = stored is not None and await asyncio.to_thread(verify_password, password, stored)
            if ok:
                attempt.succeeded()
            else:
                attempt.failed()
    except Busy:
        raise refused(logging.WARNING, "throttled", "throttled") from None
    if not ok or name is None:
        if metrics is not None:
            metrics.auth_failures.inc()
        raise refused(logging.WARNING, "failed", "unknown user" if stored is None else "password")
    crypt = mail_crypt_of(fs) if fs is not None else None
    if crypt is not None:
        try:
            await crypt.unlock(name, password)
        except WrongPassword:
            raise refused(logging.ERROR, "key", "the password does not open the user's mail-crypt key (changed "
                          "without `mailstore user passwd --fs`?)", name) from None
        except FsError as exc:
            raise refused(logging.WARNING, "unavailable", f"mail-crypt key: {exc}", name) from None
    return name


def logged_in(service: str, user: str, *, peer: str, method: str, session: str, **more: object) -> None:
    logs.event(auth_log, logging.INFO, "login", remote=peer or "-", user=user, service=service, method=method,
               session=session, **more)
