"""The contract page matches the code, and every sample decodes strictly into its Struct."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from smsbridge import contracts
from smsbridge.events import DeliveryReceipt, InboundDelivery, InboundMessage, OutboundRequest, StatusEvent

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "fixtures" / "contracts"


def test_docs_contracts_page_is_up_to_date() -> None:
    page = (ROOT / "docs" / "contracts.md").read_text()
    assert page == contracts.render(), "run: python -m smsbridge.contracts > docs/contracts.md"


@pytest.mark.parametrize(
    ("name", "typ"),
    [("inbound_delivery", InboundDelivery), ("status", StatusEvent), ("inbound_message", InboundMessage),
     ("delivery_receipt", DeliveryReceipt), ("outbound_request", OutboundRequest)],
)
def test_samples_decode_and_round_trip(name: str, typ: type[msgspec.Struct]) -> None:
    raw = (SAMPLES / f"{name}.json").read_bytes()
    event = msgspec.json.decode(raw, type=typ, strict=True)
    assert msgspec.json.decode(msgspec.json.encode(event), type=typ) == event
    known = {f.encode_name for f in msgspec.structs.fields(typ)} | {"kind"}
    assert set(json.loads(raw)) == known, "a sample must show every field"


def test_a_consumer_of_version_1_ignores_fields_added_later() -> None:
    raw = json.loads((SAMPLES / "status.json").read_text())
    raw["some_future_field"] = {"nested": True}
    event = msgspec.json.decode(json.dumps(raw).encode(), type=StatusEvent)
    assert event.state == "failed"
