"""Per-key FIFO serialisation inside one process: texts of one conversation are handled in the
order the queue delivered them, while different conversations run concurrently.

asyncio.Lock wakes waiters first-in first-out, and aio-pika starts one task per delivery in
delivery order, so waiting on the key's lock preserves queue order. Locks are dropped as soon
as nobody holds or waits for them, so memory stays bounded by in-flight messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str | None) -> AsyncIterator[None]:
        if key is None:
            yield
            return
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
