"""Each text once, on both ledger backends: repeated requests, repeated DLRs, and the history."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import aiohttp
import msgspec
from aio_pika.abc import AbstractChannel, AbstractQueue

from smsbridge.config import AdminSettings, LedgerSettings, Settings
from smsbridge.events import DispatchRequest, OutboundRequest
from smsbridge.flowroute.payloads import dlr_payload
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.ledger import Ledger
from smsbridge.pbx_client import publish_request, watch
from smsbridge.secret import Secret
from tests.conftest import StartBridge
from tests.support.settings import settings, with_flowroute
from tests.support.wait import eventually

ADMIN = "admin-token-for-tests-0123456789"




def bridge_settings(prefix: str, simulator: FlowrouteSimulator, ledger: LedgerSettings) -> Settings:
    base = with_flowroute(settings(prefix=prefix, ledger=ledger), simulator.url)
    return msgspec.structs.replace(base, admin=AdminSettings(token=Secret(ADMIN)))


def request(client_id: str, to: str = "+12065550199") -> OutboundRequest:
    return OutboundRequest(tenant="acme", client_message_id=client_id, from_extension="101", to=to,
                           body="Your table is ready")


async def test_same_request_three_times_is_one_post_and_three_identical_statuses(
    ledger_settings: LedgerSettings, start_bridge: StartBridge, flowroute: FlowrouteSimulator,
    channel: AbstractChannel, prefix: str, statuses: AbstractQueue,
) -> None:
    flowroute.dlr_delay_s = 30  # keep DLRs out of this picture
    await start_bridge(bridge_settings(prefix, flowroute, ledger_settings))
    for _ in range(3):
        await publish_request(channel, prefix, request("pbx-dup"))
    seen = []
    for _ in range(3):
        seen += await watch(statuses, "pbx-dup", until=frozenset({"accepted"}), timeout=15)
    assert len(flowroute.requests) == 1
    assert len(seen) == 3
    assert {(s.state, s.mdr_id, s.segments, s.client_message_id) for s in seen} == {
        ("accepted", next(iter(flowroute.messages)), 1, "pbx-dup")}


async def test_a_refused_request_repeated_is_one_post_and_never_sent_again(
    ledger_settings: LedgerSettings, start_bridge: StartBridge, flowroute: FlowrouteSimulator,
    channel: AbstractChannel, prefix: str, statuses: AbstractQueue,
) -> None:
    # Issue 17 item 3: the repeat's lock was released before `failed` was written, so it found
    # the request still "sending", looked it up, found nothing and POSTed it again.
    flowroute.behaviours["+12065550142"] = "opted_out"
    await start_bridge(bridge_settings(prefix, flowroute, ledger_settings))
    for _ in range(2):
        await publish_request(channel, prefix, request("pbx-refused", to="+12065550142"))
    seen = []
    for _ in range(2):
        seen += await watch(statuses, "pbx-refused", until=frozenset({"failed"}), timeout=15)
    assert [s.state for s in seen] == ["failed", "failed"]
    assert {s.reason_code for s in seen} == {"opted_out"}
    assert len(flowroute.requests) == 1


async def test_crash_recovery_never_takes_an_earlier_identical_text_for_the_one_in_doubt(
    ledger_settings: LedgerSettings, start_bridge: StartBridge, flowroute: FlowrouteSimulator,
    channel: AbstractChannel, prefix: str, statuses: AbstractQueue,
) -> None:
    # Issue 17 items 4 and 9: "OK" was sent a moment ago for one request; another "OK" to the same
    # number was marked "sending" when its dispatcher died before the POST. The lookup found the
    # first one's MDR and took it for the second (the customer never got the second "OK"; with
    # the unique mdr_id, the handler looped on IntegrityError).
    flowroute.dlr_delay_s = 30
    bridge = await start_bridge(bridge_settings(prefix, flowroute, ledger_settings))
    await publish_request(channel, prefix, request("pbx-ok-1"))
    (first,) = await watch(statuses, "pbx-ok-1", until=frozenset({"accepted"}), timeout=15)
    ledger = Ledger.open(ledger_settings.url, schema_name=ledger_settings.schema)
    try:
        claimed = await ledger.claim_send(bridge_request(bridge.settings, "pbx-ok-2"), gap=timedelta(0))
        assert claimed[1]  # marked "sending"; then the process died: no POST
    finally:
        await ledger.close()
    await publish_request(channel, prefix, request("pbx-ok-2"))
    (again,) = await watch(statuses, "pbx-ok-2", until=frozenset({"accepted"}), timeout=20)
    assert again.mdr_id is not None and again.mdr_id != first.mdr_id
    assert len(flowroute.requests) == 2  # the second "OK" was sent, once


def bridge_request(settings: Settings, client_id: str) -> DispatchRequest:
    """The dispatch request the outbound worker makes of `request(client_id)`."""
    return DispatchRequest(tenant="acme", config_id=settings.sms_configs[0].id, client_message_id=client_id,
                           from_extension="101", from_=settings.sms_configs[0].dids[0], to="+12065550199",
                           body="Your table is ready")


async def test_a_dlr_posted_twice_is_one_status_change(
    ledger_settings: LedgerSettings, start_bridge: StartBridge, flowroute: FlowrouteSimulator,
    channel: AbstractChannel, prefix: str, statuses: AbstractQueue, http: aiohttp.ClientSession,
) -> None:
    flowroute.dlr_delay_s = 30
    bridge = await start_bridge(bridge_settings(prefix, flowroute, ledger_settings))
    await publish_request(channel, prefix, request("pbx-dlr"))
    (accepted,) = await watch(statuses, "pbx-dlr", until=frozenset({"accepted"}), timeout=15)
    assert accepted.mdr_id
    # no cmid in this URL: the ledger correlates the Flowroute id with the PBX's id
    url = bridge.settings.webhook_url(bridge.settings.sms_configs[0])
    receipt = dlr_payload(accepted.mdr_id, level=2, status="delivered", code=1004,
                          description="Message delivered to handset")
    for _ in range(2):
        async with http.post(url, json=receipt) as response:
            assert response.status == 200
    seen = await watch(statuses, "pbx-dlr", timeout=3)
    assert [(s.state, s.client_message_id) for s in seen] == [("delivered", "pbx-dlr")]
    body: dict[str, Any] = {}

    async def recorded() -> bool:  # the history row is written just after the status is published
        nonlocal body
        async with http.get(f"{bridge.receiver_url}/v1/messages/pbx-dlr",
                            headers={"Authorization": f"Bearer {ADMIN}"}) as response:
            body = await response.json()
        return bool(body["message"]["state"] == "delivered")

    await eventually(recorded, what="the delivered state in the history")
    assert [h["state"] for h in body["history"]] == ["queued", "accepted", "delivered"]
    assert body["message"]["state"] == "delivered" and body["message"]["mdr_id"] == accepted.mdr_id


async def test_history_api_by_number_and_state_paged(
    ledger_settings: LedgerSettings, start_bridge: StartBridge, flowroute: FlowrouteSimulator,
    channel: AbstractChannel, prefix: str, statuses: AbstractQueue, http: aiohttp.ClientSession,
) -> None:
    flowroute.dlr_delay_s = 30
    flowroute.behaviours["+14255550100"] = "opted_out"
    bridge = await start_bridge(bridge_settings(prefix, flowroute, ledger_settings))
    for n in range(5):
        await publish_request(channel, prefix, request(f"h-{n}", to="+12065550199" if n < 4 else "+14255550100"))
    await watch(statuses, {f"h-{n}" for n in range(5)}, until=frozenset({"accepted", "failed"}), timeout=15)
    auth = {"Authorization": f"Bearer {ADMIN}"}
    base = f"{bridge.receiver_url}/v1/messages"
    async with http.get(base, params={"number": "+12065550199", "limit": "3"}, headers=auth) as response:
        first = await response.json()
    async with http.get(base, params={"number": "+12065550199", "limit": "3", "before": str(first["next_before"])},
                        headers=auth) as response:
        second = await response.json()
    rows = first["messages"] + second["messages"]
    # every match exactly once across the pages, newest (highest ledger id) first
    assert sorted(m["client_message_id"] for m in rows) == ["h-0", "h-1", "h-2", "h-3"]
    assert [m["id"] for m in rows] == sorted((m["id"] for m in rows), reverse=True)
    assert len(first["messages"]) == 3 and second["next_before"] is None
    async with http.get(base, params={"state": "failed"}, headers=auth) as response:
        (failed,) = (await response.json())["messages"]
    assert failed["client_message_id"] == "h-4" and failed["reason_code"] == "opted_out"
    async with http.get(base) as response:
        assert response.status == 401
    async with http.get(base, params={"since": "yesterday"}, headers=auth) as response:
        assert response.status == 400


async def test_history_api_is_off_without_an_admin_token(
    start_bridge: StartBridge, prefix: str, http: aiohttp.ClientSession,
) -> None:
    bridge = await start_bridge(settings(prefix=prefix))
    async with http.get(f"{bridge.receiver_url}/v1/messages", headers={"Authorization": "Bearer x"}) as response:
        assert response.status == 404


def test_settings_helper_makes_unique_sqlite_files() -> None:
    assert settings(prefix="a").ledger.url != settings(prefix="b").ledger.url

