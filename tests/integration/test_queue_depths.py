"""The queue-depth poller against RabbitMQ: it reads depths, and failed polls do not pile up channels."""

from __future__ import annotations

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from smsbridge.metrics import Metrics
from smsbridge.queue_depths import QueueDepthPoller
from tests.support.broker import scratch_queue


def open_channels(connection: AbstractRobustConnection) -> int:
    assert connection.transport is not None
    return sum(1 for ch in connection.transport.connection.channels.values() if not ch.is_closed)


async def test_a_missing_queue_costs_no_channel_per_poll(amqp: AbstractRobustConnection, channel: AbstractChannel,
                                                         prefix: str) -> None:
    present = await scratch_queue(channel, f"{prefix}.present")
    await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=present.name)
    names = [present.name]
    metrics = Metrics()
    poller = QueueDepthPoller(amqp, lambda: names, metrics, interval_s=60)
    baseline = open_channels(amqp)
    assert await poller.poll()
    assert metrics.registry.get_sample_value("smsbridge_queue_messages", {"queue": present.name}) == 1
    names.append(f"{prefix}.missing")  # the broker closes the channel on a passive declare of it
    for _ in range(10):
        assert not await poller.poll()
    assert open_channels(amqp) <= baseline + 1, "each failed poll left a channel behind"
    names.pop()
    assert await poller.poll(), "it recovers once the queue list is right again"
