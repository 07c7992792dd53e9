"""Waiting for a condition instead of sleeping: the suite must hold on a loaded host."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

DEFAULT_TIMEOUT_S = 30.0  # generous: on a host with both cores busy, start-up alone can take seconds


async def eventually(condition: Callable[[], bool | Awaitable[bool]], *, timeout: float = DEFAULT_TIMEOUT_S,
                     interval: float = 0.05, what: str = "the condition") -> None:
    """Return as soon as `condition()` is true; fail with `what` after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise AssertionError(f"{what} did not hold within {timeout:g} s")
        await asyncio.sleep(interval)
