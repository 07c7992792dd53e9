"""The Flowroute-compatible send API on a real receiver, RabbitMQ and ledger: 202 only once the
request is in the broker, Flowroute's errors for everything else, Idempotency-Key, lookups."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import msgspec
import pytest
from aio_pika.abc import AbstractChannel

from smsbridge.bridge import Bridge
from smsbridge.broker import names
from smsbridge.config import Settings
from smsbridge.events import OutboundRequest
from smsbridge.sandbox.flowroute_pbx import send_flat, send_jsonapi
from tests.conftest import StartBridge
from tests.support.broker import depth, take
from tests.support.relay import FREEPBX, FUSION, GLOBEX, GLOBEX_DID, relay_queue, relay_settings
from tests.support.settings import DID_MAIN
from tests.support.tcpproxy import TcpProxy
from tests.support.wait import eventually

__all__ = ["relay_queue"]  # the fixture, used by name
MOBILE = "2065550199"
Start = Callable[[Settings], Awaitable[Bridge]]


@pytest.fixture
def receiver_only(relay_queue: str, start_bridge: StartBridge) -> Start:
    """A bridge running only the receiver, so accepted requests stay in the outbound queue."""
    return lambda settings: start_bridge(settings, ["receiver"])


def api(bridge: Bridge) -> str:
    return f"{bridge.receiver_url}/flowroute"


async def raw_post(http: aiohttp.ClientSession, url: str, body: bytes, auth: tuple[str, str] | None = FUSION,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
    basic = {"Authorization": aiohttp.encode_basic_auth(*auth)} if auth else {}
    async with http.post(url, data=body, headers={**basic, **(headers or {})}) as response:
        assert response.content_type == "application/vnd.api+json"
        return response.status, await response.json(content_type=None)


def authorization(credentials: tuple[str, str]) -> dict[str, str]:
    return {"Authorization": aiohttp.encode_basic_auth(*credentials)}


def assert_error(status: int, doc: Any, expected: int) -> str:
    assert status == expected, doc
    (error,) = doc["errors"]
    assert error["status"] == expected and error["title"] and error["id"]
    return str(error["detail"])


async def test_fusionpbx_flat_send_is_202_with_our_id_only_once_queued(
    receiver_only: Start, http: aiohttp.ClientSession, channel: AbstractChannel, prefix: str
) -> None:
    bridge = await receiver_only(relay_settings(prefix))
    status, doc = await send_flat(http, api(bridge), FUSION, to=MOBILE, from_="12065550100", body="Your table")
    assert status == 202, doc
    message_id = doc["data"]["id"]
    assert message_id.startswith("mdr2-") and len(message_id) == 37
    (queued,) = await take(channel, names.stage_queue(prefix, "outbound"))
    request = msgspec.json.decode(queued.body, type=OutboundRequest)
    assert (request.tenant, request.client_message_id, request.from_extension) == ("acme", message_id, "fusion")
    assert (request.to, request.from_did, request.body) == ("+12065550199", DID_MAIN, "Your table")
    assert queued.routing_key == "outbound.acme"


async def test_freepbx_json_api_mms_is_accepted(receiver_only: Start, http: aiohttp.ClientSession,
                                                channel: AbstractChannel, prefix: str) -> None:
    bridge = await receiver_only(relay_settings(prefix))
    status, doc = await send_jsonapi(http, api(bridge), FREEPBX, to=MOBILE, from_="12065550100", body=None,
                                     media_urls=["https://media.example/a.png"])
    assert status == 202, doc
    (queued,) = await take(channel, names.stage_queue(prefix, "outbound"))
    request = msgspec.json.decode(queued.body, type=OutboundRequest)
    assert request.media_urls == ("https://media.example/a.png",) and request.from_extension == "freepbx"


async def test_same_idempotency_key_answers_the_first_id_and_queues_nothing_more(
    receiver_only: Start, http: aiohttp.ClientSession, channel: AbstractChannel, prefix: str
) -> None:
    bridge = await receiver_only(relay_settings(prefix))
    key = {"Idempotency-Key": "fusion-7781"}
    answers = [await send_jsonapi(http, api(bridge), FREEPBX, to=MOBILE, from_=DID_MAIN, body="hi", headers=key)
               for _ in range(3)]
    assert [status for status, _ in answers] == [202, 202, 202]
    assert len({doc["data"]["id"] for _, doc in answers}) == 1
    assert await depth(channel, names.stage_queue(prefix, "outbound")) == 1
    status, doc = await send_jsonapi(http, api(bridge), FREEPBX, to=MOBILE, from_=DID_MAIN, body="other",
                                     headers=key)
    assert "different request" in assert_error(status, doc, 422)
    status, _ = await send_jsonapi(http, api(bridge), GLOBEX, to=MOBILE, from_=GLOBEX_DID, body="hi", headers=key)
    assert status == 202  # keys are per tenant
    assert await depth(channel, names.stage_queue(prefix, "outbound")) == 2


async def test_credentials_and_did_ownership(receiver_only: Start, http: aiohttp.ClientSession,
                                             channel: AbstractChannel, prefix: str) -> None:
    bridge = await receiver_only(relay_settings(prefix))
    url = f"{api(bridge)}/v2.2/messages"
    body = msgspec.json.encode({"to": MOBILE, "from": "12065550100", "body": "x"})
    for auth in (None, (FUSION[0], "wrong-secret"), ("AK-test", "SK-test"), (GLOBEX[0], FUSION[1])):
        status, doc = await raw_post(http, url, body, auth=auth)
        assert assert_error(status, doc, 401) == "Authentication failed."
    status, doc = await raw_post(http, url, body, auth=GLOBEX)  # another tenant's DID
    assert "'from' is not a messaging number" in assert_error(status, doc, 403)
    status, doc = await raw_post(http, url, msgspec.json.encode({"to": MOBILE, "from": GLOBEX_DID, "body": "x"}))
    assert assert_error(status, doc, 403)
    # globex may call back only public addresses: its receipts cannot be aimed at the bridge's host
    for callback in ("http://127.0.0.1:15672/api/users", "http://169.254.169.254/latest"):
        doc_in = {"to": MOBILE, "from": GLOBEX_DID, "body": "x", "dlr_callback": callback}
        status, doc = await raw_post(http, url, msgspec.json.encode(doc_in), auth=GLOBEX)
        assert "'dlr_callback' points to a private" in assert_error(status, doc, 422)
    assert await depth(channel, names.stage_queue(prefix, "outbound")) == 0


@pytest.mark.parametrize(("body", "expected"), [
    (b"{not json", 400),
    (b'{"to": "2065550199", "from": "12065550100", "body": "say "hi""}', 400),
    (b'{"to": {"a": 1}, "from": "12065550100", "body": "x"}', 422),
    (b'{"to": "2065550199", "from": "12065550100", "body": ["x"]}', 422),
    (b'{"data": {"type": "message", "attributes": "x"}}', 422),
    (b'{"to": "0000", "from": "12065550100", "body": "x"}', 422),
    (b'{"to": "2065550199", "from": "12065550100", "body": ""}', 422),
    (b'{"to": "2065550199", "from": "12065550100", "body": "x", "media_urls": [1]}', 422),
    (b'{"to": "2065550199", "from": "12065550100", "body": "x", "dlr_callback": "javascript:x"}', 422),
    (b'null', 422),
    (b'', 400),
    (b'\xff\xfe', 400),
    (b'{"to": "2065550199", "from": "12065550100", "body": "' + b"x" * 70_000 + b'"}', 413),
])
async def test_hostile_input_gets_flowroutes_errors_never_a_500(
    receiver_only: Start, http: aiohttp.ClientSession, channel: AbstractChannel, prefix: str,
    body: bytes, expected: int
) -> None:
    bridge = await receiver_only(relay_settings(prefix))
    for version in ("v2", "v2.2"):
        status, doc = await raw_post(http, f"{api(bridge)}/{version}/messages", body)
        detail = assert_error(status, doc, expected)
        assert "2065550199" not in detail
    assert await depth(channel, names.stage_queue(prefix, "outbound")) == 0


async def test_broker_down_is_503_and_the_retry_with_the_same_key_goes_through(
    receiver_only: Start, http: aiohttp.ClientSession, channel: AbstractChannel, prefix: str
) -> None:
    proxy = TcpProxy("127.0.0.1", 5672)
    await proxy.start()
    base = relay_settings(prefix)
    bridge = await receiver_only(msgspec.structs.replace(base, broker=msgspec.structs.replace(
        base.broker, urls=[proxy.url], publish_timeout_s=1.0)))
    key = {"Idempotency-Key": "portsip-1"}
    await proxy.cut()
    status, doc = await send_jsonapi(http, api(bridge), FREEPBX, to=MOBILE, from_=DID_MAIN, body="hi", headers=key)
    assert_error(status, doc, 503)
    await proxy.restore()
    answers: list[tuple[int, Any]] = []

    async def accepted() -> bool:  # the robust connection reconnects by itself, slowly on a busy host
        answers.append(await send_jsonapi(http, api(bridge), FREEPBX, to=MOBILE, from_=DID_MAIN, body="hi",
                                          headers=key))
        return answers[-1][0] == 202

    await eventually(accepted, timeout=90, interval=0.5, what="a 202 once the broker is back")
    assert {status for status, _ in answers} <= {503, 202}
    assert await depth(channel, names.stage_queue(prefix, "outbound")) == 1
    await proxy.cut()


@pytest.mark.parametrize("signed_ids", [True, False], ids=["row-by-outbound-stage", "row-by-receiver"])
async def test_lookup_is_per_tenant(receiver_only: Start, http: aiohttp.ClientSession, prefix: str,
                                    signed_ids: bool) -> None:
    bridge = await receiver_only(relay_settings(prefix, signed_ids=signed_ids))
    _, doc = await send_flat(http, api(bridge), FUSION, to=MOBILE, from_="12065550100", body="hi")
    message_id = doc["data"]["id"]
    async with http.get(f"{api(bridge)}/v2.2/messages/{message_id}", headers=authorization(FREEPBX)) as r:
        mdr = await r.json(content_type=None)
    assert r.status == 200 and mdr["data"]["id"] == message_id
    assert mdr["data"]["attributes"]["status"] == "queued"  # no outbound worker runs here
    for path, auth, expected in ((message_id, GLOBEX, 404), (message_id, ("acme-fusion", "nope"), 401),
                                 ("mdr2-%ff%00", FREEPBX, 404), ("x" * 3000, FREEPBX, 404)):
        async with http.get(f"{api(bridge)}/v2.2/messages/{path}", headers=authorization(auth)) as r:
            assert_error(r.status, await r.json(content_type=None), expected)
