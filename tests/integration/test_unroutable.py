"""An unroutable publish on the bridge's real channels (confirms on, `on_return_raises=True`) is
an answer from the broker: it fails at once as BrokerUnavailable, whether or not the caller gave
a message id (aiormq gives one of its own), and does not mark the route as failed. Before, aiormq's
PublishError was taken for a dead route and the publish tried on every route until the timeout."""

from __future__ import annotations

import time

import pytest
from aio_pika.abc import AbstractRobustConnection

from smsbridge.broker import names, topology
from smsbridge.broker.publisher import Publisher
from smsbridge.errors import BrokerUnavailable
from tests.support.settings import ACCOUNT

TIMEOUT_S = 5.0


@pytest.mark.parametrize("message_id", [None, "evt-1"], ids=["no message id", "message id"])
async def test_an_unroutable_publish_fails_at_once_and_leaves_the_routes_answering(
        amqp: AbstractRobustConnection, prefix: str, message_id: str | None) -> None:
    first = await amqp.channel(publisher_confirms=True, on_return_raises=True)
    second = await amqp.channel(publisher_confirms=True, on_return_raises=True)
    try:
        await topology.declare(first, prefix, delivery_limit=20, accounts=[ACCOUNT])
        publisher = Publisher(first, timeout=TIMEOUT_S, connected=lambda: True)
        publisher.add_route(second, connected=lambda: True, name="standby")
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match="unroutable"):
            await publisher.publish(names.work_exchange(prefix), f"{prefix}.no-such-queue", b"{}",
                                    message_id=message_id)
        assert time.monotonic() - started < TIMEOUT_S / 2
        assert all(route.answering(publisher.STALE_AFTER_S) for route in publisher.routes)
        # the same routes still store what has somewhere to go
        await publisher.to_stage(prefix, "inbound", b"{}", message_id="evt-2")
    finally:
        await topology.delete(first, prefix, accounts=[ACCOUNT])
        await first.close()
        await second.close()
