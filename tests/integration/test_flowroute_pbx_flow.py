"""A PBX that knows only Flowroute's API, through the bridge, both ways, with statuses:
Flowroute simulator → bridge → the PBX's Flowroute webhook; the PBX's FusionPBX- and FreePBX-shaped
sends → bridge → simulator → DLRs → bridge → the PBX's `dlr_callback`, with the bridge's id."""

from __future__ import annotations

import aiohttp
import pytest

from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.sandbox.flowroute_pbx import FlowroutePbx, send_flat, send_jsonapi
from tests.conftest import StartBridge
from tests.integration.test_inbound_flow import hook_url
from tests.support.relay import FREEPBX, FUSION, flowroute_pbx, relay_queue, relay_settings
from tests.support.settings import DID_MAIN

__all__ = ["flowroute_pbx", "relay_queue"]
MOBILE = "+12065550199"


async def test_inbound_text_and_mms_reach_the_pbxs_flowroute_webhook_once(
    relay_queue: str, start_bridge: StartBridge, flowroute: FlowrouteSimulator, flowroute_pbx: FlowroutePbx,
    prefix: str,
) -> None:
    bridge = await start_bridge(relay_settings(prefix, api_base=flowroute.url, pbx_hook=flowroute_pbx.webhook_url))
    url = hook_url(bridge.receiver_url)
    sms_id, status = await flowroute.inject_inbound(url, sender=MOBILE, did=DID_MAIN, body="Table for two?")
    assert status == 200
    photo = {"url": "https://media.example/p.jpg", "file_name": "p.jpg", "mime_type": "image/jpeg"}
    mms_id, _ = await flowroute.inject_inbound(url, sender=MOBILE, did=DID_MAIN, body=None, media=[photo])
    texts = {doc["data"]["id"]: doc for doc in await flowroute_pbx.wait_texts(2)}
    assert set(texts) == {sms_id, mms_id}
    sms = texts[sms_id]["data"]["attributes"]
    assert (sms["from"], sms["to"], sms["body"]) == ("12065550199", "12065550100", "Table for two?")
    assert texts[mms_id]["included"][0]["attributes"]["url"] == photo["url"]
    assert flowroute_pbx.refused == []
    assert flowroute_pbx.posts == 2  # the rule names extensions 101 and 102: the PBX still gets each text once


@pytest.mark.parametrize("signed_ids", [True, False], ids=["row-by-outbound-stage", "row-by-receiver"])
async def test_freepbx_send_comes_back_as_flowroute_dlrs_with_the_bridges_id(
    relay_queue: str, start_bridge: StartBridge, flowroute: FlowrouteSimulator, flowroute_pbx: FlowroutePbx,
    http: aiohttp.ClientSession, prefix: str, signed_ids: bool,
) -> None:
    bridge = await start_bridge(relay_settings(prefix, api_base=flowroute.url, pbx_hook=flowroute_pbx.webhook_url,
                                               signed_ids=signed_ids))
    api = f"{bridge.receiver_url}/flowroute"
    status, doc = await send_jsonapi(http, api, FREEPBX, to=MOBILE, from_=DID_MAIN, body="Your table is ready",
                                     dlr_callback=flowroute_pbx.dlr_url)
    assert status == 202
    message_id = doc["data"]["id"]
    receipts = await flowroute_pbx.wait_receipts(2)
    assert [r["data"]["id"] for r in receipts] == [message_id, message_id]
    attributes = [r["data"]["attributes"] for r in receipts]
    assert [(a["level"], a["status"], a["status_code"]) for a in attributes] == [
        (1, "smsc submit", None), (2, "delivered", 1004)]
    (sent,) = flowroute.requests
    assert sent["user"] == "AK-test"  # the real keys, not the relay client's
    assert sent["body"]["data"]["attributes"]["to"] == MOBILE.removeprefix("+")  # Flowroute gets 11 digits
    assert message_id not in flowroute.messages  # Flowroute's id is its own; the PBX only sees ours
    async with http.get(f"{api}/v2.2/messages/{message_id}",
                        headers={"Authorization": aiohttp.encode_basic_auth(*FUSION)}) as r:
        mdr = (await r.json(content_type=None))["data"]
    assert mdr["attributes"]["status"] == "delivered" and mdr["attributes"]["from"] == "12065550100"
    assert [d["status_code"] for d in mdr["attributes"]["delivery_receipts"]] == [1004, None]


async def test_fusionpbx_send_and_a_failure_dlr_reach_the_target_url_when_forwarding(
    relay_queue: str, start_bridge: StartBridge, flowroute: FlowrouteSimulator, flowroute_pbx: FlowroutePbx,
    http: aiohttp.ClientSession, prefix: str,
) -> None:
    settings = relay_settings(prefix, api_base=flowroute.url, pbx_hook=flowroute_pbx.webhook_url, forward_dlrs=True)
    bridge = await start_bridge(settings)
    flowroute.behaviours[MOBILE] = "dlr_opted_out"
    status, doc = await send_flat(http, f"{bridge.receiver_url}/flowroute", FUSION, to="2065550199",
                                  from_="12065550100", body="Reminder")
    assert status == 202
    receipts = await flowroute_pbx.wait_receipts(2)
    final = receipts[-1]["data"]
    assert final["id"] == doc["data"]["id"] and final["attributes"]["status"] == "delivery failed"
    assert final["attributes"]["status_code"] == 1110
    assert "opted out" in final["attributes"]["status_code_description"]
