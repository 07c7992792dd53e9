"""The Flowroute HTTP client against the Flowroute simulator on loopback: the exact request it sends."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from smsbridge.events import DispatchRequest
from smsbridge.flowroute.client import FlowrouteClient
from smsbridge.flowroute.outcome import Accepted, Retry
from smsbridge.flowroute.simulator import FlowrouteSimulator
from tests.support.http_server import serving
from tests.support.settings import free_port, sms_config

CALLBACK = "https://bridge.example/webhooks/flowroute/main/t?cmid=c-1"


def dispatch(**fields: object) -> DispatchRequest:
    base: dict[str, object] = dict(tenant="acme", config_id="main", client_message_id="c-1", from_extension="101",
                                   from_="+12065550100", to="+12065550199", body="hi", dlr_callback=CALLBACK)
    base.update(fields)
    return DispatchRequest(**base)  # type: ignore[arg-type]


async def test_sms_request_body_auth_and_headers(flowroute: FlowrouteSimulator, http: aiohttp.ClientSession) -> None:
    outcome = await FlowrouteClient(http, base_url=flowroute.url + "/", timeout_s=5).send(sms_config(), dispatch())
    assert isinstance(outcome, Accepted) and outcome.mdr_id in flowroute.messages
    (request,) = flowroute.requests
    assert request["user"] == "AK-test", "Basic auth with the configuration's Access Key and Secret Key"
    assert request["content_type"] == "application/vnd.api+json"
    assert request["body"] == {"data": {"type": "message", "attributes": {
        "to": "12065550199", "from": "12065550100", "body": "hi", "dlr_callback": CALLBACK}}}


async def test_mms_sets_is_mms_and_media_urls(flowroute: FlowrouteSimulator, http: aiohttp.ClientSession) -> None:
    client = FlowrouteClient(http, base_url=flowroute.url, timeout_s=5)
    await client.send(sms_config(), dispatch(is_mms=True, media_urls=("https://cdn/a.png",), dlr_callback=None))
    attributes = flowroute.requests[0]["body"]["data"]["attributes"]
    assert attributes["is_mms"] is True and attributes["media_urls"] == ["https://cdn/a.png"]
    assert "dlr_callback" not in attributes


async def test_media_only_mms_has_no_body(flowroute: FlowrouteSimulator, http: aiohttp.ClientSession) -> None:
    """Known clients omit `body` when an MMS has no text; we sent `"body": ""`."""
    client = FlowrouteClient(http, base_url=flowroute.url, timeout_s=5)
    outcome = await client.send(sms_config(), dispatch(body="", is_mms=True, media_urls=("https://cdn/a.png",)))
    assert isinstance(outcome, Accepted)
    assert flowroute.requests[0]["body"]["data"]["attributes"] == {
        "to": "12065550199", "from": "12065550100", "is_mms": True, "media_urls": ["https://cdn/a.png"],
        "dlr_callback": CALLBACK}


async def test_a_timeout_is_retryable_and_says_the_outcome_is_unknown(
        flowroute: FlowrouteSimulator, http: aiohttp.ClientSession) -> None:
    flowroute.faults.latency_s = 2.0
    outcome = await FlowrouteClient(http, base_url=flowroute.url, timeout_s=0.2).send(sms_config(), dispatch())
    assert isinstance(outcome, Retry) and "may have accepted" in outcome.reason


async def test_a_refused_connection_is_retryable(http: aiohttp.ClientSession) -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    outcome = await FlowrouteClient(http, base_url=nobody, timeout_s=2).send(sms_config(), dispatch())
    assert isinstance(outcome, Retry) and "unreachable" in outcome.reason


async def test_non_json_error_body_is_tolerated(http: aiohttp.ClientSession) -> None:
    """A load balancer in front of Flowroute answers HTML: a real server on loopback that does just that."""
    async def bad_gateway(_: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>Bad gateway</html>", content_type="text/html")

    async with serving("POST", "/v2.2/messages", bad_gateway) as url:
        outcome = await FlowrouteClient(http, base_url=url, timeout_s=2).send(sms_config(), dispatch())
    assert isinstance(outcome, Retry) and "502" in outcome.reason
