"""The messages the benchmarks feed each stage, built with the project's own event types."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime

from smsbridge.events import DispatchRequest, InboundDelivery, InboundMessage, OutboundRequest, encoder

DID = "+12065550100"
BODY = "Greetings on Friday evening! This is a benchmark text."


def _sender(n: int) -> str:
    return f"+1206555{(n % 9000) + 1000:04d}"  # 9,000 conversations: ordering never serialises much


def _run_id() -> str:
    return os.urandom(4).hex()


def inbound_messages(count: int) -> Iterator[bytes]:
    run = _run_id()
    for n in range(count):
        yield encoder.encode(InboundMessage(tenant="acme", config_id="main", mdr_id=f"mdr2-bench-{run}-{n}",
                                            from_=_sender(n), to=DID, body=BODY))


def deliveries(count: int) -> Iterator[bytes]:
    run, now = _run_id(), datetime.now(UTC)
    for n in range(count):
        yield encoder.encode(InboundDelivery(tenant="acme", config_id="main", mdr_id=f"mdr2-bench-{run}-{n}",
                                             from_=_sender(n), to=DID, extension="101", extensions=("101",),
                                             body=BODY, received_at=now))


def outbound_requests(count: int) -> Iterator[bytes]:
    run = _run_id()
    for n in range(count):
        yield encoder.encode(OutboundRequest(tenant="acme", client_message_id=f"bench-{run}-{n}",
                                             from_extension="101", to=_sender(n), body=BODY))


def dispatch_requests(count: int) -> list[DispatchRequest]:
    run = _run_id()
    return [DispatchRequest(tenant="acme", config_id="main", client_message_id=f"bench-{run}-{n}",
                            from_extension="101", from_=DID, to=_sender(n), body=BODY) for n in range(count)]
