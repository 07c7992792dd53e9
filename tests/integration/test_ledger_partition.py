"""A silent partition between the bridge and PostgreSQL (no reset, no refusal: packets dropped
both ways) is an outage like any other, noticed within `[ledger] timeout_s` instead of after the
15 min TCP takes to give up: PostgreSQL behind a loopback proxy that the test blackholes.

Each test puts a generous outer bound around what used to hang, so the old code fails it instead
of hanging the suite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import aiohttp
import pytest
import sqlalchemy as sa
import structlog

from smsbridge.config import LedgerSettings
from smsbridge.errors import LedgerUnavailable
from smsbridge.ledger import Ledger
from smsbridge.ledger.order import _lock as conversation_lock
from smsbridge.sandbox.pbx import FakePbx
from tests.conftest import StartBridge
from tests.integration.test_ledger_outage import request
from tests.support.held_texts import HeldTexts, proxied_schema
from tests.support.ledger import PG_URL
from tests.support.tcpproxy import TcpProxy
from tests.support.wait import eventually

TIMEOUT_S = 1.0  # [ledger] timeout_s and connect_timeout_s here
SLACK_S = 4.0  # a loaded host's scheduling, on top of the deadline
OUTER_S = 60.0  # what the old code would have waited for instead: TCP's retransmissions, ~15 min


@pytest.fixture
async def partitioned_pg() -> AsyncIterator[tuple[TcpProxy, LedgerSettings]]:
    async with proxied_schema() as (proxy, url, schema):
        try:
            yield proxy, LedgerSettings(url=url, schema=schema, timeout_s=TIMEOUT_S, connect_timeout_s=TIMEOUT_S)
        finally:
            proxy.heal()  # what a blackholed connection held goes through: the server ends its sessions


def open_ledger(location: LedgerSettings) -> Ledger:
    return Ledger.open(location.url, schema_name=location.schema, timeout_s=location.timeout_s,
                       connect_timeout_s=location.connect_timeout_s)


def backend_pid(c: sa.Connection) -> int:
    return int(c.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


async def test_a_silent_partition_is_an_outage_within_the_deadline_and_a_new_connection_serves_after(
    partitioned_pg: tuple[TcpProxy, LedgerSettings],
) -> None:
    proxy, location = partitioned_pg
    ledger = open_ledger(location)
    loop = asyncio.get_running_loop()
    try:
        assert await ledger.record_request(request("p-1"))
        before = await ledger._db.read(backend_pid)
        proxy.blackhole()
        with structlog.testing.capture_logs() as logs:
            # First on the pooled connection that stopped answering, then on a new one that cannot
            # be opened; a write and a read.
            for call in (ledger.claim_send(request("p-2"), gap=timedelta(0)), ledger.outbound("acme", "p-1")):
                started = loop.time()
                async with asyncio.timeout(OUTER_S):  # the old code: no error, a wait until TCP gives up
                    with pytest.raises(LedgerUnavailable):
                        await call
                assert loop.time() - started < TIMEOUT_S + SLACK_S
        events = [e["event"] for e in logs]
        assert "ledger transaction ran out of time: its connection is discarded" in events, events
        assert events.count("ledger unavailable: messages are retried until it is back") == 1, events
        proxy.heal()
        async with asyncio.timeout(OUTER_S):
            row, mine = await ledger.claim_send(request("p-2"), gap=timedelta(0))
            after = await ledger._db.read(backend_pid)
        assert mine and row.client_message_id == "p-2"
        # Not the connection that stopped answering: after the heal it would answer again (the
        # proxy held its bytes), so only a discarded one makes this differ.
        assert after != before
    finally:
        proxy.heal()  # the old code's call, still waiting, then ends, and so does `close`
        await ledger.close()


async def test_close_does_not_wait_on_a_pooled_connection_across_a_partition(
    partitioned_pg: tuple[TcpProxy, LedgerSettings],
) -> None:
    """Closing the pool closes its connections gracefully, which waits for the server's answer:
    across a partition, for ever. No statement timeout bounds it (asyncpg's `command_timeout`
    would cut unhurried work too), so `close` terminates what is still open after timeout_s."""
    proxy, location = partitioned_pg
    ledger = open_ledger(location)
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(ledger._db.read(backend_pid) for _ in range(3)))  # a connection in the pool
    proxy.blackhole(closes_too=True)
    try:
        started = loop.time()
        async with asyncio.timeout(OUTER_S):
            await ledger.close()
        assert loop.time() - started < TIMEOUT_S + SLACK_S
    finally:
        proxy.heal()


async def test_an_abandoned_transaction_does_not_hold_its_locks_for_long(
    partitioned_pg: tuple[TcpProxy, LedgerSettings],
) -> None:
    """The server's side of a transaction cut off by a partition waits for a client that is gone,
    with its locks (here a conversation's): the session's idle_in_transaction_session_timeout
    (twice the deadline) ends it, so other processes get the lock within seconds."""
    proxy, location = partitioned_pg
    cut_off = open_ledger(location)
    other = Ledger.open(PG_URL, schema_name=location.schema, timeout_s=OUTER_S)  # not behind the proxy
    holding = asyncio.Event()
    loop = asyncio.get_running_loop()

    def lock_then_wait(c: sa.Connection) -> None:
        conversation_lock(c, "conv-1")
        holding.set()  # runs on the event loop's thread (SQLAlchemy's greenlet)
        c.execute(sa.text("SELECT pg_sleep(0.3)"))  # the partition starts meanwhile

    try:
        await cut_off.upgrade()  # a connection in the pool, as after any earlier call
        attempt = asyncio.ensure_future(cut_off._db.write(lock_then_wait))
        await holding.wait()
        proxy.blackhole(closes_too=True)  # not even the client's FIN reaches the server
        with pytest.raises(LedgerUnavailable):
            await asyncio.wait_for(attempt, OUTER_S)
        started = loop.time()
        await asyncio.wait_for(other._db.write(conversation_lock, "conv-1"), OUTER_S)
        assert loop.time() - started < 2 * TIMEOUT_S + SLACK_S
    finally:
        proxy.heal()
        await cut_off.close()
        await other.close()


async def test_texts_held_during_a_silent_partition_reach_the_pbx_after_it_in_order(
    partitioned_pg: tuple[TcpProxy, LedgerSettings], start_bridge: StartBridge, pbx: FakePbx,
    http: aiohttp.ClientSession, prefix: str,
) -> None:
    """The inbound stage holds a text only once the ledger raises `LedgerUnavailable`: across a
    silent partition that took the deadline (before: the handler waited, nothing was held or
    logged, and the stage stalled until TCP gave up)."""
    proxy, location = partitioned_pg
    texts = await HeldTexts.start(start_bridge, http, pbx, prefix=prefix, ledger=location, max_age_s=120)
    with structlog.testing.capture_logs() as logs:
        await texts.first_delivered(logs)
        proxy.blackhole()
        await texts.round(1)
        try:
            await eventually(lambda: any(e["event"] == "message held in place until it can go on" for e in logs),
                             timeout=OUTER_S, what="a text held (the ledger call failed instead of hanging)")
        finally:
            proxy.heal()  # the old code: its stuck calls end, so the bridge can stop
        held = [e for e in logs if e["event"] == "message held in place until it can go on"]
        assert all(e["reason"].startswith("ledger unavailable") for e in held), held
        for seq in (2, 3):
            await texts.round(seq)
        await texts.all_in_arrival_order(rounds=4, timeout=OUTER_S)
    assert not [e for e in logs if e["event"] == "handler crashed"]
