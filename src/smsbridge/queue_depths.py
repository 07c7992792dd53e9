"""Queue depths for the `smsbridge_queue_messages` gauge, read by passive declares on one channel.

A passive declare of a missing queue makes the broker close the channel. The channel is then
closed on our side too and a new one opened on the next round: aio-pika's robust channel would
otherwise keep reopening the old one, and every failed round would leave one more channel open.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from smsbridge.metrics import Metrics

log = structlog.get_logger("smsbridge.queue_depths")


class QueueDepthPoller:
    def __init__(self, connection: AbstractRobustConnection, queues: Callable[[], list[str]], metrics: Metrics,
                 interval_s: float) -> None:
        self._connection = connection
        self._queues = queues
        self._metrics = metrics
        self._interval_s = interval_s
        self._channel: AbstractChannel | None = None
        self.opened = 0  # channels opened so far: one, unless polls failed

    async def run(self) -> None:
        """Poll every `interval_s`; a failed poll leaves the last values and tries again."""
        try:
            while True:
                await self.poll()
                await asyncio.sleep(self._interval_s)
        finally:
            await self._drop_channel()

    async def poll(self) -> bool:
        try:
            if self._channel is None or self._channel.is_closed:
                await self._drop_channel()
                self._channel = await self._connection.channel()
                self.opened += 1
            underlay = await self._channel.get_underlay_channel()
            for queue in self._queues():
                declared = await underlay.queue_declare(queue, passive=True)
                self._metrics.queue_depth.labels(queue).set(declared.message_count or 0)
            return True
        except Exception as exc:  # a missing queue closes the channel: a new one next round
            log.debug("queue depth poll failed", error=repr(exc))
            await self._drop_channel()
            return False

    async def _drop_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), 5)
