"""The order of deliveries as the ledger keeps it (`ledger/order.py`), on SQLite and PostgreSQL:
which text is due, which waits, and what a dead letter or a stale head releases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from smsbridge.events import InboundDelivery, InboundMessage, delivery_stage_decoder
from smsbridge.ledger import DeliveryKey, Ledger, Scope
from smsbridge.ledger.order import Turn
from tests.support.ledger import BACKENDS, open_ledger

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
LEASE_S = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = T0 + timedelta(minutes=1)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=BACKENDS)
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Ledger, Clock]]:
    async with open_ledger(request.param, tmp_path) as opened:
        clock = Clock()
        opened._now = clock  # type: ignore[method-assign]
        yield opened, clock


def text(n: int, *, sender: str = "+12065550199", extension: str = "101", second: int | None = None) -> InboundDelivery:
    return InboundDelivery(tenant="acme", config_id="main", mdr_id=f"mdr2-{sender[-4:]}-{n}", from_=sender,
                           to="+12065550100", extension=extension, body=f"text {n}",
                           received_at=T0 + timedelta(seconds=n if second is None else second))


def key(delivery: InboundDelivery) -> DeliveryKey:
    return DeliveryKey.of(delivery)


def bodies(due: list[bytes]) -> list[str]:
    return [delivery_stage_decoder.decode(b).body for b in due]


async def test_only_the_earliest_text_is_due_and_each_delivery_makes_the_next_one_due(
    ledger: tuple[Ledger, Clock]
) -> None:
    store, _ = ledger
    texts = [text(n) for n in range(3)]
    assert bodies(await store.enqueue_deliveries(texts)) == ["text 0"]
    assert bodies(await store.enqueue_deliveries(texts)) == ["text 0"]  # redone: published again, harmless
    assert await store.claim_turn(key(texts[1]), LEASE_S) == (Turn.WAIT, [])
    assert await store.claim_turn(key(texts[0]), LEASE_S) == (Turn.GO, [])
    assert bodies(await store.delivered_in_turn(key(texts[0]))) == ["text 1"]
    assert await store.claim_turn(key(texts[0]), LEASE_S) == (Turn.DONE, [])  # a late copy


async def test_a_text_the_inbound_stage_already_handled_is_not_enqueued_again(ledger: tuple[Ledger, Clock]) -> None:
    """The resend check and the enqueue in one transaction (`enqueue_unseen`): a resend of a text
    already recorded gets None and writes nothing; a text only enqueued (its inbound step redone
    before it was recorded) is due again."""
    store, _ = ledger
    scope, first, second = Scope("acme", "main"), text(0), text(1)
    assert bodies(await store.enqueue_unseen(scope, first.mdr_id, [first]) or []) == ["text 0"]
    assert bodies(await store.enqueue_unseen(scope, first.mdr_id, [first]) or []) == ["text 0"]  # redone
    await store.record_inbound(InboundMessage(tenant="acme", config_id="main", mdr_id=first.mdr_id,
                                              from_=first.from_, to=first.to, body=first.body))
    assert await store.enqueue_unseen(scope, first.mdr_id, [first]) is None
    assert await store.enqueue_unseen(Scope("beta", "beta-main"), first.mdr_id, []) == []  # another's id
    assert bodies(await store.enqueue_unseen(scope, second.mdr_id, [second])) == []  # waits behind text 0
    assert await store.claim_turn(key(first), LEASE_S) == (Turn.GO, [])
    assert bodies(await store.delivered_in_turn(key(first))) == ["text 1"]


async def test_conversations_and_extensions_do_not_wait_for_each_other(ledger: tuple[Ledger, Clock]) -> None:
    store, _ = ledger
    due = await store.enqueue_deliveries([text(0), text(1, extension="102"), text(2, sender="+12065550111")])
    assert sorted(bodies(due)) == ["text 0", "text 1", "text 2"]


async def test_a_dead_lettered_text_releases_the_next_one(ledger: tuple[Ledger, Clock]) -> None:
    store, _ = ledger
    texts = [text(n) for n in range(2)]
    await store.enqueue_deliveries(texts)
    assert await store.claim_turn(key(texts[0]), LEASE_S) == (Turn.GO, [])
    await store.release_delivery(key(texts[0]))  # the PBX said 400
    assert bodies(await store.settle_turn(key(texts[0]))) == ["text 1"]
    assert await store.settle_turn(key(texts[0])) == []  # settled once only


async def test_an_earlier_text_routed_later_goes_first(ledger: tuple[Ledger, Clock]) -> None:
    """Two inbound processes race: the later text is recorded first and published; the earlier
    one, recorded next, is due too; the later one's copy is then held back until it is delivered."""
    store, _ = ledger
    late, early = text(5), text(1)
    assert bodies(await store.enqueue_deliveries([late])) == ["text 5"]
    assert bodies(await store.enqueue_deliveries([early])) == ["text 1"]
    assert await store.claim_turn(key(late), LEASE_S) == (Turn.WAIT, [])
    assert await store.claim_turn(key(early), LEASE_S) == (Turn.GO, [])
    assert bodies(await store.delivered_in_turn(key(early))) == ["text 5"]
    assert await store.claim_turn(key(late), LEASE_S) == (Turn.GO, [])


async def test_a_head_that_made_no_progress_is_found_and_released(ledger: tuple[Ledger, Clock]) -> None:
    """A head lost to the bridge (dead-lettered by the broker, or its publish lost) must not hold
    its conversation for ever: after `stale` without an attempt the sweep republishes and releases it."""
    store, clock = ledger
    texts = [text(n) for n in range(2)]
    await store.enqueue_deliveries(texts)
    stale = timedelta(minutes=11)
    clock.now += timedelta(minutes=10)
    assert await store.stale_turns(stale) == []
    assert await store.claim_turn(key(texts[0]), LEASE_S) == (Turn.GO, [])  # an attempt: fresh again
    clock.now += timedelta(minutes=10)
    assert await store.stale_turns(stale) == []  # waiting texts are not heads: never "stale" themselves
    clock.now += timedelta(minutes=2)
    ((stale_key, body),) = await store.stale_turns(stale)
    assert (stale_key, bodies([body])) == (DeliveryKey("main", texts[0].mdr_id, "101"), ["text 0"])
    assert bodies(await store.release_turn(stale_key, stale)) == ["text 1"]
    assert await store.release_turn(stale_key, stale) == []
    # The republished copy of the released text is still delivered once, out of turn.
    assert await store.claim_turn(key(texts[0]), 0.0) == (Turn.GO, [])


async def test_a_copy_target_keeps_its_own_order_and_an_accepted_text_counts_as_done(
    ledger: tuple[Ledger, Clock]
) -> None:
    """Issue 21: an `always` email copy (target 1) of a conversation does not wait while the
    phone (target 0) still retries its first text; a SIP 202 ("accepted") moves the order on."""
    store, _ = ledger
    phone = [text(n) for n in range(2)]
    mail = [msgspec.structs.replace(t, target=1) for t in phone]
    due = await store.enqueue_deliveries([*phone, *mail])
    assert sorted((d.target, d.body) for d in map(delivery_stage_decoder.decode, due)) == [(0, "text 0"), (1, "text 0")]
    assert await store.claim_turn(key(phone[0]), LEASE_S) == (Turn.GO, [])  # the phone is away
    assert await store.claim_turn(key(mail[0]), LEASE_S) == (Turn.GO, [])
    assert bodies(await store.delivered_in_turn(key(mail[0]))) == ["text 1"]  # the copy's next
    await store.release_delivery(key(phone[0]))  # a retry, later: SIP 202 this time
    assert await store.claim_turn(key(phone[0]), LEASE_S) == (Turn.GO, [])
    assert bodies(await store.delivered_in_turn(key(phone[0]), "accepted")) == ["text 1"]
    states = {row.extension: row.state for row in await store.deliveries("main", phone[0].mdr_id)}
    assert states == {"101": "accepted", "101#1": "delivered"}
    assert await store.claim_turn(key(phone[0]), LEASE_S) == (Turn.DONE, [])
