"""The contracts between smsbridge and the PBX side, and between the bridge's own stages.

Every event is a frozen msgspec Struct, JSON on the wire, tagged by `kind`, carrying a schema
`version`, an `event_id`, `occurred_at`, the `tenant` and the SMS configuration id.
Evolution rule: add fields only with defaults; never rename or retype one (bump `version` instead).
`docs/contracts.md` is generated from these classes (`python -m smsbridge.contracts`).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec

SCHEMA_VERSION = 1

Keyword = Literal["STOP", "UNSTOP", "START", "HELP"]
DeliveryState = Literal["accepted", "sent", "buffered", "delivered", "failed"]


def new_event_id() -> str:
    """128 random bits as 32 hex digits (the shape of a uuid4 hex). An id must be unique, not
    secret: Python's generator (seeded from the OS, reseeded in a forked child) gives that
    without a system call per event."""
    return f"{random.getrandbits(128):032x}"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Media(msgspec.Struct, frozen=True, kw_only=True):
    """One attachment of an MMS. In a delivery, `url` is the bridge's own signed link when `[media]`
    keeps attachments (it works for `link_days`); otherwise Flowroute's URL, which expires (about
    7 days, sometimes hours): fetch promptly."""

    url: str
    mime_type: str | None = None
    file_name: str | None = None
    size: int | None = None
    media_id: str | None = None


class MediaProblem(msgspec.Struct, frozen=True, kw_only=True):
    """An attachment the PBX does not get, named so people know a picture is missing, and why:
    Flowroute listed it without a usable URL, or the bridge could not download it (or refused to,
    e.g. over the size cap). The text and the other attachments are delivered all the same."""

    media_id: str | None = None  # Flowroute's id for the attachment, when it gave one
    file_name: str | None = None
    mime_type: str | None = None
    reason: str


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind"):
    version: int = SCHEMA_VERSION
    event_id: str = msgspec.field(default_factory=new_event_id)
    occurred_at: datetime = msgspec.field(default_factory=utcnow)
    tenant: str
    config_id: str


class InboundMessage(Event, frozen=True, kw_only=True, tag="inbound_message"):
    """An SMS or MMS Flowroute delivered to one of our DIDs, normalised (receiver → inbound)."""

    mdr_id: str
    from_: str = msgspec.field(name="from")
    to: str
    body: str = ""
    is_mms: bool = False
    media: tuple[Media, ...] = ()
    encoding: int | None = None
    flowroute_timestamp: datetime | None = None
    payload_shape: Literal["jsonapi", "legacy"] = "jsonapi"
    media_problems: tuple[MediaProblem, ...] = ()

    @property
    def conversation(self) -> str:
        return f"{self.config_id}:{self.to}:{self.from_}"


class DeliveryReceipt(Event, frozen=True, kw_only=True, tag="delivery_receipt"):
    """A Flowroute DLR for one of our outbound messages (receiver → inbound)."""

    mdr_id: str
    level: int | None = None
    status: str = ""
    status_code: int | None = None
    description: str | None = None
    flowroute_timestamp: datetime | None = None
    to: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    client_message_id: str | None = None


class InboundDelivery(Event, frozen=True, kw_only=True, tag="inbound_delivery"):
    """A text for one PBX extension (bridge → PBX). One event per target extension."""

    mdr_id: str
    from_: str = msgspec.field(name="from")
    to: str
    extension: str
    extensions: tuple[str, ...] = ()
    body: str = ""
    is_mms: bool = False
    media: tuple[Media, ...] = ()
    keyword: Keyword | None = None
    received_at: datetime
    media_problems: tuple[MediaProblem, ...] = ()
    target: int = 0  # which of the tenant's PBX targets (file order): > 0 for a fallback or a copy

    @property
    def conversation(self) -> str:
        """Texts of one conversation reach an extension in order (`ledger/order.py`); each target
        keeps its own order, so an email copy never waits behind a phone that is away."""
        base = f"{self.config_id}:{self.to}:{self.from_}:{self.extension}"
        return base if self.target == 0 else f"{base}#{self.target}"

    @property
    def claim_key(self) -> str:
        """What the ledger's delivery claim is keyed by with the flowroute id: one per target."""
        return self.extension if self.target == 0 else f"{self.extension}#{self.target}"

    @property
    def idempotency_key(self) -> str:
        """Stable across retries and redeliveries: the same text to the same extension."""
        return f"{self.mdr_id}:{self.extension}"


class StatusEvent(Event, frozen=True, kw_only=True, tag="status"):
    """A state change of an outbound message (bridge → PBX)."""

    client_message_id: str | None = None
    mdr_id: str | None = None
    state: DeliveryState
    reason_code: str | None = None
    reason: str | None = None
    dlr_level: int | None = None
    dlr_code: int | None = None
    segments: int | None = None


class RelayOrigin(msgspec.Struct, frozen=True, kw_only=True):
    """Set by the bridge's own relay API on a send without an `Idempotency-Key`: who sent it and
    where its receipts go, for the outbound stage to record (`relay_sends`) as it records the
    request. A PBX publishing requests itself leaves it out; one set by anyone but the bridge is
    ignored (its `client_message_id` is not an id the bridge signed: `relay_ids.py`), and one
    that does not decode makes the whole request invalid (dead-lettered, the error naming
    `relay`). It travels in the request body: the relay client's access key (its user name, not
    its secret) and its `dlr_callback` URL are in the broker's queues and dead letters, so a
    callback URL with a token in its query is readable by whoever can read the dead-letter queue."""

    access_key: str
    dlr_callback: str | None = None
    accepted_at: Annotated[datetime, msgspec.Meta(tz=True)]


class OutboundRequest(msgspec.Struct, frozen=True, kw_only=True, tag="outbound_request", tag_field="kind"):
    """A text a PBX extension wants sent (PBX → bridge), published to the requests exchange with
    routing key `outbound.<tenant>`. `client_message_id` is the PBX's id and the idempotency key."""

    version: int = SCHEMA_VERSION
    tenant: str
    client_message_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    from_extension: str
    to: str
    body: str = ""
    from_did: str | None = None
    media_urls: tuple[str, ...] = ()
    config_id: str | None = None
    requested_at: datetime | None = None
    relay: RelayOrigin | None = None  # an outbound worker from before this field ignores it


class DispatchRequest(Event, frozen=True, kw_only=True, tag="dispatch"):
    """A request the outbound rules allowed, ready for Flowroute (outbound → dispatcher)."""

    client_message_id: str
    from_extension: str
    from_: str = msgspec.field(name="from")
    to: str
    body: str = ""
    media_urls: tuple[str, ...] = ()
    is_mms: bool = False
    segments: int = 1
    encoding: Literal["ascii", "ucs2"] = "ascii"
    dlr_callback: str | None = None


# One decoder per stream, built once: a decode error is permanent (straight to dead letters).
InboundStageEvent = InboundMessage | DeliveryReceipt
inbound_stage_decoder = msgspec.json.Decoder(InboundStageEvent)
delivery_stage_decoder = msgspec.json.Decoder(InboundDelivery)
outbound_stage_decoder = msgspec.json.Decoder(OutboundRequest)
dispatch_stage_decoder = msgspec.json.Decoder(DispatchRequest)
encoder = msgspec.json.Encoder()
