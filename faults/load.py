"""The steady load of a fault run, and what came out of it.

Webhooks: `rate` a second, spread over `conversations` senders, each text a new Flowroute id and
the next number of its conversation; one not answered 200 is posted again a second later, as
Flowroute resends, to the other receiver if the first refused the connection (a load balancer
would). Outbound: `out_rate` requests a second, each a new `client_message_id`, published with
a confirm by a PBX (its own connection to the cluster; an unconfirmed one is published again).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from smsbridge.broker import names
from smsbridge.broker.publisher import Publisher
from smsbridge.broker.renewal import Renewal
from smsbridge.connection import connect, failover
from smsbridge.errors import BrokerUnavailable
from smsbridge.events import OutboundRequest, encoder
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.sandbox.pbx import FakePbx

DID = "12065550100"


def webhook(conversation: int, seq: int, run: str) -> bytes:
    return json.dumps({"to": DID, "from": f"1206555{conversation:04d}", "body": f"c{conversation} n{seq}",
                       "id": f"mdr1-{run}{conversation:04d}{seq:020d}"}).encode()


@dataclass
class Figures:
    first_answers: Counter[str] = field(default_factory=Counter)  # 200 / 503 / other, first try of each
    latencies: list[float] = field(default_factory=list)  # seconds, every answered post
    accepted: dict[str, float] = field(default_factory=dict)  # mdr id -> when its 200 came
    requested: set[str] = field(default_factory=set)
    unconfirmed_requests: int = 0
    readiness: Counter[str] = field(default_factory=Counter)  # each receiver's /readyz, every 0.25 s: 200 / 503 / ...


class Load:
    def __init__(self, receivers: list[str], urls: list[str], prefix: str, run: str, *, rate: float = 20.0,
                 conversations: int = 10, out_rate: float = 2.0) -> None:
        self.receivers = receivers
        self.urls = urls
        self.prefix = prefix
        self.run = run
        self.rate = rate
        self.conversations = conversations
        self.out_rate = out_rate
        self.figures = Figures()
        self._tasks: set[asyncio.Task[None]] = set()

    async def drive(self, seconds: float) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
            polling = asyncio.create_task(self._readiness(http))
            try:
                await asyncio.gather(self._webhooks(http, seconds), self._outbound(seconds))
                await asyncio.gather(*self._tasks)
            finally:
                polling.cancel()
                await asyncio.gather(polling, return_exceptions=True)

    async def _readiness(self, http: aiohttp.ClientSession, every_s: float = 0.25) -> None:
        """What each receiver's readiness said while the load ran, as a load balancer would ask."""
        urls = [r.split("/webhooks/")[0] + "/readyz" for r in self.receivers]
        while True:
            for url in urls:
                try:
                    async with http.get(url, timeout=aiohttp.ClientTimeout(total=1.0)) as response:
                        self.figures.readiness[str(response.status)] += 1
                except (aiohttp.ClientError, TimeoutError):
                    self.figures.readiness["no answer"] += 1
            await asyncio.sleep(every_s)

    async def _webhooks(self, http: aiohttp.ClientSession, seconds: float) -> None:
        started, n = time.monotonic(), 0
        while time.monotonic() - started < seconds:
            conversation, seq = n % self.conversations, n // self.conversations
            # Each conversation's next text comes on time, answered or not: a bridge answering slower
            # than `conversations / rate` seconds has two texts of one conversation in flight at once.
            self._spawn(self._post_one(http, conversation, seq, n))
            n += 1
            await asyncio.sleep(max(0.0, started + n / self.rate - time.monotonic()))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post_one(self, http: aiohttp.ClientSession, conversation: int, seq: int, n: int) -> None:
        body, first = webhook(conversation, seq, self.run), True
        mdr = json.loads(body)["id"]
        receiver = n % len(self.receivers)
        while True:
            status, seconds = await self._post(http, self.receivers[receiver], body)
            if status == 0:  # connection refused or reset: the load balancer sends it to another receiver
                receiver = (receiver + 1) % len(self.receivers)
                status, seconds = await self._post(http, self.receivers[receiver], body)
            if first:
                self.figures.first_answers["200" if status == 200 else "503" if status == 503 else "other"] += 1
                first = False
            if status:
                self.figures.latencies.append(seconds)
            if status == 200:
                self.figures.accepted[mdr] = time.monotonic()
                return
            await asyncio.sleep(1.0)  # Flowroute resends what did not get a 200

    @staticmethod
    async def _post(http: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, float]:
        started = time.monotonic()
        try:
            async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                return response.status, time.monotonic() - started
        except (aiohttp.ClientError, TimeoutError):
            return 0, time.monotonic() - started

    async def _outbound(self, seconds: float) -> None:
        connection = await connect(self.urls, attempts=3, name="faults-pbx")
        moving = asyncio.create_task(failover(connection, self.urls))  # the PBX lists every node too
        renewal: Renewal | None = None
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            publisher = Publisher(channel, timeout=5.0, connected=connection.connected.is_set)
            # As the bridge's: a channel nacked after a node's death would be for the whole outage.
            renewal = Renewal(publisher.routes[0], lambda: connection.channel(publisher_confirms=True,
                                                                              on_return_raises=True), grace_s=5.0)
            started, n = time.monotonic(), 0
            while time.monotonic() - started < seconds:
                client_id = f"{self.run}-out-{n:06d}"
                self.figures.requested.add(client_id)
                self._spawn(self._request(publisher, client_id))
                n += 1
                await asyncio.sleep(max(0.0, started + n / self.out_rate - time.monotonic()))
            await asyncio.gather(*self._tasks)
        finally:
            if renewal is not None:
                await renewal.close()
            moving.cancel()
            await connection.close()

    async def _request(self, publisher: Publisher, client_id: str) -> None:
        request = OutboundRequest(tenant="acme", client_message_id=client_id, from_extension="101",
                                  to="+12065550199", body=client_id)
        for _ in range(60):
            try:
                await publisher.publish(names.requests_exchange(self.prefix), names.request_routing_key("acme"),
                                        encoder.encode(request), message_id=client_id)
                return
            except BrokerUnavailable:
                self.figures.unconfirmed_requests += 1
                await asyncio.sleep(1.0)


def out_of_order(received: list[dict[str, object]]) -> int:
    """Texts that reached an extension after a later text of the same conversation.

    Only a text's first arrival counts: a repeat of a text already delivered (the same Flowroute
    id and extension) comes after later texts by nature, and `dup@PBX` counts it already."""
    last: dict[tuple[object, object], int] = defaultdict(lambda: -1)
    seen: set[tuple[object, object]] = set()
    late = 0
    for delivery in received:
        text = (delivery["mdr_id"], delivery["extension"])
        if text in seen:
            continue
        seen.add(text)
        key = (delivery["from"], delivery["extension"])
        seq = int(str(delivery["body"]).split(" n")[1])
        late += seq < last[key]
        last[key] = max(last[key], seq)
    return late


def readiness_note(polls: Counter[str]) -> str:
    """The receivers' readiness during a scenario, for its line under the table."""
    others = ", ".join(f"{n} x {answer}" for answer, n in sorted(polls.items()) if answer != "200")
    return f"readiness: {polls['200']} of {polls.total()} polls ready" + (f" ({others})" if others else "")


def outcome(load: Load, pbx: FakePbx, flowroute: FlowrouteSimulator, fault: tuple[float, float],
            delivered_at: dict[str, float]) -> dict[str, object]:
    """The row of the table for one scenario; `fault` is when it began and when it ended."""
    f = load.figures
    ours = [d for d in pbx.received if str(d.get("mdr_id", "")).startswith(f"mdr1-{load.run}")]
    seen = Counter((d["mdr_id"], d["extension"]) for d in ours)
    sends = [r["body"]["data"]["attributes"]["body"] for r in flowroute.requests
             if r["status"] == 202 and str(r["body"]["data"]["attributes"]["body"]).startswith(load.run)]
    sent = Counter(sends)
    began, ended = fault
    lat = sorted(f.latencies)
    before = sorted(delivered_at[m] - t for m, t in f.accepted.items() if began - 5 <= t < began and m in delivered_at)
    usual = before[len(before) // 2] if before else 0.0  # webhook to PBX just before the fault (a backlog shows)
    first = min(((t, m) for m, t in f.accepted.items() if t >= ended and m in delivered_at), default=None)
    return {
        "200": f.first_answers["200"], "503": f.first_answers["503"], "other": f.first_answers["other"],
        "p99 ms": round(1000 * lat[int(0.99 * (len(lat) - 1))]) if lat else None,
        "lost": len(set(f.accepted) - {m for m, _ in seen}),
        "dup@PBX": sum(c - 1 for c in seen.values() if c > 1),
        "dup, new key": _rekeyed(pbx, {k for k, c in seen.items() if c > 1}),
        "out of order": out_of_order(ours),
        "sent twice": sum(c - 1 for c in sent.values() if c > 1),
        "never sent": len(f.requested - set(sent)),
        "429": sum(1 for r in flowroute.requests if r["status"] == 429),
        "e2e s": round(usual, 2),
        # The first text accepted after the fault's end: how much longer than usual it took.
        "recover s": None if first is None else round(max(0.0, delivered_at[first[1]] - first[0] - usual), 2),
    }


def _rekeyed(pbx: FakePbx, twice: set[tuple[object, object]]) -> int:
    """Texts stored twice whose copies did not carry one idempotency key (a PBX could not tell)."""
    keys: dict[tuple[object, object], set[str]] = defaultdict(set)
    for status, body, headers in pbx.attempts:
        key = (body.get("mdr_id"), body.get("extension"))
        if 200 <= status < 300 and key in twice:
            keys[key].add(headers.get("Idempotency-Key", ""))
    return sum(1 for found in keys.values() if len(found) > 1)
