"""Issue 16 point 5, the log audit on real processes: `smsbridge run` driven with valid and
hostile input at both ends, and the Flowroute simulator; afterwards no line of their output
holds a secret, a full phone number or a body, and every line is JSON (aiohttp's and
aio-pika's records included). The in-process suites audit their own logs too
(tests/integration/test_fuzz.py)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import aiohttp
import msgspec
import pytest
from aio_pika.abc import AbstractChannel

from smsbridge.broker import topology
from smsbridge.events import OutboundRequest
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.pbx_client import publish_request
from smsbridge.sandbox.pbx import FakePbx
from tests.support import hostile, processes
from tests.support.fixtures import payload
from tests.support.log_audit import audit, read_lines
from tests.support.processes import logged
from tests.support.settings import free_port

pytestmark = pytest.mark.e2e

SECRETS = [*processes.ENV.values()]
NUMBERS = ["2065550199", "4255550123", "2065550100"]


def inbound(body: str, sender: str = "12065550199") -> bytes:
    doc = payload("sms_jsonapi_2024")
    doc["data"]["attributes"].update(body=body, **{"from": sender})
    return msgspec.json.encode(doc)


async def wait_logged(log: Path, timeout: float = 30.0, **fields: object) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not logged(log.read_text(), **fields):
        assert loop.time() < deadline, f"never logged {fields}:\n{log.read_text()[-3000:]}"
        await asyncio.sleep(0.1)


async def test_a_running_bridge_logs_no_secret_number_or_body_and_only_json(
    amqp_url: str, prefix: str, channel: AbstractChannel, pbx: FakePbx, flowroute: FlowrouteSimulator,
    tmp_path: Path,
) -> None:
    port = free_port()
    config = processes.write_config(tmp_path / "bridge.toml", amqp_url=amqp_url, prefix=prefix, port=port,
                                    ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}", ledger_schema=None,
                                    api_base=flowroute.url, pbx_url=pbx.url)
    log = tmp_path / "bridge.log"
    proc = await processes.start(config, log)
    try:
        await processes.wait_ready(proc, log, url=f"http://127.0.0.1:{port}/readyz")
        url = f"http://127.0.0.1:{port}/webhooks/flowroute/main/{processes.ENV['E2E_TOKEN']}"
        async with aiohttp.ClientSession() as http:
            for body in (inbound(f"{hostile.BODY_MARK} call +14255550123"), inbound("STOP"),
                         inbound("x", sender="1" * 40), b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}"):
                async with http.post(url, data=body) as response:
                    assert response.status in (200, 400)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # not HTTP at all
        writer.write(b"\x16\x03\x01 garbage +12065550199\r\n\r\n")
        await writer.drain()
        await reader.read()
        writer.close()
        await topology.declare(channel, prefix, delivery_limit=20, accounts=["test"])
        for to in ("+12065550199", "1" * 200_000, "+1206555019"):
            await publish_request(channel, prefix, OutboundRequest(
                tenant="acme", client_message_id=f"audit-{len(to)}", from_extension="101", to=to,
                body=f"{hostile.BODY_MARK} your table"))
        await pbx.wait_for(1)
        await wait_logged(log, event="message dead-lettered", reason_code="invalid_field")
        await wait_logged(log, event="message dead-lettered", reason_code="invalid_number")
        await wait_logged(log, event="message processed", stage="dispatch.test", outcome="done")
    finally:
        await processes.stop(proc)
    lines = read_lines(log)
    assert len(lines) > 10
    assert audit(lines, secrets=SECRETS, numbers=NUMBERS, bodies=[hostile.BODY_MARK]) == []


async def test_the_simulator_logs_no_access_key(tmp_path: Path) -> None:
    log = tmp_path / "simulator.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "smsbridge", "simulate", "flowroute", "--port", str(free_port()),
            "--account", "AK-sim-7f3e:SK-sim-9b2c", env=dict(os.environ), stdout=out, stderr=out)
    try:
        await wait_logged(log, event="Flowroute simulator listening")
    finally:
        await processes.stop(proc)
    assert audit(read_lines(log), secrets=["AK-sim-7f3e", "SK-sim-9b2c"], numbers=[], bodies=[]) == []
