"""The `accepted` status of a text Flowroute took is never dropped (nothing silent): when the broker
will not confirm it, the request goes back to its queue, and when it returns the ledger says it was
sent, so its status is published then and Flowroute never gets it a second time."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import msgspec
import pytest

from smsbridge.broker import names
from smsbridge.broker.consumer import MessageContext
from smsbridge.errors import BrokerUnavailable
from smsbridge.events import DispatchRequest, StatusEvent
from smsbridge.flowroute.client import FlowrouteClient
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.metrics import Metrics
from smsbridge.testing.broker import InMemoryPublisher
from smsbridge.workers.dispatcher import DispatchHandler, limiters_for
from tests.support.ledger import open_ledger
from tests.support.settings import DID_MAIN, settings, with_flowroute

CONTEXT = MessageContext(origin_key="dispatch.test", attempt=1)


class StatusesRefused(InMemoryPublisher):
    """A broker that confirms nothing on the status exchange while `statuses_down` is set."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.status_exchange = names.status_exchange(prefix)
        self.statuses_down = False

    async def publish(self, exchange: str, routing_key: str, body: bytes, **kwargs: object) -> None:
        if exchange == self.status_exchange and self.statuses_down:
            raise BrokerUnavailable("publish not confirmed in time (test broker)")
        await super().publish(exchange, routing_key, body, **kwargs)  # type: ignore[arg-type]


async def test_a_status_the_broker_would_not_take_is_published_when_the_request_returns_never_a_resend(
        tmp_path: Path, flowroute: FlowrouteSimulator) -> None:
    config = with_flowroute(settings(prefix="unit"), flowroute.url)
    publisher = StatusesRefused(config.broker.prefix)
    request = DispatchRequest(tenant="acme", config_id="main", client_message_id="c-accepted", from_extension="101",
                              from_=DID_MAIN, to="+12065550199", body="your table is ready")
    async with open_ledger("sqlite", tmp_path) as ledger, aiohttp.ClientSession() as http:
        handler = DispatchHandler(config, publisher, FlowrouteClient(http, base_url=flowroute.url, timeout_s=5),
                                  limiters_for(config), Metrics(), ledger)
        assert await ledger.record_request(request)
        publisher.statuses_down = True
        with pytest.raises(BrokerUnavailable):
            await handler.handle(request, CONTEXT)  # back to the queue, not acked with the status lost
        assert len(flowroute.accounts["AK-test"].attempts) == 1
        publisher.statuses_down = False
        await handler.handle(request, CONTEXT)  # the redelivery
    statuses = [msgspec.json.decode(p.body, type=StatusEvent) for p in publisher.to(publisher.status_exchange)]
    assert [(s.state, s.client_message_id) for s in statuses] == [("accepted", "c-accepted")]
    assert statuses[0].mdr_id is not None
    assert len(flowroute.accounts["AK-test"].attempts) == 1  # Flowroute got it once
