"""Publishing status events to the PBX side (exchange `<prefix>.status`, key `status.<tenant>.<state>`)."""

from __future__ import annotations

import asyncio

import structlog

from smsbridge.broker import names
from smsbridge.broker.publisher import Publisher
from smsbridge.errors import BrokerUnavailable
from smsbridge.events import StatusEvent, encoder

log = structlog.get_logger("smsbridge.status")
# How long the status after a send waits for the broker's confirm, per try (the ordinary publish
# timeout is 5 s): `publish_status_after_send` says why.
AFTER_SEND_CONFIRM_S = 30.0


async def publish_status(publisher: Publisher, prefix: str, status: StatusEvent, *, logged: bool = True,
                         gated: bool = True, timeout: float | None = None) -> None:
    """Confirmed publish; raises `BrokerUnavailable`. Unbound keys land in `<prefix>.unrouted`.
    `logged=False` when the caller's own line already says it (one line per message outcome);
    `gated=False` to wait for the confirm even while the liveness gate says the broker is slow;
    `timeout`: how long to wait for the confirm (default: the publisher's publish timeout)."""
    key = names.status_routing_key(status.tenant, status.state)
    await publisher.publish(names.status_exchange(prefix), key, encoder.encode(status),
                            message_id=status.event_id, mandatory=False, gated=gated, timeout=timeout)
    if logged:
        log.info("status published", state=status.state, client_message_id=status.client_message_id,
                 mdr_id=status.mdr_id, reason_code=status.reason_code)


async def publish_status_after_send(publisher: Publisher, prefix: str, status: StatusEvent,
                                    tries: int = 3) -> None:
    """For a status that follows a send Flowroute accepted (the ledger already says so): try a few
    times, each waiting for the confirm (see below); then raise `BrokerUnavailable`,
    so the request goes back to its queue (after a pause) instead of being acked with its status
    lost. When it returns, the ledger shows it done and the
    dispatcher publishes the status then; Flowroute never gets the text again.

    Each try waits up to `AFTER_SEND_CONFIRM_S` for the confirm, not the ordinary publish timeout.
    A confirm that comes late is from a busy broker, not a lost one (a connection the client sees
    lost, reset or missing heartbeats, fails the publish then): with a dispatch queue's worth of
    statuses in flight, a loaded RabbitMQ confirmed them 3-5 s after the publish (bench/README.md).
    Giving up at 5 s published the same status again, so the broker had more to do exactly when it
    was behind: in the dispatch benchmark with limits off, 1,100-9,500 tries of 4,000 timed out and
    were made again, and the requests of those that failed three times came round their queue a
    second time. While it waits, the request stays unacked: a crash meanwhile is a redelivery, as
    before. The price: a node silently cut off holds a status (and its request, in the account's
    prefetch) until the client sees the connection go (heartbeats, or the node pausing itself
    within `net_ticktime`, docs/operations.md), at most this long, before the other route is
    tried: late, not lost."""
    for attempt in range(tries):
        try:
            # Not gated: the liveness gate refuses at once when no confirm came for 3 s, which on a
            # busy broker (a thousand statuses at once) is while it is slow, not down. Each status
            # refused went back to its queue and came round again: a second delivery, ledger read
            # and publish for most messages in the dispatch benchmark (3,931 of 4,000 in one run).
            # Waiting for the confirm costs nothing while it comes.
            # logged=False: "Flowroute accepted" says it.
            await publish_status(publisher, prefix, status, logged=False, gated=False, timeout=AFTER_SEND_CONFIRM_S)
            return
        except BrokerUnavailable as exc:
            log.warning("status publish failed", attempt=attempt + 1, error=str(exc))
            if attempt + 1 < tries:
                await asyncio.sleep(0.5 * (attempt + 1))
    log.warning("status not published yet: the request goes back to its queue and its status is published "
                "when it returns (Flowroute has the text: it is not sent again)",
                mdr_id=status.mdr_id, state=status.state)
    raise BrokerUnavailable(f"the {status.state} status could not be published")
