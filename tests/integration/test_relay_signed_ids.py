"""A relayed send without an `Idempotency-Key`, with `[relay] id_key` set (issue 19): the receiver
answers 202 once RabbitMQ has the request, as it answers a webhook, and writes nothing; the
outbound stage writes the send's row as it records the request. Real receiver, outbound worker,
RabbitMQ and ledger. Between the two a lookup answers `queued` for the bridge's own ids only;
the row comes once however often the request does; a request the stage refuses still tells the
sender; and whatever a PBX puts in `relay` itself gets no row.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import aiohttp
import msgspec
import structlog
from aio_pika.abc import AbstractChannel

from smsbridge.bridge import Bridge
from smsbridge.broker import names
from smsbridge.config import Settings
from smsbridge.events import OutboundRequest, RelayOrigin, utcnow
from smsbridge.ledger import Ledger, RelaySend
from smsbridge.pbx_client import publish_request, status_queue, watch
from smsbridge.relay_ids import new_id
from smsbridge.sandbox.flowroute_pbx import FlowroutePbx, send_flat, send_jsonapi
from smsbridge.secret import Secret
from tests.conftest import StartBridge
from tests.support.broker import depth, header, take
from tests.support.relay import (
    FREEPBX,
    FUSION,
    GLOBEX,
    GLOBEX_DID,
    RELAY_ID_KEY,
    flowroute_pbx,
    relay_queue,
    relay_settings,
)
from tests.support.settings import ACCOUNT, DID_MAIN
from tests.support.wait import eventually

__all__ = ["flowroute_pbx", "relay_queue"]  # the fixtures, used by name
MOBILE = "2065550199"
KEY = Secret(RELAY_ID_KEY)
NOT_FOUND = "Could not find that resource on your account."
Start = Callable[[Settings], Awaitable[Bridge]]


def api(bridge: Bridge) -> str:
    return f"{bridge.receiver_url}/flowroute"


def ledger_of(bridge: Bridge) -> Ledger:
    assert bridge.ledger is not None
    return bridge.ledger


async def lookup(http: aiohttp.ClientSession, bridge: Bridge, message_id: str,
                 credentials: tuple[str, str]) -> tuple[int, Any]:
    async with http.get(f"{api(bridge)}/v2.2/messages/{message_id}",
                        headers={"Authorization": aiohttp.encode_basic_auth(*credentials)}) as response:
        return response.status, await response.json(content_type=None)


def signed(tenant: str, access_key: str | None, *, message_id: str | None = None, from_extension: str = "freepbx",
           from_did: str = DID_MAIN, dlr_callback: str | None = None) -> OutboundRequest:
    """What the receiver publishes for a send without a key (`access_key` None: without the
    relay origin, as a receiver from before it published)."""
    origin = (RelayOrigin(access_key=access_key, dlr_callback=dlr_callback, accepted_at=utcnow())
              if access_key is not None else None)
    return OutboundRequest(tenant=tenant, client_message_id=message_id or new_id(KEY, tenant),
                           from_extension=from_extension, to="+1" + MOBILE, body="Your table is ready",
                           from_did=from_did, relay=origin)


async def test_a_send_without_a_key_is_answered_before_any_row_and_looked_up_as_queued(
    relay_queue: str, start_bridge: StartBridge, http: aiohttp.ClientSession, channel: AbstractChannel,
    prefix: str,
) -> None:
    bridge = await start_bridge(relay_settings(prefix), ["receiver"])
    status, doc = await send_jsonapi(http, api(bridge), FREEPBX, to=MOBILE, from_=DID_MAIN, body="hi",
                                     dlr_callback="http://127.0.0.1:9/dlr")
    assert status == 202, doc
    message_id = doc["data"]["id"]
    (queued,) = await take(channel, names.stage_queue(prefix, "outbound"))
    request = msgspec.json.decode(queued.body, type=OutboundRequest)
    assert request.client_message_id == message_id and request.relay is not None
    assert (request.relay.access_key, request.relay.dlr_callback) == (FREEPBX[0], "http://127.0.0.1:9/dlr")
    assert await ledger_of(bridge).relay_send("acme", message_id) is None  # the outbound stage writes it
    for credentials in (FREEPBX, FUSION):  # any client of the tenant, as for a recorded send
        status, mdr = await lookup(http, bridge, message_id, credentials)
        assert status == 200, mdr
        assert mdr["data"]["id"] == message_id and mdr["data"]["type"] == "message"
        assert mdr["data"]["links"]["self"].endswith(f"/flowroute/v2.2/messages/{message_id}")
        assert mdr["data"]["attributes"] == {"direction": "outbound", "message_type": "longcode",
                                             "status": "queued", "delivery_receipts": []}


async def test_a_lookup_of_an_id_the_bridge_did_not_give_this_tenant_is_404(
    relay_queue: str, start_bridge: StartBridge, http: aiohttp.ClientSession, channel: AbstractChannel,
    prefix: str,
) -> None:
    bridge = await start_bridge(relay_settings(prefix), ["receiver"])
    _, doc = await send_flat(http, api(bridge), FUSION, to=MOBILE, from_="12065550100", body="hi")
    acme_id = doc["data"]["id"]
    _, doc = await send_flat(http, api(bridge), GLOBEX, to=MOBILE, from_=GLOBEX_DID, body="hi")
    globex_id = doc["data"]["id"]
    tampered = acme_id[:-1] + ("0" if acme_id[-1] != "0" else "1")
    refused = [(acme_id, GLOBEX), (globex_id, FUSION), (tampered, FUSION), ("mdr2-" + "0" * 32, FUSION),
               (new_id(Secret("not-the-bridges-key-0123456789abcdef"), "acme"), FUSION),
               (acme_id.upper(), FUSION), ("mdr2-" + "a" * 5000, FUSION), ("x" * 3000, FUSION),
               ("mdr2-%ff%00", FUSION), (acme_id + "0", FUSION)]
    for message_id, credentials in refused:
        status, answer = await lookup(http, bridge, message_id, credentials)
        assert status == 404, (message_id[:40], answer)
        assert answer["errors"][0]["detail"] == NOT_FOUND
    assert (await lookup(http, bridge, globex_id, GLOBEX))[0] == 200
    assert (await lookup(http, bridge, acme_id, ("acme-fusion", "wrong-secret-0123456789abcdef")))[0] == 401


async def row_of(ledger: Ledger, tenant: str, message_id: str) -> RelaySend:
    found: list[RelaySend] = []

    async def recorded() -> bool:
        row = await ledger.relay_send(tenant, message_id)
        found.extend([row] if row is not None else [])
        return row is not None

    await eventually(recorded, what=f"{tenant}'s relay row")
    return found[0]


async def settled(channel: AbstractChannel, queue: str, count: int) -> None:
    async def there() -> bool:
        return await depth(channel, queue) == count

    await eventually(there, what=f"{count} messages in {queue}")


async def test_the_outbound_stage_writes_the_row_once_however_often_the_request_comes(
    relay_queue: str, start_bridge: StartBridge, channel: AbstractChannel, prefix: str,
) -> None:
    """No receiver runs: as if the one that published these died right after RabbitMQ confirmed
    them. The same request three times (a redelivery, a repeat) makes one row, nothing dead."""
    bridge = await start_bridge(relay_settings(prefix), ["outbound"])
    ledger = ledger_of(bridge)
    sends = {"acme": signed("acme", FREEPBX[0], dlr_callback="http://127.0.0.1:9/dlr"),
             "globex": signed("globex", GLOBEX[0], from_extension="relay", from_did=GLOBEX_DID)}
    for _ in range(3):
        for request in sends.values():
            await publish_request(channel, prefix, request)
    await settled(channel, names.stage_queue(prefix, names.dispatch_stage(ACCOUNT)), 6)  # each copy passed on
    for tenant, request in sends.items():
        assert request.relay is not None
        found = await row_of(ledger, tenant, request.client_message_id)
        assert (found.access_key, found.state, found.idempotency_key) == (request.relay.access_key, "queued", None)
        assert (found.dlr_callback, found.created_at) == (request.relay.dlr_callback, request.relay.accepted_at)
        assert await ledger.relay_send("globex" if tenant == "acme" else "acme", request.client_message_id) is None
    assert await depth(channel, names.dead_queue(prefix)) == 0


async def test_a_recorded_send_is_looked_up_with_its_numbers_and_body(
    relay_queue: str, start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str,
) -> None:
    bridge = await start_bridge(relay_settings(prefix), ["receiver", "outbound"])
    status, doc = await send_flat(http, api(bridge), FUSION, to=MOBILE, from_="12065550100", body="Your table")
    assert status == 202, doc
    await row_of(ledger_of(bridge), "acme", doc["data"]["id"])
    status, mdr = await lookup(http, bridge, doc["data"]["id"], FREEPBX)
    attributes = mdr["data"]["attributes"]
    assert status == 200 and attributes["status"] == "queued" and attributes["timestamp"]
    assert (attributes["to"], attributes["from"], attributes["body"]) == ("1" + MOBILE, "12065550100", "Your table")


async def test_a_signed_send_an_older_outbound_worker_took_is_looked_up_from_its_message(
    relay_queue: str, start_bridge: StartBridge, http: aiohttp.ClientSession, channel: AbstractChannel,
    prefix: str,
) -> None:
    """A worker from before `OutboundRequest.relay` ignores it: the request is recorded and sent,
    without a relay row. A lookup of its id then answers from the request's own record."""
    bridge = await start_bridge(relay_settings(prefix), ["receiver", "outbound"])
    request = signed("acme", None)  # what such a worker records: the request alone
    await publish_request(channel, prefix, request)
    await settled(channel, names.stage_queue(prefix, names.dispatch_stage(ACCOUNT)), 1)
    status, mdr = await lookup(http, bridge, request.client_message_id, FUSION)
    assert status == 200, mdr
    attributes = mdr["data"]["attributes"]
    assert (attributes["to"], attributes["body"], attributes["status"]) == ("1" + MOBILE, "Your table is ready",
                                                                           "queued")
    assert attributes["timestamp"] and await ledger_of(bridge).relay_send("acme", request.client_message_id) is None
    assert (await lookup(http, bridge, request.client_message_id, GLOBEX))[0] == 404


async def test_a_relay_origin_the_bridge_did_not_set_is_sent_without_a_row(
    relay_queue: str, start_bridge: StartBridge, channel: AbstractChannel, prefix: str,
) -> None:
    """A PBX publishing its own requests may fill `relay` in: an id it chose, one signed for
    another tenant, another tenant's relay client. Each text goes as that PBX's request; none
    gets a row (no receipts to the URL it named, no lookup)."""
    bridge = await start_bridge(relay_settings(prefix), ["outbound"])
    forged = [signed("acme", FREEPBX[0], message_id="pbx-chose-this", dlr_callback="http://127.0.0.1:9/x"),
              signed("acme", FREEPBX[0], message_id=new_id(KEY, "globex"), dlr_callback="http://127.0.0.1:9/x"),
              signed("acme", GLOBEX[0], dlr_callback="http://127.0.0.1:9/x"),
              signed("acme", FREEPBX[0], message_id=new_id(Secret("a-key-the-pbx-made-up-0123456789ab"), "acme"))]
    with structlog.testing.capture_logs() as logs:
        for request in forged:
            await publish_request(channel, prefix, request)
        await settled(channel, names.stage_queue(prefix, names.dispatch_stage(ACCOUNT)), len(forged))
    for request in forged:
        for tenant in ("acme", "globex"):
            assert await ledger_of(bridge).relay_send(tenant, request.client_message_id) is None
    ignored = [e["reason"] for e in logs if e.get("outcome") == "relay_ignored"]
    assert sorted(ignored) == ["not_signed", "not_signed", "not_signed", "other_tenant"]
    assert await depth(channel, names.dead_queue(prefix)) == 0


async def test_a_send_the_outbound_stage_refuses_after_its_202_gets_a_failed_dlr(
    relay_queue: str, start_bridge: StartBridge, channel: AbstractChannel, flowroute_pbx: FlowroutePbx,
    prefix: str,
) -> None:
    """The receiver checked the rules when it answered; the stage checks them again (they may have
    changed, or another receiver's file differs). Its `failed` status reaches the sender's
    `dlr_callback`, so the row is written on that path too."""
    bridge = await start_bridge(relay_settings(prefix), ["outbound", "delivery"])
    request = signed("acme", FREEPBX[0], from_did=GLOBEX_DID, dlr_callback=flowroute_pbx.dlr_url)
    async with status_queue(channel, prefix, "acme") as statuses:
        await publish_request(channel, prefix, request)
        (failed,) = await watch(statuses, request.client_message_id, timeout=15)
    assert (failed.state, failed.reason_code) == ("failed", "from_did_not_allowed")
    (receipt,) = await flowroute_pbx.wait_receipts(1)
    assert receipt["data"]["id"] == request.client_message_id
    assert receipt["data"]["attributes"]["status"] == "delivery failed"
    found = await ledger_of(bridge).relay_send("acme", request.client_message_id)
    assert found is not None and found.dlr_callback == flowroute_pbx.dlr_url


async def test_a_signed_id_with_no_row_is_queued_only_while_its_request_may_still_come(
    relay_queue: str, start_bridge: StartBridge, http: aiohttp.ClientSession, prefix: str,
) -> None:
    """The outbound stage retries a request for `[retry.outbound] max_age_s` (1 h here); an id
    with no row after that (and an hour's margin for its rounded issue time) was pruned or never
    recorded, and answers 404 as an unknown id does, no longer `queued` for ever."""
    base = relay_settings(prefix)
    retry = msgspec.structs.replace(base.retry, outbound=msgspec.structs.replace(base.retry.outbound,
                                                                                 max_age_s=3600.0))
    bridge = await start_bridge(msgspec.structs.replace(base, retry=retry), ["receiver"])
    now = utcnow()
    for age_h, expected in ((0, 200), (1, 200), (3, 404), (24 * 40, 404)):
        message_id = new_id(KEY, "acme", now=now - timedelta(hours=age_h))
        status, answer = await lookup(http, bridge, message_id, FUSION)
        assert status == expected, (age_h, answer)
        if expected == 404:
            assert answer["errors"][0]["detail"] == NOT_FOUND


async def test_after_a_key_rotation_ids_signed_with_the_previous_key_are_still_looked_up_and_recorded(
    relay_queue: str, start_bridge: StartBridge, http: aiohttp.ClientSession, channel: AbstractChannel,
    prefix: str,
) -> None:
    """Rotating `[relay] id_key`: the old key moves to `previous_id_keys`. A send a receiver
    signed with it before it switched still gets its row from the outbound stage, and its id
    is still looked up (as `queued` before that row, with the row after)."""
    base = relay_settings(prefix)
    rotated = msgspec.structs.replace(base, relay=msgspec.structs.replace(
        base.relay, id_key=Secret("the-key-after-the-rotation-0123456789"), previous_id_keys=[KEY]))
    bridge = await start_bridge(rotated, ["receiver"])
    before = signed("acme", FREEPBX[0], dlr_callback="http://127.0.0.1:9/dlr")  # signed with the old key
    status, mdr = await lookup(http, bridge, before.client_message_id, FUSION)
    assert status == 200 and mdr["data"]["attributes"]["status"] == "queued", mdr
    await start_bridge(rotated, ["outbound"])
    await publish_request(channel, prefix, before)
    found = await row_of(ledger_of(bridge), "acme", before.client_message_id)
    assert (found.access_key, found.dlr_callback) == (FREEPBX[0], "http://127.0.0.1:9/dlr")


async def test_a_request_whose_relay_field_does_not_decode_is_dead_lettered_naming_it(
    relay_queue: str, start_bridge: StartBridge, channel: AbstractChannel, prefix: str,
) -> None:
    """A PBX's request with a malformed `relay` is invalid as a whole (the decode is strict, as for
    any field): never sent, dead-lettered with the error naming the field."""
    await start_bridge(relay_settings(prefix), ["outbound"])
    body = msgspec.json.encode(signed("acme", None)).replace(b'"relay":null', b'"relay":{"access_key":7}')
    assert b'"relay":{' in body
    exchange = await channel.get_exchange(names.requests_exchange(prefix))
    import aio_pika

    await exchange.publish(aio_pika.Message(body), routing_key=names.request_routing_key("acme"))
    (dead,) = await take(channel, names.dead_queue(prefix))
    assert header(dead, names.H_REASON_CODE) == "undecodable"
    assert "$.relay" in header(dead, names.H_REASON), header(dead, names.H_REASON)
    assert await depth(channel, names.stage_queue(prefix, names.dispatch_stage(ACCOUNT))) == 0
