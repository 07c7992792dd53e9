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
  there; when the list cannot decide, it is parked as `send_in_doubt` for a person.
- Requests with the same text to the same number are handled one after the other
  (`conversation_of`), so a lookup never races a send it could mistake for its own.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import structlog

from smsbridge.broker.consumer import MessageContext
from smsbridge.broker.publisher import Publisher
from smsbridge.config import Settings, SmsConfig
from smsbridge.errors import PermanentError, RetryableError
from smsbridge.events import DeliveryState, DispatchRequest, StatusEvent
from smsbridge.flowroute.client import FlowrouteClient
from smsbridge.flowroute.limiter import AccountLimiter
from smsbridge.flowroute.outcome import Accepted, Fail, RateLimited, Retry
from smsbridge.flowroute.sent_lookup import AlreadySent, InDoubt, decide
from smsbridge.ledger import Ledger, MessageRow
from smsbridge.metrics import Metrics
from smsbridge.workers.status import publish_status, publish_status_after_send

log = structlog.get_logger("smsbridge.dispatcher")
LOOKUP_SLACK = timedelta(seconds=60)  # clocks differ; Flowroute stamps the MDR when it takes it


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

    def subscribed(self) -> None:
        """Called after every (re)subscription: the next send per account waits a window and the
        takeover grace (`AccountLimiter.assume_busy`)."""
        self._warm.clear()
        for account in self._limiters:
            self._metrics.dispatcher_active.labels(account).set(0)

    def _config(self, request: DispatchRequest) -> SmsConfig:
        config = self._settings.sms_config(request.config_id)
        if config is None:
            raise PermanentError(f"unknown SMS configuration '{request.config_id}'", code="unknown_config")
        return config

    def _limiter(self, config: SmsConfig) -> AccountLimiter:
        limiter = self._limiters[config.account_name]
        if config.account_name not in self._warm:
            limiter.assume_busy()
            self._warm.add(config.account_name)
        return limiter

    async def handle(self, request: DispatchRequest, context: MessageContext) -> None:
        structlog.contextvars.bind_contextvars(client_message_id=request.client_message_id, tenant=request.tenant)
        config = self._config(request)
        self._metrics.dispatcher_active.labels(config.account_name).set(1)
        row = await self._ledger.request_row(request)
        if row.dispatch_state == "done":
            log.info("repeated request: answering with the current status", outcome="duplicate", state=row.state)
            await publish_status(self._publisher, self._prefix, current_status(row))
            return
        limiter = self._limiter(config)
        if row.dispatch_state == "sending" and await self._already_sent(config, limiter, request, row):
            return
        await self._settle(request, row, await self._send(config, limiter, request, row))

    async def _already_sent(self, config: SmsConfig, limiter: AccountLimiter, request: DispatchRequest,
                            row: MessageRow) -> bool:
        """After a crash or a lost answer: did Flowroute take it? Then record it, never resend."""
        started = row.send_started_at or row.updated_at
        alike = await self._ledger.alike_in_doubt(row, timedelta(seconds=self._settings.retry.dispatch.max_age_s))
        async with limiter.attempt(is_mms=False):  # the list shares the endpoint's budget
            lookup = await self._client.find_sent(config, request, since=min([started, *alike]) - LOOKUP_SLACK,
                                                  until=datetime.now(UTC) + LOOKUP_SLACK)
        held = await self._ledger.held_mdrs([sent.mdr_id for sent in lookup.found])
        decision = decide(lookup, held, started, alike)
        log.warning("message was maybe sent before: looked it up", decision=type(decision).__name__,
                    found=len(lookup.found), recorded=len(held), alike_in_doubt=len(alike))
        if isinstance(decision, InDoubt):
            raise PermanentError(f"cannot tell whether Flowroute took it: {decision.reason}", code="send_in_doubt")
        if isinstance(decision, AlreadySent):
            await self._accepted(request, row, Accepted(decision.mdr_id, None))
            return True
        return False

    async def _send(self, config: SmsConfig, limiter: AccountLimiter, request: DispatchRequest,
                    row: MessageRow) -> Accepted | Retry | Fail:
        """Send through the limiter; on 429 pause the account and go round again (bounded). The
        slot is held until the answer is in: Flowroute counts the attempt somewhere in between."""
        pause = 1.0
        for _ in range(self._settings.outbound.max_rate_limited_waits):
            async with limiter.attempt(is_mms=request.is_mms) as waited:
                self._metrics.limiter_wait.labels(config.account_name).inc(waited)
                await self._ledger.mark_sending(row.id)
                outcome = await self._client.send(config, request)
            if not isinstance(outcome, RateLimited):
                return outcome
            pause = outcome.retry_after
            log.warning("Flowroute rate limit (429): pausing the account", account=config.account_name,
                        pause_s=round(pause, 3), waited_s=round(waited, 3))
            limiter.pause(pause)
        await self._ledger.mark_queued(row.id, "Flowroute kept answering 429")  # a 429 is certainly not taken
        raise RetryableError("Flowroute kept answering 429", retry_after=pause)

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
        log.info("Flowroute accepted the message", mdr_id=outcome.mdr_id, segments=segments)
        await publish_status_after_send(self._publisher, self._prefix, status)

    async def given_up(self, request: DispatchRequest, reason: str, code: str) -> None:
        row = await self._ledger.outbound(request.tenant, request.client_message_id)
        if row is not None and row.dispatch_state != "done":
            await self._ledger.record_failed(row.id, code, reason)
        status = StatusEvent(tenant=request.tenant, config_id=request.config_id, state="failed",
                             client_message_id=request.client_message_id, reason_code=code, reason=reason,
                             segments=request.segments)
        await publish_status(self._publisher, self._prefix, status)


def current_status(row: MessageRow) -> StatusEvent:
    state: DeliveryState = row.state if row.state in ("accepted", "sent", "buffered", "delivered",
                                                      "failed") else "accepted"  # type: ignore[assignment]
    return StatusEvent(tenant=row.tenant, config_id=row.config_id, state=state,
                       client_message_id=row.client_message_id, mdr_id=row.mdr_id, segments=row.segments,
                       reason_code=row.reason_code, reason=row.reason)
