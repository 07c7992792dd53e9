"""How the shared consumer settles a message, on the real RabbitMQ: the final state is written
before anything else may act on the same request, and a failing `given_up` hook neither leaves
the message unsettled nor dead-letters it twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from smsbridge.broker import names, topology
from smsbridge.broker.consumer import MessageContext, StageConsumer
from smsbridge.broker.publisher import Publisher
from smsbridge.config import RetryPolicy
from smsbridge.errors import PermanentError
from smsbridge.metrics import Metrics
from tests.support.broker import depth, header, take
from tests.support.settings import ACCOUNT
from tests.support.wait import eventually

STAGE = "outbound"


class Job(msgspec.Struct, frozen=True):
    request: str
    copy: int


class Refusing:
    """Refuses every job; `given_up` records the request's final state, slowly, and fails the
    first `failures` times (as a ledger outage would)."""

    def __init__(self, failures: int = 0, record_s: float = 0.0) -> None:
        self.final: set[str] = set()
        self.seen_final_at_start: list[bool] = []
        self.given_up_calls = 0
        self._failures = failures
        self._record_s = record_s

    async def handle(self, event: Job, context: MessageContext) -> None:
        self.seen_final_at_start.append(event.request in self.final)
        raise PermanentError("refused", code="refused")

    async def given_up(self, event: Job, reason: str, code: str) -> None:
        self.given_up_calls += 1
        if self.given_up_calls <= self._failures:
            raise RuntimeError("ledger unavailable")
        await asyncio.sleep(self._record_s)
        self.final.add(event.request)


@pytest.fixture
async def consumer_channel(amqp: AbstractRobustConnection, channel: AbstractChannel,
                           prefix: str) -> AsyncIterator[AbstractChannel]:
    await topology.declare(channel, prefix, delivery_limit=20, accounts=[ACCOUNT])
    own = await amqp.channel(publisher_confirms=True)
    await own.set_qos(prefetch_count=10)
    yield own
    if not own.is_closed:
        await own.close()


def consumer(channel: AbstractChannel, prefix: str, handler: Refusing) -> StageConsumer[Job]:
    return StageConsumer(stage=STAGE, queue_name=names.stage_queue(prefix, STAGE), prefix=prefix,
                         decoder=msgspec.json.Decoder(Job), handler=handler,
                         publisher=Publisher(channel, timeout=5), metrics=Metrics(),
                         policy=RetryPolicy(max_attempts=5, base_delay_s=0.05, max_delay_s=0.1),
                         rand=lambda: 0.0, order_key=lambda job: job.request)


async def publish(channel: AbstractChannel, prefix: str, *jobs: Job) -> None:
    publisher = Publisher(channel, timeout=5)
    for job in jobs:
        await publisher.to_stage(prefix, STAGE, msgspec.json.encode(job))


async def test_the_final_state_is_written_before_the_next_copy_starts(
    consumer_channel: AbstractChannel, prefix: str,
) -> None:
    # Issue 17 item 3: the lock used to cover `handle` only, so the second copy of a refused
    # request started while `given_up` was still writing `failed`, and sent it again.
    handler = Refusing(record_s=0.3)
    stage = consumer(consumer_channel, prefix, handler)
    await publish(consumer_channel, prefix, Job("r-1", 1), Job("r-1", 2))
    await stage.start(consumer_channel)
    await eventually(lambda: len(handler.seen_final_at_start) == 2 and handler.given_up_calls == 2,
                     what="both copies handled and given up")
    assert handler.seen_final_at_start == [False, True]


async def test_a_failing_given_up_hook_is_retried_and_the_message_dead_lettered_once(
    consumer_channel: AbstractChannel, channel: AbstractChannel, prefix: str,
) -> None:
    # Issue 17 item 5: the dead-letter copy was published, the hook raised, and the delivery was
    # never acked nor rejected (holding a prefetch slot); redelivered, it was dead-lettered again.
    handler = Refusing(failures=2)
    stage = consumer(consumer_channel, prefix, handler)
    await publish(consumer_channel, prefix, Job("r-2", 1))
    await stage.start(consumer_channel)
    await eventually(lambda: handler.final == {"r-2"} and stage.inflight == 0, what="the final state recorded")
    await stage.cancel()
    await consumer_channel.close()  # an unsettled delivery would go back to the stage queue now
    dead = names.dead_queue(prefix)
    await eventually(lambda: has_depth(channel, dead, 1), what="one dead letter")
    assert await depth(channel, names.stage_queue(prefix, STAGE)) == 0
    assert await depth(channel, dead) == 1
    assert handler.seen_final_at_start == [False]  # handled once: the retries only finish giving up
    assert handler.given_up_calls == 3


async def has_depth(channel: AbstractChannel, queue: str, count: int) -> bool:
    return await depth(channel, queue) == count


async def test_a_hook_that_never_succeeds_ends_in_one_dead_letter_that_says_so(
    consumer_channel: AbstractChannel, channel: AbstractChannel, prefix: str,
) -> None:
    handler = Refusing(failures=1000)
    stage = consumer(consumer_channel, prefix, handler)  # max_attempts=5: the hook gets 5 tries
    await publish(consumer_channel, prefix, Job("r-4", 1))
    await stage.start(consumer_channel)
    dead = names.dead_queue(prefix)
    await eventually(lambda: has_depth(channel, dead, 1), what="one dead letter")
    await eventually(lambda: stage.inflight == 0, what="nothing in flight")
    (letter,) = await take(channel, dead)
    assert header(letter, names.H_REASON) == "refused (the final state was not recorded)"
    assert header(letter, names.H_REASON_CODE) == "refused" and header(letter, names.H_GIVING_UP) is None
    assert handler.given_up_calls == 5 and handler.seen_final_at_start == [False]
    assert await depth(channel, names.stage_queue(prefix, STAGE)) == 0
