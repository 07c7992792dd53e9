"""Delivery stage: hand each text to the tenant's PBX through its adapter."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime

import structlog

from smsbridge.broker.consumer import MessageContext
from smsbridge.errors import PermanentError, RetryableError
from smsbridge.events import InboundDelivery
from smsbridge.ledger import Claim, Ledger
from smsbridge.metrics import Metrics
from smsbridge.pbx.base import DeliveryAdapter
from smsbridge.targets import adapter_key

log = structlog.get_logger("smsbridge.delivery")
GiveUp = Callable[[InboundDelivery, str, str], Awaitable[None]]  # the next target's turn (workers.fallback)


class DeliveryHandler:
    """Each (text, extension) is claimed in the ledger before the PBX is called, so two workers
    holding copies of one delivery never both hand it over, and a success is never repeated."""

    def __init__(self, adapters: Mapping[str, DeliveryAdapter], metrics: Metrics, ledger: Ledger,
                 lease_s: float, fallback: GiveUp | None = None) -> None:
        self._adapters = adapters
        self._metrics = metrics
        self._ledger = ledger
        self._lease_s = lease_s
        self._fallback = fallback

    async def handle(self, delivery: InboundDelivery, context: MessageContext) -> None:
        structlog.contextvars.bind_contextvars(
            mdr_id=delivery.mdr_id, event_id=delivery.event_id, extension=delivery.extension, tenant=delivery.tenant
        )
        adapter = self._adapters.get(adapter_key(delivery.tenant, delivery.target))
        if adapter is None:
            raise PermanentError(f"no PBX target for tenant '{delivery.tenant}'", code="no_target")
        claim = await self._ledger.claim_delivery(delivery.mdr_id, delivery.claim_key, self._lease_s)
        if claim is Claim.DONE:
            log.info("already delivered to this extension: not repeated", outcome="duplicate")
            return
        if claim is Claim.BUSY:
            raise RetryableError("another worker is delivering this text right now", retry_after=self._lease_s)
        try:
            state = await adapter.deliver(delivery) or "delivered"
        except BaseException:
            await self._ledger.release_delivery(delivery.mdr_id, delivery.claim_key)
            raise
        await self._ledger.delivered(delivery.mdr_id, delivery.claim_key, state)
        self._metrics.delivered.labels(delivery.tenant, adapter.kind).inc()
        self._metrics.inbound_latency.observe((datetime.now(UTC) - delivery.received_at).total_seconds())
        log.info("delivered to PBX", adapter=adapter.kind, state=state)

    async def given_up(self, event: InboundDelivery, reason: str, code: str) -> None:
        if self._fallback is not None:
            await self._fallback(event, reason, code)
