"""Delivery stage: hand each text to the tenant's PBX through its adapter."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime

import structlog

from smsbridge.broker.consumer import MessageContext
from smsbridge.errors import PermanentError, RetryableError
from smsbridge.events import InboundDelivery
from smsbridge.ledger import DeliveryKey, Ledger
from smsbridge.ledger.order import Turn
from smsbridge.metrics import Metrics
from smsbridge.pbx.base import DeliveryAdapter
from smsbridge.targets import adapter_key
from smsbridge.workers.held import HeldClaim, within_lease
from smsbridge.workers.turns import Turns

log = structlog.get_logger("smsbridge.delivery")
GiveUp = Callable[[InboundDelivery, str, str], Awaitable[None]]  # the next target's turn (workers.fallback)


class DeliveryHandler:
    """Each (text, extension) is claimed in the ledger before the PBX is called, so two workers
    holding copies of one delivery never both hand it over, and a success is not repeated by
    the bridge (a worker that dies after the PBX stored a text but before the ledger heard of
    it repeats it, with the same Idempotency-Key). The claim's lease is renewed while the PBX
    is called and the call stops before the lease ends (`workers/held.py`), so a slow attempt
    (a long SIP text in many parts) is never overlapped by another worker's. The same claim
    keeps each conversation in arrival order (`ledger/order.py`): a text waits while an
    earlier one is still retrying."""

    def __init__(self, adapters: Mapping[str, DeliveryAdapter], metrics: Metrics, ledger: Ledger,
                 lease_s: float, turns: Turns, fallback: GiveUp | None = None) -> None:
        self._adapters = adapters
        self._metrics = metrics
        self._ledger = ledger
        self._lease_s = lease_s
        self._turns = turns
        self._fallback = fallback

    async def handle(self, delivery: InboundDelivery, context: MessageContext) -> None:
        structlog.contextvars.bind_contextvars(
            mdr_id=delivery.mdr_id, event_id=delivery.event_id, extension=delivery.extension, tenant=delivery.tenant
        )
        adapter = self._adapters.get(adapter_key(delivery.tenant, delivery.target))
        if adapter is None:
            raise PermanentError(f"no PBX target for tenant '{delivery.tenant}'", code="no_target")
        # Keyed by the target too (`claim_key`): a fallback or copy of a text is its own delivery;
        # and by the configuration: another's text with the same Flowroute id is another delivery.
        key = DeliveryKey.of(delivery)
        claim = HeldClaim(self._ledger, key, self._lease_s)
        turn, due = await claim.take()
        await self._turns.publish_or_leave(due)
        if turn is Turn.WAIT:
            log.info("an earlier text of this conversation goes first: this one waits in the ledger",
                     outcome="waiting")
            return
        if turn is Turn.DONE:
            log.info("already delivered to this extension: not repeated", outcome="duplicate")
            return
        if turn is Turn.BUSY:
            # not an attempt: a long delivery must not use up this copy's attempts (dead-lettered,
            # it would go to the fallback and free the conversation while the text is still going)
            raise RetryableError("another worker is delivering this text right now", retry_after=self._lease_s,
                                 counted=False)
        try:
            attempt = adapter.deliver(delivery)
            state = await within_lease(attempt, claim.renew, self._lease_s, claim.held_from) or "delivered"
        except BaseException:
            await claim.release()
            raise
        due = await self._ledger.delivered_in_turn(key, state)
        self._metrics.delivered.labels(delivery.tenant, adapter.kind).inc()
        self._metrics.inbound_latency.observe((datetime.now(UTC) - delivery.received_at).total_seconds())
        log.info("delivered to PBX", adapter=adapter.kind, state=state)
        await self._turns.publish_or_leave(due)

    async def given_up(self, event: InboundDelivery, reason: str, code: str) -> None:
        """Dead-lettered: the tenant's next target gets the text (raising `BrokerUnavailable` if it
        could not be handed over: the consumer then comes back here), and the conversation's next
        text goes now instead of waiting for this one."""
        if self._fallback is not None:
            await self._fallback(event, reason, code)
        try:
            due = await self._ledger.settle_turn(DeliveryKey.of(event))
        except Exception as exc:  # the ledger is down: the order sweep releases the conversation later
            log.warning("could not release the conversation after a dead letter", error=repr(exc))
            return
        await self._turns.publish_or_leave(due)
