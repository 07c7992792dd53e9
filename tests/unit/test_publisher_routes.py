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
    a queue whose leader is being re-elected. `stored` is the queue's order (taken as the frame
    is written); a body in `held` is answered only once its event is set; each confirm takes
    `confirm_s`, and `most_in_flight` is the largest number of publishes awaiting theirs at once."""

    def __init__(self, refusals: dict[bytes, int], stored: list[bytes], *,
                 held: dict[bytes, asyncio.Event] | None = None, confirm_s: float = 0.0) -> None:
        self.refusals, self.stored = refusals, stored
        self.held = {} if held is None else held
        self.confirm_s = confirm_s
        self.is_closed = False
        self.nacked: list[bytes] = []
        self.in_flight = self.most_in_flight = 0

    async def get_underlay_channel(self) -> Refusing:
        return self

    async def basic_publish(self, body: bytes, **_: Any) -> object:
        refuse = self.refusals.get(body, 0) > 0
        if refuse:
            self.refusals[body] -= 1
        else:
            self.stored.append(body)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if body in self.held:
                await self.held[body].wait()
            if self.confirm_s:
                await asyncio.sleep(self.confirm_s)
        finally:
            self.in_flight -= 1
        if refuse:
            self.nacked.append(body)
            raise aiormq.exceptions.DeliveryError(None, Basic.Nack())
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
    monkeypatch.setattr(publisher_module, "MAX_RETRY_PAUSE_S", 5.0)
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
    pub, _, _ = refusing({b"text 1": 1000}, stored, timeout=5.0)
    first = asyncio.create_task(pub.publish("x.work", "x.inbound", b"text 1"))
    await eventually(lambda: pub.lines.holding(("x.work", "x.inbound")), what="text 1 refused on every route")
    with pytest.raises(BrokerUnavailable, match="waited behind an older unconfirmed publish"):
        await pub.publish("x.work", "x.inbound", b"text 2", timeout=0.3)
    assert stored == []  # text 2 never went ahead of text 1, which is still refused
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert not pub.lines.holding(("x.work", "x.inbound"))  # the line is gone with its last publish
    await pub.publish("x.work", "x.inbound", b"text 3")
    assert stored == [b"text 3"]


async def test_once_the_head_is_confirmed_everyone_in_line_goes_at_once_in_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review of the first version: released one at a time, a line held a busy destination to
    one publish per confirm long after the broker took publishes again."""
    monkeypatch.setattr(publisher_module, "RETRY_PAUSE_S", 5.0)
    monkeypatch.setattr(publisher_module, "MAX_RETRY_PAUSE_S", 5.0)
    stored: list[bytes] = []
    gate = asyncio.Event()
    primary, standby = (Refusing({b"head": 1}, stored, held={b"head": gate}, confirm_s=0.02),
                        Refusing({b"head": 1}, stored, confirm_s=0.02))
    pub = Publisher(cast(AbstractChannel, primary), timeout=10.0, connected=lambda: True)
    pub.add_route(cast(AbstractChannel, standby), connected=lambda: True, name="standby")
    head = asyncio.create_task(pub.publish("x.work", "x.inbound", b"head"))
    await eventually(lambda: primary.in_flight == 1, what="the head on its way")
    gate.set()  # refused on the primary, then on the standby: the head pauses
    await eventually(lambda: len(primary.nacked + standby.nacked) == 2, what="the head refused twice")
    bodies = [f"text {n}".encode() for n in range(30)]
    rest = [asyncio.create_task(pub.publish("x.work", "x.inbound", body)) for body in bodies]
    await asyncio.wait_for(asyncio.gather(head, *rest), timeout=5.0)  # a newcomer woke the head
    assert stored[-31:] == [b"head", *bodies]
    assert primary.most_in_flight + standby.most_in_flight > 2, "the line was let go one publish at a time"
    assert not pub.lines.holding(("x.work", "x.inbound"))


async def test_a_head_displaced_by_an_older_publish_refused_late_goes_as_soon_as_that_one_is_confirmed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review: the displaced head slept out its pause after the older one was confirmed."""
    monkeypatch.setattr(publisher_module, "RETRY_PAUSE_S", 5.0)
    monkeypatch.setattr(publisher_module, "MAX_RETRY_PAUSE_S", 5.0)
    stored: list[bytes] = []
    late = asyncio.Event()
    primary = Refusing({b"older": 1, b"newer": 1}, stored, held={b"older": late})
    standby = Refusing({b"newer": 1}, stored)
    pub = Publisher(cast(AbstractChannel, primary), timeout=10.0, connected=lambda: True)
    pub.add_route(cast(AbstractChannel, standby), connected=lambda: True, name="standby")
    older = asyncio.create_task(pub.publish("x.work", "x.inbound", b"older"))
    await eventually(lambda: primary.in_flight == 1, what="the older publish on its way")
    newer = asyncio.create_task(pub.publish("x.work", "x.inbound", b"newer"))
    await eventually(lambda: standby.nacked == [b"newer"], what="the newer one refused on both routes")
    started = time.monotonic()
    late.set()  # the older one is refused now, heads the line, and is taken by the standby
    await asyncio.wait_for(asyncio.gather(older, newer), timeout=4.0)  # not the 5 s pause
    assert stored == [b"older", b"newer"]
    assert time.monotonic() - started < 4.0


async def test_a_head_cancelled_lets_the_next_in_line_go() -> None:
    stored: list[bytes] = []
    pub, _, _ = refusing({b"text 1": 1000, b"text 2": 2}, stored, timeout=10.0)
    first = asyncio.create_task(pub.publish("x.work", "x.inbound", b"text 1"))
    await eventually(lambda: pub.lines.holding(("x.work", "x.inbound")), what="text 1 refused")
    second = asyncio.create_task(pub.publish("x.work", "x.inbound", b"text 2"))
    third = asyncio.create_task(pub.publish("x.work", "x.inbound", b"text 3"))
    await eventually(lambda: pub.lines.waiting(("x.work", "x.inbound")) == 3, what="texts 2 and 3 in line")
    assert stored == []  # both wait behind text 1
    first.cancel()
    await asyncio.wait_for(asyncio.gather(second, third), timeout=4.0)
    assert stored == [b"text 2", b"text 3"]


async def test_a_line_is_logged_when_it_forms_and_when_its_last_publish_went() -> None:
    stored: list[bytes] = []
    pub, _, _ = refusing({b"text 1": 2}, stored)
    with structlog.testing.capture_logs() as logs:
        await pub.publish("x.work", "x.inbound", b"text 1")
    events = [(e["event"], e.get("routing_key"), e.get("publishes")) for e in logs if "routing_key" in e]
    assert events == [("publish not confirmed: later ones to its destination wait behind it", "x.inbound", None),
                      ("line of unconfirmed publishes ended", "x.inbound", 1)]
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
