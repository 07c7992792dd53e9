"""Dispatch stage: send to Flowroute under the account's limits, once, and report what happened.

One dispatch queue per Flowroute account with a single active consumer, so the active
dispatcher's limiter is the only sender for that account. A 429 pauses the whole account and
the message goes round the limiter again, a bounded number of times, then back to the broker.

Exactly once, with the ledger:
- a request already settled (a repeated `client_message_id`) gets its current status, no POST;
- "sending" is committed once the rate-limit slot is ours, right before the POST: a request
  still waiting for the limiter when the process dies was certainly not sent;
- a message found "sending" (the process died, or the answer never came) is first looked up in
  Flowroute's message list (`flowroute/sent_lookup.py` decides) and only sent if it is not
  there; when the list cannot decide, it is dead-lettered as `send_in_doubt` for a person, never
  sent again, and the PBX gets `failed` with reason code `send_in_doubt` (it may have gone out:
  docs/operations.md says what to do).
- Requests with the same text to the same number are handled one after the other
  (`conversation_of`), so a lookup never races a send it could mistake for its own.

Taking an account over (the first message after a (re)subscription), the limiter is primed with
the attempts the ledger shows for the account (`AccountLimiter.resume` says why they are all
there); a message's next attempt waits until its previous one ended `resend_gap` ago, so that
they are.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import UTC, datetime, timedelta

import structlog
from prometheus_client import Counter, Gauge

from smsbridge.broker.consumer import MessageContext
from smsbridge.broker.publisher import Publisher
from smsbridge.config import Settings, SmsConfig
from smsbridge.errors import PermanentError, RetryableError
from smsbridge.events import DeliveryState, DispatchRequest, StatusEvent
from smsbridge.flowroute.client import FlowrouteClient
from smsbridge.flowroute.limiter import CLOCK_SKEW_S, AccountLimiter, PastAttempt
from smsbridge.flowroute.outcome import Accepted, Fail, Outcome, RateLimited, Retry
from smsbridge.flowroute.sent_lookup import AlreadySent, InDoubt, decide
from smsbridge.ledger import Ledger, MessageRow
from smsbridge.metrics import Metrics
from smsbridge.workers.status import publish_status, publish_status_after_send

log = structlog.get_logger("smsbridge.dispatcher")
LOOKUP_SLACK = timedelta(seconds=60)  # clocks differ; Flowroute stamps the MDR when it takes it
LOOKUP_PAGES = 10  # the most pages of Flowroute's message list one lookup reads


def limiters_for(settings: Settings) -> dict[str, AccountLimiter]:
    return {
        account: AccountLimiter(config.sms_per_second, config.mms_per_second,
                                margin_s=settings.flowroute.rate_margin_s)
        for account, config in settings.accounts().items()
    }


def conversation_of(request: DispatchRequest) -> str:
    """Copies of one request, and requests with the same text to the same number, are handled
    one after the other, never side by side: Flowroute's message list tells them apart only by
    from, to and body."""
    text = hashlib.sha256(request.body.encode()).hexdigest()[:32]
    return f"{request.tenant}:{request.from_}:{request.to}:{text}"


class DispatchHandler:
    def __init__(self, settings: Settings, publisher: Publisher, client: FlowrouteClient,
                 limiters: dict[str, AccountLimiter], metrics: Metrics, ledger: Ledger) -> None:
        self._settings = settings
        self._publisher = publisher
        self._client = client
        self._limiters = limiters
        self._metrics = metrics
        self._ledger = ledger
        self._prefix = settings.broker.prefix
        self._warm: set[str] = set()
        self._active_gauges: dict[str, Gauge] = {}
        self._wait_counters: dict[str, Counter] = {}
        # Messages of one account arrive side by side: one of them reads the ledger, once.
        self._resuming = {account: asyncio.Lock() for account in limiters}

    def subscribed(self) -> None:
        """Called after every (re)subscription: the first message per account reads the attempts
        before us from the ledger (`_resume`)."""
        self._warm.clear()
        for account in self._limiters:
            self._metrics.dispatcher_active.labels(account).set(0)

    def _active(self, account: str) -> Gauge:
        """The metric children, looked up once per account (`labels` costs tens of µs a call)."""
        if account not in self._active_gauges:
            self._active_gauges[account] = self._metrics.dispatcher_active.labels(account)
        return self._active_gauges[account]

    def _waits(self, account: str) -> Counter:
        if account not in self._wait_counters:
            self._wait_counters[account] = self._metrics.limiter_wait.labels(account)
        return self._wait_counters[account]

    def _config(self, request: DispatchRequest) -> SmsConfig:
        config = self._settings.sms_config(request.config_id)
        if config is None:
            raise PermanentError(f"unknown SMS configuration '{request.config_id}'", code="unknown_config")
        return config

    async def _limiter(self, config: SmsConfig) -> AccountLimiter:
        account = config.account_name
        limiter = self._limiters[account]
        if account not in self._warm:
            async with self._resuming[account]:
                if account not in self._warm:  # counting them twice would fill every slot
                    await self._resume(account, limiter)
                    self._warm.add(account)
        return limiter

    async def _resume(self, account: str, limiter: AccountLimiter) -> None:
        """We may be taking the account over: count the attempts the ledger shows that may still
        count (answered within a window, or still "sending" within the longest an attempt runs)."""
        window = timedelta(seconds=limiter.sms.window_s + CLOCK_SKEW_S)
        longest = timedelta(seconds=self._settings.flowroute.timeout_s * (LOOKUP_PAGES + 1)) + window
        config_ids = [c.id for c in self._settings.sms_configs if c.account_name == account]
        sends = await self._ledger.recent_sends(config_ids, window, longest)
        now = datetime.now(UTC)
        limiter.resume([PastAttempt(None if s.sending else (now - s.at).total_seconds(), s.is_mms) for s in sends])
        log.info("sending for the account: counting the attempts before us", account=account,
                 answered=sum(not s.sending for s in sends), in_flight=sum(s.sending for s in sends))

    def _resend_gap(self, limiter: AccountLimiter) -> float:
        """How long after a message's attempt ended its next one may start: a window and the clock
        skew, so that the write that starts it never hides an end a takeover must still count."""
        return limiter.sms.window_s + CLOCK_SKEW_S

    async def _wait_gap(self, limiter: AccountLimiter, ended: float | None) -> None:
        if ended is not None:
            await asyncio.sleep(max(0.0, ended + self._resend_gap(limiter) - time.monotonic()))

    async def handle(self, request: DispatchRequest, context: MessageContext) -> None:
        structlog.contextvars.bind_contextvars(client_message_id=request.client_message_id, tenant=request.tenant)
        config = self._config(request)
        self._active(config.account_name).set(1)
        limiter = await self._limiter(config)
        previous: float | None = None  # when this message's previous attempt ended
        after_lookup = False
        rate_limited = 0
        while True:
            await self._wait_gap(limiter, previous)
            row, outcome = await self._attempt(config, limiter, request, after_lookup)
            if outcome is None:  # not ours to send now
                if row.dispatch_state == "done":
                    log.info("repeated request: answering with the current status", outcome="duplicate",
                             state=row.state)
                    await publish_status(self._publisher, self._prefix, current_status(row))
                    return
                if row.dispatch_state == "sending":
                    previous = await self._already_sent(config, limiter, request, row)
                    if previous is None:
                        return
                    after_lookup = True
                else:  # requeued after an answer a moment ago
                    previous = previous_end(row)
                continue
            previous, after_lookup = time.monotonic(), False
            if not isinstance(outcome, RateLimited):
                await self._settle(request, row, outcome)
                return
            rate_limited += 1
            log.warning("Flowroute rate limit (429): pausing the account", account=config.account_name,
                        pause_s=round(outcome.retry_after, 3))
            limiter.pause(outcome.retry_after)
            if rate_limited >= self._settings.outbound.max_rate_limited_waits:
                await self._ledger.mark_queued(row.id, "Flowroute kept answering 429")  # certainly not taken
                raise RetryableError("Flowroute kept answering 429", retry_after=outcome.retry_after)

    async def _attempt(self, config: SmsConfig, limiter: AccountLimiter, request: DispatchRequest,
                       after_lookup: bool) -> tuple[MessageRow, Outcome | None]:
        """With a slot in hand, claim the request in the ledger ("sending", committed before the
        POST: a crash after it means "maybe sent") and send it; no outcome when it is not ours to
        send now (its row says why). The slot is held until the answer is in: Flowroute counts the
        attempt somewhere in between; a slot not used for a send is given back uncounted."""
        waited = await limiter.acquire(is_mms=request.is_mms)
        sent = False
        try:
            self._waits(config.account_name).inc(waited)
            row, mine = await self._ledger.claim_send(request, gap=timedelta(seconds=self._resend_gap(limiter)),
                                                      after_lookup=after_lookup)
            if not mine:
                return row, None
            sent = True
            return row, await self._client.send(config, request)
        finally:
            if sent:
                limiter.release(is_mms=request.is_mms)
            else:
                limiter.abandon(is_mms=request.is_mms)

    async def _already_sent(self, config: SmsConfig, limiter: AccountLimiter, request: DispatchRequest,
                            row: MessageRow) -> float | None:
        """After a crash or a lost answer: did Flowroute take it? Then record it, never resend
        (None). Not taken: when the lookup ended (a `time.monotonic()`), to space the send after it."""
        started = row.send_started_at or row.updated_at
        alike = await self._ledger.alike_in_doubt(row, timedelta(seconds=self._settings.retry.dispatch.max_age_s))
        async with limiter.attempt(is_mms=False):  # the list shares the endpoint's budget
            await self._ledger.touch_sending(row.id)  # a takeover now sees this attempt in flight
            lookup = await self._client.find_sent(config, request, since=min([started, *alike]) - LOOKUP_SLACK,
                                                  until=datetime.now(UTC) + LOOKUP_SLACK, max_pages=LOOKUP_PAGES)
        ended = time.monotonic()
        held = await self._ledger.held_mdrs([sent.mdr_id for sent in lookup.found])
        decision = decide(lookup, held, started, alike)
        log.warning("message was maybe sent before: looked it up", decision=type(decision).__name__,
                    found=len(lookup.found), recorded=len(held), alike_in_doubt=len(alike))
        if isinstance(decision, InDoubt):
            raise PermanentError(f"cannot tell whether Flowroute took it: {decision.reason}", code="send_in_doubt")
        if isinstance(decision, AlreadySent):
            await self._accepted(request, row, Accepted(decision.mdr_id, None))
            return None
        return ended

    async def _settle(self, request: DispatchRequest, row: MessageRow, outcome: Accepted | Retry | Fail) -> None:
        if isinstance(outcome, Retry):
            if not outcome.maybe_sent:
                await self._ledger.mark_queued(row.id, outcome.reason)
            raise RetryableError(outcome.reason, retry_after=outcome.retry_after)
        if isinstance(outcome, Fail):
            raise PermanentError(outcome.reason, code=outcome.code)
        await self._accepted(request, row, outcome)

    async def _accepted(self, request: DispatchRequest, row: MessageRow, outcome: Accepted) -> None:
        segments = outcome.segments or request.segments
        if not await self._ledger.record_accepted(row.id, outcome.mdr_id, segments):
            raise PermanentError(f"Flowroute id {outcome.mdr_id} belongs to another message in the ledger",
                                 code="send_in_doubt")
        status = StatusEvent(tenant=request.tenant, config_id=request.config_id, state="accepted",
                             client_message_id=request.client_message_id, mdr_id=outcome.mdr_id, segments=segments)
        self._metrics.dispatch_latency.observe((datetime.now(UTC) - request.occurred_at).total_seconds())
        # No line of its own: the message's one outcome line ("message processed", or "requeued" if
        # its status cannot be published) carries the Flowroute id and segments from here on.
        structlog.contextvars.bind_contextvars(mdr_id=outcome.mdr_id, segments=segments)
        await publish_status_after_send(self._publisher, self._prefix, status)

    async def given_up(self, request: DispatchRequest, reason: str, code: str) -> None:
        row = await self._ledger.outbound(request.tenant, request.client_message_id)
        if row is not None and row.dispatch_state != "done":
            await self._ledger.record_failed(row.id, code, reason)
        status = StatusEvent(tenant=request.tenant, config_id=request.config_id, state="failed",
                             client_message_id=request.client_message_id, reason_code=code, reason=reason,
                             segments=request.segments)
        await publish_status(self._publisher, self._prefix, status)


def previous_end(row: MessageRow) -> float | None:
    """When the message's last attempt (requeued after its answer) ended at the latest, on the
    `time.monotonic()` clock (a millisecond later: the claim compares wall clock times); None if
    it never had one."""
    if row.send_started_at is None or row.dispatch_state != "queued":
        return None
    return time.monotonic() - (datetime.now(UTC) - row.updated_at).total_seconds() + 0.001


def current_status(row: MessageRow) -> StatusEvent:
    state: DeliveryState = row.state if row.state in ("accepted", "sent", "buffered", "delivered",
                                                      "failed") else "accepted"  # type: ignore[assignment]
    return StatusEvent(tenant=row.tenant, config_id=row.config_id, state=state,
                       client_message_id=row.client_message_id, mdr_id=row.mdr_id, segments=row.segments,
                       reason_code=row.reason_code, reason=row.reason)
