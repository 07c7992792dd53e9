"""A broker that confirms our publishes is answering, even while the liveness probe's own confirm
waits behind a flood of them (the dispatch benchmark with limits off: readiness went false and
most `accepted` statuses were dropped as "broker not answering", after Flowroute took the texts)."""

from __future__ import annotations

from aio_pika.abc import AbstractChannel

from smsbridge.broker import names, topology
from smsbridge.broker.liveness import BrokerLiveness
from smsbridge.broker.publisher import Publisher
from tests.support.settings import ACCOUNT


async def test_a_confirmed_publish_counts_as_the_broker_answering(channel: AbstractChannel, prefix: str) -> None:
    await topology.declare(channel, prefix, delivery_limit=20, accounts=[ACCOUNT])
    publisher = Publisher(channel, timeout=5.0)
    liveness = BrokerLiveness(publisher, prefix)
    publisher.gate = liveness.responsive
    (route,) = publisher.routes
    route.last_ok -= 10  # no probe confirmed for 10 s
    assert not liveness.responsive()
    await publisher.publish(names.status_exchange(prefix), "status.acme.accepted", b"{}", mandatory=False,
                            gated=False)
    assert liveness.responsive()
