"""Which routes a confirmed hedged publish warms (broker/warmup.py): plain values, no broker."""

from __future__ import annotations

from typing import Any, cast

from smsbridge.broker.routes import Route
from smsbridge.broker.warmup import Carried, cold

INBOUND = ("sb.work", "sb.inbound")
OUTBOUND = ("sb.work", "sb.outbound")


class Channel:
    """What a route and a record look at of a channel: whether it is closed."""

    def __init__(self) -> None:
        self.is_closed = False


def route(name: str, clock: float = 100.0) -> Route:
    return Route(cast(Any, Channel()), name=name, clock=lambda: clock)


def warm(r: Route, *destinations: tuple[str, str]) -> Carried:
    record = Carried(r.channel, Channel())
    record.destinations.update(destinations)
    return record


def test_every_other_route_is_cold_until_its_channel_carried_the_destination() -> None:
    primary, standby, third = route("primary"), route("standby"), route("third")
    routes = [primary, standby, third]
    assert cold(routes, primary, INBOUND, {}, set()) == [standby, third]
    carried = {standby: warm(standby, INBOUND), third: warm(third, OUTBOUND)}
    assert cold(routes, primary, INBOUND, carried, set()) == [third]
    assert cold(routes, primary, INBOUND, carried, {(third, INBOUND)}) == []  # a copy on its way


def test_a_renewed_or_reconnected_channel_is_cold_again() -> None:
    primary, standby = route("primary"), route("standby")
    record = warm(standby, INBOUND)
    carried = {standby: record}
    assert cold([primary, standby], primary, INBOUND, carried, set()) == []
    cast(Any, record.underlay).is_closed = True  # aio-pika reconnected: the old AMQP channel is closed
    assert cold([primary, standby], primary, INBOUND, carried, set()) == [standby]
    carried[standby] = warm(standby, INBOUND)
    standby.channel = cast(Any, Channel())  # broker/renewal.py gave it a fresh channel
    assert cold([primary, standby], primary, INBOUND, carried, set()) == [standby]


def test_a_route_down_or_set_aside_or_alone_is_not_warmed() -> None:
    primary, standby = route("primary"), route("standby")
    assert cold([primary], primary, INBOUND, {}, set()) == []
    cast(Any, standby.channel).is_closed = True
    assert cold([primary, standby], primary, INBOUND, {}, set()) == []
    cast(Any, standby.channel).is_closed = False
    standby.set_aside_until = 110.0  # found stuck: a copy there would be a third
    assert cold([primary, standby], primary, INBOUND, {}, set()) == []
    standby.set_aside_until = 90.0
    assert cold([primary, standby], primary, INBOUND, {}, set()) == [standby]
