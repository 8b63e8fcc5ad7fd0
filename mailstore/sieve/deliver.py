"""What LMTP delivery does with one recipient's copy when the user has an active Sieve script:
the folders (and flags) it goes to, or a rejection, or nothing at all (discard).

Never loses mail: a script that fails at run time, and a fileinto into a folder that does not
exist (without `:create`), leave the message in INBOX only, as Pigeonhole does (none of the
script's other actions is carried out); a redirect that cannot be sent (no relay configured, or the
relay refused it) leaves it in INBOX too. The reason is logged. A folder named with `:create` is
made. Redirects and vacation replies go out before the copy is stored, remembered so that a
delivery the MTA retries does not send them again (outbound.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from runtime import logs

from .. import folders
from ..db import MetaStore
from ..imap import mutf7
from . import outbound, scripts
from .grammar import Script
from .outbound import Relay
from .run import Envelope, Loader, Outcome, parsed_message, run
from .scripts import compiled

log = logging.getLogger("mailstore.sieve")


@dataclass
class Plan:
    """Where one recipient's copy goes: (folder, flags) pairs, INBOX first when it is kept."""

    targets: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    reject: str | None = None  # the reason, for a 550 5.7.1 reply
    script: str = ""  # the script's name, for the log


def active_scripts(meta: MetaStore, users: list[str]) -> dict[str, tuple[str, str]]:
    """user -> (name, text) of the active script, for those of `users` who have one (one query)."""
    if not users:
        return {}
    marks = ",".join("?" * len(users))
    rows = meta.conn().execute(f"SELECT user_name, name, script FROM sieve_scripts WHERE active=1 AND user_name IN "
                               f"({marks})", tuple(users))
    return {str(u): (str(n), str(s)) for u, n, s in rows}


def plan(meta: MetaStore, user: str, address: str, mail_from: str, message: bytes,
         script: tuple[str, str], relay: Relay | None = None) -> Plan:
    """Run the user's script on the message as it will be stored, and send what it sends through
    `relay` (blocking: a worker thread)."""
    name, text = script
    out = Plan(script=name)
    result: Outcome | None = None
    try:
        tree, required = compiled(text)
        result = run(tree, set(required), message, Envelope(mail_from, address), loader=_loader(meta, user))
        error = result.error or ""
    except Exception as exc:  # noqa: BLE001 - whatever a script does wrong, the mail is kept (and why logged)
        error = f"{type(exc).__name__}: {exc}"
    if result is None or error:
        logs.event(log, logging.WARNING, "script failed; message kept in INBOX", user=user, script=name,
                   reason=error)
        out.targets = [("INBOX", ())]
        return out
    if result.reject is not None:
        out.reject = result.reject[0]
        return out
    keep = result.implicit_keep
    flags_of_keep = result.keep_flags
    wanted = [("INBOX" if st.folder.upper() == "INBOX" else mutf7.encode(st.folder), st) for st in result.stores]
    # (INBOX is always there: the mailbox list is read only for other folders)
    boxes = {b.name for b in meta.mailboxes(user)} if any(f != "INBOX" for f, _ in wanted) else {"INBOX"}
    missing = [st.folder for folder, st in wanted if folder not in boxes and not st.create]
    if missing:  # an action that cannot be done: none is, the message is kept (as Pigeonhole does)
        logs.event(log, logging.WARNING, "fileinto a folder that does not exist; message kept in INBOX",
                   user=user, script=name, folder=missing[0])
        out.targets = [("INBOX", ())]
        return out
    for folder, store in wanted:
        if folder not in boxes:
            try:
                folders.create_mailbox(meta, user, folder)
            except folders.MailboxExists:
                pass
            boxes.add(folder)
        if folder not in (t for t, _ in out.targets):
            out.targets.append((folder, store.flags or ()))
    if not _send(meta, user, address, mail_from, message, result, relay, name):
        keep = True
    if keep and "INBOX" not in (t for t, _ in out.targets):
        out.targets.insert(0, ("INBOX", flags_of_keep))
    return out


def _loader(meta: MetaStore, user: str) -> Loader:
    """The user's other scripts, compiled, for `include` (None: no script of that name)."""
    def load(name: str) -> tuple[Script, frozenset[str]] | None:
        try:
            return compiled(scripts.get(meta, user, name))
        except scripts.ScriptError:
            return None
    return load


def _send(meta: MetaStore, user: str, address: str, mail_from: str, message: bytes, result: Outcome,
          relay: Relay | None, script: str) -> bool:
    """Send the script's redirects and vacation reply; False when a redirect was not sent (the
    message is then kept in INBOX, so nothing is lost)."""
    if not result.redirects and result.vacation is None:
        return True
    msg = parsed_message(message)
    ok = True
    for target in result.redirects:
        key = outbound.redirect_key(msg, message, target)
        if relay is None:
            logs.event(log, logging.WARNING, "redirect not sent: no submission relay configured; message kept in "
                       "INBOX", user=user, script=script, to=f"<{target}>")
            ok = False
        elif not outbound.claim(meta, user, key, outbound.REDIRECT_PERIOD):
            logs.event(log, logging.INFO, "redirect: discarded duplicate forward", user=user, script=script,
                       to=f"<{target}>")
        else:
            try:
                relay.send(mail_from, target, outbound.redirected(message, user))
            except outbound.SendError as exc:
                outbound.release(meta, user, key)
                logs.event(log, logging.WARNING, "redirect failed; message kept in INBOX", user=user, script=script,
                           to=f"<{target}>", reason=str(exc))
                ok = False
                continue
            logs.event(log, logging.INFO, "redirected", user=user, script=script, to=f"<{target}>")
    vac = result.vacation
    if vac is not None:
        own = [address, user, *vac.addresses]
        refusal = outbound.vacation_refusal(msg, mail_from, own, vac, meta, user)
        key = outbound.vacation_key(mail_from, vac)
        if refusal is not None:
            logs.event(log, logging.INFO, "vacation: " + refusal, user=user, script=script)
        elif relay is None:
            logs.event(log, logging.WARNING, "vacation reply not sent: no submission relay configured", user=user,
                       script=script, to=f"<{mail_from}>")
        elif not outbound.claim(meta, user, key, vac.days * 86400):
            logs.event(log, logging.INFO, f"vacation: discarded duplicate vacation response to <{mail_from}>",
                       user=user, script=script)
        else:
            try:
                reply = outbound.vacation_reply(msg, mail_from, outbound.addressed_as(msg, own) or address, vac)
                relay.send("", mail_from, reply)
            except outbound.SendError as exc:
                outbound.release(meta, user, key)
                logs.event(log, logging.WARNING, "vacation reply failed", user=user, script=script,
                           to=f"<{mail_from}>", reason=str(exc))
            else:
                logs.event(log, logging.INFO, "vacation reply sent", user=user, script=script, to=f"<{mail_from}>")
    return ok
