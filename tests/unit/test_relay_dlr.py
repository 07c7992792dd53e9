"""Statuses of relayed sends as Flowroute DLRs (pure), and where they go."""

from __future__ import annotations

import msgspec

from smsbridge.config import FlowrouteTarget, HttpTarget, Settings
from smsbridge.events import StatusEvent, utcnow
from smsbridge.ledger import RelaySend
from smsbridge.sandbox.flowroute_pbx import shape_problem
from smsbridge.workers.relay_dlr import dlr_doc, receipt_urls

LINK = "https://sms.example/flowroute/v2.2/messages/mdr2-ours"


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
    assert receipt_urls(with_target, relay("https://pbx.example/dlr")) == ["https://pbx.example/dlr",
                                                                          "https://pbx.example/hook"]
    assert receipt_urls(with_target, relay("https://pbx.example/hook")) == ["https://pbx.example/hook"]
    assert receipt_urls(msgspec.structs.replace(Settings(), pbx_targets=[quiet]), relay(None)) == []
    http = HttpTarget(tenant="acme", url="https://pbx.example/json")
    assert receipt_urls(msgspec.structs.replace(Settings(), pbx_targets=[http]), relay(None)) == []
