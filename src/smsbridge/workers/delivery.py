"""Delivery stage: hand each text to the tenant's PBX through its adapter."""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from smsbridge.broker.consumer import MessageContext
from smsbridge.errors import PermanentError
from smsbridge.events import InboundDelivery
from smsbridge.metrics import Metrics
from smsbridge.pbx.base import DeliveryAdapter

log = structlog.get_logger("smsbridge.delivery")


class DeliveryHandler:
    def __init__(self, adapters: Mapping[str, DeliveryAdapter], metrics: Metrics) -> None:
        self._adapters = adapters
        self._metrics = metrics

    async def handle(self, delivery: InboundDelivery, context: MessageContext) -> None:
        structlog.contextvars.bind_contextvars(
            mdr_id=delivery.mdr_id, event_id=delivery.event_id, extension=delivery.extension, tenant=delivery.tenant
        )
        adapter = self._adapters.get(delivery.tenant)
        if adapter is None:
            raise PermanentError(f"no PBX target for tenant '{delivery.tenant}'", code="no_target")
        await adapter.deliver(delivery)
        self._metrics.delivered.labels(delivery.tenant, adapter.kind).inc()
        log.info("delivered to PBX", adapter=adapter.kind)

    async def given_up(self, event: InboundDelivery, reason: str, code: str) -> None:
        return None
