"""Delivery receipts for relayed sends, in Flowroute's shape, to the PBX that sent them.

A PBX that sent through the relay API knows its text by the bridge's id and expects Flowroute's
DLRs at the `dlr_callback` it gave (and, with `forward_dlrs`, at its `flowroute` target's URL).
The stage queue `<prefix>.relay-dlr` is bound to the status exchange for every tenant with relay
clients; each status of a relayed send becomes one DLR POST per URL, retried like a delivery.
Statuses of texts that did not come through the relay are acked and ignored.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec
import structlog
from aio_pika.abc import AbstractChannel

from smsbridge.broker import names
from smsbridge.broker.consumer import MessageContext
from smsbridge.broker.topology import declare_stage, placement_of
from smsbridge.config import FlowrouteTarget, Settings
from smsbridge.destinations import DestinationRefused, check_url, guarded_session, networks
from smsbridge.errors import PermanentError
from smsbridge.events import StatusEvent
from smsbridge.flowroute.payloads import timestamp
from smsbridge.ledger import Ledger, RelaySend
from smsbridge.pbx.flowroute import post_json
from smsbridge.relay_api import message_link

log = structlog.get_logger("smsbridge.relay_dlr")
STAGE = "relay-dlr"
status_decoder = msgspec.json.Decoder(StatusEvent)

# What Flowroute's DLRs say for each state: (level, status wording, code, description).
DLR_WORDING: dict[str, tuple[int, str, int | None, str]] = {
    "sent": (1, "smsc submit", None, "Message has been sent"),
    "buffered": (2, "message buffered", 1003, "Message accepted by Carrier"),
    "delivered": (2, "delivered", 1004, "Message delivered to handset"),
    "failed": (2, "delivery failed", None, "Message failed"),
}


def dlr_doc(status: StatusEvent, message_id: str, link: str) -> dict[str, Any] | None:
    """The Flowroute DLR for a status of a relayed send; None for `accepted` (the 202 said it)."""
    wording = DLR_WORDING.get(status.state)
    if wording is None:
        return None
    level, text, code, description = wording
    attributes = {
        "body": "", "level": status.dlr_level or level, "status": text,
        "status_code": status.dlr_code if status.dlr_code is not None else code,
        "status_code_description": status.reason or description, "timestamp": timestamp(status.occurred_at),
    }
    return {"data": {"id": message_id, "type": "delivery_receipt", "attributes": attributes,
                     "links": {"related": link}}}


def receipt_urls(settings: Settings, send: RelaySend) -> list[tuple[str, bool]]:
    """(url, named by the client): the send's `dlr_callback`, then the tenant's `flowroute` targets
    that forward DLRs (URLs the operator configured, so never checked as the client's). A tenant
    may list several targets (e.g. flowroute, then email)."""
    forwarded = [t.url for t in settings.targets_of(send.tenant) if isinstance(t, FlowrouteTarget) and t.forward_dlrs]
    urls = [(send.dlr_callback, send.dlr_callback not in forwarded)] if send.dlr_callback else []
    urls += [(url, False) for url in dict.fromkeys(forwarded) if url != send.dlr_callback]
    return urls


async def declare(channel: AbstractChannel, settings: Settings) -> None:
    """The stage queue, bound to the statuses of every tenant with relay clients."""
    prefix = settings.broker.prefix
    name = await declare_stage(channel, prefix, STAGE, delivery_limit=settings.broker.delivery_limit,
                               placement=placement_of(settings.broker))
    queue = await channel.get_queue(name, ensure=False)
    for tenant in sorted({c.tenant for c in settings.relay_clients}):
        await queue.bind(names.status_exchange(prefix), routing_key=f"status.{tenant}.#")


class RelayDlrHandler:
    """A `dlr_callback` is a URL a client named: it is posted through a session that connects only to
    public addresses and the client's `dlr_callback_networks`, and never follows a redirect (one
    could lead anywhere); a refused address is a permanent failure, dead-lettered with its reason."""

    def __init__(self, settings: Settings, ledger: Ledger, session: aiohttp.ClientSession,
                 timeout_s: float = 10.0) -> None:
        self._settings = settings
        self._ledger = ledger
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._callback_sessions: dict[str, aiohttp.ClientSession] = {}

    def _callback_session(self, access_key: str, url: str) -> aiohttp.ClientSession:
        """The client's guarded session, once `url`'s host, if an address literal, passed the check."""
        client = self._settings.relay_client(access_key)
        allowed = client.dlr_callback_networks if client is not None else []
        try:
            check_url(url, networks(allowed))
        except DestinationRefused as exc:
            raise PermanentError(f"dlr_callback not called: {exc}", code="destination_refused") from None
        session = self._callback_sessions.get(access_key)
        if session is None:
            session = self._callback_sessions[access_key] = guarded_session(allowed)
        return session

    async def close(self) -> None:
        for session in self._callback_sessions.values():
            await session.close()
        self._callback_sessions.clear()

    async def handle(self, status: StatusEvent, context: MessageContext) -> None:
        if status.state == "accepted" or not status.client_message_id:
            return
        send = await self._ledger.relay_send(status.tenant, status.client_message_id)
        if send is None:
            return  # not a relayed send
        doc = dlr_doc(status, send.bridge_id, message_link(self._settings, send.bridge_id))
        if doc is None:
            return
        structlog.contextvars.bind_contextvars(id=send.bridge_id, tenant=send.tenant, state=status.state)
        # At least once: when one URL fails, the retry posts to every URL again (a PBX drops
        # repeats by id, level and status, as it must for Flowroute's own resends).
        for url, named_by_client in receipt_urls(self._settings, send):
            session = self._callback_session(send.access_key, url) if named_by_client else self._session
            await post_json(session, url, doc, self._timeout, idempotency_key=f"{send.bridge_id}:{status.state}")
        log.info("delivery receipt forwarded", outcome="forwarded")

    async def given_up(self, event: StatusEvent, reason: str, code: str) -> None:
        return None
