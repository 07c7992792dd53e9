"""Texts of three conversations offered around a ledger fault, the scenario the outage and the
partition tests share: a bridge whose inbound retry waits 3 s (so a text sent round a delay queue
would come back after the later texts of its conversation were delivered), one extension, and
each conversation's texts posted in rounds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec

from smsbridge.bridge import Bridge
from smsbridge.config import InboundRule, LedgerSettings, RetryPolicy
from smsbridge.ledger import Ledger
from smsbridge.sandbox.pbx import FakePbx
from tests.integration.test_delivery_order import out_of_order, text
from tests.support.ledger import PG_URL, pg_schema
from tests.support.settings import DID_MAIN, TOKEN, settings
from tests.support.tcpproxy import TcpProxy
from tests.support.wait import eventually

CONVERSATIONS = 3
Logs = list[dict[str, Any]]


@asynccontextmanager
async def proxied_schema() -> AsyncIterator[tuple[TcpProxy, str, str]]:
    """PostgreSQL behind a loopback proxy, a fresh schema migrated through it: proxy, URL, schema."""
    parts = urlsplit(PG_URL)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    async with pg_schema() as schema:
        url = PG_URL.replace(f"{parts.hostname}:{parts.port or 5432}", f"127.0.0.1:{proxy.port}")
        ledger = Ledger.open(url, schema_name=schema)
        await ledger.upgrade()
        await ledger.close()
        try:
            yield proxy, url, schema
        finally:
            await proxy.cut()


class HeldTexts:
    def __init__(self, http: aiohttp.ClientSession, pbx: FakePbx, hook: str) -> None:
        self._http, self._pbx, self._hook = http, pbx, hook

    @classmethod
    async def start(cls, start_bridge: Callable[..., Awaitable[Bridge]], http: aiohttp.ClientSession, pbx: FakePbx,
                    *, prefix: str, ledger: LedgerSettings, max_age_s: float) -> HeldTexts:
        base = settings(prefix=prefix, pbx_url=pbx.url, ledger=ledger,
                        rules=[InboundRule(config="main", did=DID_MAIN, extensions=["101"])])
        slow = RetryPolicy(max_attempts=5, base_delay_s=3.0, max_delay_s=3.0, max_age_s=max_age_s)
        front = await start_bridge(msgspec.structs.replace(base, retry=msgspec.structs.replace(base.retry,
                                                                                               inbound=slow)))
        return cls(http, pbx, f"{front.receiver_url}/webhooks/flowroute/main/{TOKEN}")

    async def post(self, sender: int, seq: int) -> None:
        async with self._http.post(self._hook, data=text(sender, seq),
                                   headers={"Content-Type": "application/json"}) as r:
            assert r.status == 200  # the receiver does not need the ledger

    async def round(self, seq: int) -> None:
        """Each conversation's `seq`-th text."""
        for sender in range(CONVERSATIONS):
            await self.post(sender, seq)

    async def first_delivered(self, logs: Logs) -> None:
        """The first round, delivered and recorded as such (logged after the ledger write), so
        no repeat muddles the count."""
        await self.round(0)
        await eventually(lambda: [e["event"] for e in logs].count("delivered to PBX") == CONVERSATIONS,
                         timeout=30, what="the first texts delivered")

    async def all_in_arrival_order(self, rounds: int, timeout: float) -> None:
        """Every text of `rounds` rounds at the PBX, each conversation's in the order posted."""
        await eventually(lambda: len({d["mdr_id"] for d in self._pbx.received}) == CONVERSATIONS * rounds,
                         timeout=timeout, what="every text")
        first = list({d["mdr_id"]: d for d in reversed(self._pbx.received)}.values())[::-1]  # a repeat keeps its key
        assert out_of_order(first) == 0, [d["body"] for d in self._pbx.received]
