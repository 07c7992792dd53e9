"""The publisher's two routes (a connection to each of two nodes): which one a publish takes, and
what happens when the broker refuses it while a dead node's queue leaders are re-elected.

The channels are stand-ins at the publisher's seam (`get_underlay_channel().basic_publish`), so
each answer can be scripted: the real broker's side is tests/integration/test_node_failover.py."""

from __future__ import annotations

from typing import Any, cast

import aiormq
import pytest
from aio_pika.abc import AbstractChannel

from smsbridge.broker.publisher import Basic, Publisher
from smsbridge.errors import BrokerUnavailable

NACK = "nack"


class Scripted:
    """A confirm channel answering each publish with the next scripted answer (then acks)."""

    def __init__(self, name: str, log: list[str], answers: list[str]) -> None:
        self.name, self.log, self.answers = name, log, answers
        self.is_closed = False

    async def get_underlay_channel(self) -> Scripted:
        return self

    async def basic_publish(self, body: bytes, **_: Any) -> object:
        self.log.append(self.name)
        answer = self.answers.pop(0) if self.answers else "ack"
        if answer == NACK:  # what aiormq does with a nack: raise
            raise aiormq.exceptions.DeliveryError(None, Basic.Nack())
        return Basic.Ack() if answer == "ack" else Basic.Return()


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
    assert log == ["primary"]
