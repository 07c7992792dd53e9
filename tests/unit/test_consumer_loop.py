"""The consumer loop every stage shares, on the in-memory broker: what is acked, retried, dead-lettered
or requeued, with which headers. The same behaviours against RabbitMQ: tests/integration/test_dlq.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import pytest

from smsbridge.backoff import compute_backoff
from smsbridge.broker import names
from smsbridge.broker.consumer import MessageContext, StageConsumer
from smsbridge.broker.hold import Hold
from smsbridge.config import RetryPolicy
from smsbridge.errors import BrokerUnavailable, LedgerUnavailable, PermanentError, RetryableError
from smsbridge.metrics import Metrics
from smsbridge.testing.broker import InMemoryPublisher, StubChannel, StubMessage, StubQueue
from tests.support.wait import eventually

PREFIX = "unit"
QUEUE = names.stage_queue(PREFIX, "inbound")


class Event(msgspec.Struct):
    n: int


@dataclass
class Scripted:
    """A handler that raises what it is told to, and remembers what it saw."""

    raises: BaseException | None = None
    seen: list[tuple[int, MessageContext]] = field(default_factory=list)
    gave_up: list[tuple[int, str, str]] = field(default_factory=list)

    async def handle(self, event: Event, context: MessageContext) -> None:
        self.seen.append((event.n, context))
        if self.raises is not None:
            raise self.raises

    async def given_up(self, event: Event, reason: str, code: str) -> None:
        self.gave_up.append((event.n, reason, code))


async def consumer(handler: Scripted, publisher: InMemoryPublisher, policy: RetryPolicy | None = None,
                   paused: list[float] | None = None, hold_max_s: float = 600.0,
                   hold: Hold | None = None) -> StubQueue:
    channel = StubChannel()

    async def sleep(seconds: float) -> None:  # no real waiting: record the pause instead
        (paused if paused is not None else []).append(seconds)

    stage = StageConsumer(stage="inbound", queue_name=QUEUE, prefix=PREFIX, decoder=msgspec.json.Decoder(Event),
                          handler=handler, publisher=publisher, metrics=Metrics(), rand=lambda: 1.0,
                          policy=policy or RetryPolicy(max_attempts=3, base_delay_s=1.0, max_delay_s=10.0),
                          sleep=sleep, hold_on=(LedgerUnavailable,), hold_max_s=hold_max_s, hold=hold)
    await stage.start(channel)  # type: ignore[arg-type]
    return channel.queues[QUEUE]


def message(n: int = 1, **headers: object) -> StubMessage:
    return StubMessage(body=msgspec.json.encode(Event(n)), headers=dict(headers), routing_key=QUEUE,
                       message_id=f"m-{n}")


async def test_a_handled_message_is_acked_and_nothing_is_published() -> None:
    handler, publisher = Scripted(), InMemoryPublisher()
    delivered = await (await consumer(handler, publisher)).deliver(message(7))
    assert delivered.settled == "ack" and publisher.published == []
    assert [(n, ctx.attempt) for n, ctx in handler.seen] == [(7, 1)]


async def test_a_retryable_error_goes_to_the_delay_exchange_with_the_next_attempt() -> None:
    handler, publisher = Scripted(RetryableError("PBX busy")), InMemoryPublisher()
    delivered = await (await consumer(handler, publisher)).deliver(message(1))
    (retry,) = publisher.published
    assert delivered.settled == "ack", "acked only once the retry copy was confirmed"
    assert retry.exchange == names.delay_exchange(PREFIX) and retry.routing_key == QUEUE
    assert retry.headers[names.H_ATTEMPT] == 1 and retry.expiration_s is not None and retry.expiration_s > 0


async def test_the_last_attempt_is_dead_lettered_and_the_handler_told() -> None:
    handler, publisher = Scripted(RetryableError("PBX busy")), InMemoryPublisher()
    delivered = await (await consumer(handler, publisher)).deliver(message(1, **{names.H_ATTEMPT: 2}))
    (dead,) = publisher.published
    assert delivered.settled == "ack" and dead.exchange == names.dead_exchange(PREFIX)
    assert dead.headers[names.H_REASON_CODE] == "exhausted" and "gave up after 3 attempts" in dead.headers[
        names.H_REASON]
    assert handler.gave_up == [(1, dead.headers[names.H_REASON], "exhausted")]


async def test_a_retry_that_was_not_an_attempt_keeps_the_attempt_count_even_at_the_last_attempt() -> None:
    """A delivery whose claim another worker holds: however long that worker takes (a long SIP
    text), the copy waiting for it is never dead-lettered for attempts it did not make."""
    handler, publisher = Scripted(RetryableError("another worker has it", counted=False)), InMemoryPublisher()
    delivered = await (await consumer(handler, publisher)).deliver(message(1, **{names.H_ATTEMPT: 2}))
    (retry,) = publisher.published
    assert delivered.settled == "ack" and retry.exchange == names.delay_exchange(PREFIX)
    assert retry.headers[names.H_ATTEMPT] == 2 and handler.gave_up == []


async def test_a_permanent_error_is_dead_lettered_at_once_with_its_code() -> None:
    handler, publisher = Scripted(PermanentError("no rule for +1206555", code="no_route")), InMemoryPublisher()
    await (await consumer(handler, publisher)).deliver(message(1))
    (dead,) = publisher.published
    assert dead.headers[names.H_REASON_CODE] == "no_route" and dead.headers[names.H_STAGE] == "inbound"


async def test_an_undecodable_body_is_dead_lettered_without_reaching_the_handler() -> None:
    handler, publisher = Scripted(), InMemoryPublisher()
    delivered = await (await consumer(handler, publisher)).deliver(StubMessage(body=b'{"n": "x"}', routing_key=QUEUE))
    (dead,) = publisher.published
    assert delivered.settled == "ack" and handler.seen == [] and handler.gave_up == []
    assert dead.headers[names.H_REASON_CODE] == "undecodable"


async def test_when_the_broker_is_down_the_message_is_requeued_not_lost() -> None:
    handler, publisher = Scripted(BrokerUnavailable("next stage unreachable")), InMemoryPublisher()
    delivered = await (await consumer(handler, publisher)).deliver(message(1))
    assert delivered.settled == "requeue" and publisher.published == []


async def test_a_requeued_message_comes_back_later_the_more_often_it_came_back() -> None:
    # A queue refusing publishes for 17 s used to burn its messages' delivery limit (20) in a
    # tight nack/redeliver loop, and the broker dead-lettered them (`make faults`, leader scenario).
    handler, publisher, paused = Scripted(BrokerUnavailable("refused")), InMemoryPublisher(), []
    queue = await consumer(handler, publisher, paused=paused)
    for returns in (0, 1, 2, 19):
        delivered = await queue.deliver(message(1, **{"x-delivery-count": returns}))
        assert delivered.settled == "requeue"
    assert paused == [0.5, 1.0, 2.0, 10.0]
    assert sum(compute_backoff(n, base=0.5, cap=10.0, rand=lambda: 0.0) for n in range(20)) > 60


async def test_when_even_the_retry_cannot_be_published_the_message_is_requeued() -> None:
    handler, publisher = Scripted(RetryableError("PBX busy")), InMemoryPublisher()
    publisher.available = False
    delivered = await (await consumer(handler, publisher)).deliver(message(1))
    assert delivered.settled == "requeue"


@pytest.mark.parametrize("crash", [ValueError("bug"), KeyError("field")])
async def test_a_handler_crash_is_retried_like_a_retryable_error(crash: Exception) -> None:
    handler, publisher = Scripted(crash), InMemoryPublisher()
    delivered = await (await consumer(handler, publisher)).deliver(message(1))
    (retry,) = publisher.published
    assert delivered.settled == "ack" and retry.exchange == names.delay_exchange(PREFIX)
    assert retry.headers[names.H_ATTEMPT] == 1


async def test_the_origin_of_a_request_is_the_key_it_was_routed_by_not_a_header_its_publisher_set() -> None:
    """Issue 16 point 1: through the requests exchange (a PBX's only way in) the routing key the
    broker enforced is the origin; the bridge's own retries (work exchange) keep the one they carry."""
    handler, publisher = Scripted(RetryableError("busy")), InMemoryPublisher()
    queue = await consumer(handler, publisher)
    forged = StubMessage(body=msgspec.json.encode(Event(1)), headers={names.H_ORIGIN_KEY: "outbound.beta"},
                         routing_key="outbound.acme", exchange=names.requests_exchange(PREFIX), message_id="m-1")
    await queue.deliver(forged)
    retried = StubMessage(body=msgspec.json.encode(Event(2)), headers={names.H_ORIGIN_KEY: "outbound.acme"},
                          routing_key=QUEUE, exchange=names.work_exchange(PREFIX), message_id="m-2")
    await queue.deliver(retried)
    assert [ctx.origin_key for _, ctx in handler.seen] == ["outbound.acme", "outbound.acme"]
    assert [p.headers[names.H_ORIGIN_KEY] for p in publisher.published] == ["outbound.acme", "outbound.acme"]


async def test_a_dead_letter_carries_no_foreign_header_and_a_bounded_reason() -> None:
    """Issue 16 point 3: an input-sized reason or a PBX's own huge header must not reach the broker."""
    handler, publisher = Scripted(PermanentError("bad " + "+12065550199 " * 30_000)), InMemoryPublisher()
    await (await consumer(handler, publisher)).deliver(message(1, **{"x-pbx-trace": "t" * 100_000}))
    (dead,) = publisher.published
    assert "x-pbx-trace" not in dead.headers
    reason = dead.headers[names.H_REASON]
    assert len(reason) < 400 and "12065550199" not in reason
    ((_, told, _),) = handler.gave_up
    assert len(told) < 400


@dataclass
class Flaky(Scripted):
    """Raises `raises` the first `times` tries, then succeeds."""

    times: int = 0

    async def handle(self, event: Event, context: MessageContext) -> None:
        self.seen.append((event.n, context))
        if len(self.seen) <= self.times and self.raises is not None:
            raise self.raises


async def test_a_hold_on_error_is_retried_in_place_and_the_message_never_leaves() -> None:
    """The inbound stage while the ledger is away: no delay queue, where a later text of the same
    conversation would overtake this one; the same delivery is tried again after a growing pause."""
    handler, publisher = Flaky(LedgerUnavailable("ledger unavailable: OSError"), times=3), InMemoryPublisher()
    delivered = await (await consumer(handler, publisher, hold=Hold(probe_s=0.001))).deliver(message(4))
    assert delivered.settled == "ack" and publisher.published == []
    assert [(n, ctx.attempt) for n, ctx in handler.seen] == [(4, 1)] * 4


async def holding(handler: Scripted, publisher: InMemoryPublisher, *, hold: Hold, hold_max_s: float = 600.0,
                  clock: Callable[[], float] = time.monotonic) -> tuple[StageConsumer[Event], StubQueue]:
    """A stage that holds on LedgerUnavailable, every message on one order key."""
    channel = StubChannel()
    stage = StageConsumer(stage="inbound", queue_name=QUEUE, prefix=PREFIX, decoder=msgspec.json.Decoder(Event),
                          handler=handler, publisher=publisher, metrics=Metrics(), rand=lambda: 1.0,
                          policy=RetryPolicy(max_attempts=3, base_delay_s=1.0, max_delay_s=10.0),
                          order_key=lambda event: "one conversation", hold_on=(LedgerUnavailable,),
                          hold_max_s=hold_max_s, hold=hold, clock=clock)
    await stage.start(channel)  # type: ignore[arg-type]
    return stage, channel.queues[QUEUE]


@dataclass
class Slow(Scripted):
    """Fails, and each try moves the clock on by `step_s` (the ledger's connect timeout, say)."""

    now: list[float] = field(default_factory=lambda: [0.0])
    step_s: float = 4.0

    async def handle(self, event: Event, context: MessageContext) -> None:
        self.now[0] += self.step_s
        await super().handle(event, context)


async def test_a_hold_ends_hold_max_s_after_delivery_even_for_a_message_that_waited_behind_its_key() -> None:
    """Held messages are unacked: none may stay so much longer than `hold_max_s` (the broker closes a
    channel holding one past its consumer_timeout), however many of its key were held before it."""
    handler = Slow(LedgerUnavailable("ledger unavailable: OSError"))
    publisher = InMemoryPublisher()
    _, queue = await holding(handler, publisher, hold=Hold(probe_s=0.001, cap_s=0.001), hold_max_s=10.0,
                             clock=lambda: handler.now[0])
    first, second = await asyncio.gather(queue.deliver(message(1)), queue.deliver(message(2)))
    # the first: tries at 0, 4 and 8 s, past 10 s at 12; the second got the key at 12 s, 12 s after
    # its own delivery: one try, then the retry path (held from there it would stay unacked to 22 s)
    assert [n for n, _ in handler.seen] == [1, 1, 1, 2]
    assert first.settled == second.settled == "ack"
    assert [p.exchange for p in publisher.published] == [names.delay_exchange(PREFIX)] * 2


async def test_a_held_message_whose_channel_closed_is_left_to_the_broker() -> None:
    handler, publisher = Scripted(LedgerUnavailable("ledger unavailable: OSError")), InMemoryPublisher()
    _, queue = await holding(handler, publisher, hold=Hold(probe_s=60.0, cap_s=60.0))
    gone = message(3)
    gone.channel_closed = True  # the node died: the broker delivers it again, in its place
    await asyncio.wait_for(queue.deliver(gone), 5.0)
    assert gone.settled is None and publisher.published == [] and len(handler.seen) == 1


async def test_draining_gives_held_messages_back_at_once_unsettled() -> None:
    handler, publisher = Scripted(LedgerUnavailable("ledger unavailable: OSError")), InMemoryPublisher()
    stage, queue = await holding(handler, publisher, hold=Hold(probe_s=60.0, cap_s=60.0))
    held = message(5)
    delivering = asyncio.create_task(queue.deliver(held))
    await eventually(lambda: len(handler.seen) == 1, what="the first try")
    await asyncio.wait_for(stage.drain(600.0), 5.0)  # not the drain timeout: nothing to wait for
    await delivering
    assert held.settled is None and publisher.published == []
