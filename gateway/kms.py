"""SSE-KMS's keys: a local key table in place of AWS KMS (`mailstore kms create|list|rotate`).

A KMS key is a shared engine record (namespace "kms-key", named by its id, a UUID as AWS's
are) holding one or more versions of key material, each sealed under the store's master key
with "<id>:<version>" as associated data. Rotation adds a version: data keys wrapped from then
on use it, and every older version stays to open what it wrapped (as AWS KMS keeps its key
material). Objects name their key by ARN (`arn:aws:kms:<region>:000000000000:key/<id>`) and
version. A request names a key by id, by ARN or by `alias/<name>`; a request that names none
gets the key aliased `aws/s3`, made on first use (AWS's managed key for S3).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass

from runtime import sealing
from runtime.sealing import SecretBox

from .engine.api import Engine

NAMESPACE = "kms-key"
DEFAULT_ALIAS = "aws/s3"
ACCOUNT = "000000000000"
CAS_ATTEMPTS = 20


class KeyNotFound(Exception):
    """No KMS key has this id, ARN or alias."""


@dataclass(frozen=True, slots=True)
class KmsKey:
    key_id: str
    arn: str
    created: float
    description: str
    alias: str
    versions: tuple[tuple[int, float], ...]  # (version, created), oldest first

    def describe(self) -> dict[str, object]:
        """What an operator may see of a KMS key: never its material."""
        out: dict[str, object] = {"KeyId": self.key_id, "Arn": self.arn, "Created": int(self.created),
                                  "Versions": len(self.versions), "Rotated": int(self.versions[-1][1])}
        if self.description:
            out["Description"] = self.description
        if self.alias:
            out["Alias"] = f"alias/{self.alias}"
        return out


class KmsKeys:
    def __init__(self, engine: Engine, region: str = "us-east-1") -> None:
        self.engine = engine
        self.region = region
        self._master = SecretBox(engine.master_key())
        self._material: dict[tuple[str, int], bytes] = {}
        self._newest: dict[str, tuple[int, float]] = {}  # key id -> (version, looked up at)
        self._lock = asyncio.Lock()

    def arn(self, key_id: str) -> str:
        return f"arn:aws:kms:{self.region}:{ACCOUNT}:key/{key_id}"

    def _seal(self, key_id: str, version: int, material: bytes) -> str:
        return self._master.seal(material, f"{key_id}:{version}")

    def _open(self, key_id: str, version: int, sealed: str) -> bytes:
        return self._master.open(sealed, f"{key_id}:{version}")

    def _key(self, key_id: str, fields: dict[str, str]) -> KmsKey:
        versions = tuple((int(v[0]), float(v[2])) for v in json.loads(fields["versions"]))
        return KmsKey(key_id, self.arn(key_id), float(fields["created"]), fields.get("description", ""),
                      fields.get("alias", ""), versions)

    async def list(self) -> list[KmsKey]:
        keys = [self._key(kid, f) for kid, f in await self.engine.records(NAMESPACE)]
        return sorted(keys, key=lambda k: (k.created, k.key_id))

    async def create(self, description: str = "", alias: str = "") -> KmsKey:
        alias = alias.removeprefix("alias/")
        if alias and any(k.alias == alias for k in await self.list()):
            raise ValueError(f"the alias alias/{alias} is taken")
        while True:
            key_id = str(uuid.uuid4())
            now = time.time()
            fields = {"created": repr(now), "description": description, "alias": alias,
                      "versions": json.dumps([[1, self._seal(key_id, 1, sealing.new_key()), now]])}
            if await self.engine.swap_record(NAMESPACE, key_id, None, fields):
                return self._key(key_id, fields)

    async def rotate(self, key_id: str) -> int:
        """A new version of the key's material; the new version number. KeyNotFound."""
        for _ in range(CAS_ATTEMPTS):
            current = await self.engine.record(NAMESPACE, key_id)
            if current is None:
                raise KeyNotFound(key_id)
            versions = json.loads(current["versions"])
            version = int(versions[-1][0]) + 1
            versions.append([version, self._seal(key_id, version, sealing.new_key()), time.time()])
            if await self.engine.swap_record(NAMESPACE, key_id, current, {**current, "versions": json.dumps(versions)}):
                self._newest[key_id] = (version, time.monotonic())
                return version
        raise RuntimeError(f"KMS key {key_id} kept changing")

    async def resolve(self, ref: str | None) -> str:
        """The id of the key a request names (id, ARN or alias/NAME; None: `aws/s3`, made on
        first use). KeyNotFound."""
        if ref is None or ref in (DEFAULT_ALIAS, f"alias/{DEFAULT_ALIAS}"):
            async with self._lock:
                found = [k for k in await self.list() if k.alias == DEFAULT_ALIAS]
                if found:
                    return found[0].key_id
                return (await self.create("the default key of SSE-KMS requests that name none",
                                          DEFAULT_ALIAS)).key_id
        if ref.startswith("alias/") or ":alias/" in ref:
            name = ref.rsplit("alias/", 1)[1]
            found = [k for k in await self.list() if k.alias == name]
            if not found:
                raise KeyNotFound(ref)
            return found[0].key_id
        key_id = ref.rsplit(":key/", 1)[1] if ":key/" in ref else ref
        if (await self.engine.record(NAMESPACE, key_id)) is None:
            raise KeyNotFound(ref)
        return key_id

    async def newest(self, key_id: str) -> tuple[int, bytes]:
        """The version new data keys are wrapped with, and its material (looked up again after
        10 s, so a rotation on another gateway is taken up)."""
        cached = self._newest.get(key_id)
        if cached is None or time.monotonic() - cached[1] > 10:
            fields = await self.engine.record(NAMESPACE, key_id)
            if fields is None:
                raise KeyNotFound(key_id)
            cached = self._newest[key_id] = (json.loads(fields["versions"])[-1][0], time.monotonic())
        return cached[0], await self.material(key_id, cached[0])

    async def material(self, key_id: str, version: int) -> bytes:
        found = self._material.get((key_id, version))
        if found is None:
            fields = await self.engine.record(NAMESPACE, key_id)
            if fields is None:
                raise KeyNotFound(key_id)
            sealed = next((v[1] for v in json.loads(fields["versions"]) if v[0] == version), None)
            if sealed is None:
                raise KeyNotFound(f"{key_id} version {version}")
            found = self._material[(key_id, version)] = self._open(key_id, version, sealed)
        return found
