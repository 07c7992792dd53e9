"""The outbound stage's handler on the in-memory broker and a SQLite ledger in a temp dir: what it
queues for the account, what it refuses, and what the PBX hears when a request is given up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from smsbridge.broker import names
from smsbridge.broker.consumer import MessageContext
from smsbridge.errors import PermanentError
from smsbridge.events import DispatchRequest, OutboundRequest, StatusEvent
from smsbridge.ledger import Ledger
from smsbridge.testing.broker import InMemoryPublisher
from smsbridge.workers.outbound import OutboundHandler
from tests.support.ledger import open_ledger
from tests.support.settings import ACCOUNT, DID_MAIN, OUTBOUND_RULES, settings

PREFIX = "unit"
ACME = MessageContext(origin_key="outbound.acme", attempt=1)


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    async with open_ledger("sqlite", tmp_path) as opened:
        yield opened


def handler(publisher: InMemoryPublisher, ledger: Ledger) -> OutboundHandler:
    config = msgspec.structs.replace(settings(prefix=PREFIX), outbound_rules=OUTBOUND_RULES)
    return OutboundHandler(config, publisher, ledger)


def request(**fields: object) -> OutboundRequest:
    base: dict[str, object] = dict(tenant="acme", client_message_id="c-1", from_extension="101",
                                   to="+12065550199", body="on my way")
    return OutboundRequest(**{**base, **fields})  # type: ignore[arg-type]


async def test_an_allowed_request_is_queued_for_its_account_from_the_rules_did(ledger: Ledger) -> None:
    publisher = InMemoryPublisher()
    await handler(publisher, ledger).handle(request(), ACME)
    (queued,) = publisher.published
    assert queued.routing_key == names.stage_queue(PREFIX, names.dispatch_stage(ACCOUNT))
    dispatch = msgspec.json.decode(queued.body, type=DispatchRequest)
    assert (dispatch.from_, dispatch.to, dispatch.client_message_id) == (DID_MAIN, "+12065550199", "c-1")


async def test_an_extension_without_a_rule_is_refused_and_nothing_is_queued(ledger: Ledger) -> None:
    publisher = InMemoryPublisher()
    with pytest.raises(PermanentError):
        await handler(publisher, ledger).handle(request(from_extension="999"), ACME)
    assert publisher.published == []


async def test_a_request_for_another_tenant_under_this_tenants_key_is_refused(ledger: Ledger) -> None:
    publisher = InMemoryPublisher()
    with pytest.raises(PermanentError) as refused:
        await handler(publisher, ledger).handle(request(tenant="beta"), ACME)
    assert refused.value.code == "tenant_mismatch" and publisher.published == []


async def test_giving_up_tells_the_pbx_with_a_failed_status(ledger: Ledger) -> None:
    publisher = InMemoryPublisher()
    await handler(publisher, ledger).given_up(request(), "no rule allows extension 101", "no_rule")
    (status,) = publisher.to(names.status_exchange(PREFIX))
    event = msgspec.json.decode(status.body, type=StatusEvent)
    assert (event.state, event.client_message_id, event.reason_code) == ("failed", "c-1", "no_rule")
    assert status.routing_key == names.status_routing_key("acme", "failed")


@pytest.mark.parametrize("origin", ["anything", "smsbridge.outbound", "outbound.", "outbound.acme.x"])
async def test_a_key_that_names_no_tenant_is_refused_not_waved_through(ledger: Ledger, origin: str) -> None:
    """Issue 16 point 1: the tenant check once skipped any origin not of the form outbound.<tenant>."""
    publisher = InMemoryPublisher()
    with pytest.raises(PermanentError) as refused:
        await handler(publisher, ledger).handle(request(tenant="beta"), MessageContext(origin, attempt=1))
    assert refused.value.code == "tenant_mismatch" and publisher.published == []


async def test_a_field_beyond_its_limit_fails_naming_the_field(ledger: Ledger) -> None:
    """Issue 16 point 4: a 200 kB `to` is refused by name before any rule quotes it."""
    publisher = InMemoryPublisher()
    outbound = handler(publisher, ledger)
    with pytest.raises(PermanentError) as refused:
        await outbound.handle(request(to="1" * 200_000), ACME)
    assert refused.value.code == "invalid_field" and refused.value.reason.startswith("field 'to' ")
    await outbound.given_up(request(to="1" * 200_000), refused.value.reason, refused.value.code)
    (status,) = publisher.to(names.status_exchange(PREFIX))
    event = msgspec.json.decode(status.body, type=StatusEvent)
    assert (event.state, event.reason_code) == ("failed", "invalid_field") and "field 'to'" in (event.reason or "")
