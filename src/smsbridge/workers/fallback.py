"""When a target gives up on a text, hand it to the tenant's next target (e.g. SIP, then email)."""

from __future__ import annotations

import msgspec
import structlog

from smsbridge.broker.publisher import Publisher
from smsbridge.config import Settings
from smsbridge.events import InboundDelivery, encoder, new_event_id
from smsbridge.targets import after

log = structlog.get_logger("smsbridge.delivery")


class Fallback:
    def __init__(self, settings: Settings, publisher: Publisher) -> None:
        self._settings = settings
        self._publisher = publisher

    async def __call__(self, delivery: InboundDelivery, reason: str, code: str) -> None:
        """Publish the text again for the next target; raise `BrokerUnavailable` if not stored
        (the consumer then sends the given-up message round the delay queue and comes back here)."""
        following = after(self._settings, delivery.tenant, delivery.target)
        if following is None:
            return
        event = msgspec.structs.replace(delivery, target=following, event_id=new_event_id())
        await self._publisher.to_stage(self._settings.broker.prefix, "delivery", encoder.encode(event),
                                       message_id=event.event_id)
        log.warning("target gave up: text handed to the next target", outcome="fallback", reason_code=code,
                    target=delivery.target, next_target=following)
