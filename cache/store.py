"""What every layer of an fs stack offers the one above it (s3client.S3Client, fscache.FsCache,
compress.Compressed): Dovecot lib-fs's calls, on whole objects."""

from __future__ import annotations

import builtins  # a method named list: annotations after it say builtins.list
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from .s3client import ListEntry, ObjectStat


class Store(Protocol):
    async def get(self, key: str) -> tuple[bytes, ObjectStat]: ...
    async def get_many(self, keys: builtins.list[str]) -> builtins.list[bytes]: ...
    async def stat(self, key: str) -> ObjectStat: ...
    def list(self, prefix: str = "", delimiter: str | None = None) -> AsyncIterator[ListEntry]: ...
    async def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None,
                  content_type: str = "application/octet-stream") -> str: ...
    async def delete(self, key: str) -> None: ...
    async def delete_many(self, keys: builtins.list[str]) -> builtins.list[tuple[str, str]]: ...
    async def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None) -> None: ...
    async def close(self) -> None: ...


class Transforming:
    """A layer of an fs stack that changes bodies on their way in (`_in`) and out (`_out`) and
    passes every other call to `parent` as it is (compress:, mail-crypt:). `stat` reports the
    stored size and `copy` copies the stored bytes, as Dovecot's wrappers do."""

    parent: Store

    async def _in(self, data: bytes, key: str) -> bytes:
        raise NotImplementedError

    async def _out(self, data: bytes, key: str) -> bytes:
        raise NotImplementedError

    async def get(self, key: str) -> tuple[bytes, ObjectStat]:
        body, stat = await self.parent.get(key)
        return await self._out(body, key), stat

    async def get_many(self, keys: builtins.list[str]) -> builtins.list[bytes]:
        bodies = await self.parent.get_many(keys)
        return [await self._out(b, k) for k, b in zip(keys, bodies, strict=True)]

    async def stat(self, key: str) -> ObjectStat:
        return await self.parent.stat(key)

    def list(self, prefix: str = "", delimiter: str | None = None) -> AsyncIterator[ListEntry]:
        return self.parent.list(prefix, delimiter)

    async def put(self, key: str, data: bytes, metadata: Mapping[str, str] | None = None,
                  content_type: str = "application/octet-stream") -> str:
        return await self.parent.put(key, await self._in(data, key), metadata, content_type)

    async def delete(self, key: str) -> None:
        await self.parent.delete(key)

    async def delete_many(self, keys: builtins.list[str]) -> builtins.list[tuple[str, str]]:
        return await self.parent.delete_many(keys)

    async def copy(self, src: str, dst: str, metadata: Mapping[str, str] | None = None) -> None:
        await self.parent.copy(src, dst, metadata)

    async def close(self) -> None:
        await self.parent.close()
