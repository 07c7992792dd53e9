"""The relay API's ledger rows, the same tests on SQLite and PostgreSQL: one answer per
Idempotency-Key and tenant within the window, a failed publish leaves the key welcome."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest

from smsbridge.ledger import Ledger, RelaySend
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


async def claim(ledger: Ledger, row: RelaySend) -> RelaySend | None:
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


async def test_a_pending_send_blocks_its_key_until_stale(ledger: Ledger) -> None:
    clock = Clock()
    ledger._now = clock  # type: ignore[method-assign]
    assert await claim(ledger, send("mdr2-a", at=clock)) is None
    pending = await claim(ledger, send("mdr2-b", at=clock))
    assert pending is not None and pending.state == "pending"
    clock.now += timedelta(seconds=16)  # the process that took it died before its publish was confirmed
    assert await claim(ledger, send("mdr2-c", at=clock)) is None


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
