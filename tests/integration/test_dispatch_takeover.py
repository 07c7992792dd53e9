"""A dispatcher that takes an account over counts the attempts the ledger shows before it
(issue 17): a message left "sending" holds its slot for a window and the grace, an answered
attempt for a window after its answer was written; another account's attempts do not count.
The earlier attempts are written straight to the ledger, as a dispatcher that died left them."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
import structlog
from aio_pika.abc import AbstractChannel, AbstractQueue

from smsbridge.config import LedgerSettings
from smsbridge.events import DispatchRequest, OutboundRequest
from smsbridge.flowroute.limiter import TAKEOVER_GRACE_S
from smsbridge.flowroute.simulator import FlowrouteSimulator
from smsbridge.ledger import Ledger
from smsbridge.pbx_client import publish_request, watch
from tests.conftest import StartBridge
from tests.support.ledger import BACKENDS, open_ledger
from tests.support.settings import DID_MAIN, settings, with_flowroute


def earlier(n: int, *, tenant: str = "acme", config_id: str = "main") -> DispatchRequest:
    return DispatchRequest(tenant=tenant, config_id=config_id, client_message_id=f"earlier-{n}", from_extension="101",
                           from_=DID_MAIN, to=f"+1206555{n:04d}", body=f"earlier text {n}")


async def leave_attempts(ledger: Ledger, count: int, *, answered: bool, tenant: str = "acme",
                         config_id: str = "main") -> None:
    for n in range(count):
        row, mine = await ledger.claim_send(earlier(n, tenant=tenant, config_id=config_id), gap=timedelta(0))
        assert mine  # marked "sending"
        if answered:
            assert await ledger.record_accepted(row.id, f"mdr2-earlier-{tenant}-{n}", 1)


async def first_attempt_after(ledger_settings: LedgerSettings, *, answered: bool, start_bridge: StartBridge,
                              flowroute: FlowrouteSimulator, channel: AbstractChannel, prefix: str,
                              statuses: AbstractQueue) -> tuple[float, float]:
    """Seconds from the dead dispatcher's first and last ledger writes to the new dispatcher's
    first attempt."""
    flowroute.dlr_delay_s = 30
    ledger = Ledger.open(ledger_settings.url, schema_name=ledger_settings.schema)
    try:
        await ledger.upgrade()
        started_at = time.monotonic()
        await leave_attempts(ledger, 5, answered=answered)
    finally:
        await ledger.close()
    left_at = time.monotonic()
    await start_bridge(with_flowroute(settings(prefix=prefix, ledger=ledger_settings), flowroute.url))
    await publish_request(channel, prefix, OutboundRequest(tenant="acme", client_message_id="after-takeover",
                                                           from_extension="101", to="+12065550199", body="hello"))
    await watch(statuses, "after-takeover", until=frozenset({"accepted"}), timeout=20)
    (first, _), *_ = flowroute.accounts["AK-test"].attempts
    return first - started_at, first - left_at


async def test_messages_left_sending_hold_their_slots_for_a_window_and_the_grace(
    ledger_settings: LedgerSettings, start_bridge: StartBridge, flowroute: FlowrouteSimulator,
    channel: AbstractChannel, prefix: str, statuses: AbstractQueue,
) -> None:
    _, since_last = await first_attempt_after(ledger_settings, answered=False, start_bridge=start_bridge,
                                              flowroute=flowroute, channel=channel, prefix=prefix, statuses=statuses)
    assert since_last >= 1.0 + TAKEOVER_GRACE_S  # counted from the takeover, after the last write


async def test_attempts_answered_just_before_the_takeover_still_count_for_a_window(
    ledger_settings: LedgerSettings, start_bridge: StartBridge, flowroute: FlowrouteSimulator,
    channel: AbstractChannel, prefix: str, statuses: AbstractQueue,
) -> None:
    since_first, _ = await first_attempt_after(ledger_settings, answered=True, start_bridge=start_bridge,
                                               flowroute=flowroute, channel=channel, prefix=prefix, statuses=statuses)
    assert since_first >= 1.0  # the oldest of the five answers was written after `started_at`


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_takeover_reads_only_its_own_accounts_attempts(backend: str, tmp_path: Path) -> None:
    async with open_ledger(backend, tmp_path) as ledger:
        await leave_attempts(ledger, 2, answered=False, tenant="globex", config_id="globex-main")
        await leave_attempts(ledger, 1, answered=True)
        await ledger.record_request(earlier(7))  # never attempted: not an attempt
        window, longest = timedelta(seconds=1.06), timedelta(seconds=60)
        mine = await ledger.recent_sends(["main"], window, longest)
        theirs = await ledger.recent_sends(["globex-main"], window, longest)
        assert [s.sending for s in mine] == [False]
        assert [s.sending for s in theirs] == [True, True]
        assert await ledger.recent_sends(["nobody"], window, longest) == []
        assert await ledger.recent_sends(["globex-main"], window, timedelta(0)) == []  # too old to be in flight


async def test_a_message_found_sending_is_sent_a_window_after_its_lookup(
    ledger_settings: LedgerSettings, start_bridge: StartBridge, flowroute: FlowrouteSimulator,
    channel: AbstractChannel, prefix: str, statuses: AbstractQueue,
) -> None:
    # The send's "sending" write moves the message's updated_at past the lookup's end; had the
    # send followed at once, a takeover right after it would not count the lookup.
    flowroute.dlr_delay_s = 30
    bridge_settings = with_flowroute(settings(prefix=prefix, ledger=ledger_settings), flowroute.url)
    ledger = Ledger.open(ledger_settings.url, schema_name=ledger_settings.schema)
    try:
        await ledger.upgrade()
        request = DispatchRequest(tenant="acme", config_id="main", client_message_id="in-doubt", from_extension="101",
                                  from_=DID_MAIN, to="+12065550199", body="hello")
        _, mine = await ledger.claim_send(request, gap=timedelta(0))
        assert mine  # marked "sending"; then the dispatcher died: no POST
    finally:
        await ledger.close()
    await start_bridge(bridge_settings)
    await publish_request(channel, prefix, OutboundRequest(tenant="acme", client_message_id="in-doubt",
                                                           from_extension="101", to="+12065550199", body="hello"))
    await watch(statuses, "in-doubt", until=frozenset({"accepted"}), timeout=20)
    (looked_up,) = flowroute.list_reads
    (sent, _), = flowroute.accounts["AK-test"].attempts
    assert sent - looked_up >= 1.0


async def test_messages_arriving_together_read_the_attempts_before_them_once(
    ledger_settings: LedgerSettings, start_bridge: StartBridge, flowroute: FlowrouteSimulator,
    channel: AbstractChannel, prefix: str, statuses: AbstractQueue,
) -> None:
    # Each first message read the ledger and added the same five attempts again: the limiter
    # kept the newest five of them all, the latest end five times, as if the whole budget had
    # just been used (the takeover's pause was 1.58 s instead of the ordinary gap).
    flowroute.dlr_delay_s = 30
    await start_bridge(with_flowroute(settings(prefix=prefix, ledger=ledger_settings), flowroute.url))
    with structlog.testing.capture_logs() as logs:
        for n in range(4):
            await publish_request(channel, prefix, OutboundRequest(
                tenant="acme", client_message_id=f"together-{n}", from_extension="101", to=f"+120655501{n:02d}",
                body="hello"))
        for n in range(4):
            await watch(statuses, f"together-{n}", until=frozenset({"accepted"}), timeout=20)
    assert [e["event"] for e in logs].count("sending for the account: counting the attempts before us") == 1
