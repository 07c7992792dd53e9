"""The receiver's answers: 200 only after the confirm, plain errors otherwise."""

from __future__ import annotations

import aiohttp
import msgspec
from aio_pika.abc import AbstractChannel

from smsbridge.broker import names
from smsbridge.sandbox.pbx import FakePbx
from tests.conftest import StartBridge
from tests.integration.test_inbound_flow import hook_url, post
from tests.support.broker import header, take
from tests.support.fixtures import raw_payload
from tests.support.settings import TOKEN, settings
from tests.support.tcpproxy import TcpProxy
from tests.support.wait import eventually


async def test_wrong_token_and_unknown_config_get_the_same_404(
    start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str
) -> None:
    bridge = await start_bridge(settings(prefix=prefix))
    wrong_token = await post(http, hook_url(bridge.receiver_url, token="x" * len(TOKEN)), b"{}")
    unknown = await post(http, hook_url(bridge.receiver_url, config="nope"), b"{}")
    assert wrong_token == unknown == (404, {"error": "not_found", "detail": "no such webhook"})
    async with http.get(f"{bridge.receiver_url}/metrics") as r:  # counted by status, as docs/operations.md says
        assert 'smsbridge_webhooks_total{config="unknown",result="404"} 2.0' in await r.text()


async def test_not_json_is_400_with_a_json_body(
    start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str
) -> None:
    bridge = await start_bridge(settings(prefix=prefix))
    status, body = await post(http, hook_url(bridge.receiver_url), b"to=1206&from=1425")
    assert status == 400 and body["error"] == "invalid_json"


async def test_oversized_body_is_413(start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str) -> None:
    bridge = await start_bridge(settings(prefix=prefix))
    status, body = await post(http, hook_url(bridge.receiver_url), b'{"x": "' + b"a" * 70_000 + b'"}')
    assert status == 413 and body == {"error": "too_large", "detail": "body exceeds 65536 bytes"}


async def test_unknown_shape_is_parked_with_raw_body_and_reason(
    start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str, channel: AbstractChannel
) -> None:
    bridge = await start_bridge(settings(prefix=prefix))
    raw = b'{"event": "number.ported", "number": "12065550100"}'
    status, body = await post(http, hook_url(bridge.receiver_url), raw)
    assert status == 200 and body["status"] == "parked"
    (dead,) = await take(channel, names.dead_queue(prefix))
    assert dead.body == raw
    assert header(dead, names.H_STAGE) == "receiver" and header(dead, names.H_CONFIG) == "main"
    assert header(dead, names.H_REASON_CODE) == "unknown_shape"
    assert "neither a Flowroute message nor a delivery receipt" in header(dead, names.H_REASON)
    metrics = bridge.metrics.render().decode()
    assert 'smsbridge_webhooks_parked_total{config="main",reason="unknown_shape"} 1.0' in metrics


async def test_text_to_a_did_of_another_configuration_is_parked(
    start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str, channel: AbstractChannel
) -> None:
    bridge = await start_bridge(settings(prefix=prefix))
    raw = raw_payload("sms_jsonapi_2024").replace(b'"12065550100"', b'"13125550100"')
    status, _ = await post(http, hook_url(bridge.receiver_url), raw)
    assert status == 200
    (dead,) = await take(channel, names.dead_queue(prefix))
    assert header(dead, names.H_REASON) == "+1******0100 is not a DID of SMS configuration 'main'"  # masked


async def test_health_readiness_and_metrics(
    start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str
) -> None:
    bridge = await start_bridge(settings(prefix=prefix))
    async with http.get(f"{bridge.receiver_url}/healthz") as r:
        assert r.status == 200
    async with http.get(f"{bridge.receiver_url}/readyz") as r:
        assert r.status == 200
        assert await r.json() == {"ready": True, "checks": {"broker_connected": True, "broker_answering": True,
                                                        "topology_declared": True, "ledger_usable": True}}
    async with http.get(f"{bridge.receiver_url}/metrics") as r:
        assert "smsbridge_webhooks_total" in await r.text()


async def test_broker_down_gives_503_and_the_same_webhook_succeeds_once_it_is_back(
    start_bridge: StartBridge, pbx: FakePbx, http: aiohttp.ClientSession, prefix: str
) -> None:
    proxy = TcpProxy("127.0.0.1", 5672)
    await proxy.start()
    base = settings(prefix=prefix, pbx_url=pbx.url)
    bridge = await start_bridge(msgspec.structs.replace(base, broker=msgspec.structs.replace(
        base.broker, urls=[proxy.url], publish_timeout_s=1.0)))
    url, raw = hook_url(bridge.receiver_url), raw_payload("legacy_flat_mdr1")
    await proxy.cut()
    status, body = await post(http, url, raw)
    assert status == 503 and body["error"] == "unavailable"
    async with http.get(f"{bridge.receiver_url}/readyz") as r:
        assert r.status == 503
    await proxy.restore()
    for _ in range(100):  # the robust connection reconnects on its own
        status, _ = await post(http, url, raw)
        if status == 200:
            break
        await __import__("asyncio").sleep(0.2)
    assert status == 200
    await expect_once_per_extension(pbx, "mdr1-febb118b9b034338adfc662a8c02fd88")
    await proxy.cut()


async def test_losing_one_broker_node_fails_over_to_the_next_url(
    start_bridge: StartBridge, pbx: FakePbx, http: aiohttp.ClientSession, prefix: str
) -> None:
    node_a, node_b = TcpProxy("127.0.0.1", 5672), TcpProxy("127.0.0.1", 5672)
    await node_a.start()
    await node_b.start()
    base = settings(prefix=prefix, pbx_url=pbx.url)
    bridge = await start_bridge(msgspec.structs.replace(base, broker=msgspec.structs.replace(
        base.broker, urls=[node_a.url, node_b.url], publish_timeout_s=1.0)))
    url, raw = hook_url(bridge.receiver_url), raw_payload("legacy_flat_mdr1")
    await node_a.cut()  # node A is gone for good; B is still there

    async def accepted() -> bool:  # 503 until the connection has moved to node B
        return (await post(http, url, raw))[0] == 200

    await eventually(accepted, timeout=90, interval=0.2, what="a webhook accepted through node B")
    assert bridge.connection is not None and bridge.connection.url.port == node_b.port
    await expect_once_per_extension(pbx, "mdr1-febb118b9b034338adfc662a8c02fd88")
    await node_b.cut()


async def expect_once_per_extension(pbx: FakePbx, mdr_id: str) -> None:
    """The text reached both extensions of the DID's rule (101 and 102), each exactly once, however
    many times Flowroute had to resend it."""
    deliveries = await pbx.wait_for(2, timeout=15)
    assert sorted(d["extension"] for d in deliveries) == ["101", "102"], deliveries
    assert {d["mdr_id"] for d in deliveries} == {mdr_id}
