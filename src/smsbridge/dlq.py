"""The dead-letter queue for people: list, show, replay and purge, with filters.

RabbitMQ has no "peek": we `basic.get` messages without acking them, keep every one we have
read unacked (so none is read twice), act on the ones that match, and put the rest back with a
nack-requeue at the end. The queue's order can change in the process; nothing is lost.
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
        """Read the queue once. Without `act`, just collect the matches (up to `limit`). With it,
        run `act` on each match: True removes the message from the queue. Returns (done, kept):
        the matches acted on (or listed), and those `act` declined. Everything else goes back."""
        queue = await self._channel.get_queue(names.dead_queue(self._prefix), ensure=False)
        held: list[AbstractIncomingMessage] = []
        done: list[DeadLetter] = []
        kept: list[DeadLetter] = []
        try:
            while limit is None or len(done) + len(kept) < limit:
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                dead = DeadLetter.from_message(message)
                if not wanted.matches(dead) or act is None:
                    held.append(message)
                    if wanted.matches(dead):
                        done.append(dead)
                elif await act(dead):
                    await message.ack()
                    done.append(dead)
                    if progress:
                        progress(len(done))
                else:
                    held.append(message)
                    kept.append(dead)
        finally:
            for message in held:
                await message.nack(requeue=True)
        return done, kept

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
