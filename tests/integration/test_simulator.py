"""The Flowroute simulator behaves as flowroute-api.md describes (a real server on loopback)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.flowroute.webhook import ParsedMessage, parse_webhook

AUTH = aiohttp.encode_basic_auth("AK-test", "SK-test")
SMS = {"data": {"type": "message", "attributes": {"to": "12065550199", "from": "+12065550100", "body": "hi"}}}
MMS = {"data": {"type": "message", "attributes": {"to": "12065550199", "from": "12065550100", "body": "",
                                                  "media_urls": ["https://cdn.example/a.png"], "is_mms": "true"}}}


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": AUTH}) as session:
        yield session


async def send(client: aiohttp.ClientSession, url: str, body: Any = SMS, version: str = "v2.2") -> tuple[int, Any]:
    async with client.post(f"{url}/{version}/messages", json=body) as response:
        return response.status, await response.json()


async def test_202_with_an_mdr2_id_on_both_versions_and_both_body_shapes(
    flowroute: FlowrouteSimulator, client: aiohttp.ClientSession
) -> None:
    status, body = await send(client, flowroute.url)
    assert status == 202 and body["data"]["id"].startswith("mdr2-") and len(body["data"]["id"]) == 37
    compact = {"from": "12065550100", "to": "12065550199", "body": "Thanks for the picture!"}
    assert (await send(client, flowroute.url, compact, "v2.1"))[0] == 202


async def test_wrong_credentials_get_flowroutes_401(flowroute: FlowrouteSimulator) -> None:
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.post(f"{flowroute.url}/v2.2/messages", json=SMS,
                                  headers={"Authorization": aiohttp.encode_basic_auth("AK-test", "no")}) as r:
            assert r.status == 401
            assert (await r.json())["errors"][0]["detail"] == "Authentication failed."


@pytest.mark.parametrize(
    ("attributes", "fragment"),
    [({"to": "206555", "from": "12065550100", "body": "x"}, "'to' must be an 11-digit number"),
     ({"to": "12065550199", "from": "12065550100"}, "'body' is required"),
     ({"to": "12065550199", "from": "12065550100", "body": "x", "media_urls": "nope"}, "media_urls")],
)
async def test_invalid_requests_get_422_with_a_detail(
    flowroute: FlowrouteSimulator, client: aiohttp.ClientSession, attributes: dict[str, Any], fragment: str
) -> None:
    status, body = await send(client, flowroute.url, {"data": {"type": "message", "attributes": attributes}})
    assert status == 422 and fragment in body["errors"][0]["detail"]


async def test_rate_limit_counts_rejected_attempts_too(flowroute: FlowrouteSimulator,
                                                       client: aiohttp.ClientSession) -> None:
    statuses = [(await send(client, flowroute.url))[0] for _ in range(8)]
    assert statuses[:5] == [202] * 5 and statuses[5:] == [429] * 3
    await asyncio.sleep(0.6)
    # the 429s count: while 5 or more of the 8 are less than 1 s old, the 9th is refused too. On a
    # loaded host the sleep may run long, so the expectation is read off the attempts' own times.
    status = (await send(client, flowroute.url))[0]
    times = [at for at, _ in flowroute.accounts["AK-test"].attempts]
    assert len(times) == 9
    recent = sum(1 for at in times[:8] if times[8] - at < 1.0)
    assert status == (429 if recent >= 5 else 202)


async def test_one_mms_per_second(flowroute: FlowrouteSimulator, client: aiohttp.ClientSession) -> None:
    assert [(await send(client, flowroute.url, MMS))[0] for _ in range(2)] == [202, 429]
    assert (await send(client, flowroute.url))[0] == 202  # SMS still has budget


async def test_sms_limit_off_keeps_the_mms_limit(client: aiohttp.ClientSession) -> None:
    simulator = FlowrouteSimulator({"AK-test": "SK-test"}, sms_per_second=None, mms_per_second=1)
    await simulator.start()
    try:
        assert {(await send(client, simulator.url))[0] for _ in range(12)} == {202}
        assert [(await send(client, simulator.url, MMS))[0] for _ in range(2)] == [202, 429]
        assert simulator.max_in_window("AK-test") == 14  # every attempt still counted
    finally:
        await simulator.stop()


async def test_lookup_and_paged_list(flowroute: FlowrouteSimulator, client: aiohttp.ClientSession) -> None:
    ids = [(await send(client, flowroute.url))[1]["data"]["id"] for _ in range(3)]
    async with client.get(f"{flowroute.url}/v2.2/messages/{ids[0]}") as r:
        record = (await r.json())["data"]
    assert record["attributes"]["direction"] == "outbound" and record["attributes"]["to"] == "12065550199"
    async with client.get(f"{flowroute.url}/v2.2/messages/mdr2-missing") as r:
        assert r.status == 404
    async with client.get(f"{flowroute.url}/v2.2/messages", params={"start_date": "2000-01-01", "limit": "2"}) as r:
        page = await r.json()
    assert [m["id"] for m in page["data"]] == ids[:2] and "offset=2" in page["links"]["next"]
    async with client.get(page["links"]["next"]) as r:
        assert [m["id"] for m in (await r.json())["data"]] == ids[2:]
    async with client.get(f"{flowroute.url}/v2.2/messages") as r:
        assert r.status == 400  # start_date is required


async def test_faults_script_latency_and_dropped_connections(flowroute: FlowrouteSimulator,
                                                             client: aiohttp.ClientSession) -> None:
    flowroute.faults.script = [503]
    assert (await send(client, flowroute.url))[0] == 503
    flowroute.faults.drop_ratio = 1.0
    with pytest.raises(aiohttp.ClientError):
        await send(client, flowroute.url)
    flowroute.faults.drop_ratio = 0.0
    flowroute.faults.latency_s = 0.3
    started = asyncio.get_running_loop().time()
    assert (await send(client, flowroute.url))[0] == 202
    assert asyncio.get_running_loop().time() - started >= 0.3


async def test_jitter_delays_each_attempt_before_it_is_counted(flowroute: FlowrouteSimulator,
                                                                client: aiohttp.ClientSession) -> None:
    flowroute.faults.jitter_s = 0.05
    sent = []
    for _ in range(5):
        sent.append(asyncio.get_running_loop().time())
        assert (await send(client, flowroute.url))[0] == 202  # five: within the limit
    counted = [at for at, _ in flowroute.accounts["AK-test"].attempts]
    delays = [c - s for s, c in zip(sent, counted, strict=True)]
    assert all(0 <= d for d in delays) and len({round(d, 3) for d in delays}) > 1  # random, not fixed


async def test_inbound_injection_in_both_shapes_and_resends_until_200(flowroute: FlowrouteSimulator) -> None:
    got: list[Any] = []
    answers = [503, 200, 200]

    async def hook(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.Response(status=answers.pop(0))

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        mdr_id, status = await flowroute.inject_inbound(url, sender="+12065550199", did="+12065550100",
                                                        body=None, media=[{"url": "https://m/1.png"}], resends=4)
        assert status == 200 and len(got) == 2  # resent after the 503, like Flowroute
        parsed = parse_webhook(got[0])
        assert isinstance(parsed, ParsedMessage) and parsed.mdr_id == mdr_id
        assert parsed.is_mms and parsed.media[0].url == "https://m/1.png" and parsed.body == ""
        await flowroute.inject_inbound(url, sender="+12065550199", did="+12065550100", body="hi", shape="legacy")
        legacy = parse_webhook(got[2])
        assert isinstance(legacy, ParsedMessage) and legacy.shape == "legacy" and legacy.to == "12065550100"
    finally:
        await runner.cleanup()
