"""Dispatch stage: send to Flowroute under the account's limits, and report what happened.

One dispatch queue per Flowroute account with a single active consumer, so the active
dispatcher's limiter is the only sender for that account. A 429 pauses the whole account and
the message goes round the limiter again, a bounded number of times, then back to the broker.
"""

from __future__ import annotations

import structlog

from smsbridge.broker.consumer import MessageContext
from smsbridge.broker.publisher import Publisher
from smsbridge.config import Settings, SmsConfig
from smsbridge.errors import PermanentError, RetryableError
from smsbridge.events import DispatchRequest, StatusEvent
from smsbridge.flowroute.client import FlowrouteClient
from smsbridge.flowroute.limiter import AccountLimiter
from smsbridge.flowroute.outcome import Accepted, Fail, RateLimited, Retry
from smsbridge.metrics import Metrics
from smsbridge.workers.status import publish_status, publish_status_after_send

log = structlog.get_logger("smsbridge.dispatcher")


def limiters_for(settings: Settings) -> dict[str, AccountLimiter]:
    return {
        account: AccountLimiter(config.sms_per_second, config.mms_per_second,
                                margin_s=settings.flowroute.rate_margin_s)
        for account, config in settings.accounts().items()
    }


class DispatchHandler:
    def __init__(self, settings: Settings, publisher: Publisher, client: FlowrouteClient,
                 limiters: dict[str, AccountLimiter], metrics: Metrics) -> None:
        self._settings = settings
        self._publisher = publisher
        self._client = client
        self._limiters = limiters
        self._metrics = metrics
        self._prefix = settings.broker.prefix
        self._warm: set[str] = set()

    def subscribed(self) -> None:
        """Called after every (re)subscription: the next send per account waits a full window."""
        self._warm.clear()

    def _config(self, request: DispatchRequest) -> SmsConfig:
        config = self._settings.sms_config(request.config_id)
        if config is None:
            raise PermanentError(f"unknown SMS configuration '{request.config_id}'", code="unknown_config")
        return config

    async def handle(self, request: DispatchRequest, context: MessageContext) -> None:
        structlog.contextvars.bind_contextvars(client_message_id=request.client_message_id, tenant=request.tenant)
        config = self._config(request)
        account = config.account_name
        limiter = self._limiters[account]
        if account not in self._warm:
            limiter.assume_busy()
            self._warm.add(account)
        await self._settle(request, await self._send(config, limiter, request))

    async def _send(self, config: SmsConfig, limiter: AccountLimiter,
                    request: DispatchRequest) -> Accepted | Retry | Fail:
        """Send through the limiter; on 429 pause the account and go round again (bounded)."""
        pause = 1.0
        for _ in range(self._settings.outbound.max_rate_limited_waits):
            waited = await limiter.acquire(is_mms=request.is_mms)
            outcome = await self._client.send(config, request)
            self._metrics.flowroute_answers.labels(config.account_name, type(outcome).__name__).inc()
            if not isinstance(outcome, RateLimited):
                return outcome
            pause = outcome.retry_after
            log.warning("Flowroute rate limit (429): pausing the account", account=config.account_name,
                        pause_s=round(pause, 3), waited_s=round(waited, 3))
            limiter.pause(pause)
        raise RetryableError("Flowroute kept answering 429", retry_after=pause)

    async def _settle(self, request: DispatchRequest, outcome: Accepted | Retry | Fail) -> None:
        if isinstance(outcome, Retry):
            raise RetryableError(outcome.reason, retry_after=outcome.retry_after)
        if isinstance(outcome, Fail):
            raise PermanentError(outcome.reason, code=outcome.code)
        status = StatusEvent(tenant=request.tenant, config_id=request.config_id, state="accepted",
                             client_message_id=request.client_message_id, mdr_id=outcome.mdr_id,
                             segments=outcome.segments or request.segments)
        log.info("Flowroute accepted the message", mdr_id=outcome.mdr_id, segments=status.segments)
        await publish_status_after_send(self._publisher, self._prefix, status)

    async def given_up(self, request: DispatchRequest, reason: str, code: str) -> None:
        status = StatusEvent(tenant=request.tenant, config_id=request.config_id, state="failed",
                             client_message_id=request.client_message_id, reason_code=code, reason=reason,
                             segments=request.segments)
        await publish_status(self._publisher, self._prefix, status)
