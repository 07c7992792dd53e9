"""The `accepted` status after a send waits for a late confirm instead of publishing it again.

A busy broker confirms late: with a dispatch queue's worth of statuses in flight, a loaded
RabbitMQ took 3-5 s, past the 5 s publish timeout for many. Each try that gave up published the
same status again (more work for a broker already behind), and after three the request went
back round its queue. Here the broker (behind a proxy that holds what it sends) confirms later
than the publish timeout: the status is published once and the request is done."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import aiohttp
import msgspec
import pytest
from aio_pika.abc import AbstractChannel

from smsbridge.broker import names, topology
from smsbridge.broker.consumer import MessageContext
from smsbridge.broker.publisher import Publisher
from smsbridge.events import DispatchRequest, StatusEvent
from smsbridge.flowroute.client import FlowrouteClient
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.metrics import Metrics
from smsbridge.workers.dispatcher import DispatchHandler, limiters_for
from tests.support.broker import scratch_queue
from tests.support.ledger import open_ledger
from tests.support.settings import ACCOUNT, DID_MAIN, settings, with_flowroute
from tests.support.tcpproxy import TcpProxy

PUBLISH_TIMEOUT_S = 0.3
LAG_S = 1.0  # the broker's confirm reaches us this late: over three times the publish timeout


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    node = TcpProxy("127.0.0.1", 5672)
    await node.start()
    yield node
    await node.cut()


async def test_a_status_confirmed_later_than_the_publish_timeout_is_published_once(
        tmp_path: Path, channel: AbstractChannel, prefix: str, proxy: TcpProxy, flowroute: FlowrouteSimulator) -> None:
    await topology.declare(channel, prefix, delivery_limit=20, accounts=[ACCOUNT])
    statuses = await scratch_queue(channel, f"{prefix}.test-status")
    await statuses.bind(names.status_exchange(prefix), routing_key="status.acme.#")
    config = with_flowroute(settings(prefix=prefix), flowroute.url)
    request = DispatchRequest(tenant="acme", config_id="main", client_message_id="c-late-confirm",
                              from_extension="101", from_=DID_MAIN, to="+12065550199", body="your table is ready")
    connection = await aio_pika.connect_robust(proxy.url)
    try:
        publisher = Publisher(await connection.channel(), timeout=PUBLISH_TIMEOUT_S)
        async with open_ledger("sqlite", tmp_path) as ledger, aiohttp.ClientSession() as http:
            handler = DispatchHandler(config, publisher, FlowrouteClient(http, base_url=flowroute.url, timeout_s=5),
                                      limiters_for(config), Metrics(), ledger)
            assert await ledger.record_request(request)
            proxy.lag_s = LAG_S
            # Returns (the request is acked) only once the status is confirmed; before, the three
            # tries each gave up after the publish timeout and this raised BrokerUnavailable.
            await handler.handle(request, MessageContext(origin_key="dispatch.test", attempt=1))
    finally:
        proxy.lag_s = 0.0
        await connection.close()
    assert len(flowroute.accounts["AK-test"].attempts) == 1
    first = await statuses.get(fail=False, no_ack=True)
    assert first is not None
    status = msgspec.json.decode(first.body, type=StatusEvent)
    assert (status.state, status.client_message_id) == ("accepted", "c-late-confirm")
    # Every publish the handler made was confirmed before it returned: a second copy would be here now.
    assert await statuses.get(fail=False, no_ack=True) is None
