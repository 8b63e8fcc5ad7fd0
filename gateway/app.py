"""The S3 gateway's aiohttp application: one route, one dispatcher, one error table.

Per request: work out bucket and key (path or virtual-host style), authenticate
(before any body byte is read, and before `100 Continue` is sent), pick the
operation, run its handler, and map any typed error to S3's XML error once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDictProxy, MultiDict

from . import admin, health
from .access import ANONYMOUS_ACCOUNT, Decision, Target
from .accounts import account_of
from .config import GatewayConfig
from .context import Gateway, Handler, S3Request, valid_bucket_name
from .engine import model as m
from .engine.api import Engine, EntityTooSmall, InvalidPartOrder, ThreadRunner
from .handlers import HANDLERS
from .keys import AccessKey
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import GatewayMetrics
from .policy import SSE_CONDITION_KEYS
from .s3 import numbers, xml
from .s3.errors import S3Error
from .s3.http import decode_path
from .s3.ops import operation, parse_copy_source
from .s3.sigv4 import parse_query
from .serverlog import ServerLog

log = logging.getLogger("gateway")

# Headers with which a write also sets what needs its own permission (policy.required).
SETTING_HEADERS = ("x-amz-tagging", "x-amz-object-lock-mode", "x-amz-object-lock-retain-until-date",
                   "x-amz-object-lock-legal-hold")

# Engine errors -> S3 error codes (the one mapping at this edge).
ENGINE_ERRORS: dict[type[m.EngineError], str] = {
    m.NoSuchBucket: "NoSuchBucket",
    m.NoSuchKey: "NoSuchKey",
    m.NoSuchVersion: "NoSuchVersion",
    m.BucketNotEmpty: "BucketNotEmpty",
    m.BucketAlreadyExists: "BucketAlreadyOwnedByYou",
    m.PreconditionFailed: "PreconditionFailed",
    m.ObjectLocked: "AccessDenied",
    m.NoSuchUpload: "NoSuchUpload",
    InvalidPartOrder: "InvalidPartOrder",
    EntityTooSmall: "EntityTooSmall",
    m.InvalidPart: "InvalidPart",
    m.CorruptRecord: "InternalError",
    m.StorageFull: "ServiceUnavailable",
    m.EngineUnavailable: "ServiceUnavailable",
}

# The operations that take SSE headers, and which; any other refuses them rather than ignore them.
_SSE = "x-amz-server-side-encryption"
_COPY_SSE = "x-amz-copy-source-server-side-encryption"
SSE_OPS = {"PutObject": (_SSE, _COPY_SSE), "GetObject": (_SSE,), "HeadObject": (_SSE,),
           "CreateMultipartUpload": (_SSE,), "UploadPart": (_SSE, _COPY_SSE),
           # AWS takes an SSE-C upload's key on these too (they change nothing here)
           "CompleteMultipartUpload": (_SSE,), "ListParts": (_SSE,), "GetObjectAttributes": (_SSE,)}


def refuse_unsupported(op: str, headers: Any) -> None:
    taken = SSE_OPS.get(op, ())
    for h in headers:
        name = h.lower()
        if name.startswith((_SSE, _COPY_SSE)) and not name.startswith(taken):
            raise S3Error("InvalidArgument", f"The header {name} is not accepted by {op}",
                          extra={"ArgumentName": name})


CANNED_ACLS = ("private", "bucket-owner-full-control")  # what an owner-only bucket means anyway
ACL_OPS = frozenset({"CreateBucket", "PutObject", "CreateMultipartUpload", "PutBucketAcl", "PutObjectAcl"})


def refuse_acls(op: str, headers: Any) -> None:
    """ACLs are off, as on every AWS bucket made since 2023 (Object Ownership "bucket owner
    enforced"): only the canned ACLs that say what is true pass; a grant is refused."""
    acl = headers.get("x-amz-acl")
    if (acl is None or acl in CANNED_ACLS) and not any(h.lower().startswith("x-amz-grant-") for h in headers):
        return
    if op == "CreateBucket":
        raise S3Error("InvalidBucketAclWithObjectOwnership",
                      "Bucket cannot have ACLs set with ObjectOwnership's BucketOwnerEnforced setting")
    raise S3Error("AccessControlListNotSupported", "The bucket does not allow ACLs")


# Operations whose engine call refuses to act on a bucket found owned by another account than
# the one it had (rados.py `_with_bucket`), so the permission check may use a cached owner.
CACHED_OWNER_OPS = frozenset({"GetObject", "HeadObject", "PutObject", "DeleteObject", "DeleteObjects",
                              "ListObjects", "ListObjectsV2", "ListObjectVersions"})


def preflight(headers: CIMultiDictProxy[str]) -> None:
    """A CORS preflight (OPTIONS; AWS S3 API Reference, "OPTIONS object"), which is never signed.
    No bucket here has a CORS configuration, so one that names its origin and method is
    refused as AWS refuses what no CORS rule allows (403); one that does not is a bad request."""
    if not headers.get("origin"):
        raise S3Error("BadRequest", "Insufficient information. Origin request header needed.")
    if not headers.get("access-control-request-method"):
        raise S3Error("BadRequest", "Invalid Access-Control-Request-Method: null")
    raise S3Error("AccessForbidden", "CORSResponse: This CORS request is not allowed. This is usually because the "
                  "evalution of Origin, request method / Access-Control-Request-Method or "
                  "Access-Control-Request-Headers are not whitelisted by the resource's CORS spec.")


@dataclass(slots=True)
class Seen:
    """What is known of a request for its access log line, filled in as it is understood."""
    rid: str
    bucket: str | None = None
    key: str | None = None
    access_key: str = ""


class Dispatcher:
    """One aiohttp handler for every request: route, authenticate, run the operation, map errors.

    Holds what is per process but not a handler's business: the operation
    table, the metrics registry and the requests running (for the timeout sweep).
    """

    def __init__(self, gw: Gateway, handlers: dict[str, Handler]) -> None:
        self.gw = gw
        self.config = gw.config
        self.handlers = handlers
        self.metrics = GatewayMetrics(gw)
        self._running: dict[asyncio.Task[Any], float] = {}  # request -> its start
        self._overdue: set[asyncio.Task[Any]] = set()  # cancelled by _sweep
        self._sweeper: asyncio.Task[None] | None = None

    def locate(self, request: web.BaseRequest, raw_path: str) -> tuple[str | None, str | None, bool]:
        """(bucket, key, bucket-came-from-the-Host-header)."""
        host_header = request.headers.get("host", "")
        host = host_header.rsplit(":", 1)[0].lower() if "]" not in host_header else ""
        path = decode_path(raw_path)
        for domain in self.config.base_domains:
            if host.endswith("." + domain):
                bucket = host[: -len(domain) - 1]
                return bucket, (path[1:] or None), True
        rest = path[1:]
        if not rest:
            return None, None, False
        bucket, slash, key = rest.partition("/")
        return bucket, (key if slash and key else None), False

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        resp: web.StreamResponse
        if request.raw_path.startswith(("/health/", "/metrics")):
            raw_path, _, raw_query = request.raw_path.partition("?")
            if health.is_check(request, raw_path, raw_query):
                if raw_path == "/metrics":
                    body = await self.gw.run_blocking(self.metrics.render)  # one index query
                    resp = web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})
                else:
                    resp = await health.respond(self.gw, request, raw_path)
                if self.gw.draining:
                    resp.force_close()
                return resp
        t0 = time.perf_counter()
        if self.gw.inflight >= self.config.max_inflight:
            rid = os.urandom(8).hex().upper()
            resp = self.error_response(request, S3Error("SlowDown"), None, None, rid)
            resp.headers["x-amz-request-id"] = rid
            self.metrics.observe("Unknown", 503, 0.0, 0, 0, "SlowDown")
            if self.gw.access_log.enabled:
                self._log(request, Seen(rid), "Unknown", resp, 0, 0.0, "SlowDown")
            return resp
        self.gw.inflight += 1
        task = asyncio.current_task()
        assert task is not None
        self._running[task] = t0
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        seen = Seen(os.urandom(8).hex().upper())
        try:
            resp, op, code = await self._handle(request, seen)
        except asyncio.CancelledError:
            if task not in self._overdue:  # the client went away, or shutdown
                raise
            self._overdue.discard(task)
            task.uncancel()
            resp = self.error_response(request, S3Error("RequestTimeout"), seen.bucket, seen.key, seen.rid)
            resp.headers["x-amz-request-id"] = seen.rid
            resp.force_close()
            op, code = "Unknown", "RequestTimeout"
        finally:
            self.gw.inflight -= 1
            del self._running[task]
        received = numbers.decimal(request.headers.get("x-amz-decoded-content-length")) or request.content_length or 0
        seconds = time.perf_counter() - t0
        self.metrics.observe(op, resp.status, seconds, received, resp.content_length or 0, code)
        if self.gw.access_log.enabled:
            self._log(request, seen, op, resp, received, seconds, code)
        if self.gw.draining:
            resp.force_close()  # the balancer must not reuse this connection
        return resp

    def _log(self, request: web.BaseRequest, seen: Seen, op: str, resp: web.StreamResponse, received: int,
             seconds: float, code: str | None) -> None:
        """The request's access log line (runtime/logs.py): who asked what, the answer, bytes, time,
        and Dovecot's trace headers when it sent them. Never a secret: no signature, no query.
        The access key is one the key store knows (or "-"), so it is written as made."""
        headers = request.headers
        extra = None
        if "x-dovecot-session-id" in headers:
            extra = {"session": headers["x-dovecot-session-id"], "user": headers.get("x-dovecot-username", "-"),
                     "reason": headers.get("x-dovecot-reason", "-")}
        self.gw.access_log.request(op, seen.rid, request.remote or "-", seen.access_key or "-", request.method,
                                   seen.bucket or "-", seen.key if seen.key is not None else "-", resp.status,
                                   received, resp.content_length or 0, seconds, code, extra)

    async def _decision(self, request: web.BaseRequest, key: AccessKey, op: str, bucket: str | None,
                        copy_source: tuple[str, str, str | None] | None) -> Decision:
        """What access.py decides on: the buckets the request touches (owner, policy), who the
        key is to a bucket policy, and the request's condition keys. A bucket that does not
        exist is left to the operation (NoSuchBucket)."""
        names = [bucket] if bucket is not None and op != "CreateBucket" else []
        if copy_source is not None:
            names.append(copy_source[0])
        targets: dict[str, Target] = {}
        for name in names:
            try:
                b = await self.gw.engine.bucket_info(name, fresh=op not in CACHED_OWNER_OPS)
            except m.NoSuchBucket:
                continue
            policy = self.gw.bucket_policies.cached(name, b.created)
            if policy is False:
                policy = await self.gw.bucket_policies.get(name, b.created)
            assert not isinstance(policy, bool)
            targets[name] = Target(account_of(b.owner), policy)
        who: frozenset[str] = frozenset()
        if key.account != ANONYMOUS_ACCOUNT:
            who = (self.gw.accounts.cached(key.account) or await self.gw.accounts.known(key.account)).principals

        def context() -> dict[str, str]:
            ctx = {"aws:SourceIp": request.remote or "", "aws:SecureTransport": "true" if request.secure else "false"}
            for name in SSE_CONDITION_KEYS:
                value = request.headers.get(name[3:])
                if value is not None:
                    ctx[name] = value
            return ctx
        return self.gw.access.decision(key, who, targets, context)

    async def _sweep(self) -> None:
        """Cancel requests running past --request-timeout (handle() answers them RequestTimeout).

        One sweep a second instead of a timer per request: a timeout armed and
        disarmed around every request cost 6 us, a few per cent of a HEAD.
        """
        while True:
            await asyncio.sleep(min(1.0, self.config.request_timeout / 4))
            limit = time.perf_counter() - self.config.request_timeout
            for task, started in list(self._running.items()):
                if started < limit and task not in self._overdue:
                    self._overdue.add(task)
                    task.cancel()

    async def _handle(self, request: web.BaseRequest, seen: Seen) -> tuple[web.StreamResponse, str, str | None]:
        """(response, S3 operation or "Unknown", error code or None); `seen` is filled in as the
        request is understood (its bucket, key and access key, for the access log)."""
        resp: web.StreamResponse
        rid = seen.rid
        raw_path, _, raw_query = request.raw_path.partition("?")
        bucket = key = None
        op, code = "Unknown", None
        try:
            bucket, key, vhost = self.locate(request, raw_path)
            seen.bucket, seen.key = bucket, key
            if request.method == "OPTIONS":
                op = "PreflightRequest"
                preflight(request.headers)
            pairs = parse_query(raw_query)
            query = MultiDict(pairs)
            principal = await self.gw.auth.authenticate(request.method, raw_path, pairs, query, request.headers,
                                                     bucket if vhost else None)
            seen.access_key = principal.key.access_key
            if not vhost and (raw_path == admin.PREFIX or raw_path.startswith(admin.PREFIX + "/")):
                try:
                    resp = await admin.handle(self.gw, request, raw_path, principal)
                except admin.AdminError as exc:
                    resp = admin.error_response(exc)
                resp.headers["x-amz-request-id"] = rid
                return resp, "Admin", None
            op = operation(request.method, bucket, key, query)
            if bucket is not None and op != "CreateBucket" and not valid_bucket_name(bucket):
                raise S3Error("NoSuchBucket" if len(bucket) < 64 else "InvalidBucketName")
            if key is not None and len(key.encode()) > 1024:
                raise S3Error("KeyTooLongError")
            copy_source = None
            if "x-amz-copy-source" in request.headers and op in ("PutObject", "UploadPart"):
                copy_source = parse_copy_source(request.headers["x-amz-copy-source"])
            decision = await self._decision(request, principal.key, op, bucket, copy_source)
            decision.authorize(op, bucket, key, query, copy_source,
                               frozenset(h for h in SETTING_HEADERS if h in request.headers))
            refuse_unsupported(op, request.headers)
            if op in ACL_OPS:
                refuse_acls(op, request.headers)
            handler = self.handlers[op]
            if request.headers.get("expect", "").lower() == "100-continue" and request.version >= (1, 1):
                # Only now, authenticated and routed, may the client send its body.
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.writer.output_size = 0
            resp = await handler(self.gw, S3Request(request, bucket, key, query, principal, rid, op, decision))
            self.gw.counters[op] = self.gw.counters.get(op, 0) + 1
        except S3Error as exc:
            resp, code = self.error_response(request, exc, bucket, key, rid), exc.code
        except m.EngineError as exc:
            code = next((c for t, c in ENGINE_ERRORS.items() if isinstance(exc, t)), "InternalError")
            if isinstance(exc, m.StorageFull):
                self.metrics.storage_full.inc()
                resp = self.error_response(request, S3Error(code, "The storage is full; retry later",
                                                            headers={"Retry-After": "30"}), bucket, key, rid)
            else:
                message = "Access Denied because object protected by object lock." \
                    if isinstance(exc, m.ObjectLocked) else None
                resp = self.error_response(request, S3Error(code, message), bucket, key, rid)
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("request %s failed", rid)
            resp, code = self.error_response(request, S3Error("InternalError"), bucket, key, rid), "InternalError"
        resp.headers["x-amz-request-id"] = rid
        resp.headers["x-amz-id-2"] = rid
        resp.headers["Server"] = "mailstore"
        return resp, op, code

    def error_response(self, request: web.BaseRequest, exc: S3Error, bucket: str | None,
                       key: str | None, rid: str) -> web.Response:
        self.gw.counters[f"error:{exc.code}"] = self.gw.counters.get(f"error:{exc.code}", 0) + 1
        resource = "/" + "/".join(p for p in (bucket, key) if p)
        headers = {"Content-Type": "application/xml", **exc.headers}
        if exc.code == "SlowDown" or exc.status == 503:
            headers.setdefault("Retry-After", "1")
        if request.method == "HEAD":
            resp = web.Response(status=exc.status, headers=headers)
        else:
            resp = web.Response(status=exc.status, headers=headers,
                                body=xml.error_document(exc.code, exc.message, resource, rid, exc.extra))
        if (request.content_length or request.headers.get("transfer-encoding")) and not request.content.at_eof():
            resp.force_close()  # the body was not read: don't reuse the connection
        return resp


def build_server(config: GatewayConfig, engine: Engine, runner: ThreadRunner) -> tuple[web.Server, Gateway]:
    """aiohttp's low-level server with our one handler.

    The gateway does its own dispatch, so aiohttp's Application layer (router,
    middleware chain, its Expect handler that answers 100 Continue before any
    check) is cost without use: skipping it saves about a quarter of aiohttp's
    per-request CPU (measured: 57 -> 41 us on a do-nothing handler).
    """
    gw = Gateway(config, engine, runner)
    dispatcher = Dispatcher(gw, dict(HANDLERS))
    return web.Server(dispatcher.handle, access_log=None, keepalive_timeout=config.idle_timeout,
                      logger=ServerLog()), gw
