"""A ledger outage is one retryable condition, not a crash per message: PostgreSQL behind a
loopback proxy that the test takes away and brings back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import msgspec
import pytest
import structlog
from aio_pika.abc import AbstractChannel, AbstractQueue

from smsbridge.config import LedgerSettings
from smsbridge.errors import LedgerUnavailable, RetryableError
from smsbridge.events import DispatchRequest, OutboundRequest, RelayOrigin, utcnow
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.ledger import Ledger
from smsbridge.ledger.media_ops import MediaRecord
from smsbridge.ledger_pruner import prune_forever
from smsbridge.media import links
from smsbridge.media.store import LocalStore
from smsbridge.pbx_client import publish_request, status_queue, watch
from smsbridge.relay_ids import new_id
from smsbridge.sandbox.flowroute_pbx import send_jsonapi
from smsbridge.sandbox.pbx import FakePbx
from tests.conftest import StartBridge
from tests.support.held_texts import HeldTexts, proxied_schema
from tests.support.media import LINK_KEY, start_receiver
from tests.support.pg_starting import StartingPostgres
from tests.support.relay import FREEPBX, GLOBEX_DID, relay_queue, relay_settings
from tests.support.settings import DID_MAIN, settings, with_flowroute
from tests.support.tcpproxy import TcpProxy
from tests.support.wait import eventually

__all__ = ["relay_queue"]  # the fixture, used by name


@pytest.fixture
async def proxied_pg() -> AsyncIterator[tuple[TcpProxy, LedgerSettings]]:
    async with proxied_schema() as (proxy, url, schema):
        yield proxy, LedgerSettings(url=url, schema=schema)


def request(client_id: str) -> DispatchRequest:
    return DispatchRequest(tenant="acme", config_id="main", client_message_id=client_id, from_="+12065550100",
                           to="+12065550199", body="hello", from_extension="101", segments=1)


async def test_every_call_during_an_outage_is_ledger_unavailable_and_works_after(
    proxied_pg: tuple[TcpProxy, LedgerSettings],
) -> None:
    proxy, location = proxied_pg
    ledger = Ledger.open(location.url, schema_name=location.schema)
    try:
        assert await ledger.record_request(request("o-1"))
        await proxy.cut()
        for call in (ledger.claim_send(request("o-2"), gap=timedelta(0)), ledger.outbound("acme", "o-1"),
                     ledger.claim_send(request("o-2"), gap=timedelta(0))):  # writes and reads alike
            with pytest.raises(LedgerUnavailable) as raised:  # was: OSError / asyncpg errors
                await call
            assert isinstance(raised.value, RetryableError)
        await proxy.restore()
        row, mine = await ledger.claim_send(request("o-2"), gap=timedelta(0))
        assert mine and row.client_message_id == "o-2"
    finally:
        await ledger.close()



@pytest.mark.parametrize(("sqlstate", "text"), [
    ("57P03", "the database system is starting up"),
    ("53300", "sorry, too many clients already"),
])
async def test_a_postgresql_still_starting_up_or_full_is_an_outage_not_a_crash(sqlstate: str, text: str) -> None:
    """Right after a restart PostgreSQL refuses connections with 57P03 for a moment (seen in
    `make faults`: a `handler crashed` traceback per message, each sent round a delay queue), and
    with 53300 while every pool reconnects at once."""
    async with StartingPostgres(sqlstate, text) as starting:
        ledger = Ledger.open(f"postgresql://postgres@127.0.0.1:{starting.port}/postgres")
        try:
            with pytest.raises(LedgerUnavailable, match="ledger unavailable"):
                await ledger.record_request(request("o-1"))
        finally:
            await ledger.close()
    assert starting.refused >= 1


async def test_a_request_during_an_outage_is_retried_without_crashing_then_sent_once(
    proxied_pg: tuple[TcpProxy, LedgerSettings], start_bridge: StartBridge, flowroute: FlowrouteSimulator,
    channel: AbstractChannel, prefix: str, statuses: AbstractQueue,
) -> None:
    proxy, location = proxied_pg
    base = with_flowroute(settings(prefix=prefix, ledger=location), flowroute.url)
    fast = msgspec.structs.replace(base.retry.outbound, base_delay_s=0.2, max_delay_s=0.5)
    await start_bridge(msgspec.structs.replace(
        base, retry=msgspec.structs.replace(base.retry, outbound=fast, dispatch=fast)))
    with structlog.testing.capture_logs() as logs:
        await proxy.cut()
        await publish_request(channel, prefix, OutboundRequest(
            tenant="acme", client_message_id="o-3", from_extension="101", to="+12065550199", body="hello"))
        deadline = asyncio.get_running_loop().time() + 30
        while len([e for e in logs if e["event"] == "message will be retried"]) < 2:
            assert asyncio.get_running_loop().time() < deadline, logs
            await asyncio.sleep(0.05)
        await proxy.restore()
        (accepted,) = await watch(statuses, "o-3", until=frozenset({"accepted"}), timeout=30)
    assert accepted.state == "accepted" and len(flowroute.requests) == 1
    assert not [e for e in logs if e["event"] == "handler crashed"]  # was: one traceback per try
    retried = [e for e in logs if e["event"] == "message will be retried"]
    assert all(e["reason"].startswith("ledger unavailable") for e in retried), retried
    assert [e["event"] for e in logs].count("ledger unavailable: messages are retried until it is back") >= 1


async def test_texts_offered_while_the_ledger_is_away_reach_the_pbx_in_arrival_order(
    proxied_pg: tuple[TcpProxy, LedgerSettings], start_bridge: StartBridge, pbx: FakePbx,
    http: aiohttp.ClientSession, prefix: str,
) -> None:
    """Texts whose inbound step meets the outage must not lose their place to texts of their
    conversation that come once the ledger is back (`make faults` postgres: 9-55 out of order).
    The inbound retry wait is long here, so a text sent round a delay queue comes back after the
    later texts were delivered: what the old inbound stage did."""
    proxy, location = proxied_pg
    texts = await HeldTexts.start(start_bridge, http, pbx, prefix=prefix, ledger=location, max_age_s=60)
    with structlog.testing.capture_logs() as logs:
        await texts.first_delivered(logs)
        await proxy.cut()
        await texts.round(1)
        deadline = asyncio.get_running_loop().time() + 30
        while [e["event"] for e in logs].count("ledger unavailable: messages are retried until it is back") < 1:
            assert asyncio.get_running_loop().time() < deadline, logs
            await asyncio.sleep(0.05)
        await proxy.restore()
        for seq in (2, 3):
            await texts.round(seq)
        await texts.all_in_arrival_order(rounds=4, timeout=60)


async def test_a_media_link_while_the_ledger_is_down_is_503_then_serves(
    proxied_pg: tuple[TcpProxy, LedgerSettings], tmp_path: Path,
) -> None:
    """The `/media` route must not answer 500 when it cannot look an attachment up: 503, retry."""
    proxy, location = proxied_pg
    ledger = Ledger.open(location.url, schema_name=location.schema)
    store = LocalStore(tmp_path / "media")
    runner, base_url = await start_receiver(store, ledger)
    try:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"\x89PNG a picture"
        stored = await store.put(chunks(), max_bytes=1000)
        media_id = await ledger.record_media(MediaRecord(
            direction="upload", tenant="acme", message_ref="upload:acme:x", position=0, state="stored",
            blob_key=stored.key, mime_type="image/png", file_name="a.png", size=stored.size))
        url = links.link(base_url, LINK_KEY, links.claims_for(media_id, stored.key, "acme", 3600))
        async with aiohttp.ClientSession() as http:
            await proxy.cut()
            async with http.get(url) as response:
                assert response.status == 503 and (await response.json())["error"] == "unavailable"
            await proxy.restore()
            async with http.get(url) as response:
                assert response.status == 200 and await response.read() == b"\x89PNG a picture"
    finally:
        await runner.cleanup()
        await ledger.close()


@pytest.mark.parametrize("signed_ids", [True, False], ids=["row-by-outbound-stage", "row-by-receiver"])
async def test_relay_sends_and_lookups_while_the_ledger_is_down_are_never_a_500(
    proxied_pg: tuple[TcpProxy, LedgerSettings], start_bridge: StartBridge, relay_queue: str,
    http: aiohttp.ClientSession, prefix: str, signed_ids: bool,
) -> None:
    """A keyed send needs its row first: 503, retry. A send without a key never waits on the
    ledger: its row is the outbound stage's (signed ids), or is written beside the publish and
    the send answered 202 even when the row could not be (a 503 would have it sent twice)."""
    proxy, location = proxied_pg
    settings = msgspec.structs.replace(relay_settings(prefix, signed_ids=signed_ids), ledger=location)
    bridge = await start_bridge(settings, ["receiver"])
    api = f"{bridge.receiver_url}/flowroute"
    await proxy.cut()
    status, doc = await send_jsonapi(http, api, FREEPBX, to="2065550199", from_=DID_MAIN, body="hi",
                                     headers={"Idempotency-Key": "outage-1"})
    assert status == 503 and doc["errors"][0]["status"] == 503, doc
    status, doc = await send_jsonapi(http, api, FREEPBX, to="2065550199", from_=DID_MAIN, body="hi")
    assert status == 202, doc
    async with http.get(f"{api}/v2.2/messages/{doc['data']['id']}",
                        headers={"Authorization": aiohttp.encode_basic_auth(*FREEPBX)}) as response:
        assert response.status == 503


async def test_the_pruner_outlives_an_outage(proxied_pg: tuple[TcpProxy, LedgerSettings]) -> None:
    """A prune that meets the outage is logged and tried again next round (it used to end the
    pruner's task for good: `LedgerUnavailable` is no `SQLAlchemyError`)."""
    proxy, location = proxied_pg
    ledger = Ledger.open(location.url, schema_name=location.schema)
    pruner = asyncio.create_task(prune_forever(ledger, msgspec.structs.replace(location, prune_interval_s=0.05)))
    try:
        with structlog.testing.capture_logs() as logs:
            await proxy.cut()
            await eventually(lambda: [e["event"] for e in logs].count("ledger prune failed") >= 2 or pruner.done(),
                             what="two failed rounds")
            assert not pruner.done(), pruner.exception()
            await proxy.restore()
            assert await ledger.record_request(request("o-9"))
        assert not pruner.done()
    finally:
        pruner.cancel()
        await asyncio.gather(pruner, return_exceptions=True)
        await ledger.close()



async def test_a_relayed_send_refused_while_the_ledger_is_down_still_gets_its_failed_status(
    proxied_pg: tuple[TcpProxy, LedgerSettings], start_bridge: StartBridge, relay_queue: str,
    channel: AbstractChannel, prefix: str,
) -> None:
    """The outbound stage refuses a signed send (its rules say no); its relay row cannot be
    written, but the `failed` status goes out at once all the same: the PBX's status listeners
    learn of it (the relay sender's `dlr_callback` may miss it, having no row to be found by)."""
    proxy, location = proxied_pg
    settings = msgspec.structs.replace(relay_settings(prefix), ledger=location)
    await start_bridge(settings, ["outbound"])
    request = OutboundRequest(tenant="acme", client_message_id=new_id(settings.relay.id_key, "acme"),
                              from_extension="freepbx", to="+12065550199", body="hi", from_did=GLOBEX_DID,
                              relay=RelayOrigin(access_key=FREEPBX[0], accepted_at=utcnow()))
    await proxy.cut()
    with structlog.testing.capture_logs() as logs:
        async with status_queue(channel, prefix, "acme") as statuses:
            await publish_request(channel, prefix, request)
            (failed,) = await watch(statuses, request.client_message_id, timeout=8)
    assert (failed.state, failed.reason_code) == ("failed", "from_did_not_allowed")
    assert [e["outcome"] for e in logs if e.get("outcome") == "relay_row_lost"] == ["relay_row_lost"]
