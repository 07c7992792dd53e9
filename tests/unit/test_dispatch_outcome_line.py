"""One log line per dispatched message (style habit 10): the consumer's outcome line carries
the Flowroute id and segments; the dispatcher adds no line of its own for an accepted send
(each line costs the dispatcher CPU per message: bench/README.md, issue 22)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import msgspec
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from smsbridge.broker import names
from smsbridge.broker.consumer import StageConsumer
from smsbridge.config import RetryPolicy
from smsbridge.events import DispatchRequest, StatusEvent, dispatch_stage_decoder
from smsbridge.flowroute.client import FlowrouteClient
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.metrics import Metrics
from smsbridge.testing.broker import InMemoryPublisher, StubChannel, StubMessage
from smsbridge.workers.dispatcher import DispatchHandler, conversation_of, limiters_for
from tests.support.ledger import open_ledger
from tests.support.settings import DID_MAIN, settings, with_flowroute

TAKING_OVER = "sending for the account: counting the attempts before us"


async def test_an_accepted_send_is_one_outcome_line_with_its_flowroute_id(
        tmp_path: Path, flowroute: FlowrouteSimulator) -> None:
    config = with_flowroute(settings(prefix="unit"), flowroute.url)
    publisher = InMemoryPublisher()
    queue_name = names.stage_queue("unit", names.dispatch_stage("test"))
    request = DispatchRequest(tenant="acme", config_id="main", client_message_id="c-one-line", from_extension="101",
                              from_=DID_MAIN, to="+12065550199", body="your table is ready")
    async with open_ledger("sqlite", tmp_path) as ledger, aiohttp.ClientSession() as http:
        handler = DispatchHandler(config, publisher, FlowrouteClient(http, base_url=flowroute.url, timeout_s=5),
                                  limiters_for(config), Metrics(), ledger)
        stage = StageConsumer(stage="dispatch.test", queue_name=queue_name, prefix="unit",
                              decoder=dispatch_stage_decoder, handler=handler, publisher=publisher,
                              policy=RetryPolicy(max_attempts=3, base_delay_s=1.0, max_delay_s=10.0),
                              metrics=Metrics(), order_key=conversation_of)
        channel = StubChannel()
        await stage.start(channel)  # type: ignore[arg-type]
        assert await ledger.record_request(request)
        with capture_logs(processors=[merge_contextvars]) as lines:  # as production merges them
            delivered = await channel.queues[queue_name].deliver(StubMessage(
                body=msgspec.json.encode(request), routing_key=queue_name, message_id="m-1"))
    assert delivered.settled == "ack"
    (status,) = [msgspec.json.decode(p.body, type=StatusEvent) for p in publisher.to(names.status_exchange("unit"))]
    assert status.state == "accepted" and status.mdr_id is not None
    per_message = [line for line in lines if line["event"] != TAKING_OVER]  # once per account, not per message
    assert [line["event"] for line in per_message] == ["message processed"]
    (line,) = per_message
    assert (line["outcome"], line["mdr_id"], line["segments"]) == ("done", status.mdr_id, 1)
