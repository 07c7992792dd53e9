"""The dead-letter queue for people: list, show, replay and purge, with filters.

RabbitMQ has no "peek", and putting a message back (nack with requeue, or closing the channel
with it unacked) counts as a delivery on a quorum queue: RabbitMQ 3.x and 4.x before 4.3 raise
`x-delivery-count`, and with a delivery limit (20 by default on 4.x) a dead letter read often
enough would be dropped. So a read never puts a message back: we `basic.get` the messages that
were in the queue when the walk began (no more: the copies we add are not read again), act on
the ones that match, and for every other one publish an identical copy to the queue's tail,
with a publisher confirm, before we ack the original. The copy has the same body, message id
and headers (the delivery count aside; what the broker said in `x-death` is also kept in our
own headers). Read in full, the queue keeps its order; a crash between a copy and its ack
leaves the dead letter twice, never lost.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from smsbridge.broker import names
from smsbridge.broker.publisher import Publisher, now_ms
from smsbridge.config import Settings
from smsbridge.events import encoder
from smsbridge.flowroute.webhook import UnknownShape, parse_webhook
from smsbridge.intake import Unroutable, to_event
from smsbridge.limits import FieldRejected

COPY_DROPS = ("x-delivery-count",)  # set by the broker on each delivery; a copy starts afresh
BROKER_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
                  "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason", "x-delivery-count")


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value if value is not None else "")


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    stage: str
    reason: str
    code: str
    attempts: int
    dead_at_ms: int
    headers: dict[str, Any]
    body: bytes

    @classmethod
    def from_message(cls, message: AbstractIncomingMessage) -> DeadLetter:
        headers = dict(message.headers or {})
        deaths = headers.get("x-death") or [{}]
        first = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
        # Messages the broker dead-lettered itself (delivery limit) carry only x-death.
        stage = _text(headers.get(names.H_STAGE)) or _text(first.get("queue")).rsplit(".", 1)[-1] or "unknown"
        reason = _text(headers.get(names.H_REASON)) or f"broker: {_text(first.get('reason')) or 'unknown'}"
        code = _text(headers.get(names.H_REASON_CODE)) or _text(first.get("reason")) or "unknown"
        dead_at = headers.get(names.H_DEAD_AT)
        attempts = headers.get(names.H_ATTEMPT)
        return cls(message_id=message.message_id or "", stage=stage, reason=reason, code=code,
                   attempts=attempts if isinstance(attempts, int) else 0,
                   dead_at_ms=dead_at if isinstance(dead_at, int) else 0, headers=headers, body=message.body)

    def age_s(self, now: int | None = None) -> float:
        return ((now or now_ms()) - self.dead_at_ms) / 1000 if self.dead_at_ms else 0.0


@dataclass(frozen=True)
class Filter:
    stage: str | None = None
    reason: str | None = None  # substring of the reason, or the reason code
    older_than_s: float | None = None
    message_id: str | None = None

    def matches(self, dead: DeadLetter) -> bool:
        return ((self.stage is None or dead.stage == self.stage)
                and (self.reason is None or self.reason == dead.code or self.reason.lower() in dead.reason.lower())
                and (self.older_than_s is None or dead.age_s() >= self.older_than_s)
                and (self.message_id is None or dead.message_id == self.message_id))


Action = Callable[[DeadLetter], Awaitable[bool]]


class DeadLetterQueue:
    def __init__(self, channel: AbstractChannel, settings: Settings, publisher: Publisher | None = None) -> None:
        self._channel = channel
        self._settings = settings
        self._prefix = settings.broker.prefix
        self._publisher = publisher

    async def walk(self, wanted: Filter, act: Action | None = None, limit: int | None = None,
                   progress: Callable[[int], None] | None = None) -> tuple[list[DeadLetter], list[DeadLetter]]:
        """Read the queue once, changing nothing but what `act` removes. Without `act`, just
        collect the matches (up to `limit`). With it, run `act` on each match (up to `limit`):
        True removes the message from the queue. Returns (done, kept): the matches acted on (or
        listed), and those `act` declined. Everything else stays, in its order."""
        assert self._publisher is not None, "walking the queue puts copies back: it needs a publisher"
        name = names.dead_queue(self._prefix)
        queue = await self._channel.get_queue(name, ensure=False)
        done: list[DeadLetter] = []
        kept: list[DeadLetter] = []
        for _ in range(await self._depth(name)):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            dead = DeadLetter.from_message(message)
            room = limit is None or len(done) + len(kept) < limit
            if room and wanted.matches(dead) and act is not None and await act(dead):
                await message.ack()
                done.append(dead)
                if progress:
                    progress(len(done))
                continue
            if room and wanted.matches(dead):
                (done if act is None else kept).append(dead)
            await self._put_back(name, message, dead)
        return done, kept

    async def _depth(self, name: str) -> int:
        """Ready messages now, asked of the broker (a robust channel caches its queue objects)."""
        underlying = await self._channel.get_underlay_channel()
        declared = await underlying.queue_declare(name, passive=True)
        return int(declared.message_count or 0)

    async def _put_back(self, name: str, message: AbstractIncomingMessage, dead: DeadLetter) -> None:
        """A copy at the tail, confirmed, then the original acked: never a requeue (see above)."""
        assert self._publisher is not None
        headers = {key: value for key, value in dead.headers.items() if key not in COPY_DROPS}
        headers.setdefault(names.H_STAGE, dead.stage)  # what x-death said, in case a broker drops it
        headers.setdefault(names.H_REASON, dead.reason)
        headers.setdefault(names.H_REASON_CODE, dead.code)
        try:
            await self._publisher.publish("", name, dead.body, headers=headers, message_id=dead.message_id or None)
        except BaseException:
            await message.nack(requeue=True)  # could not copy it: back as it was, counted once
            raise
        await message.ack()

    async def replay(self, dead: DeadLetter) -> bool:
        """Back to its stage with attempts reset; a parked webhook goes through intake again."""
        assert self._publisher is not None
        if dead.stage == "receiver":
            return await self._replay_webhook(dead)
        queue = _text(dead.headers.get(names.H_ROUTING_KEY)) or names.stage_queue(self._prefix, dead.stage)
        headers = {k: v for k, v in dead.headers.items() if k not in BROKER_HEADERS and not k.startswith(
            ("x-smsbridge-reason", "x-smsbridge-dead", "x-smsbridge-stage", names.H_DELAY_TIER))}
        headers.update({names.H_ATTEMPT: 0, names.H_FIRST_SEEN: now_ms()})
        await self._publisher.publish(names.work_exchange(self._prefix), queue, dead.body, headers=headers,
                                      message_id=dead.message_id or None)
        return True

    async def _replay_webhook(self, dead: DeadLetter) -> bool:
        assert self._publisher is not None
        config = self._settings.sms_config(_text(dead.headers.get(names.H_CONFIG)))
        if config is None:
            return False
        try:
            event = to_event(parse_webhook(msgspec.json.decode(dead.body)), config)
        except (msgspec.DecodeError, RecursionError, UnknownShape, Unroutable, FieldRejected):
            return False  # still not usable with today's configuration: leave it parked
        await self._publisher.to_stage(self._prefix, "inbound", encoder.encode(event), message_id=event.event_id)
        return True


def parse_age(text: str) -> float:
    """`90s`, `15m`, `2h`, `7d` → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(text) < 2 or text[-1] not in units or not text[:-1].replace(".", "", 1).isdigit():
        raise ValueError(f"age must look like 90s, 15m, 2h or 7d, not {text!r}")
    return float(text[:-1]) * units[text[-1]]


def format_row(dead: DeadLetter) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(dead.dead_at_ms / 1000)) if dead.dead_at_ms else "?"
    reason = dead.reason if len(dead.reason) <= 90 else dead.reason[:87] + "..."
    return f"{when}  {dead.stage:<16} {dead.code:<22} {dead.attempts:>3}  {dead.message_id[:32]:<32}  {reason}"
