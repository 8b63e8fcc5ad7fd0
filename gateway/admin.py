"""The admin API: keys, policies, buckets and usage, as JSON over HTTP.

Served by every gateway under /_admin/ ("_" can never start a bucket name),
signed like any S3 request (SigV4 or V2) and open to the operator's administrator keys
only (an account's administrator keys are administrators of their buckets, not of the
appliance). The CLI (`mailstore ... --endpoint URL`) and the dashboard use it.

    GET    /_admin/accounts                  every account (the operator's first)
    POST   /_admin/accounts                  {"name"} -> the account and its canonical id
    DELETE /_admin/accounts/<name>           refused while it has keys or buckets
    GET    /_admin/keys                      every key, without secrets
    POST   /_admin/keys                      {"name", "account"?, "admin"?, "policy"? | "preset"?} -> the secret, once
    DELETE /_admin/keys/<id>
    PUT    /_admin/keys/<id>/policy          {"policy"? | "preset"? | "admin": true}
    GET    /_admin/buckets                   buckets with owner, object count and bytes
    POST   /_admin/buckets                   {"name", "account"?}
    DELETE /_admin/buckets/<name>
    GET    /_admin/usage[?bucket=NAME]       per bucket and per first-level prefix
    GET    /_admin/status                    engine state
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .accounts import AccountError, account_of, owner_field
from .auth import Principal
from .body import Expectations, receive
from .context import Gateway, valid_bucket_name
from .engine.api import Engine
from .engine.model import BucketAlreadyExists, BucketNotEmpty, NoSuchBucket
from .kms import KeyNotFound
from .policy import Policy, PolicyError, preset
from .s3.errors import S3Error
from .s3.sigv4 import UNSIGNED_PAYLOAD

MAX_BODY = 64 * 1024
PREFIX = "/_admin"


class AdminError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(data, indent=2) + "\n", content_type="application/json")


async def _body(gw: Gateway, request: web.BaseRequest, principal: Principal) -> dict[str, Any]:
    """The JSON body, read like any S3 body: its signed payload hash (or chunk signatures) verified."""
    if (request.content_length or 0) > MAX_BODY:
        raise AdminError(413, "TooLarge", "admin requests are at most 64 KiB")
    if principal.payload_hash == UNSIGNED_PAYLOAD:
        # Keys and policies are too valuable for a body anyone on the path may swap.
        raise S3Error("AccessDenied", "Admin requests must sign their body (x-amz-content-sha256)")
    exp = Expectations.from_request(request, principal.payload_hash, principal.chunk_seed)
    try:
        raw = (await receive(request, exp, gw.engine, run=gw.run_blocking, max_size=MAX_BODY)).data
    except S3Error as exc:
        if exc.code == "EntityTooLarge":
            raise AdminError(413, "TooLarge", "admin requests are at most 64 KiB") from None
        raise
    try:
        doc = json.loads(raw or b"{}")
    except ValueError as exc:  # not JSON, or not UTF-8
        raise AdminError(400, "MalformedJSON", str(exc)) from None
    if not isinstance(doc, dict):
        raise AdminError(400, "MalformedJSON", "expected a JSON object")
    return doc


def _policy_from(doc: dict[str, Any]) -> Policy | None:
    try:
        if "preset" in doc:
            return preset(str(doc["preset"]))
        if "policy" in doc:
            p = doc["policy"]
            return Policy.parse(p if isinstance(p, str) else json.dumps(p))
    except PolicyError as exc:
        raise AdminError(400, "MalformedPolicy", str(exc)) from None
    return None


async def handle(gw: Gateway, request: web.BaseRequest, path: str, principal: Principal) -> web.Response:
    if not principal.key.operator:
        gw.access.denials += 1
        raise AdminError(403, "AccessDenied", "the admin API is for the operator's administrator keys")
    parts = [p for p in path[len(PREFIX):].split("/") if p]
    method = request.method
    keys = gw.keys
    if parts == ["accounts"] and method == "GET":
        return _json([a.describe() for a in await gw.accounts.list()])
    if parts == ["accounts"] and method == "POST":
        try:
            account = await gw.accounts.create(str((await _body(gw, request, principal)).get("name", "")))
        except AccountError as exc:
            raise AdminError(409 if "exists" in str(exc) else 400, "InvalidAccount", str(exc)) from None
        return _json(account.describe(), 201)
    if len(parts) == 2 and parts[0] == "accounts" and method == "DELETE":
        name = parts[1]
        owned = [b for b in await gw.engine.list_buckets() if account_of(b.owner) == name]
        members = [k for k in await keys.list() if k.account == name]
        try:
            if not await gw.accounts.delete(name, keys=len(members), buckets=len(owned)):
                raise AdminError(404, "NoSuchAccount", f"no account {name}")
        except AccountError as exc:
            raise AdminError(409, "AccountNotEmpty", str(exc)) from None
        return web.Response(status=204)
    if parts == ["kms-keys"] and method == "GET":
        return _json([k.describe() for k in await gw.encryption.kms.list()])
    if parts == ["kms-keys"] and method == "POST":
        doc = await _body(gw, request, principal)
        try:
            made = await gw.encryption.kms.create(str(doc.get("description", "")), str(doc.get("alias", "")))
        except ValueError as exc:
            raise AdminError(409, "AlreadyExists", str(exc)) from None
        return _json(made.describe(), 201)
    if len(parts) == 3 and parts[0] == "kms-keys" and parts[2] == "rotate" and method == "POST":
        try:
            return _json({"KeyId": parts[1], "Version": await gw.encryption.kms.rotate(parts[1])})
        except KeyNotFound:
            raise AdminError(404, "NotFoundException", f"no KMS key {parts[1]}") from None
    if parts == ["lifecycle", "run"] and method == "POST":
        from .lifecycle import LeaseHeld
        doc = await _body(gw, request, principal)
        now = doc.get("now")
        if now is not None and not isinstance(now, int | float):
            raise AdminError(400, "InvalidArgument", "now is a time in epoch seconds")
        if gw.lifecycle is None:
            raise AdminError(503, "Unavailable", "this gateway runs no lifecycle worker")
        try:
            done = await gw.lifecycle.run(float(now) if now is not None else None)
        except LeaseHeld:
            raise AdminError(409, "LeaseHeld", "another gateway is running the lifecycle rules now") from None
        return _json(done.describe())
    if parts == ["rewrap"] and method == "POST":
        from .rewrap import rewrap_page
        doc = await _body(gw, request, principal)
        limit = doc.get("limit", 1000)
        if not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise AdminError(400, "InvalidArgument", "limit is a whole number from 1 to 10000")
        marker = doc.get("marker")
        page = await rewrap_page(gw, str(marker) if marker else None, limit)
        return _json({"Checked": page.checked, "Rewrapped": page.rewrapped, "NextMarker": page.next_marker})
    if parts == ["store-keys"] and method == "GET":
        return _json(await gw.encryption.store_keys.describe())
    if parts == ["store-keys"] and method == "POST":
        return _json({"KeyId": await gw.encryption.store_keys.rotate(), "Newest": True}, 201)
    if parts == ["keys"] and method == "GET":
        return _json([k.describe() for k in await keys.list()])
    if parts == ["keys"] and method == "POST":
        doc = await _body(gw, request, principal)
        name = str(doc.get("name", "")).strip()
        if not name:
            raise AdminError(400, "InvalidArgument", "a key needs a name")
        policy = _policy_from(doc)
        admin = bool(doc.get("admin", policy is None))
        if not admin and policy is None:
            raise AdminError(400, "InvalidArgument", "a key that is not an administrator needs a policy or preset")
        member = await _account(gw, doc)
        key = await keys.create(name, admin=admin, policy=policy, account=member)
        return _json({**key.describe(), "SecretAccessKey": key.secret}, 201)
    if len(parts) == 2 and parts[0] == "keys" and method == "DELETE":
        if not await keys.delete(parts[1]):
            raise AdminError(404, "NoSuchKey", f"no access key {parts[1]}")
        return web.Response(status=204)
    if len(parts) == 3 and parts[0] == "keys" and parts[2] == "policy" and method == "PUT":
        current = await keys.get(parts[1])
        if current is None:
            raise AdminError(404, "NoSuchKey", f"no access key {parts[1]}")
        doc = await _body(gw, request, principal)
        policy = _policy_from(doc)
        admin = bool(doc.get("admin", False))
        if not admin and policy is None:
            raise AdminError(400, "InvalidArgument", "give a policy, a preset, or admin: true")
        try:
            fresh = await keys.set_policy(current.access_key, None if admin else policy, admin)
        except KeyError:
            raise AdminError(404, "NoSuchKey", f"no access key {parts[1]}") from None
        gw.auth.forget(current.access_key)
        return _json(fresh.describe())
    if parts == ["buckets"] and method == "GET":
        per_bucket = await usage(gw.engine, None)
        return _json([{"Name": b.name, "Owner": (await gw.accounts.known(account_of(b.owner))).display,
                       "Created": int(b.created), **_totals(per_bucket.get(b.name))}
                      for b in await gw.engine.list_buckets()])
    if parts == ["buckets"] and method == "POST":
        doc = await _body(gw, request, principal)
        name = str(doc.get("name", ""))
        if not valid_bucket_name(name):
            raise AdminError(400, "InvalidBucketName", f"not a valid bucket name: {name!r}")
        try:
            await gw.engine.create_bucket(name, owner_field(await _account(gw, doc)))
        except BucketAlreadyExists:
            raise AdminError(409, "BucketAlreadyExists", f"bucket {name} exists") from None
        return _json({"Name": name}, 201)
    if len(parts) == 2 and parts[0] == "buckets" and method == "DELETE":
        try:
            await gw.engine.delete_bucket(parts[1])
        except NoSuchBucket:
            raise AdminError(404, "NoSuchBucket", f"no bucket {parts[1]}") from None
        except BucketNotEmpty:
            raise AdminError(409, "BucketNotEmpty", f"bucket {parts[1]} is not empty") from None
        return web.Response(status=204)
    if parts == ["usage"] and method == "GET":
        bucket = request.query.get("bucket")
        if bucket is not None and not await gw.engine.bucket_exists(bucket):
            raise AdminError(404, "NoSuchBucket", f"no bucket {bucket}")
        return _json({"buckets": await usage(gw.engine, bucket)})
    if parts == ["status"] and method == "GET":
        return _json({"engine": await gw.engine.stats(), "metrics": gw.engine.metrics,
                      "access_denials": gw.access.denials, "operations": gw.counters})
    raise AdminError(404, "NotFound", f"no admin endpoint {method} {path}")


async def _account(gw: Gateway, doc: dict[str, Any]) -> str:
    """The account a request body names ("account"; the operator's when absent), which must exist."""
    name = str(doc.get("account", ""))
    if name == "operator":
        name = ""
    if await gw.accounts.get(name) is None:
        raise AdminError(404, "NoSuchAccount", f"no account {name}")
    return name


def _totals(u: dict[str, Any] | None) -> dict[str, int]:
    return {"Objects": u["objects"], "Bytes": u["bytes"]} if u else {"Objects": 0, "Bytes": 0}


async def usage(engine: Engine, bucket: str | None) -> dict[str, Any]:
    """Per bucket: totals and per first-level prefix (one pass over each bucket's index)."""
    names = [bucket] if bucket else [b.name for b in await engine.list_buckets()]
    out: dict[str, Any] = {}
    for name in names:
        prefixes = await engine.usage_by_prefix(name)
        out[name] = {"objects": sum(n for n, _ in prefixes.values()),
                     "bytes": sum(b for _, b in prefixes.values()),
                     "prefixes": {p: {"objects": n, "bytes": b} for p, (n, b) in sorted(prefixes.items())}}
    return out


def error_response(exc: AdminError) -> web.Response:
    return _json({"error": exc.code, "message": exc.message}, exc.status)
