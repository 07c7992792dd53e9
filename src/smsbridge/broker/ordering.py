"""Per-key FIFO serialisation inside one process: texts of one conversation are handled in the
order the queue delivered them, while different conversations run concurrently.

asyncio.Lock wakes waiters first-in first-out, and aio-pika starts one task per delivery in
delivery order, so waiting on the key's lock preserves queue order. Locks are dropped as soon
as nobody holds or waits for them, so memory stays bounded by in-flight messages.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def hold(self, key: str | None) -> _Held:
        """`async with locks.hold(key)`: the key's turn (None: no lock at all)."""
        return _Held(self, key)

    def _enter(self, key: str) -> asyncio.Lock:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        return lock

    def _leave(self, key: str) -> None:
        lock, users = self._locks[key]
        if users <= 1:
            del self._locks[key]
        else:
            self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


class _Held:
    """A plain class, not `@asynccontextmanager`: no generator, wrapper and extra frames per
    message (py-spy put up to 5% of the dispatcher's samples in their enter and exit, 2026-12-01)."""

    __slots__ = ("_locks", "_key", "_lock")

    def __init__(self, locks: KeyedLocks, key: str | None) -> None:
        self._locks = locks
        self._key = key
        self._lock: asyncio.Lock | None = None

    async def __aenter__(self) -> None:
        if self._key is None:
            return
        lock = self._locks._enter(self._key)
        try:
            await lock.acquire()
        except BaseException:  # cancelled while waiting: not a user any more
            self._locks._leave(self._key)
            raise
        self._lock = lock

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        if self._lock is not None:
            self._lock.release()
            self._locks._leave(self._key)  # type: ignore[arg-type]
