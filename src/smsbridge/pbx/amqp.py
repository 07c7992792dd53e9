"""AMQP delivery: publish to an exchange the PBX consumes, key `<tenant>.<extension>`.

Published mandatory with a confirm: if the PBX has bound no queue for the key yet, the message
is unroutable and retried (store and forward), never silently dropped.
"""

from __future__ import annotations

from smsbridge.broker import names
from smsbridge.broker.publisher import Publisher
from smsbridge.config import AmqpTarget
from smsbridge.errors import BrokerUnavailable, RetryableError
from smsbridge.events import InboundDelivery, encoder


class AmqpAdapter:
    kind = "amqp"

    def __init__(self, target: AmqpTarget, publisher: Publisher) -> None:
        self._target = target
        self._publisher = publisher

    async def deliver(self, delivery: InboundDelivery) -> None:
        key = names.pbx_routing_key(delivery.tenant, delivery.extension)
        try:
            await self._publisher.publish(
                self._target.exchange, key, encoder.encode(delivery), message_id=delivery.idempotency_key
            )
        except BrokerUnavailable as exc:
            raise RetryableError(f"PBX exchange {self._target.exchange} did not take {key}: {exc}") from None

    async def close(self) -> None:
        return None
