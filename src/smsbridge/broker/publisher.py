"""Publishing with publisher confirms: `publish` returns only once the broker has the message.

Any failure (connection down, channel closed, nack, unroutable, timeout) becomes
`BrokerUnavailable`, so callers have one thing to catch and one meaning: nothing was stored.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractExchange

from smsbridge.broker import names
from smsbridge.errors import BrokerUnavailable

Headers = Mapping[str, Any]


def now_ms() -> int:
    return int(time.time() * 1000)


class Publisher:
    def __init__(self, channel: AbstractChannel, *, timeout: float) -> None:
        self._channel = channel
        self._timeout = timeout
        self._exchanges: dict[str, AbstractExchange] = {}

    async def _exchange(self, name: str) -> AbstractExchange:
        if name not in self._exchanges:
            self._exchanges[name] = await self._channel.get_exchange(name, ensure=False)
        return self._exchanges[name]

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: Headers | None = None,
        message_id: str | None = None,
        expiration_s: float | None = None,
        mandatory: bool = True,
    ) -> None:
        message = aio_pika.Message(
            body,
            headers=dict(headers or {}),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            expiration=expiration_s,
        )
        try:
            target = await self._exchange(exchange)
            confirmation = await target.publish(
                message, routing_key=routing_key, mandatory=mandatory, timeout=self._timeout
            )
        except (aiormq.exceptions.AMQPError, ConnectionError, OSError, RuntimeError, TimeoutError) as exc:
            raise BrokerUnavailable(f"publish to {exchange}/{routing_key} not confirmed: {exc!r}") from exc
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            raise BrokerUnavailable(f"publish to {exchange}/{routing_key} not acknowledged: {confirmation!r}")

    async def to_stage(self, prefix: str, stage: str, body: bytes, *, message_id: str | None = None) -> None:
        """A fresh message for a stage: attempt 0, first seen now."""
        queue = names.stage_queue(prefix, stage)
        headers = {names.H_ATTEMPT: 0, names.H_FIRST_SEEN: now_ms()}
        await self.publish(names.work_exchange(prefix), queue, body, headers=headers, message_id=message_id)

    async def park(self, prefix: str, stage: str, body: bytes, *, reason: str, code: str, extra: Headers) -> None:
        """Straight to the dead-letter queue: for input we cannot process but must not drop."""
        headers = {
            names.H_STAGE: stage,
            names.H_REASON: reason,
            names.H_REASON_CODE: code,
            names.H_ATTEMPT: 0,
            names.H_DEAD_AT: now_ms(),
            **extra,
        }
        await self.publish(names.dead_exchange(prefix), stage, body, headers=headers)
