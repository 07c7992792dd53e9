"""Inbound stage: route each text to its extensions; turn DLRs into status events."""

from __future__ import annotations

import msgspec
import structlog

from smsbridge import targets
from smsbridge.broker import names
from smsbridge.broker.consumer import MessageContext
from smsbridge.broker.handback import HandBack
from smsbridge.broker.publisher import Publisher
from smsbridge.config import Settings, SmsConfig
from smsbridge.errors import BrokerUnavailable, PermanentError
from smsbridge.events import (
    DeliveryReceipt,
    DispatchRequest,
    InboundDelivery,
    InboundMessage,
    StatusEvent,
    encoder,
)
from smsbridge.flowroute.dlr import classify_dlr
from smsbridge.ledger import Ledger, Scope
from smsbridge.media.inbound import InboundMedia
from smsbridge.metrics import Metrics
from smsbridge.numbers import is_us_ca
from smsbridge.rules import keyword_of, route
from smsbridge.segments import body_info
from smsbridge.workers.status import publish_status
from smsbridge.workers.turns import Turns

log = structlog.get_logger("smsbridge.inbound")


def deliveries_for(message: InboundMessage, extensions: tuple[str, ...], *, first: int = 0,
                   copies: tuple[int, ...] = ()) -> list[InboundDelivery]:
    """One delivery per extension, each carrying the whole target list (like a ring group), for
    the tenant's first target, and one more per extension for each target that gets copies."""
    keyword = keyword_of(message.body)
    return [
        InboundDelivery(
            tenant=message.tenant,
            config_id=message.config_id,
            mdr_id=message.mdr_id,
            from_=message.from_,
            to=message.to,
            extension=extension,
            extensions=extensions,
            body=message.body,
            is_mms=message.is_mms,
            media=message.media,
            keyword=keyword,
            received_at=message.occurred_at,
            media_problems=message.media_problems,
            target=target,
        )
        for target in (first, *copies)
        for extension in extensions
    ]


def dlr_key(receipt: DeliveryReceipt) -> str:
    """What makes two receipts the same receipt (flowroute-api.md §6.3)."""
    stamp = receipt.flowroute_timestamp.isoformat() if receipt.flowroute_timestamp else ""
    # The configuration first: a receipt posted to another configuration's webhook with the same
    # id must not pass for this one's resend (and so suppress it).
    return f"{receipt.config_id}|{receipt.mdr_id}|{receipt.level}|{receipt.status}|{receipt.status_code}|{stamp}"


def status_for(receipt: DeliveryReceipt) -> StatusEvent:
    """The status a receipt event becomes. Its `event_id` is the receipt event's: the same event
    handled again (redelivered, or retried after an outage whose claim had committed unseen)
    forwards the same status with the same id, which the PBX drops as a repeat (docs/contracts.md)."""
    outcome = classify_dlr(receipt.level, receipt.status, receipt.status_code, receipt.description)
    return StatusEvent(
        event_id=receipt.event_id,
        tenant=receipt.tenant,
        config_id=receipt.config_id,
        client_message_id=receipt.client_message_id,
        mdr_id=receipt.mdr_id,
        state=outcome.state,
        reason_code=outcome.reason_code,
        reason=outcome.reason,
        dlr_level=receipt.level,
        dlr_code=receipt.status_code,
    )


def help_reply(message: InboundMessage, config: SmsConfig) -> DispatchRequest:
    """The configured HELP auto-reply, from the DID that was texted back to the sender."""
    info = body_info(config.help_reply)
    return DispatchRequest(
        tenant=message.tenant, config_id=config.id, client_message_id=f"help-reply:{message.mdr_id}",
        from_extension="(auto-reply)", from_=message.to, to=message.from_, body=config.help_reply,
        segments=info.segments, encoding=info.encoding,
    )


class InboundHandler:
    def __init__(self, settings: Settings, publisher: Publisher, ledger: Ledger, metrics: Metrics,
                 media: InboundMedia | None = None, hand_back: HandBack | None = None) -> None:
        self._settings = settings
        self._hand_back = hand_back  # None: one broker node, nothing comes back late
        self._metrics = metrics
        self._media = media  # None: Flowroute's media URLs pass through ([media] store = "off")
        self._publisher = publisher
        self._ledger = ledger
        self._prefix = settings.broker.prefix
        self._turns = Turns(publisher, self._prefix)

    async def handle(self, event: InboundMessage | DeliveryReceipt, context: MessageContext) -> None:
        structlog.contextvars.bind_contextvars(mdr_id=event.mdr_id, event_id=event.event_id)
        if isinstance(event, DeliveryReceipt):
            await self._status(event)
        else:
            await self._route(event)

    async def given_up(self, event: InboundMessage | DeliveryReceipt, reason: str, code: str) -> None:
        return None

    async def _route(self, message: InboundMessage) -> None:
        config = self._settings.sms_config(message.config_id)
        if config is None:
            raise PermanentError(f"unknown SMS configuration '{message.config_id}'", code="unknown_config")
        scope = Scope(message.tenant, message.config_id)
        # A text with attachments is looked up first, before anything is downloaded or counted
        # for it; a plain text is looked up in the transaction that records its deliveries.
        if (message.media or message.media_problems) and await self._ledger.inbound_seen(scope, message.mdr_id):
            self._resend()
            return
        message = await self._keep_media(message)
        chosen = route(message, self._settings.rules_for(config.id), config.fallback_extensions)
        deliveries = deliveries_for(message, chosen.extensions, first=targets.first(self._settings, message.tenant),
                                    copies=tuple(targets.copies(self._settings, message.tenant)))
        # Recorded in the ledger in arrival order; only texts whose turn it is go to RabbitMQ now
        # (ledger/order.py). A failure after this is redone safely: the same texts are found.
        due = await self._ledger.enqueue_unseen(scope, message.mdr_id, deliveries)
        if due is None:
            self._resend()
            return
        await self._turns.publish(due, after_s=self._hand_back.remaining() if self._hand_back else 0.0)
        if deliveries[0].keyword == "HELP" and config.help_reply and is_us_ca(message.from_):
            reply = help_reply(message, config)
            await self._publisher.to_stage(self._prefix, names.dispatch_stage(config.account_name),
                                           encoder.encode(reply), message_id=reply.event_id)
        # Recorded only once the deliveries are published: a failure before this point must leave
        # the next copy welcome. Two copies racing here are stopped by the delivery claims.
        await self._ledger.record_inbound(message)
        log.info("text routed", rule=chosen.rule, extensions=list(chosen.extensions),
                 keyword=deliveries[0].keyword, media=len(message.media),
                 media_missing=len(message.media_problems))

    @staticmethod
    def _resend() -> None:
        log.info("text is a Flowroute resend of one already handled: not delivered again", outcome="duplicate")

    async def _keep_media(self, message: InboundMessage) -> InboundMessage:
        """The attachments as the PBX will get them, before any delivery is published: downloaded
        into the store when the bridge keeps media. One list names every attachment the PBX will
        not get (Flowroute gave no usable URL, or the download failed or was refused), and each
        is counted for the alert; the text goes on regardless."""
        for problem in message.media_problems:  # unusable in Flowroute's webhook already
            self._metrics.media_missing.labels(message.tenant, "unusable").inc()
            log.warning("attachment not delivered", media_id=problem.media_id, file_name=problem.file_name,
                        reason=problem.reason, outcome="media_unusable")
        if self._media is None or not message.media:
            return message
        kept, failed = await self._media.keep(message)
        return msgspec.structs.replace(message, media=kept, media_problems=message.media_problems + failed)

    async def _status(self, receipt: DeliveryReceipt) -> None:
        # Read first, then one write that claims the receipt and records its effect together: a
        # ledger failure at either step leaves nothing claimed, so the retry is not a "resend".
        # A COMMIT that succeeded but whose answer was lost does leave the claim: it names this
        # event (its id is the same on every redelivery), so this event coming again still
        # forwards the status; a Flowroute resend is a new event and is ignored.
        # Only this configuration's own message: another tenant's id (or a bare number, which is
        # never a row id here) finds nothing, and its history and client id stay untouched.
        scope = Scope(receipt.tenant, receipt.config_id)
        known = await self._ledger.receipt_target(scope, receipt.mdr_id)
        if known is not None and known.client_message_id:  # ours is better than a cmid in a URL
            receipt = msgspec.structs.replace(receipt, client_message_id=known.client_message_id)
        status = status_for(receipt)
        key = dlr_key(receipt)
        if not await self._ledger.claim_and_record_dlr(key, scope, receipt.mdr_id, status.state, status.reason_code,
                                                       status.reason, receipt.level, receipt.status_code,
                                                       claimed_by=receipt.event_id):
            log.info("delivery receipt is a resend: ignored", outcome="duplicate", dlr_level=receipt.level)
            return
        if known is None and receipt.client_message_id is None:  # an account-level DLR callback, no cmid
            # not ours (another system on the account?): no PBX asked about it
            self._metrics.dlr_unknown.labels(receipt.config_id).inc()
            log.warning("delivery receipt for a message this bridge never sent: not forwarded",
                        outcome="unknown_message", dlr_level=receipt.level, dlr_code=receipt.status_code)
            return
        try:
            await publish_status(self._publisher, self._prefix, status)
        except BrokerUnavailable:
            # so the retry is not mistaken for a resend; it records again (the state only moves
            # forward: one more history line at most)
            await self._ledger.unclaim_dlr(key)
            raise
        log.info("delivery receipt", state=status.state, dlr_level=receipt.level, dlr_code=receipt.status_code,
                 client_message_id=receipt.client_message_id)
