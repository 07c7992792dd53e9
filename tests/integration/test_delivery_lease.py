"""A delivery attempt never outlives its claim: the lease is renewed while the attempt runs, and
the attempt stops when it cannot be kept. Against a real Kamailio with a slow test phone behind
it, a slow loopback HTTP PBX, and the real ledger on both backends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from smsbridge.broker.consumer import MessageContext
from smsbridge.config import HttpTarget
from smsbridge.errors import RetryableError
from smsbridge.events import InboundDelivery
from smsbridge.ledger import Claim, DeliveryKey, Ledger
from smsbridge.ledger.order import Turn
from smsbridge.metrics import Metrics
from smsbridge.pbx.base import DeliveryAdapter
from smsbridge.pbx.http import HttpAdapter
from smsbridge.pbx.sip import SipAdapter, compose
from smsbridge.sip.split import split_text
from smsbridge.testing.broker import InMemoryPublisher
from smsbridge.workers.delivery import DeliveryHandler
from smsbridge.workers.held import LeaseEnded
from smsbridge.workers.turns import Turns
from tests.integration.test_sip_delivery import phone_on, start_kamailio, target
from tests.support.http_server import serving
from tests.support.ledger import BACKENDS, ledger_location
from tests.support.sip_phone import Phone
from tests.support.wait import eventually

CONTEXT = MessageContext(origin_key="deliver.acme", attempt=1)
BUDGET = 200


@pytest.fixture(params=BACKENDS)
async def where(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, str | None]]:
    async with ledger_location(request.param, tmp_path) as location:
        yield location


@pytest.fixture
async def ledger(where: tuple[str, str | None]) -> AsyncIterator[Ledger]:
    opened = await open_at(where)
    yield opened
    await opened.close()


async def open_at(where: tuple[str, str | None], ahead_s: float = 0.0) -> Ledger:
    """A worker's ledger; `ahead_s`: its host's clock runs that far ahead."""
    opened = Ledger.open(where[0], schema_name=where[1])
    await opened.upgrade()
    opened._now = lambda: datetime.now(UTC) + timedelta(seconds=ahead_s)  # type: ignore[method-assign]
    return opened


def text(tenant: str = "acme", mdr_id: str = "mdr2-long", **overrides: Any) -> InboundDelivery:
    body = "".join(f"{i:03d} Привет, the table is ready 👋 " for i in range(24))
    fields: dict[str, Any] = dict(tenant=tenant, config_id="main", mdr_id=mdr_id, from_="+12065550199",
                                  to="+12065550100", extension="1001", body=body, received_at=datetime.now(UTC))
    fields.update(overrides)
    return InboundDelivery(**fields)


def worker(ledger: Ledger, adapter: DeliveryAdapter, lease_s: float) -> DeliveryHandler:
    return DeliveryHandler({"acme": adapter}, Metrics(), ledger, lease_s=lease_s,
                           turns=Turns(InMemoryPublisher(), "lease-test"))


# ----- the ledger's renewals -----------------------------------------------------------------------
MINE = DeliveryKey("main", "mdr2-a", "1001")
# A second configuration (another tenant's) whose text has the same Flowroute id, to an extension
# of the same name: its own delivery, claimed alike.
THEIRS = DeliveryKey("beta", "mdr2-a", "1001")


async def test_a_renewal_extends_only_a_claim_holding_one_of_its_leases(ledger: Ledger) -> None:
    mine = ledger.lease_until(30)
    assert await ledger.claim_turn_until(MINE, mine) == (Turn.GO, [])
    theirs = ledger.lease_until(30)
    assert await ledger.claim_turn_until(THEIRS, theirs) == (Turn.GO, [])
    later = mine + timedelta(seconds=60)
    assert not await ledger.renew_delivery(MINE, frozenset({mine - timedelta(seconds=1)}), later)
    assert not await ledger.renew_delivery(MINE, frozenset({theirs}), later)  # not its lease
    assert not await ledger.renew_delivery(DeliveryKey("main", "mdr2-nope", "1001"), frozenset({mine}), later)
    assert await ledger.renew_delivery(MINE, frozenset({mine, theirs}), later)
    # the old lease has ended, the renewed one not: still held; the other configuration's did end
    ledger._now = lambda: mine + timedelta(seconds=1)  # type: ignore[method-assign]
    assert await ledger.claim_delivery(MINE, lease_s=30) is Claim.BUSY
    assert await ledger.claim_delivery(THEIRS, lease_s=30) is Claim.NEW
    await ledger.release_delivery(MINE, frozenset({mine}))  # a lease it no longer holds
    assert await ledger.claim_delivery(MINE, lease_s=30) is Claim.BUSY
    await ledger.release_delivery(MINE, frozenset({later}))
    assert await ledger.claim_delivery(MINE, lease_s=30) is Claim.NEW


async def test_a_delivered_claim_is_not_renewed(ledger: Ledger) -> None:
    mine = ledger.lease_until(30)
    assert await ledger.claim_turn_until(MINE, mine) == (Turn.GO, [])
    await ledger.delivered(MINE)
    assert not await ledger.renew_delivery(MINE, frozenset({mine}), mine + timedelta(seconds=30))
    assert await ledger.claim_delivery(MINE, lease_s=30) is Claim.DONE


async def test_a_renewal_keeps_a_long_running_head_from_being_swept(ledger: Ledger) -> None:
    (body,) = await ledger.enqueue_deliveries([text()])
    assert body
    key = DeliveryKey.of(text())
    mine = ledger.lease_until(30)
    assert await ledger.claim_turn_until(key, mine) == (Turn.GO, [])
    claimed_at = datetime.now(UTC)
    await eventually(lambda: datetime.now(UTC) > claimed_at + timedelta(milliseconds=50), what="a tick")
    assert await ledger.renew_delivery(key, frozenset({mine}), mine + timedelta(seconds=30))
    stale = await ledger.stale_turns(datetime.now(UTC) - claimed_at - timedelta(milliseconds=25))
    assert stale == []  # the renewal touched it: its delivery is making progress


# ----- a slow phone: a long SIP text outlives the first lease -------------------------------------
@pytest.fixture
async def slow_phone(tmp_path: Path) -> AsyncIterator[tuple[Any, Phone]]:
    kamailio = await start_kamailio(tmp_path)
    phone = await phone_on(kamailio)
    phone.delay_s = 2.0  # each part takes 2 s to be answered: 6 parts, 12 s
    try:
        yield kamailio, phone
    finally:
        await phone.stop()
        await kamailio.stop()


async def test_a_redelivery_while_a_slow_phone_takes_a_long_text_does_not_repeat_or_interleave_parts(
        ledger: Ledger, slow_phone: tuple[Any, Phone]) -> None:
    kamailio, phone = slow_phone
    lease_s = 6.0
    sip = target(kamailio, body_budget_bytes=BUDGET, timeout_s=5.0)
    first, second = SipAdapter(sip), SipAdapter(sip)
    delivery = text()
    parts = len(split_text(compose(delivery), BUDGET))
    assert parts == 6
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        sending = asyncio.create_task(worker(ledger, first, lease_s).handle(delivery, CONTEXT))
        await eventually(lambda: len(phone.received) >= 5, what="five parts on the phone")
        assert loop.time() - started > lease_s  # the first claim's own lease has ended by now
        redelivered = worker(ledger, second, lease_s)
        with pytest.raises(RetryableError, match="another worker") as busy:  # the redelivery finds the claim live
            await redelivered.handle(delivery, CONTEXT)
        assert not busy.value.counted  # waiting on another worker uses up none of the copy's attempts
        await sending
        await redelivered.handle(delivery, CONTEXT)  # its retry: already delivered, not repeated
    finally:
        await first.close()
        await second.close()
    ids = [r.headers["x-smsbridge-id"] for r in phone.received]
    assert ids == [f"mdr2-long:1001:{i}/{parts}" for i in range(1, parts + 1)]
    assert [row.state for row in await ledger.deliveries("main", "mdr2-long")] == ["delivered"]


# ----- every target kind: a claim that cannot be kept stops the attempt ---------------------------
async def test_a_claim_taken_over_stops_the_attempt_at_once_and_stays_with_its_new_holder(
        where: tuple[str, str | None], ledger: Ledger) -> None:
    """A worker on a host whose clock runs a minute ahead takes a live claim over (hostile for
    the lease, which trusts clocks within a margin): the first worker's next renewal finds its
    lease gone, its HTTP call to a PBX that never answers is cancelled, and it does not release
    the other worker's claim."""
    answered = asyncio.Event()
    calls: list[float] = []

    async def never_answers(request: web.Request) -> web.Response:
        calls.append(asyncio.get_running_loop().time())
        await answered.wait()
        return web.Response(status=200)

    lease_s = 3.0
    skewed = await open_at(where, ahead_s=60)
    loop = asyncio.get_running_loop()
    try:
        async with serving("POST", "/sms", never_answers) as url, aiohttp.ClientSession() as session:
            adapter = HttpAdapter(HttpTarget(tenant="acme", url=f"{url}/sms", timeout_s=60), session)
            sending = asyncio.create_task(worker(ledger, adapter, lease_s).handle(text(), CONTEXT))
            await eventually(lambda: len(calls) == 1, what="the PBX called")
            assert await skewed.claim_delivery(DeliveryKey.of(text()), lease_s=lease_s) is Claim.NEW
            with pytest.raises(LeaseEnded, match="another worker holds it"):
                await sending
            stopped = loop.time()
            answered.set()
        assert stopped - calls[0] < lease_s  # at the first renewal, a third of the lease
        assert await skewed.claim_delivery(DeliveryKey.of(text()), lease_s=lease_s) is Claim.BUSY  # still its own
    finally:
        await skewed.close()
