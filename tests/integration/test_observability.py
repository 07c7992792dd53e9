"""Health, readiness and metrics for every role, worker-only processes included."""

from __future__ import annotations

import aiohttp
import msgspec
from aio_pika.abc import AbstractChannel

from smsbridge.bridge import Bridge
from smsbridge.config import ObservabilitySettings
from smsbridge.events import OutboundRequest
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.pbx_client import publish_request
from smsbridge.sandbox.pbx import FakePbx
from tests.conftest import StartBridge
from tests.integration.test_inbound_flow import hook_url, post
from tests.support.fixtures import raw_payload
from tests.support.settings import settings, with_flowroute
from tests.support.wait import eventually


async def scrape(http: aiohttp.ClientSession, base: str) -> str:
    async with http.get(f"{base}/metrics") as response:
        assert response.status == 200
        return await response.text()


async def scraped(http: aiohttp.ClientSession, base: str, line: str) -> bool:
    return line in await scrape(http, base)


async def test_a_worker_only_process_has_its_own_probes_and_metrics(
    prefix: str, channel: AbstractChannel, http: aiohttp.ClientSession,
) -> None:
    base = settings(prefix=prefix)
    worker = Bridge(msgspec.structs.replace(base, observability=ObservabilitySettings(port=0, queue_poll_s=0.2)),
                    roles=["delivery"])
    await worker.start(connect_attempts=3)
    try:
        assert worker.receiver_url is None and worker.health_url is not None
        async with http.get(f"{worker.health_url}/healthz") as response:
            assert response.status == 200
        async with http.get(f"{worker.health_url}/readyz") as response:
            assert (await response.json())["ready"] is True
        async with http.post(f"{worker.health_url}/webhooks/flowroute/main/x", data=b"{}") as response:
            assert response.status in (404, 405)  # no webhook intake on a worker
        gauge = f'smsbridge_queue_messages{{queue="{prefix}.dead-letters"}} 0.0'
        health_url = worker.health_url
        await eventually(lambda: scraped(http, health_url, gauge), what="the queue-depth gauge")
    finally:
        await worker.stop()


async def test_metrics_count_what_happened(
    start_bridge: StartBridge, flowroute: FlowrouteSimulator, pbx: FakePbx, http: aiohttp.ClientSession,
    prefix: str, channel: AbstractChannel,
) -> None:
    bridge = await start_bridge(with_flowroute(settings(prefix=prefix, pbx_url=pbx.url), flowroute.url))
    await post(http, hook_url(bridge.receiver_url), raw_payload("sms_jsonapi_2024"))
    await pbx.wait_for(2)
    await publish_request(channel, prefix, OutboundRequest(tenant="acme", client_message_id="m-1",
                                                           from_extension="101", to="+12065550199", body="hi"))
    url = bridge.receiver_url or ""
    await eventually(lambda: scraped(http, url, "smsbridge_dispatch_latency_seconds_count 1.0"),
                     what="the dispatch counted")
    text = await scrape(http, url)
    assert 'smsbridge_webhooks_total{config="main",result="200"}' in text
    assert 'smsbridge_delivered_total{adapter="http",tenant="acme"} 2.0' in text
    assert 'smsbridge_flowroute_answers_total{account="test",status="202"} 1.0' in text
    assert 'smsbridge_dispatcher_active{account="test"} 1.0' in text
    assert "smsbridge_inbound_latency_seconds_count 2.0" in text
    assert "smsbridge_dispatch_latency_seconds_count 1.0" in text
    assert 'smsbridge_rate_limiter_wait_seconds_total{account="test"}' in text
    assert 'smsbridge_messages_total{outcome="done",stage="delivery"} 2.0' in text
