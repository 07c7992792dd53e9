"""The load generator's own process, so it never shares the event loop it is measuring."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import loadgen


class Pool:
    def __init__(self) -> None:
        self._executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        self._offsets = itertools.count(1)

    async def load(self, url: str, seconds: float, rate: float | None, connections: int,
                   total: int | None = None, relay_auth: str | None = None) -> loadgen.Result:
        """Offer `rate`/s (None: as fast as `connections` allow) for `seconds`, or until `total` sent.
        Every call uses fresh Flowroute ids. `relay_auth`: sends through the relay API instead."""
        offset = next(self._offsets) * 100_000_000
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, loadgen.run, url, seconds, rate, connections, offset, total,
                                          relay_auth)

    def close(self) -> None:
        self._executor.shutdown()
