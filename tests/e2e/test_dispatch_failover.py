"""Two dispatcher processes on one Flowroute account: only one sends, the limit holds, and
killing the active one (SIGKILL) hands over to the standby with nothing lost and nothing sent
twice: never more than 5 attempts in any 1000 ms at Flowroute, across the takeover too."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aio_pika.abc import AbstractChannel

from smsbridge.broker import topology
from smsbridge.events import OutboundRequest
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.pbx_client import publish_request
from smsbridge.testing.config import bridge_document, merge, write
from tests.support import processes
from tests.support.wait import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture
async def two_dispatchers(
    tmp_path: Path, amqp_url: str, prefix: str, flowroute: FlowrouteSimulator, channel: AbstractChannel
) -> AsyncIterator[tuple[asyncio.subprocess.Process, asyncio.subprocess.Process, Path]]:
    doc = bridge_document(amqp_url=amqp_url, prefix=prefix, ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
                          api_base=flowroute.url, pbx_exchange=f"{prefix}.pbx")
    config = write(tmp_path / "bridge.toml", merge(doc, {"receiver": None, "inbound_rules": None}))
    await topology.declare(channel, prefix, delivery_limit=20, accounts=["test"])
    logs = [tmp_path / "dispatcher-1.log", tmp_path / "dispatcher-2.log"]
    first = await processes.start(config, logs[0], "dispatcher", "outbound")
    await processes.wait_ready(first, logs[0])  # subscribed first: the active consumer
    second = await processes.start(config, logs[1], "dispatcher", "outbound")
    await processes.wait_ready(second, logs[1])
    try:
        yield first, second, logs[0]
    finally:
        for proc in (first, second):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
        await channel.exchange_delete(f"{prefix}.pbx")


async def test_failover_keeps_the_limit_and_loses_nothing(
    two_dispatchers: tuple[asyncio.subprocess.Process, asyncio.subprocess.Process, Path],
    flowroute: FlowrouteSimulator, channel: AbstractChannel, prefix: str,
) -> None:
    first, second, log = two_dispatchers
    ids = [f"f-{n}" for n in range(30)]
    for client_id in ids:
        await publish_request(channel, prefix, OutboundRequest(
            tenant="acme", client_message_id=client_id, from_extension="101", to="+12065550199", body=client_id))
    await eventually(lambda: len(flowroute.messages) >= 10, timeout=90, what="10 texts sent")
    assert first.returncode is None and second.returncode is None, log.read_text()
    first.kill()  # SIGKILL the active dispatcher mid-stream
    await first.wait()
    await eventually(lambda: set(sent(flowroute)) >= set(ids), timeout=120, what="every text sent")
    assert set(sent(flowroute)) == set(ids), f"lost: {set(ids) - set(sent(flowroute))}"
    assert flowroute.max_in_window("AK-test") <= 5  # every 1000 ms window, the takeover's included
    assert 429 not in flowroute.statuses()
    # Crash-safe dispatch: what the dead one sent but never acked is looked up, not sent again.
    assert sorted(sent(flowroute)) == sorted(ids), "sent twice"


def sent(flowroute: FlowrouteSimulator) -> list[str]:
    return [r["body"]["data"]["attributes"]["body"] for r in flowroute.requests if r["status"] == 202]
