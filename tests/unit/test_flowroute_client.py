"""The Flowroute HTTP client against aioresponses: the exact request Flowroute expects."""

from __future__ import annotations

import base64

import aiohttp
import msgspec
from aioresponses import aioresponses

from smsbridge.events import DispatchRequest
from smsbridge.flowroute.client import FlowrouteClient
from smsbridge.flowroute.outcome import Accepted, Retry
from tests.support.aioresponses_compat import CompatResponse
from tests.support.settings import sms_config

URL = "https://api.flowroute.test/v2.2/messages"


def dispatch(**fields: object) -> DispatchRequest:
    base: dict[str, object] = dict(tenant="acme", config_id="main", client_message_id="c-1", from_extension="101",
                                   from_="+12065550100", to="+12065550199", body="hi",
                                   dlr_callback="https://bridge.example/webhooks/flowroute/main/t?cmid=c-1")
    base.update(fields)
    return DispatchRequest(**base)  # type: ignore[arg-type]


async def test_sms_request_body_auth_and_headers() -> None:
    async with aiohttp.ClientSession() as session:
        client = FlowrouteClient(session, base_url="https://api.flowroute.test/", timeout_s=5)
        with aioresponses() as mocked:
            mocked.post(URL, status=202, payload={"data": {"id": "mdr2-1", "type": "message"}},
                        response_class=CompatResponse)
            outcome = await client.send(sms_config(), dispatch())
            ((_, _), calls), = mocked.requests.items()
    assert outcome == Accepted("mdr2-1", None)
    kwargs = calls[0].kwargs
    assert msgspec.json.decode(kwargs["data"]) == {"data": {"type": "message", "attributes": {
        "to": "+12065550199", "from": "+12065550100", "body": "hi",
        "dlr_callback": "https://bridge.example/webhooks/flowroute/main/t?cmid=c-1"}}}
    assert kwargs["headers"]["Authorization"] == "Basic " + base64.b64encode(b"AK-test:SK-test").decode()
    assert kwargs["headers"]["Content-Type"] == "application/vnd.api+json"


async def test_mms_sets_is_mms_and_media_urls() -> None:
    async with aiohttp.ClientSession() as session:
        client = FlowrouteClient(session, base_url="https://api.flowroute.test", timeout_s=5)
        with aioresponses() as mocked:
            mocked.post(URL, status=202, payload={"data": {"id": "mdr2-2"}}, response_class=CompatResponse)
            await client.send(sms_config(), dispatch(is_mms=True, media_urls=("https://cdn/a.png",), dlr_callback=None))
            ((_, _), calls), = mocked.requests.items()
    attributes = msgspec.json.decode(calls[0].kwargs["data"])["data"]["attributes"]
    assert attributes["is_mms"] is True and attributes["media_urls"] == ["https://cdn/a.png"]
    assert "dlr_callback" not in attributes


async def test_timeouts_and_connection_errors_are_retryable_and_say_the_outcome_is_unknown() -> None:
    async with aiohttp.ClientSession() as session:
        client = FlowrouteClient(session, base_url="https://api.flowroute.test", timeout_s=2)
        with aioresponses() as mocked:
            mocked.post(URL, exception=TimeoutError())
            mocked.post(URL, exception=aiohttp.ClientConnectionError("refused"))
            timed_out = await client.send(sms_config(), dispatch())
            refused = await client.send(sms_config(), dispatch())
    assert isinstance(timed_out, Retry) and "may have accepted" in timed_out.reason
    assert isinstance(refused, Retry) and "unreachable" in refused.reason


async def test_non_json_error_body_is_tolerated() -> None:
    async with aiohttp.ClientSession() as session:
        client = FlowrouteClient(session, base_url="https://api.flowroute.test", timeout_s=2)
        with aioresponses() as mocked:
            mocked.post(URL, status=502, body="<html>Bad gateway</html>", response_class=CompatResponse)
            outcome = await client.send(sms_config(), dispatch())
    assert isinstance(outcome, Retry) and "502" in outcome.reason
