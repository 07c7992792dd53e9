"""Issue 16 point 4, property-based (hypothesis): whatever a client sends, the webhook parser and
intake answer with one of their refusals or a bounded event, and an outbound request is refused
by name or allowed within limits. Never another exception (which would be a 500 or a crash)."""

from __future__ import annotations

import random
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smsbridge.errors import PermanentError
from smsbridge.events import DeliveryReceipt, OutboundRequest, outbound_stage_decoder
from smsbridge.flowroute.webhook import UnknownShape
from smsbridge.intake import NotJson, Unroutable, read_webhook
from smsbridge.limits import BODY_CHARS, CLIENT_ID_CHARS, ID_CHARS, NUMBER_CHARS, FieldRejected, check_request
from smsbridge.outbound_rules import decide
from tests.support import hostile
from tests.support.settings import OUTBOUND_RULES, sms_config
from tests.support.settings import settings as bridge_settings

CONFIG = sms_config()
SETTINGS = msgspec.structs.replace(bridge_settings(prefix="sbtest-prop"), outbound_rules=OUTBOUND_RULES)
WEBHOOK_REFUSALS = (NotJson, FieldRejected, UnknownShape, Unroutable)
INT32 = st.integers(min_value=-(2**40), max_value=2**40)
TEXT = st.text(max_size=120) | st.sampled_from(["²", "\x00", "1" * 40, "+12065550199", "m" * 81, "12065550100"])
JSON = st.recursive(st.none() | st.booleans() | INT32 | st.floats(allow_nan=False) | TEXT,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=20)
SHAPES = st.sampled_from(["message", "delivery_receipt", None, "other"])
FAST = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def assert_bounded(event: Any) -> None:
    assert 0 < len(event.mdr_id) <= ID_CHARS and event.mdr_id.isascii() and event.mdr_id.isprintable()
    if isinstance(event, DeliveryReceipt):
        assert event.client_message_id is None or len(event.client_message_id) <= CLIENT_ID_CHARS
        for value in (event.level, event.status_code):
            assert value is None or -(2**31) <= value < 2**31
    else:
        assert len(event.from_) <= NUMBER_CHARS and len(event.to) <= NUMBER_CHARS
        assert "\x00" not in event.body and len(event.body) <= BODY_CHARS
    msgspec.json.encode(event)  # and it publishes


def outcome(raw: bytes, cmid: str | None = None) -> None:
    try:
        event = read_webhook(raw, CONFIG, client_message_id=cmid)
    except WEBHOOK_REFUSALS:
        return
    assert_bounded(event)


@FAST
@given(st.binary(max_size=400))
def test_any_bytes_are_read_or_refused(raw: bytes) -> None:
    outcome(raw)


@FAST
@given(JSON)
def test_any_json_is_read_or_refused(doc: Any) -> None:
    outcome(msgspec.json.encode(doc))


@FAST
@given(st.dictionaries(st.sampled_from(["id", "to", "from", "body", "level", "status_code", "is_mms", "timestamp",
                                        "status", "message_encoding", "direction", "attributes"]), JSON,
                       max_size=8), SHAPES, st.none() | TEXT)
def test_flowroute_shaped_documents_are_read_or_refused(fields: dict[str, Any], shape: str | None,
                                                       cmid: str | None) -> None:
    data = {"type": shape, "id": fields.pop("id", "mdr2-1"), "attributes": fields}
    outcome(msgspec.json.encode({"data": data}), cmid)
    outcome(msgspec.json.encode({"type": shape, **data}), cmid)
    outcome(msgspec.json.encode({"to": fields.get("to"), "from": fields.get("from"), "id": data["id"],
                                 "body": fields.get("body")}), cmid)


@FAST
@given(st.integers(min_value=0, max_value=2**31))
def test_the_seeded_hostile_webhooks_are_read_or_refused(seed: int) -> None:
    body, _ = hostile.webhook_body(random.Random(seed))
    if not body.startswith(b"\x1f\x8b"):  # a gzip bomb is the HTTP layer's business (the fuzz run)
        outcome(body)


@FAST
@given(st.dictionaries(st.sampled_from(["to", "body", "from_did", "config_id", "from_extension", "client_message_id",
                                        "tenant", "media_urls"]), TEXT | st.lists(TEXT, max_size=3), max_size=5))
def test_an_outbound_request_is_refused_by_name_or_allowed_within_limits(fields: dict[str, Any]) -> None:
    base: dict[str, Any] = {"kind": "outbound_request", "tenant": "acme", "client_message_id": "c-1",
                            "from_extension": "101", "to": "+12065550199", "body": "hi"}
    raw = msgspec.json.encode({**base, **fields})
    try:
        request: OutboundRequest = outbound_stage_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return  # dead-lettered as undecodable, with msgspec's path to the field
    try:
        check_request(request)
        dispatch = decide(request, SETTINGS)
    except FieldRejected as exc:
        assert exc.reason.startswith(f"field '{exc.field}' ") and len(exc.reason) < 200
        return
    except PermanentError as exc:
        assert len(exc.reason) < 1000  # refused by a rule, with a bounded sentence
        return
    assert len(dispatch.to) <= NUMBER_CHARS and len(dispatch.from_) <= NUMBER_CHARS


@FAST
@given(st.integers(min_value=0, max_value=2**31))
def test_the_seeded_hostile_requests_decode_or_are_refused(seed: int) -> None:
    raw = hostile.outbound_body(random.Random(seed))
    try:
        request = outbound_stage_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return
    try:
        check_request(request)
        decide(request, SETTINGS)
    except PermanentError:
        return
