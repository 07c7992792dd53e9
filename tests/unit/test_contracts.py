"""The contract page matches the code, and every sample decodes strictly into its Struct."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from smsbridge import contracts
from smsbridge.events import DeliveryReceipt, InboundDelivery, InboundMessage, StatusEvent

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "fixtures" / "contracts"


def test_docs_contracts_page_is_up_to_date() -> None:
    page = (ROOT / "docs" / "contracts.md").read_text()
    assert page == contracts.render(), "run: python -m smsbridge.contracts > docs/contracts.md"


@pytest.mark.parametrize(
    ("name", "typ"),
    [("inbound_delivery", InboundDelivery), ("status", StatusEvent), ("inbound_message", InboundMessage),
     ("delivery_receipt", DeliveryReceipt)],
)
def test_samples_decode_and_round_trip(name: str, typ: type[msgspec.Struct]) -> None:
    raw = (SAMPLES / f"{name}.json").read_bytes()
    event = msgspec.json.decode(raw, type=typ, strict=True)
    again = json.loads(msgspec.json.encode(event))
    original = json.loads(raw)
    assert {k: v for k, v in again.items() if k not in ("occurred_at", "received_at", "flowroute_timestamp")} == {
        k: v for k, v in original.items() if k not in ("occurred_at", "received_at", "flowroute_timestamp")}


def test_a_consumer_of_version_1_ignores_fields_added_later() -> None:
    raw = json.loads((SAMPLES / "status.json").read_text())
    raw["some_future_field"] = {"nested": True}
    event = msgspec.json.decode(json.dumps(raw).encode(), type=StatusEvent)
    assert event.state == "failed"
