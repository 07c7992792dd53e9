"""Issue 16's bounded fuzz runs against a running bridge: hostile webhooks at the receiver and
hostile outbound requests at the outbound stage, then the log audit over everything they logged.

`make test` runs a short seeded form; `make fuzz` the long one (SMSBRIDGE_FUZZ_BODIES=10000 each).
Each test runs on both ledgers and prints its figures: bodies sent, answers by status, 500s,
handler crashes, broker disconnects. SMSBRIDGE_FUZZ_SEED replays a run.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import msgspec
import pytest
import structlog
from aio_pika.abc import AbstractChannel

from smsbridge import logs
from smsbridge.bridge import Bridge
from smsbridge.broker import names
from smsbridge.config import LedgerSettings, LoggingSettings
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.sandbox.pbx import FakePbx
from tests.integration.test_inbound_flow import hook_url
from tests.support import hostile
from tests.support.broker import depth
from tests.support.fixtures import raw_payload
from tests.support.log_audit import audit, read_lines
from tests.support.settings import ACCOUNT, TOKEN, settings, sms_config, with_flowroute

BODIES = int(os.environ.get("SMSBRIDGE_FUZZ_BODIES", "400"))
SEED = int(os.environ.get("SMSBRIDGE_FUZZ_SEED", "1616"))
SECRETS = [TOKEN, "SK-test", "Bearer pbx-secret", "AK-test"]
NUMBERS = ["2065550199", "4255550123", "2065550177", "2065550100", "2065550101"]


class Disconnects:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, *_: Any) -> None:
        self.count += 1


@pytest.fixture
async def logged(tmp_path: Path) -> AsyncIterator[Path]:
    """Every line the bridge logs during the test, as production writes them (JSON, PII masked)."""
    path = tmp_path / "bridge.log"
    with path.open("w", encoding="utf-8") as stream:
        logs.configure(LoggingSettings(format="json", show_pii=False), stream=stream)
        yield path
    structlog.reset_defaults()



@pytest.fixture
async def fuzzed_bridge(ledger_settings: LedgerSettings, start_bridge: Any, pbx: FakePbx, prefix: str, logged: Path,
                        ) -> AsyncIterator[tuple[Bridge, Disconnects]]:
    # ledger_settings first: set up before start_bridge, so its schema is dropped after the bridge stopped
    simulator = FlowrouteSimulator({"AK-test": "SK-test"}, sms_per_second=None, mms_per_second=None)
    await simulator.start()
    base = settings(prefix=prefix, pbx_url=pbx.url, ledger=ledger_settings)
    base = msgspec.structs.replace(base, sms_configs=[sms_config(sms_per_second=10_000, mms_per_second=10_000)])
    bridge: Bridge = await start_bridge(with_flowroute(base, simulator.url))
    disconnects = Disconnects()
    assert bridge.connection is not None
    bridge.connection.close_callbacks.add(disconnects)
    bridge.connection.reconnect_callbacks.add(disconnects)
    yield bridge, disconnects
    await simulator.stop()


async def wait_drained(channel: AbstractChannel, prefix: str, timeout: float = 600) -> None:
    queues = [names.stage_queue(prefix, s) for s in ("inbound", "outbound", names.dispatch_stage(ACCOUNT))]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        depths = [await depth(channel, q) for q in queues]
        if not any(depths):
            return
        assert loop.time() < deadline, f"not drained: {dict(zip(queues, depths, strict=True))}"
        await asyncio.sleep(0.2)


def crashes(lines: list[str]) -> int:
    return sum(1 for line in lines if '"handler crashed"' in line or '"Error handling request"' in line)


async def test_fuzzed_webhooks_get_no_500_no_crash_no_disconnect(
    fuzzed_bridge: tuple[Bridge, Disconnects], http: aiohttp.ClientSession, logged: Path, prefix: str,
    channel: AbstractChannel,
) -> None:
    bridge, disconnects = fuzzed_bridge
    url = hook_url(bridge.receiver_url)
    rng = random.Random(SEED)
    statuses: Counter[int] = Counter()
    unnamed: list[str] = []
    valid_failures: list[int] = []
    slowest: list[tuple[float, int, bytes]] = []
    loop = asyncio.get_running_loop()
    bodies = (hostile.webhook_body(rng) for _ in range(BODIES))  # shared: each worker takes the next

    async def worker() -> None:
        """One of 16 clients: the next body, its answer, and now and then a real webhook."""
        for n, (body, headers) in enumerate(bodies):
            started = loop.time()
            async with http.post(url, data=body, headers=headers) as response:
                statuses[response.status] += 1
                answer = await response.read()
            slowest.append((loop.time() - started, response.status, body[:60]))
            if response.status == 400 and b'"invalid_field"' in answer and b'"field"' not in answer:
                unnamed.append(answer.decode(errors="replace")[:200])
            if n % 100 == 0:  # the receiver is still there for everyone
                async with http.post(url, data=raw_payload("sms_jsonapi_2024")) as response:
                    if response.status != 200:
                        valid_failures.append(response.status)

    await asyncio.gather(*(worker() for _ in range(16)))
    await wait_drained(channel, prefix)
    lines = read_lines(logged)
    slowest.sort(reverse=True)
    print(f"\nslowest answers: {[(round(t, 2), status, head) for t, status, head in slowest[:5]]}")
    backend = bridge.settings.ledger.url.split(":")[0]
    print(f"\nfuzz receiver ({backend}): seed {SEED}, {BODIES} bodies, answers {dict(sorted(statuses.items()))}, "
          f"500s {statuses[500]}, crashes {crashes(lines)}, disconnects {disconnects.count}")
    assert sum(statuses.values()) == BODIES
    assert statuses[500] == 0 and not [s for s in statuses if s >= 500]
    assert crashes(lines) == 0 and disconnects.count == 0
    assert unnamed == [] and valid_failures == []
    assert audit(lines, secrets=SECRETS, numbers=NUMBERS, bodies=[hostile.BODY_MARK]) == []


async def test_fuzzed_outbound_requests_are_refused_by_name_with_no_crash_no_disconnect(
    fuzzed_bridge: tuple[Bridge, Disconnects], logged: Path, prefix: str, channel: AbstractChannel, amqp_url: str,
) -> None:
    bridge, disconnects = fuzzed_bridge
    rng = random.Random(SEED)
    async with await aio_pika.connect_robust(amqp_url) as pbx:
        publisher = await pbx.channel(publisher_confirms=True)
        exchange = await publisher.get_exchange(names.requests_exchange(prefix), ensure=False)
        for start in range(0, BODIES, 200):
            await asyncio.gather(*(
                exchange.publish(aio_pika.Message(hostile.outbound_body(rng), headers={
                    names.H_ORIGIN_KEY: "outbound.beta"}), routing_key="outbound.acme", timeout=30)
                for _ in range(start, min(start + 200, BODIES))))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 600
    while True:  # until every request has its outcome line (a queue's depth omits those in flight)
        lines = read_lines(logged)
        outbound = [json.loads(line) for line in lines if '"stage":"outbound"' in line]
        done = sum(1 for e in outbound if e.get("event") == "message processed" and e.get("outcome") == "done")
        dead = Counter(e.get("reason_code") for e in outbound if e.get("event") == "message dead-lettered")
        if done + sum(dead.values()) >= BODIES or loop.time() > deadline:
            break
        await asyncio.sleep(0.2)
    await wait_drained(channel, prefix)
    lines = read_lines(logged)
    refusals = [e for e in outbound
                if e.get("event") == "message dead-lettered" and e["reason_code"] == "invalid_field"]
    backend = bridge.settings.ledger.url.split(":")[0]
    print(f"\nfuzz outbound ({backend}): seed {SEED}, {BODIES} requests, allowed {done}, dead-lettered {dict(dead)}, "
          f"crashes {crashes(lines)}, disconnects {disconnects.count}")
    assert done + sum(dead.values()) == BODIES  # each one accounted for, once
    assert crashes(lines) == 0 and disconnects.count == 0
    assert [e for e in refusals if not str(e.get("reason", "")).startswith("field '")] == []
    assert dead["exhausted"] == 0  # nothing was retried to death (that would be a crash loop)
    assert audit(lines, secrets=SECRETS, numbers=NUMBERS, bodies=[hostile.BODY_MARK]) == []
    assert bridge.connection is not None and not bridge.connection.is_closed
