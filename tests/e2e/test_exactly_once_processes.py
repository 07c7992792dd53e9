"""Each text once, across real processes, on both ledger backends:
- the same inbound webhook posted 5 times to two receiver processes → the PBX gets it once;
- a dispatcher SIGKILLed after Flowroute accepted but before the ack → still one message;
- a dispatcher SIGKILLed before the POST → the text is sent once, by the next dispatcher."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue

from smsbridge.events import DispatchRequest, OutboundRequest
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.ledger import Ledger
from smsbridge.pbx_client import publish_request, watch
from smsbridge.sandbox.pbx import FakePbx
from tests.support import processes
from tests.support.fixtures import raw_payload
from tests.support.ledger import BACKENDS, ledger_location
from tests.support.processes import logged
from tests.support.settings import free_port
from tests.support.wait import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture(params=BACKENDS)
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, str | None]]:
    async with ledger_location(request.param, tmp_path) as location:
        yield location



async def test_same_webhook_five_times_to_two_receivers_reaches_the_pbx_once(
    ledger: tuple[str, str | None], tmp_path: Path, amqp_url: str, prefix: str, pbx: FakePbx,
    channel: AbstractChannel,
) -> None:
    url, schema = ledger
    ports = [free_port(), free_port()]
    procs = []
    for n, port in enumerate(ports):
        config = processes.write_config(tmp_path / f"r{n}.toml", amqp_url=amqp_url, prefix=prefix, port=port,
                                        ledger_url=url, ledger_schema=schema, pbx_url=pbx.url)
        procs.append(await processes.start(config, tmp_path / f"r{n}.log"))
    try:
        for n, (proc, port) in enumerate(zip(procs, ports, strict=True)):
            await processes.wait_ready(proc, tmp_path / f"r{n}.log", url=f"http://127.0.0.1:{port}/readyz")
        body = raw_payload("sms_jsonapi_2024")
        answers = []
        async with aiohttp.ClientSession() as http:
            for n in range(5):
                port = ports[n % 2]
                async with http.post(f"http://127.0.0.1:{port}/webhooks/flowroute/main/{processes.ENV['E2E_TOKEN']}",
                                     data=body) as response:
                    answers.append((response.status, (await response.json())["status"]))
                await asyncio.sleep(0.3)  # Flowroute resends 30 s apart; the first is through by then
        assert answers == [(200, "accepted")] * 5, answers  # every copy acknowledged, so Flowroute stops
        await pbx.wait_for(1)
        await asyncio.sleep(1.0)
        assert len(pbx.received) == 1
    finally:
        for proc in procs:
            assert await processes.stop(proc) == 0


async def five_in_flight(url: str, schema: str | None) -> None:
    """The ledger as a dispatcher that died with five requests on their way left it: the next one
    holds every slot of the account for a window and the grace after it takes over."""
    ledger = Ledger.open(url, schema_name=schema)
    try:
        await ledger.upgrade()
        for n in range(5):
            row, mine = await ledger.claim_send(DispatchRequest(
                tenant="acme", config_id="main", client_message_id=f"earlier-{n}", from_extension="101",
                from_="+12065550100", to=f"+1206555{n:04d}", body="earlier"), gap=timedelta(0))
            assert mine and row.dispatch_state == "sending"
    finally:
        await ledger.close()


async def _dispatcher(tmp_path: Path, name: str, config: Path) -> asyncio.subprocess.Process:
    log = tmp_path / f"{name}.log"
    proc = await processes.start(config, log, "outbound", "dispatcher")
    await processes.wait_ready(proc, log)
    return proc


async def test_killed_after_flowroute_accepted_but_before_the_ack_sends_once(
    ledger: tuple[str, str | None], tmp_path: Path, amqp_url: str, prefix: str, flowroute: FlowrouteSimulator,
    channel: AbstractChannel, statuses: AbstractQueue,
) -> None:
    url, schema = ledger
    config = processes.write_config(tmp_path / "d.toml", amqp_url=amqp_url, prefix=prefix, port=free_port(),
                                    ledger_url=url, ledger_schema=schema, api_base=flowroute.url)
    first = await _dispatcher(tmp_path, "first", config)
    flowroute.faults.respond_delay_s = 3.0  # Flowroute takes it, the answer is slow to come
    await publish_request(channel, prefix, OutboundRequest(
        tenant="acme", client_message_id="crash-1", from_extension="101", to="+12065550199", body="once only"))
    await eventually(lambda: bool(flowroute.messages), what="the send reaching Flowroute")
    assert len(flowroute.messages) == 1
    first.kill()  # SIGKILL: no ack, no status; the broker redelivers
    await first.wait()
    flowroute.faults.respond_delay_s = 0.0
    second = await _dispatcher(tmp_path, "second", config)
    try:
        (accepted,) = await watch(statuses, "crash-1", until=frozenset({"accepted"}), timeout=20)
        assert len(flowroute.messages) == 1
        assert accepted.mdr_id == next(iter(flowroute.messages))
        assert logged((tmp_path / "second.log").read_text(), found=True)  # it looked before sending
    finally:
        assert await processes.stop(second) == 0


async def test_killed_before_the_post_sends_once(
    ledger: tuple[str, str | None], tmp_path: Path, amqp_url: str, prefix: str, flowroute: FlowrouteSimulator,
    channel: AbstractChannel, statuses: AbstractQueue,
) -> None:
    url, schema = ledger
    config = processes.write_config(tmp_path / "d.toml", amqp_url=amqp_url, prefix=prefix, port=free_port(),
                                    ledger_url=url, ledger_schema=schema, api_base=flowroute.url)
    await five_in_flight(url, schema)  # so the first dispatcher holds the message 1.26 s for a slot
    first = await _dispatcher(tmp_path, "first", config)
    await publish_request(channel, prefix, OutboundRequest(
        tenant="acme", client_message_id="crash-2", from_extension="101", to="+12065550199", body="once only"))
    await eventually(lambda: logged((tmp_path / "first.log").read_text(),
                                    event="sending for the account: counting the attempts before us", in_flight=5),
                     what="the first dispatcher holding the message")
    first.kill()
    await first.wait()
    assert flowroute.requests == []
    second = await _dispatcher(tmp_path, "second", config)
    try:
        (accepted,) = await watch(statuses, "crash-2", until=frozenset({"accepted"}), timeout=20)
        assert len(flowroute.messages) == 1 and len(flowroute.requests) == 1
        assert accepted.mdr_id == next(iter(flowroute.messages))
    finally:
        assert await processes.stop(second) == 0
