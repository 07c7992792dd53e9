"""A publish the real broker refuses keeps its place ahead of newer publishes to the same queue.

Issue 23 (`make faults` of d8c25df): while the inbound queue's leader was re-elected, webhook n
was nacked on both routes and paused before trying again; webhook n+1 of the same conversation
went through in that pause and was stored first. Here RabbitMQ itself refuses: a queue full at
`x-max-length` with `x-overflow: reject-publish` nacks every publish (as a queue without a leader
does) until a consumer makes room. The unit tests (tests/unit/test_publisher_routes.py) script
the same with stand-in channels, deterministically."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from smsbridge.broker.publisher import Publisher
from tests.support.wait import eventually

TIMEOUT_S = 20.0  # generous: the first publish is refused until the test makes room


@pytest.fixture
async def full_queue(amqp: AbstractRobustConnection, prefix: str) -> AsyncIterator[str]:
    """A queue holding one message, at its length limit: the broker nacks what else comes."""
    channel = await amqp.channel(publisher_confirms=True)
    name = f"{prefix}.refusing"
    queue = await channel.declare_queue(name, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    await channel.default_exchange.publish(aio_pika.Message(b"filler"), routing_key=name)
    yield name
    await queue.delete(if_unused=False, if_empty=False)
    await channel.close()


async def test_a_publish_refused_by_the_broker_is_stored_before_a_newer_one_to_the_same_queue(
        amqp: AbstractRobustConnection, full_queue: str) -> None:
    first_channel = await amqp.channel(publisher_confirms=True, on_return_raises=True)
    second_channel = await amqp.channel(publisher_confirms=True, on_return_raises=True)
    consumer_channel = await amqp.channel()
    nacks = 0

    def nacked(_: object) -> None:
        nonlocal nacks
        nacks += 1

    try:
        publisher = Publisher(first_channel, timeout=TIMEOUT_S, connected=lambda: True)
        publisher.add_route(second_channel, connected=lambda: True, name="standby")
        for route in publisher.routes:
            route.on_nack = nacked
        text_1 = asyncio.create_task(publisher.publish("", full_queue, b"text 1", message_id="1"))
        # Refused on both routes five rounds running: its pause before the next try is now the
        # longest, so text 2, published as soon as there is room, would get in first unless held.
        await eventually(lambda: nacks >= 10, timeout=TIMEOUT_S / 2, what="text 1 refused in five rounds")
        order: list[bytes] = []

        async def take(message: AbstractIncomingMessage) -> None:
            order.append(message.body)
            await message.ack()

        await consumer_channel.set_qos(prefetch_count=10)
        queue = await consumer_channel.get_queue(full_queue, ensure=False)
        await queue.consume(take)  # makes room: the filler goes
        await eventually(lambda: order[:1] == [b"filler"], what="the filler taken")
        text_2 = asyncio.create_task(publisher.publish("", full_queue, b"text 2", message_id="2"))
        await asyncio.wait_for(asyncio.gather(text_1, text_2), timeout=TIMEOUT_S)
        await eventually(lambda: len(order) == 3, what="both texts taken")
        assert order == [b"filler", b"text 1", b"text 2"]
    finally:
        for channel in (consumer_channel, second_channel, first_channel):
            await channel.close()
