"""Content-addressed blob storage behind one small interface; the local-directory implementation.

A blob's key is the sha256 of its bytes, so the same picture received twice is stored once.
Bytes are streamed: spooled to a temporary file while hashed (never held whole in memory), then
moved into place under their hash. A store never knows what a blob is (type, name, owner): the
ledger does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

READ_CHUNK = 256 * 1024
WRITE_BUFFER = 256 * 1024  # bytes gathered before one write in a thread: few thread hops, bounded memory


class TooLarge(Exception):
    """The bytes went past the cap given to `put`; nothing was stored."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"larger than {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class Stored:
    key: str  # sha256, hex
    size: int


@dataclass(frozen=True)
class Blob:
    size: int
    chunks: AsyncGenerator[bytes, None]


class MediaStore(Protocol):
    kind: str

    async def put(self, chunks: AsyncIterator[bytes], *, max_bytes: int) -> Stored:
        """Store the bytes under their hash (once); raise `TooLarge` past `max_bytes`."""

    async def open(self, key: str) -> Blob | None:
        """The blob's bytes as a stream, or None when it is not (or no longer) stored."""

    async def delete_if_idle(self, key: str, since: datetime) -> bool:
        """Delete the blob unless it was stored (or stored again) at or after `since`."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Spooled:
    path: Path
    key: str
    size: int


async def spool(chunks: AsyncIterator[bytes], directory: Path, max_bytes: int) -> Spooled:
    """Write a stream to a temporary file in `directory`, hashing it; the caller moves or removes it."""
    fd, name = await asyncio.to_thread(tempfile.mkstemp, dir=directory, prefix=".part-")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            key, size = await _copy(chunks, out, max_bytes)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise
    return Spooled(path, key, size)


async def _copy(chunks: AsyncIterator[bytes], out: BinaryIO, max_bytes: int) -> tuple[str, int]:
    digest, size, pending = hashlib.sha256(), 0, bytearray()
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(max_bytes)
        pending += chunk
        if len(pending) >= WRITE_BUFFER:
            # hashed and written off the event loop (both release the GIL); awaited before
            # `pending` changes, so it needs no copy
            await asyncio.to_thread(_absorb, digest, out, pending)
            pending.clear()
    await asyncio.to_thread(_absorb, digest, out, pending)
    return digest.hexdigest(), size


def _absorb(digest: Any, out: BinaryIO, data: bytearray) -> None:
    digest.update(data)
    out.write(data)


class LocalStore:
    """Blobs as files `<directory>/<sha[:2]>/<sha>`; one host (or a shared filesystem)."""

    kind = "local"

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._spool = self.directory / ".spool"
        self._spool.mkdir(parents=True, exist_ok=True)

    def path_of(self, key: str) -> Path:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError("not a sha256 key")  # never a path outside the store
        return self.directory / key[:2] / key

    async def put(self, chunks: AsyncIterator[bytes], *, max_bytes: int) -> Stored:
        spooled = await spool(chunks, self._spool, max_bytes)
        await asyncio.to_thread(self._settle, spooled)
        return Stored(spooled.key, spooled.size)

    def _settle(self, spooled: Spooled) -> None:
        target = self.path_of(spooled.key)
        target.parent.mkdir(exist_ok=True)
        if target.exists():
            spooled.path.unlink()
            os.utime(target)  # stored again now: the pruner leaves it alone (see delete_if_idle)
        else:
            os.replace(spooled.path, target)

    async def open(self, key: str) -> Blob | None:
        path = self.path_of(key)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            return None
        size = os.fstat(handle.fileno()).st_size
        return Blob(size, _read(handle))

    async def delete_if_idle(self, key: str, since: datetime) -> bool:
        path = self.path_of(key)
        try:
            modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            if modified >= since:
                return False
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    async def close(self) -> None:
        return None


async def _read(handle: BinaryIO) -> AsyncGenerator[bytes, None]:
    try:
        while chunk := await asyncio.to_thread(handle.read, READ_CHUNK):
            yield chunk
    finally:
        handle.close()
