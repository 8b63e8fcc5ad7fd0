"""The one place every request's permission is decided.

After authentication and routing, and before any body byte is read, the
gateway asks `authorize` for the operation's required (action, resource)
pairs (see policy.required).  Administrators may do everything; any other key
only what its policy allows; nothing else passes (deny by default).
DeleteObjects asks `allows` once per key, as AWS reports denials per key.
Every denial is counted.
"""

from __future__ import annotations

from collections.abc import Mapping

from .keys import AccessKey
from .policy import required
from .s3.errors import S3Error


class Access:
    def __init__(self) -> None:
        self.denials = 0
        self.denials_by_action: dict[str, int] = {}

    def allows(self, key: AccessKey, action: str, resource: str, context: Mapping[str, str] | None = None) -> bool:
        if key.admin:
            return True
        ok = key.policy is not None and key.policy.allows(action, resource, context)
        if not ok:
            self.denials += 1
            self.denials_by_action[action] = self.denials_by_action.get(action, 0) + 1
        return ok

    def authorize(self, key: AccessKey, op: str, bucket: str | None, obj: str | None,
                  query: Mapping[str, str], copy_source: tuple[str, str] | None) -> None:
        for action, resource, context in required(op, bucket, obj, query, copy_source):
            if not self.allows(key, action, resource, context):
                raise S3Error("AccessDenied")
