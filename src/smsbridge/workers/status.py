"""Publishing status events to the PBX side (exchange `<prefix>.status`, key `status.<tenant>.<state>`)."""

from __future__ import annotations

import asyncio

import structlog

from smsbridge.broker import names
from smsbridge.broker.publisher import Publisher
from smsbridge.errors import BrokerUnavailable
from smsbridge.events import StatusEvent, encoder

log = structlog.get_logger("smsbridge.status")


async def publish_status(publisher: Publisher, prefix: str, status: StatusEvent, *, logged: bool = True) -> None:
    """Confirmed publish; raises `BrokerUnavailable`. Unbound keys land in `<prefix>.unrouted`.
    `logged=False` when the caller's own line already says it (one line per message outcome)."""
    key = names.status_routing_key(status.tenant, status.state)
    await publisher.publish(names.status_exchange(prefix), key, encoder.encode(status),
                            message_id=status.event_id, mandatory=False)
    if logged:
        log.info("status published", state=status.state, client_message_id=status.client_message_id,
                 mdr_id=status.mdr_id, reason_code=status.reason_code)


async def publish_status_after_send(publisher: Publisher, prefix: str, status: StatusEvent,
                                    tries: int = 3) -> None:
    """For a status that follows a send Flowroute accepted: never let a broker hiccup cause a
    resend (which would text the customer twice). Try a few times, then log and carry on."""
    for attempt in range(tries):
        try:
            await publish_status(publisher, prefix, status, logged=False)  # "Flowroute accepted" says it
            return
        except BrokerUnavailable as exc:
            log.warning("status publish failed", attempt=attempt + 1, error=str(exc))
            await asyncio.sleep(0.5 * (attempt + 1))
    log.error("status lost: Flowroute accepted the message but the status could not be published",
              client_message_id=status.client_message_id, mdr_id=status.mdr_id, state=status.state)
