"""The publisher's two routes (a connection to each of two nodes): which one a publish takes, and
what happens when the broker refuses it while a dead node's queue leaders are re-elected.

The channels are stand-ins at the publisher's seam (`get_underlay_channel().basic_publish`), so
each answer can be scripted: the real broker's side is tests/integration/test_node_failover.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import aiormq
import pytest
import structlog.testing
from aio_pika.abc import AbstractChannel
from aiormq.abc import DeliveredMessage
from pamqp.header import ContentHeader

from smsbridge.broker import publisher as publisher_module
from smsbridge.broker.publisher import Basic, Publisher
from smsbridge.broker.routes import LAG_S, Route
from smsbridge.errors import BrokerUnavailable
from tests.support.wait import eventually

NACK = "nack"


class Scripted:
    """A confirm channel answering each publish with the next scripted answer (then acks)."""

    def __init__(self, name: str, log: list[str], answers: list[str]) -> None:
        self.name, self.log, self.answers = name, log, answers
        self.is_closed = False

    async def get_underlay_channel(self) -> Scripted:
        return self

    async def basic_publish(self, body: bytes, *, exchange: str, routing_key: str, **_: Any) -> object:
        self.log.append(self.name)
        answer = self.answers.pop(0) if self.answers else "ack"
        if answer == NACK:  # what aiormq does with a nack: raise
            raise aiormq.exceptions.DeliveryError(None, Basic.Nack())
        if answer == "return":  # unroutable: the bridge's channels have on_return_raises=True, so aiormq raises
            frame = Basic.Return(reply_code=312, reply_text="NO_ROUTE", exchange=exchange, routing_key=routing_key)
            returned = DeliveredMessage(delivery=frame, header=ContentHeader(), body=body, channel=cast(Any, self))
            raise aiormq.exceptions.PublishError(returned, frame)
        return Basic.Ack()


def publisher(log: list[str], first: list[str], second: list[str], *, timeout: float = 5.0) -> Publisher:
    pub = Publisher(cast(AbstractChannel, Scripted("primary", log, first)), timeout=timeout, connected=lambda: True)
    pub.add_route(cast(AbstractChannel, Scripted("standby", log, second)), connected=lambda: True, name="standby")
    return pub


async def test_a_publish_refused_on_the_first_route_goes_through_the_second() -> None:
    log: list[str] = []
    await publisher(log, [NACK], []).publish("x.work", "x.inbound", b"{}")
    assert log == ["primary", "standby"]


async def test_while_every_route_is_refused_the_publisher_tries_again_until_one_takes_it() -> None:
    # Issue 23: at a node's death the broker nacked on both routes while the queue's leader was
    # re-elected; the delivery worker gave up its conversation's next text to the order sweep.
    log: list[str] = []
    await publisher(log, [NACK, NACK, NACK], [NACK, NACK]).publish("x.work", "x.delivery", b"{}")
    assert len(log) == 6 and {"primary", "standby"} <= set(log)  # five refusals, then taken


async def test_a_refusal_that_outlasts_the_timeout_is_a_broker_unavailable() -> None:
    log: list[str] = []
    with pytest.raises(BrokerUnavailable):
        await publisher(log, [NACK] * 100, [NACK] * 100, timeout=0.5).publish("x.work", "x.delivery", b"{}")
    assert 2 <= len(log) < 100


async def test_an_unroutable_message_is_not_tried_again() -> None:
    log: list[str] = []
    with pytest.raises(BrokerUnavailable, match="not acknowledged"):
        await publisher(log, ["return"], []).publish("x.work", "x.nowhere", b"{}")
    assert log == ["primary"]  # the broker answered: not a dead route, not tried on the other


class Stuck:
    """A confirm channel that takes each publish (logs its body) and confirms none until `confirm`
    is set: a node that can no longer commit, or a silent partition. `nacks` refuses that many
    publishes first (a queue's leader being re-elected); `stored` lists what was confirmed, in order."""

    def __init__(self, name: str, log: list[tuple[str, bytes]], *, nacks: int = 0,
                 stored: list[bytes] | None = None) -> None:
        self.name, self.log, self.nacks = name, log, nacks
        self.stored = [] if stored is None else stored
        self.is_closed = False
        self.confirm = asyncio.Event()

    async def get_underlay_channel(self) -> Stuck:
        return self

    async def basic_publish(self, body: bytes, **_: Any) -> object:
        self.log.append((self.name, body))
        if body != b"probe" and self.nacks:
            self.nacks -= 1
            raise aiormq.exceptions.DeliveryError(None, Basic.Nack())
        if body != b"probe":  # the liveness probe needs no queue: confirmed at once
            # The broker commits what it took whether or not anyone still waits for the confirm.
            await asyncio.shield(self._commit(body))
        return Basic.Ack()

    async def _commit(self, body: bytes) -> None:
        await self.confirm.wait()
        self.stored.append(body)


def stuck_and_answering(log: list[tuple[str, bytes]]) -> tuple[Publisher, Stuck, Stuck]:
    primary, standby = Stuck("primary", log), Stuck("standby", log)
    standby.confirm.set()  # the other node commits
    pub = Publisher(cast(AbstractChannel, primary), timeout=5.0, connected=lambda: True)
    pub.add_route(cast(AbstractChannel, standby), connected=lambda: True, name="standby")
    return pub, primary, standby


async def probe(pub: Publisher, route: Route) -> None:
    await pub.publish_on(route, "x.work", "x.probe", b"probe", Basic.Properties(), False, 1.0, probe=True)


async def test_webhooks_waiting_on_a_route_that_stopped_confirming_go_again_on_the_other_in_their_order() -> None:
    log: list[tuple[str, bytes]] = []
    pub, primary, _ = stuck_and_answering(log)
    started = time.monotonic()
    first = [asyncio.create_task(pub.publish("x.work", "x.inbound", f"text {n}".encode(), hedge=True))
             for n in range(3)]
    worker = asyncio.create_task(pub.publish("x.work", "x.delivery", b"worker", hedge=False))
    await asyncio.sleep(0)  # all four sent on the primary
    await probe(pub, pub.routes[1])  # the other route confirms something sent after them
    await asyncio.wait_for(asyncio.gather(*first), timeout=LAG_S + 1.0)
    took = time.monotonic() - started
    await pub.publish("x.work", "x.inbound", b"text 3", hedge=True)  # newer: behind the second copies
    assert LAG_S <= took < LAG_S + 1.0
    assert [body for name, body in log if name == "primary"] == [b"text 0", b"text 1", b"text 2", b"worker"]
    assert [body for name, body in log if name == "standby"] == [b"probe", b"text 0", b"text 1", b"text 2",
                                                                  b"text 3"]
    assert not worker.done()  # a publish without hedge=True is never sent twice: it waits for its own confirm
    primary.confirm.set()  # the late confirms: the worker's completes it, the webhooks' are nobody's
    await asyncio.wait_for(worker, timeout=1.0)
    assert [body for name, body in log].count(b"worker") == 1


async def test_no_second_copy_unless_the_other_route_is_seen_answering_since() -> None:
    """A broker that is slow on both routes must not get every publish twice: the other route has
    to confirm something sent after the waiting publish (here: nothing, then a probe)."""
    log: list[tuple[str, bytes]] = []
    pub, _, _ = stuck_and_answering(log)
    waiting = asyncio.create_task(pub.publish("x.work", "x.inbound", b"text 0", hedge=True))
    await asyncio.sleep(LAG_S + 0.3)
    assert log == [("primary", b"text 0")] and not waiting.done()
    assert pub.routes[0].set_aside_until < time.monotonic()
    await probe(pub, pub.routes[1])
    await asyncio.wait_for(waiting, timeout=1.0)
    assert log[-1] == ("standby", b"text 0") and pub.routes[0].set_aside_until > time.monotonic()


async def test_no_second_copy_to_a_route_that_lags_itself() -> None:
    """Both routes stuck (a broker that cannot commit at all): the probe passing on the other
    route is not enough when a publish of its own waits there too."""
    log: list[tuple[str, bytes]] = []
    primary, standby = Stuck("primary", log), Stuck("standby", log)
    up = {"primary": False}
    pub = Publisher(cast(AbstractChannel, primary), timeout=5.0, connected=lambda: up["primary"])
    pub.add_route(cast(AbstractChannel, standby), connected=lambda: True, name="standby")
    old = asyncio.create_task(pub.publish("x.work", "x.delivery", b"old"))  # the primary is down: standby
    await asyncio.sleep(0)
    up["primary"] = True
    waiting = asyncio.create_task(pub.publish("x.work", "x.inbound", b"text 0", hedge=True))
    await asyncio.sleep(0)
    await probe(pub, pub.routes[1])
    await asyncio.sleep(LAG_S + 0.3)
    assert [body for name, body in log if name == "standby"] == [b"old", b"probe"]
    primary.confirm.set()
    standby.confirm.set()
    await asyncio.gather(waiting, old)


async def test_a_refused_second_copy_is_sent_again_before_anything_newer_goes_that_way() -> None:
    """Review finding 3: text 1's second copy was nacked on the standby (an election), never sent
    again, and text 2 went to the standby and was stored before text 1 (confirmed at last on the
    primary): out of order in the conversation's queue."""
    log: list[tuple[str, bytes]] = []
    stored: list[bytes] = []
    primary, standby = Stuck("primary", log, stored=stored), Stuck("standby", log, nacks=1, stored=stored)
    standby.confirm.set()
    pub = Publisher(cast(AbstractChannel, primary), timeout=5.0, connected=lambda: True)
    pub.add_route(cast(AbstractChannel, standby), connected=lambda: True, name="standby")
    first = asyncio.create_task(pub.publish("x.work", "x.inbound", b"text 1", hedge=True))
    await asyncio.sleep(0)
    await probe(pub, pub.routes[1])
    await eventually(lambda: ("standby", b"text 1") in log, what="the second copy")  # set aside: sent, nacked
    await probe(pub, pub.routes[1])  # the standby answers again
    await pub.publish("x.work", "x.inbound", b"text 2", hedge=True)
    primary.confirm.set()  # the stuck node commits its copy of text 1 at last (if a second, dropped by id)
    await asyncio.wait_for(first, timeout=1.0)
    await eventually(lambda: b"text 1" in stored, what="text 1 stored")
    assert stored.index(b"text 1") < stored.index(b"text 2")
    assert [body for name, body in log if name == "standby"] == [b"probe", b"text 1", b"probe", b"text 1",
                                                                  b"text 2"]


class Refusing:
    """A confirm channel that nacks each body as many times as `refusals` says, then stores it:
    a queue whose leader is being re-elected. `stored` is the queue's order."""

    def __init__(self, refusals: dict[bytes, int], stored: list[bytes]) -> None:
        self.refusals, self.stored = refusals, stored
        self.is_closed = False
        self.nacked: list[bytes] = []

    async def get_underlay_channel(self) -> Refusing:
        return self

    async def basic_publish(self, body: bytes, **_: Any) -> object:
        if self.refusals.get(body, 0) > 0:
            self.refusals[body] -= 1
            self.nacked.append(body)
            raise aiormq.exceptions.DeliveryError(None, Basic.Nack())
        self.stored.append(body)
        return Basic.Ack()


def refusing(refusals: dict[bytes, int], stored: list[bytes], *, timeout: float = 10.0
             ) -> tuple[Publisher, Refusing, Refusing]:
    primary, standby = Refusing(refusals, stored), Refusing(refusals, stored)
    pub = Publisher(cast(AbstractChannel, primary), timeout=timeout, connected=lambda: True)
    pub.add_route(cast(AbstractChannel, standby), connected=lambda: True, name="standby")
    return pub, primary, standby


async def test_a_publish_refused_on_every_route_stays_ahead_of_a_newer_one_to_the_same_queue(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 23, `make faults` of d8c25df: webhook n was nacked on both routes (a leader being
    re-elected) and paused before trying again; webhook n+1 of the same conversation arrived in
    that pause, went straight through, and was stored first."""
    monkeypatch.setattr(publisher_module, "RETRY_PAUSE_S", 5.0)  # a pause no test run outlasts by chance
    stored: list[bytes] = []
    pub, primary, standby = refusing({b"text 1": 2}, stored)  # once on each route
    first = asyncio.create_task(pub.publish("x.work", "x.inbound", b"text 1", hedge=True))
    await eventually(lambda: primary.nacked + standby.nacked == [b"text 1"] * 2, what="text 1 refused twice")
    started = time.monotonic()
    await asyncio.wait_for(pub.publish("x.work", "x.inbound", b"text 2", hedge=True), timeout=4.0)
    await asyncio.wait_for(first, timeout=1.0)
    # first copies, in the queue's order (the warm-up puts a second copy of text 1 on the standby
    # route, dropped by id downstream like any second copy)
    assert list(dict.fromkeys(stored)) == [b"text 1", b"text 2"]
    assert time.monotonic() - started < 4.0  # text 2 woke text 1 from its pause: neither waited it out


async def test_a_newer_publish_behind_one_refused_until_its_deadline_fails_without_going_ahead() -> None:
    stored: list[bytes] = []
    pub, _, _ = refusing({b"text 1": 1000}, stored, timeout=0.6)
    first = asyncio.create_task(pub.publish("x.work", "x.inbound", b"text 1"))
    await eventually(lambda: pub.lines.holding(("x.work", "x.inbound")), what="text 1 refused on every route")
    with pytest.raises(BrokerUnavailable):
        await pub.publish("x.work", "x.inbound", b"text 2", timeout=0.3)
    with pytest.raises(BrokerUnavailable):
        await first
    assert stored == []
    assert not pub.lines.holding(("x.work", "x.inbound"))  # the line is gone with its last publish
    await pub.publish("x.work", "x.inbound", b"text 3")
    assert stored == [b"text 3"]


async def test_a_line_is_logged_when_it_forms_and_when_its_last_publish_went() -> None:
    stored: list[bytes] = []
    pub, _, _ = refusing({b"text 1": 2}, stored)
    with structlog.testing.capture_logs() as logs:
        await pub.publish("x.work", "x.inbound", b"text 1")
    events = [(e["event"], e.get("routing_key"), e.get("publishes")) for e in logs if "routing_key" in e]
    assert events == [("broker refused a publish: later ones to its queue wait behind it", "x.inbound", None),
                      ("refused publishes done, in their order", "x.inbound", 1)]
    assert stored == [b"text 1"]


async def test_a_refused_publish_holds_back_only_its_own_destination() -> None:
    stored: list[bytes] = []
    pub, _, _ = refusing({b"text 1": 1000}, stored, timeout=2.0)
    first = asyncio.create_task(pub.publish("x.work", "x.inbound", b"text 1"))
    await eventually(lambda: pub.lines.holding(("x.work", "x.inbound")), what="text 1 refused on every route")
    await asyncio.wait_for(pub.publish("x.work", "x.delivery", b"delivery 1"), timeout=0.5)
    assert stored == [b"delivery 1"]
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert not pub.lines.holding(("x.work", "x.inbound"))  # a cancelled publish leaves its line
