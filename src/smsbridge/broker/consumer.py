"""The consumer loop every stage shares: decode, handle, then ack, retry or dead-letter.

Ack policy: a message is acked only after its effect is durable (the handler returned, which
means it published its next message with a confirm or got its answer), or after it has been
republished with a confirm to the delay or dead-letter exchange. If even that publish fails we
nack with requeue; the quorum queue's delivery limit stops that from looping forever.
The attempt count and first-seen time travel in the message headers, never in process memory.

A message's outcome is settled under its order key's lock, the `given_up` hook included: the
final state (e.g. `failed` in the ledger) is written before the next copy of the same request
may start. Giving up runs the hook first, then publishes the dead-letter copy: a hook that fails
(a ledger outage, say) sends the message round the delay queue marked `H_GIVING_UP` (with a count
of its own), and its next delivery only finishes giving up; it is never handled twice nor
dead-lettered twice. Should the hook fail `max_attempts` times, the message is dead-lettered
without it, its reason saying so.

A stage may name errors to hold on (`hold_on`; the inbound stage: the ledger unavailable). Such
a failure is not sent round the delay queue, where later messages of the same order key would
overtake it: the message stays unacked and keeps its key's lock, and the handler is tried again
in place (`broker/hold.py` says when). The messages behind it wait in arrival order,
and once the prefetch is full the broker delivers no more, so the stage pauses as a whole. A
hold ends `hold_max_s` after the message was delivered (not after it got its key's lock: the
messages queued behind it on the key count from their own delivery too), so no message stays
unacked much longer than that, well inside the broker's delivery acknowledgement timeout
(`consumer_timeout`, 30 min by default on current RabbitMQ versions, which closes the channel
of a consumer holding a message longer); the message then takes the ordinary retry path. A held
message whose channel closed (the node died), or whose process is draining, is given back
unsettled: the broker delivers it again, in its place.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import msgspec
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import ChannelInvalidStateError

from smsbridge.backoff import compute_backoff
from smsbridge.broker import names
from smsbridge.broker.hold import Hold
from smsbridge.broker.ordering import KeyedLocks
from smsbridge.broker.publisher import Publisher, now_ms
from smsbridge.config import RetryPolicy
from smsbridge.errors import BrokerUnavailable, PermanentError, RetryableError
from smsbridge.metrics import Metrics
from smsbridge.redact import carried, clip, header_text

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)
log = structlog.get_logger("smsbridge.consumer")
REQUEUE_PAUSE_BASE_S = 0.5
REQUEUE_PAUSE_CAP_S = 10.0
HOLD_MAX_S = 600.0


@dataclass(frozen=True)
class MessageContext:
    origin_key: str  # the routing key the message was first published with (e.g. outbound.<tenant>)
    attempt: int  # 1 on the first delivery


class Handler(Protocol[T_contra]):
    async def handle(self, event: T_contra, context: MessageContext) -> None: ...

    async def given_up(self, event: T_contra, reason: str, code: str) -> None:
        """Called once when a decoded message is dead-lettered (e.g. to publish a `failed` status)."""


@dataclass(frozen=True)
class Attempt:
    number: int  # retries so far: 0 on the first delivery
    first_seen_ms: int

    @classmethod
    def from_headers(cls, headers: Mapping[str, Any]) -> Attempt:
        number = headers.get(names.H_ATTEMPT, 0)
        first = headers.get(names.H_FIRST_SEEN)
        return cls(
            number=number if isinstance(number, int) else 0,
            first_seen_ms=first if isinstance(first, int) else now_ms(),
        )

    def age_s(self, at_ms: int) -> float:
        return max(0.0, (at_ms - self.first_seen_ms) / 1000)


def retry_decision(attempt: Attempt, policy: RetryPolicy, *, now: int, requested: float | None,
                   rand: Callable[[], float], counted: bool = True) -> float | str:
    """Seconds to wait before the next try, or why there is no next try (a try that was not
    `counted` as an attempt is bounded by the maximum age alone)."""
    if counted and attempt.number + 1 >= policy.max_attempts:
        return f"gave up after {attempt.number + 1} attempts"
    delay = compute_backoff(
        attempt.number, base=policy.base_delay_s, cap=policy.max_delay_s, requested=requested, rand=rand
    )
    if attempt.age_s(now) + delay > policy.max_age_s:
        return f"gave up: older than the {policy.max_age_s:g} s maximum age"
    return min(delay, names.MAX_DELAY_S)


def _giving_up(message: AbstractIncomingMessage) -> tuple[str, str] | None:
    """(reason, code) when an earlier delivery decided to dead-letter this message."""
    headers = message.headers or {}
    if not headers.get(names.H_GIVING_UP):
        return None
    return _text(headers.get(names.H_REASON)), _text(headers.get(names.H_REASON_CODE))


class _GivenBack(Exception):
    """A held message left unsettled: its channel is gone or the process is draining."""


def _channel_gone(message: AbstractIncomingMessage) -> bool:
    try:
        return bool(message.channel.is_closed)
    except ChannelInvalidStateError:  # aio-pika's answer for a closed channel
        return True


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "unknown")


class StageConsumer(Generic[T]):
    """Consumes one stage queue with bounded concurrency (prefetch) and drains on stop."""

    def __init__(
        self,
        *,
        stage: str,
        queue_name: str,
        prefix: str,
        decoder: msgspec.json.Decoder[T],
        handler: Handler[T],
        publisher: Publisher,
        policy: RetryPolicy,
        metrics: Metrics,
        rand: Callable[[], float] | None = None,
        order_key: Callable[[T], str | None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        hold_on: tuple[type[Exception], ...] = (),
        hold_max_s: float = HOLD_MAX_S,
        hold: Hold | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import random

        self.stage = stage
        self.queue_name = queue_name
        self._prefix = prefix
        self._decoder = decoder
        self._handler = handler
        self._publisher = publisher
        self._policy = policy
        self._metrics = metrics
        self._rand = rand or random.random
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._order_key = order_key
        self._locks = KeyedLocks()
        self._sleep = sleep
        self._hold_on = hold_on
        self._hold_max_s = hold_max_s
        self._hold = hold or Hold()
        self._clock = clock
        self._processed: dict[str, Any] = {}  # the `processed` counter's child per outcome

    async def start(self, channel: AbstractChannel) -> None:
        self._queue = await channel.get_queue(self.queue_name, ensure=True)
        self._tag = await self._queue.consume(self._on_message)

    async def cancel(self) -> None:
        """Stop intake: no new deliveries; in-flight ones carry on."""
        if self._queue is not None and self._tag is not None:
            await self._queue.cancel(self._tag)
            self._tag = None

    async def drain(self, drain_timeout: float) -> None:
        """Give in-flight messages `drain_timeout` seconds, then cancel the rest.

        A cancelled message is neither acked nor rejected: the broker redelivers it. Held
        messages are given back at once, unsettled, as they would only wait out the timeout.
        """
        self._hold.stop()
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=drain_timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # aiormq runs this callback as a task of the channel, and cancels it when the channel
        # closes (the node died): a delivery cancelled after the PBX took the text but before the
        # ledger recorded it would wait out its claim's lease and then reach the PBX again. So
        # the work runs in a task of ours that finishes; its ack then fails on the dead channel,
        # and the broker's redelivery finds the text already delivered.
        work = asyncio.create_task(self._work(message, self._clock()))
        self._inflight.add(work)
        work.add_done_callback(self._inflight.discard)
        await asyncio.shield(work)

    async def _work(self, message: AbstractIncomingMessage, delivered_at: float) -> None:
        # The task runs in a copy of the context made for it, dropped when it ends: what it binds
        # needs no unbinding (`bound_contextvars` would read every variable of the context twice).
        attempt = Attempt.from_headers(message.headers or {})
        structlog.contextvars.bind_contextvars(stage=self.stage, attempt=attempt.number + 1,
                                               amqp_message_id=message.message_id)
        await self._process(message, attempt, delivered_at)

    async def _process(self, message: AbstractIncomingMessage, attempt: Attempt, delivered_at: float) -> None:
        try:
            event = self._decoder.decode(message.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._dead_letter(message, attempt, f"undecodable message: {exc}", "undecodable", None)
            return
        await self._run(message, attempt, event, delivered_at)

    def _origin_key(self, message: AbstractIncomingMessage) -> str:
        header = (message.headers or {}).get(names.H_ORIGIN_KEY)
        if isinstance(header, bytes):
            header = header.decode(errors="replace")
        return names.origin_key(self._prefix, message.exchange or "", message.routing_key or self.queue_name,
                                header if isinstance(header, str) else None)

    async def _run(self, message: AbstractIncomingMessage, attempt: Attempt, event: T,
                   delivered_at: float) -> None:
        started = time.perf_counter()
        key = self._order_key(event) if self._order_key else None
        async with self._locks.hold(key):
            giving_up = _giving_up(message)
            if giving_up is not None:
                await self._dead_letter(message, attempt, *giving_up, event)
                return
            try:
                await self._handle_holding(message, event, MessageContext(self._origin_key(message),
                                                                          attempt.number + 1),
                                           hold_until=delivered_at + self._hold_max_s)
            except _GivenBack as exc:
                log.info("held message given back to the broker", outcome="given_back", reason=str(exc))
            except PermanentError as exc:
                await self._dead_letter(message, attempt, exc.reason, exc.code, event)
            except RetryableError as exc:
                await self._retry(message, attempt, exc.reason, exc.retry_after, event, counted=exc.counted)
            except BrokerUnavailable as exc:
                await self._requeue(message, f"broker unavailable: {exc}")
            except Exception as exc:  # a bug must not lose the message: retry, then dead-letter
                log.exception("handler crashed", error=repr(exc))
                await self._retry(message, attempt, f"internal error: {exc!r}", None, event)
            else:
                await self._settle(message.ack, "done", time.perf_counter() - started)

    async def _handle_holding(self, message: AbstractIncomingMessage, event: T, context: MessageContext, *,
                              hold_until: float) -> None:
        """The handler, tried again in place while it fails with a `hold_on` error, until
        `hold_until` (`hold_max_s` after delivery): the message keeps its place before the later
        ones of its order key. Raises `_GivenBack` when the message cannot be held any longer but
        the broker will deliver it again anyway (channel gone, process draining)."""
        first = True
        while True:
            try:
                await self._handler.handle(event, context)
            except self._hold_on as exc:
                self._hold.held()
                if self._clock() >= hold_until:
                    raise  # the ordinary retry path now: the broker would take the message back anyway
                if self._hold.stopped or _channel_gone(message):
                    raise _GivenBack(str(exc)) from exc
                if first:
                    first = False
                    self._metrics.held.labels(self.stage).inc()
                    log.warning("message held in place until it can go on", outcome="held", reason=str(exc))
                await self._hold.pause()
                if self._hold.stopped or _channel_gone(message):
                    raise _GivenBack(str(exc)) from exc
            else:
                self._hold.went_through()
                return

    async def _retry(self, message: AbstractIncomingMessage, attempt: Attempt, reason: str,
                     requested: float | None, event: T, *, counted: bool = True) -> None:
        decision = retry_decision(attempt, self._policy, now=now_ms(), requested=requested, rand=self._rand,
                                  counted=counted)
        if isinstance(decision, str):
            await self._dead_letter(message, attempt, f"{reason} ({decision})", "exhausted", event)
            return
        number = attempt.number + 1 if counted else attempt.number
        headers = {**carried(message.headers, names.CARRIED_HEADERS), names.H_ATTEMPT: number,
                   names.H_FIRST_SEEN: attempt.first_seen_ms, names.H_DELAY_TIER: str(names.delay_tier(decision)),
                   names.H_ORIGIN_KEY: self._origin_key(message)}
        try:
            # Always the stage queue's own key: the delay queue dead-letters into the direct work
            # exchange, where any other key would be unroutable and silently dropped.
            await self._publisher.publish(
                names.delay_exchange(self._prefix), self.queue_name, message.body,
                headers=headers, message_id=message.message_id, expiration_s=decision,
            )
        except BrokerUnavailable as exc:
            await self._requeue(message, f"could not schedule retry: {exc}")
            return
        self._metrics.retried.labels(self.stage).inc()
        log.warning("message will be retried", outcome="retry", reason=reason, retry_in_s=round(decision, 3))
        await self._settle(message.ack, None, None)

    async def _dead_letter(self, message: AbstractIncomingMessage, attempt: Attempt, reason: str,
                           code: str, event: T | None) -> None:
        reason = clip(reason)  # it may quote input: a sentence for people, never input-sized
        if event is not None:
            ran = await self._given_up(message, attempt, reason, code, event)
            if ran is False:  # it goes round the delay queue and finishes giving up later
                return
            if ran is None:
                reason = f"{reason} (the final state was not recorded)"
        headers = {**carried(message.headers, names.CARRIED_HEADERS), names.H_STAGE: self.stage,
                   names.H_REASON: header_text(reason),
                   names.H_REASON_CODE: code, names.H_ATTEMPT: attempt.number + 1, names.H_DEAD_AT: now_ms(),
                   names.H_ROUTING_KEY: self.queue_name, names.H_ORIGIN_KEY: self._origin_key(message)}
        headers.pop(names.H_DELAY_TIER, None)
        headers.pop(names.H_GIVING_UP, None)
        try:
            await self._publisher.publish(
                names.dead_exchange(self._prefix), self.queue_name, message.body,
                headers=headers, message_id=message.message_id,
            )
        except BrokerUnavailable as exc:
            await self._requeue(message, f"could not dead-letter: {exc}")
            return
        self._metrics.dead_lettered.labels(self.stage, code).inc()
        log.error("message dead-lettered", outcome="dead_letter", reason=reason, reason_code=code)
        await self._settle(message.ack, None, None)

    async def _given_up(self, message: AbstractIncomingMessage, attempt: Attempt, reason: str, code: str,
                        event: T) -> bool | None:
        """Run the hook (the final state) before the dead-letter copy exists. True: it ran.
        False: it failed, and the message went round the delay queue marked to finish giving up
        next time. None: it failed once too often; dead-letter without it."""
        try:
            await self._handler.given_up(event, reason, code)
        except Exception as exc:  # noqa: BLE001 - a ledger outage or a lost publish: try again later
            log.warning("could not record the final state before dead-lettering; will try again",
                        reason_code=code, error=repr(exc)[:300])
            return await self._retry_giving_up(message, attempt, reason, code)
        return True

    async def _retry_giving_up(self, message: AbstractIncomingMessage, attempt: Attempt, reason: str,
                               code: str) -> bool | None:
        """Round the delay queue with the decision in the headers (False); the hook has its own
        count of tries, as the message's may be spent already. Out of tries: None."""
        tries = _int((message.headers or {}).get(names.H_GIVING_UP)) + 1
        if tries >= self._policy.max_attempts:
            log.error("gave up recording the final state; dead-lettering without it", reason_code=code)
            return None
        delay = min(compute_backoff(tries - 1, base=self._policy.base_delay_s, cap=self._policy.max_delay_s,
                                    rand=self._rand), names.MAX_DELAY_S)
        headers = {**carried(message.headers, names.CARRIED_HEADERS), names.H_GIVING_UP: tries,
                   names.H_REASON: header_text(reason),
                   names.H_REASON_CODE: code, names.H_ATTEMPT: attempt.number,
                   names.H_FIRST_SEEN: attempt.first_seen_ms, names.H_DELAY_TIER: str(names.delay_tier(delay)),
                   names.H_ORIGIN_KEY: self._origin_key(message)}
        try:
            await self._publisher.publish(names.delay_exchange(self._prefix), self.queue_name, message.body,
                                          headers=headers, message_id=message.message_id, expiration_s=delay)
        except BrokerUnavailable as exc:
            await self._requeue(message, f"could not schedule the end of giving up: {exc}")
            return False
        self._metrics.retried.labels(self.stage).inc()
        await self._settle(message.ack, None, None)
        return False

    async def _requeue(self, message: AbstractIncomingMessage, reason: str) -> None:
        """The broker did not take a publish this message needs: hand it back, after a pause.

        Nacked at once it would come straight back, and a queue whose leader is being elected,
        or a node refusing publishes, can last longer than the queue's delivery limit (20) of
        such round trips takes: measured in `make faults`, 649 requeues in 17 s, then the broker
        dead-lettered the messages. So each comes back later the more often it came back
        (`x-delivery-count`), up to `REQUEUE_PAUSE_CAP_S`: twenty returns then span minutes."""
        returns = _int((message.headers or {}).get("x-delivery-count"))
        pause = compute_backoff(returns, base=REQUEUE_PAUSE_BASE_S, cap=REQUEUE_PAUSE_CAP_S, rand=self._rand)
        log.warning("message requeued", outcome="requeue", reason=reason, requeue_in_s=round(pause, 2))
        await self._sleep(pause)  # the message stays unacked meanwhile: a crash now loses nothing
        await self._settle(lambda: message.nack(requeue=True), None, None)

    async def _settle(self, action: Callable[[], Awaitable[None]], outcome: str | None,
                      seconds: float | None) -> None:
        try:
            await action()
        except Exception as exc:  # channel gone: the broker redelivers the message, nothing is lost
            log.warning("could not settle message; the broker will redeliver it", error=repr(exc))
            return
        if outcome is not None:
            counter = self._processed.get(outcome)
            if counter is None:  # `labels` costs tens of µs a call: looked up once per outcome
                counter = self._processed[outcome] = self._metrics.processed.labels(self.stage, outcome)
            counter.inc()
            log.info("message processed", outcome=outcome, seconds=round(seconds or 0.0, 4))
