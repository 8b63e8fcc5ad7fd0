"""The one place every request's permission is decided.

After authentication and routing, and before any body byte is read, the gateway asks for
the operation's required (action, resource) pairs (see policy.required). Each is decided as
AWS evaluates a request against an identity policy (the key's) and a resource policy (the
bucket's), across accounts (accounts.py):

- an explicit Deny in either policy wins;
- in the bucket owner's account, an Allow in either is enough (an administrator key allows
  everything its policy does not deny, for it has none);
- from another account, both must allow: the key's own account must allow it, and the
  bucket policy must name that account (or "*");
- an anonymous request (no signature) has only the bucket policy, which must allow "*";
- nothing else passes (deny by default).

DeleteObjects asks `Decision.allows` once per key, as AWS reports denials per key. Every
denial is counted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .keys import AccessKey
from .policy import ARN_PREFIX, Policy, required
from .s3.errors import S3Error

ANONYMOUS_ACCOUNT = "*anonymous"  # never an account's name (accounts.valid_name)
ANONYMOUS = AccessKey("", "", "anonymous", False, 0.0, None, ANONYMOUS_ACCOUNT)
OWNER_ONLY = frozenset({"s3:GetBucketPolicy", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy"})


@dataclass(frozen=True, slots=True)
class Target:
    """A bucket a request touches: its owner's account and its policy."""
    account: str
    policy: Policy | None


def _bucket_of(resource: str) -> str | None:
    return resource[len(ARN_PREFIX):].split("/", 1)[0] if resource.startswith(ARN_PREFIX) else None


class Decision:
    """The permissions of one request: its key, who it is to a bucket policy (the account's
    name and canonical id), the buckets it touches and the request's condition context."""

    def __init__(self, access: Access, key: AccessKey, who: frozenset[str], targets: Mapping[str, Target],
                 context: Callable[[], Mapping[str, str]]) -> None:
        """`context`: the request's condition keys, asked for only when a policy is evaluated."""
        self.access, self.key, self.who, self.targets, self._context = access, key, who, targets, context
        self._request_keys: Mapping[str, str] | None = None

    def _ctx(self, extra: Mapping[str, str] | None) -> Mapping[str, str]:
        if self._request_keys is None:
            self._request_keys = self._context()
        return {**self._request_keys, **extra} if extra else self._request_keys

    def allows(self, action: str, resource: str, context: Mapping[str, str] | None = None) -> bool:
        bucket = _bucket_of(resource)
        target = self.targets.get(bucket) if bucket is not None else None
        key = self.key
        anonymous = key.account == ANONYMOUS_ACCOUNT
        if anonymous:
            identity = None
        elif key.admin:
            identity = "Allow"
        else:
            identity = key.policy.decide(action, resource, self._ctx(context)) if key.policy is not None else None
        bucket_policy = target.policy.decide(action, resource, self._ctx(context), self.who) \
            if target is not None and target.policy is not None else None
        if target is None:  # no bucket (ListBuckets), or one that does not exist: the key's own say
            ok = identity == "Allow"
        elif "Deny" in (identity, bucket_policy):
            ok = False
        elif target.account == key.account:
            ok = "Allow" in (identity, bucket_policy)
        elif action in OWNER_ONLY:  # a bucket's policy is its owner's to see and change
            ok = False
        else:  # another account, or anonymous: the bucket policy must grant it, and the key's account too
            ok = bucket_policy == "Allow" and (anonymous or identity == "Allow")
        if not ok:
            self.access.denied(action)
        return ok

    def authorize(self, op: str, bucket: str | None, obj: str | None, query: Mapping[str, str],
                  copy_source: tuple[str, str, str | None] | None, sets: frozenset[str] = frozenset()) -> None:
        for action, resource, context in required(op, bucket, obj, query, copy_source, sets):
            if not self.allows(action, resource, context):
                raise S3Error("AccessDenied")


class Access:
    def __init__(self) -> None:
        self.denials = 0
        self.denials_by_action: dict[str, int] = {}

    def denied(self, action: str) -> None:
        self.denials += 1
        self.denials_by_action[action] = self.denials_by_action.get(action, 0) + 1

    def decision(self, key: AccessKey, who: frozenset[str], targets: Mapping[str, Target],
                 context: Callable[[], Mapping[str, str]]) -> Decision:
        return Decision(self, key, who, targets, context)
