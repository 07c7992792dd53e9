"""An in-memory stand-in for the broker side of a stage: publish, consume, settle.

`InMemoryPublisher` is the real `Publisher` with its last step (the confirmed publish) replaced by
a list, so `to_stage` and `park` build their headers exactly as in production. `StubChannel` hands
a consumer `StubQueue`s; `StubQueue.deliver` runs the consumer's callback on a `StubMessage` and
returns once the message is settled, the way aio-pika runs it for a delivery.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import ChannelInvalidStateError

from smsbridge.broker.publisher import Headers, Publisher
from smsbridge.errors import BrokerUnavailable


@dataclass(frozen=True)
class Published:
    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    message_id: str | None
    expiration_s: float | None


class InMemoryPublisher(Publisher):
    """Keeps what was published; `available = False` makes every publish fail as an outage would."""

    def __init__(self) -> None:
        super().__init__(cast(AbstractChannel, None), timeout=0.0)
        self.published: list[Published] = []
        self.available = True

    async def publish(self, exchange: str, routing_key: str, body: bytes, *, headers: Headers | None = None,
                      message_id: str | None = None, expiration_s: float | None = None,
                      mandatory: bool = True, timeout: float | None = None, gated: bool = True,
                      hedge: bool = False) -> None:
        if not self.available:
            raise BrokerUnavailable(f"publish to {exchange}/{routing_key} not confirmed: broker down (stub)")
        self.published.append(Published(exchange, routing_key, body, dict(headers or {}), message_id,
                                         expiration_s))

    def to(self, exchange: str) -> list[Published]:
        return [p for p in self.published if p.exchange == exchange]


@dataclass
class StubMessage:
    """The parts of an aio-pika incoming message that the consumer loop reads and settles."""

    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    routing_key: str | None = None
    exchange: str | None = None  # the exchange the broker delivered it from (the consumer trusts it)
    message_id: str | None = None
    user_id: str | None = None
    settled: str | None = None  # "ack", "requeue" or "reject"
    channel_closed: bool = False  # the node died: the broker takes the message back by itself

    @property
    def channel(self) -> Any:
        if self.channel_closed:
            raise ChannelInvalidStateError  # what aio-pika answers for a closed channel
        return self

    @property
    def is_closed(self) -> bool:
        return self.channel_closed

    async def ack(self, multiple: bool = False) -> None:
        self._settle("ack")

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None:
        self._settle("requeue" if requeue else "reject")

    async def reject(self, requeue: bool = False) -> None:
        self._settle("requeue" if requeue else "reject")

    def _settle(self, how: str) -> None:
        if self.settled is not None:
            raise RuntimeError(f"message settled twice ({self.settled}, then {how})")
        self.settled = how


Callback = Callable[[Any], Awaitable[None]]


class StubQueue:
    def __init__(self, name: str) -> None:
        self.name = name
        self._consumers: dict[str, Callback] = {}
        self._tags = itertools.count(1)

    async def consume(self, callback: Callback, **_: Any) -> str:
        tag = f"stub-{next(self._tags)}"
        self._consumers[tag] = callback
        return tag

    async def cancel(self, tag: str, **_: Any) -> None:
        self._consumers.pop(tag, None)

    async def deliver(self, message: StubMessage) -> StubMessage:
        """Hand the message to the (first) consumer and wait for its callback to finish."""
        if not self._consumers:
            raise RuntimeError(f"nobody consumes {self.name}")
        await next(iter(self._consumers.values()))(message)
        return message


class StubChannel:
    """Enough of a channel for `StageConsumer.start`: queues by name, created on first use."""

    def __init__(self) -> None:
        self.queues: dict[str, StubQueue] = {}
        self.is_closed = False

    async def get_queue(self, name: str, ensure: bool = True) -> StubQueue:
        return self.queues.setdefault(name, StubQueue(name))
