"""Statuses of relayed sends as Flowroute DLRs (pure), and where they go."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import msgspec
import pytest
from aiohttp import web

from smsbridge.broker.consumer import MessageContext
from smsbridge.config import FlowrouteTarget, HttpTarget, RelayClient, Settings
from smsbridge.errors import PermanentError
from smsbridge.events import StatusEvent, utcnow
from smsbridge.ledger import RelaySend
from smsbridge.sandbox.flowroute_pbx import shape_problem
from smsbridge.secret import Secret
from smsbridge.workers.relay_dlr import RelayDlrHandler, dlr_doc, receipt_urls
from tests.support.http_server import serving
from tests.support.ledger import open_ledger

LINK = "https://sms.example/flowroute/v2.2/messages/mdr2-ours"
CONTEXT = MessageContext(origin_key="relay-dlr", attempt=1)


def status(state: str, **fields: object) -> StatusEvent:
    return StatusEvent(tenant="acme", config_id="main", state=state, client_message_id="mdr2-ours",  # type: ignore[arg-type]
                       mdr_id="mdr2-flowroutes", **fields)  # type: ignore[arg-type]


def test_accepted_is_no_dlr() -> None:
    assert dlr_doc(status("accepted"), "mdr2-ours", LINK) is None


def test_sent_and_delivered_read_as_flowroutes_own() -> None:
    sent = dlr_doc(status("sent", dlr_level=1), "mdr2-ours", LINK)
    assert sent is not None and sent["data"]["id"] == "mdr2-ours" and sent["data"]["type"] == "delivery_receipt"
    assert (sent["data"]["attributes"]["level"], sent["data"]["attributes"]["status"]) == (1, "smsc submit")
    assert sent["data"]["links"] == {"related": LINK}
    done = dlr_doc(status("delivered", dlr_level=2, dlr_code=1004), "mdr2-ours", LINK)
    assert done is not None and done["data"]["attributes"]["status_code"] == 1004
    assert shape_problem(done) is None


def test_a_failure_before_flowroute_still_reads_as_a_failed_dlr_with_the_reason() -> None:
    failed = dlr_doc(status("failed", reason_code="exhausted", reason="Flowroute unreachable"), "mdr2-ours", LINK)
    assert failed is not None
    attributes = failed["data"]["attributes"]
    assert (attributes["level"], attributes["status"], attributes["status_code"]) == (2, "delivery failed", None)
    assert attributes["status_code_description"] == "Flowroute unreachable"
    assert "mdr2-flowroutes" not in msgspec.json.encode(failed).decode()  # the PBX only knows our id


def relay(dlr_callback: str | None) -> RelaySend:
    return RelaySend(bridge_id="mdr2-ours", tenant="acme", access_key="acme-fusion", idempotency_key=None,
                     request_hash="h", state="queued", dlr_callback=dlr_callback, created_at=utcnow())


def test_receipts_go_to_the_callback_and_to_the_target_when_forwarding() -> None:
    forwarding = FlowrouteTarget(tenant="acme", url="https://pbx.example/hook", forward_dlrs=True)
    quiet = FlowrouteTarget(tenant="acme", url="https://pbx.example/hook")
    with_target = msgspec.structs.replace(Settings(), pbx_targets=[forwarding])
    assert receipt_urls(with_target, relay("https://pbx.example/dlr")) == [("https://pbx.example/dlr", True),
                                                                          ("https://pbx.example/hook", False)]
    # the operator's own URL is not checked as a client's, even when the client names it too
    assert receipt_urls(with_target, relay("https://pbx.example/hook")) == [("https://pbx.example/hook", False)]
    assert receipt_urls(msgspec.structs.replace(Settings(), pbx_targets=[quiet]), relay(None)) == []
    http = HttpTarget(tenant="acme", url="https://pbx.example/json")
    assert receipt_urls(msgspec.structs.replace(Settings(), pbx_targets=[http]), relay(None)) == []



def test_a_forwarding_target_behind_another_of_the_tenants_targets_still_gets_receipts() -> None:
    """Issue 21: a tenant's targets are a list; the flowroute one need not be first."""
    forwarding = FlowrouteTarget(tenant="acme", url="https://pbx.example/hook", forward_dlrs=True)
    first = HttpTarget(tenant="acme", url="https://pbx.example/json")
    other = FlowrouteTarget(tenant="globex", url="https://globex.example/hook", forward_dlrs=True)
    both = msgspec.structs.replace(Settings(), pbx_targets=[first, other, forwarding])
    assert receipt_urls(both, relay(None)) == [("https://pbx.example/hook", False)]


async def test_a_callback_that_resolves_to_loopback_or_redirects_is_never_posted_to(tmp_path: Path) -> None:
    """SSRF at the moment of the POST: a name that resolves only to loopback is refused by the
    connection itself, an address literal before it, and a redirect from an allowed PBX is not
    followed (it could lead anywhere): each is permanent, dead-lettered with its reason, and the
    hidden service sees nothing."""
    hits: list[str] = []

    async def hidden(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response()

    async with serving("POST", "/{tail:.*}", hidden) as hidden_url:
        async def redirecting(_: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(f"{hidden_url}/internal")

        async with serving("POST", "/dlr", redirecting) as pbx_url, aiohttp.ClientSession() as plain, \
                open_ledger("sqlite", tmp_path) as ledger:
            lan = RelayClient(tenant="acme", access_key="acme-lan", secret_key=Secret("s" * 32),
                              dlr_callback_networks=["127.0.0.1/32"])
            strict = RelayClient(tenant="acme", access_key="acme-fusion", secret_key=Secret("t" * 32))
            handler = RelayDlrHandler(msgspec.structs.replace(Settings(), relay_clients=[lan, strict]), ledger, plain)
            cases = [("mdr2-name", "acme-fusion", hidden_url.replace("127.0.0.1", "localhost") + "/x",
                      "destination_refused"),
                     ("mdr2-literal", "acme-fusion", f"{hidden_url}/y", "destination_refused"),
                     ("mdr2-redirect", "acme-lan", f"{pbx_url}/dlr", "pbx_307")]
            try:
                for bridge_id, access_key, callback, code in cases:
                    send = msgspec.structs.replace(relay(callback), bridge_id=bridge_id, access_key=access_key)
                    assert await ledger.claim_relay(send, window_s=60, stale_s=60) is None
                    sent = msgspec.structs.replace(status("sent"), client_message_id=bridge_id)
                    with pytest.raises(PermanentError) as refused:
                        await handler.handle(sent, CONTEXT)
                    assert refused.value.code == code, (bridge_id, refused.value)
            finally:
                await handler.close()
    assert hits == []
