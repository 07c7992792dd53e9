"""Outbound stage: apply the outbound rules to a PBX request and queue it for its account."""

from __future__ import annotations

import structlog

from smsbridge.broker import names
from smsbridge.broker.consumer import MessageContext
from smsbridge.broker.publisher import Publisher
from smsbridge.config import Settings
from smsbridge.errors import LedgerUnavailable
from smsbridge.events import OutboundRequest, StatusEvent, encoder
from smsbridge.ledger import Ledger, RelaySend
from smsbridge.limits import CLIENT_ID_CHARS, NAME_CHARS, check_request
from smsbridge.media.outbound import OutboundMedia
from smsbridge.outbound_rules import Refused, decide
from smsbridge.redact import clip, quote
from smsbridge.relay_origin import relay_row
from smsbridge.workers.status import publish_status

log = structlog.get_logger("smsbridge.outbound")


class OutboundHandler:
    def __init__(self, settings: Settings, publisher: Publisher, ledger: Ledger,
                 media: OutboundMedia | None = None) -> None:
        self._settings = settings
        self._media = media  # None: the PBX's own https media URLs go to Flowroute ([media] store = "off")
        self._publisher = publisher
        self._ledger = ledger
        self._prefix = settings.broker.prefix

    async def handle(self, request: OutboundRequest, context: MessageContext) -> None:
        # Clipped: these are the PBX's values, not yet checked against their limits.
        structlog.contextvars.bind_contextvars(client_message_id=clip(request.client_message_id, CLIENT_ID_CHARS),
                                               tenant=clip(request.tenant, NAME_CHARS),
                                               from_extension=clip(request.from_extension, NAME_CHARS))
        # A PBX may only publish for its own tenant: RabbitMQ's topic permissions pin its key, and
        # the key (never a header it set) names the tenant. A key that names no tenant is refused.
        if names.tenant_of_request_key(context.origin_key) != request.tenant:
            raise Refused(f"request for tenant {quote(request.tenant)} published with routing key "
                          f"{quote(context.origin_key)}", code="tenant_mismatch")
        check_request(request)  # before any rule: every field within its limit, or a failed status naming it
        dispatch = decide(request, self._settings)
        if self._media is not None and dispatch.media_urls:  # checked and re-hosted before any MMS attempt
            dispatch = await self._media.rehost(dispatch)
        config = self._settings.sms_config(dispatch.config_id)
        assert config is not None
        stage = names.dispatch_stage(config.account_name)
        # A repeated client_message_id goes on too: the dispatcher answers it with the current
        # status instead of sending (its queue is FIFO, so it comes after the original).
        new = await self._ledger.record_request(dispatch, relay=self._relay_row(request))
        await self._publisher.to_stage(self._prefix, stage, encoder.encode(dispatch), message_id=dispatch.event_id)
        log.info("outbound request allowed", account=config.account_name, segments=dispatch.segments,
                 is_mms=dispatch.is_mms, to=dispatch.to, repeated=not new)

    def _relay_row(self, request: OutboundRequest) -> RelaySend | None:
        row = relay_row(request, self._settings)
        if isinstance(row, str):
            log.warning("relay origin ignored: sent without a relay row", reason=row, outcome="relay_ignored")
            return None
        return row

    async def given_up(self, request: OutboundRequest, reason: str, code: str) -> None:
        tenant = request.tenant
        if code == "tenant_mismatch":
            return  # do not tell another tenant's status listeners about it; the dead letter says it all
        relayed = self._relay_row(request)
        if relayed is not None:  # its `failed` status then reaches the sender's dlr_callback
            await self._record_relay(relayed)
        config_id = request.config_id if request.config_id and len(request.config_id) <= NAME_CHARS else ""
        status = StatusEvent(tenant=tenant, config_id=config_id, state="failed",
                             client_message_id=request.client_message_id, reason_code=code, reason=reason)
        await publish_status(self._publisher, self._prefix, status)

    async def _record_relay(self, row: RelaySend) -> None:
        """The status goes out even when the row cannot be written: the PBX's AMQP status
        listeners still learn of the failure; the relay sender's `dlr_callback` may then miss it
        (no row to find it by), and a lookup of its id answers `queued` until that ages out."""
        try:
            await self._ledger.record_relay(row)
        except LedgerUnavailable as exc:
            log.error("relay row not recorded for a refused send: its DLR may be missed", error=repr(exc)[:300],
                      outcome="relay_row_lost")
