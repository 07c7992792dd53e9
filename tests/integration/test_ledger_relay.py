"""The relay API's ledger rows, the same tests on SQLite and PostgreSQL: one answer per
Idempotency-Key and tenant within the window; a keyed send never confirmed is retaken under its
first id, never replaced by a new one; a keyless send's failed publish removes its row."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest

from smsbridge.ledger import Ledger, RelaySend, Retaken, relay_ops
from tests.integration.test_ledger import Clock
from tests.support.ledger import BACKENDS, open_ledger

DAY = 24 * 3600.0


@pytest.fixture(params=BACKENDS)
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    async with open_ledger(request.param, tmp_path) as opened:
        yield opened


def send(bridge_id: str, key: str | None = "k-1", tenant: str = "acme", at: Clock | None = None) -> RelaySend:
    return RelaySend(bridge_id=bridge_id, tenant=tenant, access_key="acme-fusion", idempotency_key=key,
                     request_hash="h1", state="pending", dlr_callback="https://pbx.test/dlr",
                     created_at=(at or Clock()).now)


async def claim(ledger: Ledger, row: RelaySend) -> RelaySend | Retaken | None:
    return await ledger.claim_relay(row, window_s=DAY, stale_s=15)


async def test_a_key_returns_the_first_send_within_the_window(ledger: Ledger) -> None:
    clock = Clock()
    ledger._now = clock  # type: ignore[method-assign]
    assert await claim(ledger, send("mdr2-a", at=clock)) is None
    await ledger.relay_queued("mdr2-a")
    clock.now += timedelta(hours=23)
    earlier = await claim(ledger, send("mdr2-b", at=clock))
    assert earlier is not None and earlier.bridge_id == "mdr2-a" and earlier.state == "queued"
    assert await claim(ledger, send("mdr2-c", tenant="globex", at=clock)) is None  # keys are per tenant
    clock.now += timedelta(hours=2)  # past the window: the key is new again
    assert await claim(ledger, send("mdr2-d", at=clock)) is None
    found = await ledger.relay_send("acme", "mdr2-d")
    assert found is not None and found.dlr_callback == "https://pbx.test/dlr"
    assert await ledger.relay_send("acme", "mdr2-a") is None


async def test_a_pending_send_blocks_its_key_until_stale_then_is_retaken_once_under_its_first_id(
        ledger: Ledger) -> None:
    clock = Clock()
    ledger._now = clock  # type: ignore[method-assign]
    assert await claim(ledger, send("mdr2-a", at=clock)) is None
    pending = await claim(ledger, send("mdr2-b", at=clock))
    assert isinstance(pending, RelaySend) and pending.state == "pending"
    clock.now += timedelta(seconds=16)  # the process that took it died before marking it queued
    other = await claim(ledger, msgspec.structs.replace(send("mdr2-x", at=clock), request_hash="h2"))
    assert isinstance(other, RelaySend) and other.bridge_id == "mdr2-a"  # a different request: 422
    retaken = await claim(ledger, send("mdr2-c", at=clock))
    assert isinstance(retaken, Retaken) and retaken.send.bridge_id == "mdr2-a"
    assert retaken.send.created_at == clock.now  # its clock restarts: a twin now waits again
    twin = await claim(ledger, send("mdr2-d", at=clock))
    assert isinstance(twin, RelaySend) and (twin.bridge_id, twin.state) == ("mdr2-a", "pending")
    assert await ledger.relay_send("acme", "mdr2-c") is None and await ledger.relay_send("acme", "mdr2-d") is None


async def test_an_unconfirmed_send_is_retaken_under_its_first_id_per_tenant(ledger: Ledger) -> None:
    clock = Clock()
    ledger._now = clock  # type: ignore[method-assign]
    for tenant, first in (("acme", "mdr2-a"), ("globex", "mdr2-g")):
        assert await claim(ledger, send(first, tenant=tenant, at=clock)) is None
    await ledger.relay_unconfirmed("mdr2-a")  # its publish failed: maybe stored, maybe not
    row = await ledger.relay_send("acme", "mdr2-a")
    assert row is not None and row.state == "unconfirmed"
    retaken = await claim(ledger, send("mdr2-b", at=clock))
    assert isinstance(retaken, Retaken) and retaken.send.bridge_id == "mdr2-a"
    twin = await claim(ledger, send("mdr2-c", at=clock))  # while the retry publishes
    assert isinstance(twin, RelaySend) and twin.state == "pending"
    await ledger.relay_queued("mdr2-a")
    done = await claim(ledger, send("mdr2-d", at=clock))
    assert isinstance(done, RelaySend) and (done.bridge_id, done.state) == ("mdr2-a", "queued")
    gx = await claim(ledger, send("mdr2-h", tenant="globex", at=clock))  # globex's own row, still pending
    assert isinstance(gx, RelaySend) and (gx.bridge_id, gx.state) == ("mdr2-g", "pending")
    await ledger.relay_queued("mdr2-a")
    await ledger.relay_unconfirmed("mdr2-a")  # only a pending row becomes unconfirmed
    row = await ledger.relay_send("acme", "mdr2-a")
    assert row is not None and row.state == "queued"


async def test_forgetting_a_failed_publish_frees_the_key(ledger: Ledger) -> None:
    assert await claim(ledger, send("mdr2-a")) is None
    await ledger.forget_relay("mdr2-a")
    assert await claim(ledger, send("mdr2-b")) is None


async def test_sends_without_a_key_never_collide_and_are_found_per_tenant(ledger: Ledger) -> None:
    assert await claim(ledger, send("mdr2-a", key=None)) is None
    assert await claim(ledger, send("mdr2-b", key=None)) is None
    assert await ledger.relay_send("globex", "mdr2-a") is None
    row = await ledger.relay_send("acme", "mdr2-b")
    assert row is not None and msgspec.structs.replace(row, created_at=Clock().now) == send("mdr2-b", key=None)


async def test_prune_forgets_old_sends(ledger: Ledger) -> None:
    clock = Clock()
    ledger._now = clock  # type: ignore[method-assign]
    assert await claim(ledger, send("mdr2-a", at=clock)) is None
    clock.now += timedelta(days=31)
    await ledger.prune(timedelta(days=30))
    assert await ledger.relay_send("acme", "mdr2-a") is None


async def test_two_concurrent_retries_of_an_abandoned_send_retake_it_once(ledger: Ledger) -> None:
    clock = Clock()
    ledger._now = clock  # type: ignore[method-assign]
    assert await claim(ledger, send("mdr2-a", at=clock)) is None
    clock.now += timedelta(seconds=16)
    answers = await asyncio.gather(claim(ledger, send("mdr2-b", at=clock)), claim(ledger, send("mdr2-c", at=clock)))
    retaken = [a for a in answers if isinstance(a, Retaken)]
    assert len(retaken) == 1 and retaken[0].send.bridge_id == "mdr2-a"
    (other,) = [a for a in answers if not isinstance(a, Retaken)]
    assert isinstance(other, RelaySend) and (other.bridge_id, other.state) == ("mdr2-a", "pending")


async def test_a_retry_that_read_the_abandoned_row_before_another_retook_it_does_not_retake_it_again(
    ledger: Ledger,
) -> None:
    """The interleaving the concurrent test above cannot force: two retries both read the stale row,
    then one retakes it; the second's retake must find the row no longer stale (a second `Retaken`
    would publish the request twice under one id: harmless for the dispatcher, but not what the
    guard promises)."""
    clock = Clock()
    ledger._now = clock  # type: ignore[method-assign]
    first = send("mdr2-a", at=clock)
    assert await claim(ledger, first) is None
    clock.now += timedelta(seconds=16)
    stale_before = clock.now - timedelta(seconds=15)
    seen_by_both = msgspec.structs.replace(first)  # the row as both retries read it: pending and stale
    one = await ledger._db.write(relay_ops._retake, seen_by_both, clock.now, stale_before)
    two = await ledger._db.write(relay_ops._retake, seen_by_both, clock.now, stale_before)
    assert isinstance(one, Retaken) and one.send.bridge_id == "mdr2-a"
    assert isinstance(two, RelaySend) and (two.bridge_id, two.state) == ("mdr2-a", "pending")


async def test_a_retry_that_read_an_expired_row_after_another_replaced_it_gets_the_new_holder(
    ledger: Ledger,
) -> None:
    """Two retries once the key's window is over both read the expired row; one replaces it. The
    other must be answered from the new row (409 while pending), never recorded under a second id
    (was: its insert was skipped unseen and it got 202 with an id of its own: two texts)."""
    clock = Clock()
    ledger._now = clock  # type: ignore[method-assign]
    assert await claim(ledger, send("mdr2-a", at=clock)) is None
    expired = await ledger.relay_send("acme", "mdr2-a")
    assert expired is not None
    clock.now += timedelta(seconds=DAY + 1)
    assert await claim(ledger, send("mdr2-b", at=clock)) is None  # the key is free again: a new send
    holder = await ledger._db.write(relay_ops._replace, expired, send("mdr2-c", at=clock))
    assert isinstance(holder, RelaySend) and (holder.bridge_id, holder.state) == ("mdr2-b", "pending")
    assert await ledger.relay_send("acme", "mdr2-c") is None
    # globex's key of the same name is its own
    assert await ledger._db.write(relay_ops._replace, None, send("mdr2-g", tenant="globex", at=clock)) is None
