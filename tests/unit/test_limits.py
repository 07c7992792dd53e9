"""Issue 16 points 3 and 4, pure: field limits at intake, bounded reasons and headers, the
origin key of a request from what its publisher cannot choose."""

from __future__ import annotations

import pytest

from smsbridge.broker import names
from smsbridge.errors import InvalidNumber
from smsbridge.events import OutboundRequest
from smsbridge.flowroute.webhook import parse_webhook
from smsbridge.intake import to_event
from smsbridge.limits import FieldRejected, check_request
from smsbridge.redact import REASON_LIMIT, carried, clip, header_text
from tests.support.fixtures import payload
from tests.support.settings import sms_config

PREFIX = "smsbridge"


def request(**fields: object) -> OutboundRequest:
    base: dict[str, object] = dict(tenant="acme", client_message_id="c-1", from_extension="101",
                                   to="+12065550199", body="hi")
    base.update(fields)
    return OutboundRequest(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("fields", "field"), [
    ({"to": "1" * 200_000}, "to"),
    ({"from_did": "+1" + "2" * 40}, "from_did"),
    ({"body": "a\x00b"}, "body"),
    ({"from_extension": "1\x1b01"}, "from_extension"),
    ({"client_message_id": "c\n1"}, "client_message_id"),
    ({"config_id": "c" * 65}, "config_id"),
    ({"media_urls": ("https://x/" + "a" * 3000,)}, "media_urls[0]"),
    ({"body": "x" * 10_001}, "body"),
])
def test_a_request_field_beyond_its_limit_is_refused_by_name(fields: dict[str, object], field: str) -> None:
    with pytest.raises(FieldRejected) as info:
        check_request(request(**fields))
    assert info.value.field == field and info.value.code == "invalid_field"
    assert info.value.reason.startswith(f"field '{field}' ") and len(info.value.reason) < 120


def test_a_request_within_every_limit_passes() -> None:
    check_request(request(body="line one\nline two\ttab", media_urls=("https://example.com/a.jpg",)))


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d["data"].update(id="m" * 81), "id"),
    (lambda d: d["data"].update(id="mdr2-é"), "id"),
    (lambda d: d["data"]["attributes"].update({"from": "1" * 33}), "from"),
    (lambda d: d["data"]["attributes"].update(body="\x00"), "body"),
    (lambda d: d["data"]["attributes"].update(message_encoding=2**31), "message_encoding"),
])
def test_a_webhook_field_beyond_its_limit_is_refused_by_name(change: object, field: str) -> None:
    doc = payload("sms_jsonapi_2024")
    change(doc)  # type: ignore[operator]
    with pytest.raises(FieldRejected) as info:
        to_event(parse_webhook(doc), sms_config())
    assert info.value.field == field


def test_a_dlr_callback_cmid_is_bounded_too() -> None:
    with pytest.raises(FieldRejected) as info:
        to_event(parse_webhook(payload("dlr_flat_level2")), sms_config(), client_message_id="c" * 129)
    assert info.value.field == "cmid"


@pytest.mark.parametrize("odd", ["²", "--5", "٣", "1" * 5000, " "])
def test_odd_digit_strings_read_as_no_number(odd: str) -> None:
    doc = {"type": "delivery_receipt", "id": "mdr2-1", "attributes": {"status_code": odd, "level": odd}}
    parsed = parse_webhook(doc)
    assert (parsed.status_code, parsed.level) == (None, None)  # type: ignore[union-attr]


def test_reasons_are_clipped_and_their_numbers_masked_for_headers() -> None:
    huge = "destination " + "+12065550199 " * 20_000
    text = header_text(huge)
    assert len(text) < REASON_LIMIT + 40 and "12065550199" not in text and "+1******0199" in text
    assert clip("short") == "short"
    assert "(260012 characters)" in clip(huge)
    assert "1" * 50 not in InvalidNumber("1" * 200_000, "too long").reason


def test_only_the_bridges_own_bounded_headers_are_carried() -> None:
    headers = {names.H_ATTEMPT: 2, names.H_ORIGIN_KEY: "outbound.acme", "x-pbx-trace": "t" * 100_000,
               names.H_REASON: "r" * 100_000, names.H_CONFIG: "c" * 1000}
    assert carried(headers, names.CARRIED_HEADERS) == {names.H_ATTEMPT: 2, names.H_ORIGIN_KEY: "outbound.acme"}


def test_the_origin_of_a_request_is_the_key_the_requests_exchange_routed_by() -> None:
    """Issue 16 point 1: a PBX's own x-smsbridge-origin-key header means nothing on that exchange."""
    requests = names.requests_exchange(PREFIX)
    assert names.origin_key(PREFIX, requests, "outbound.acme", "outbound.beta") == "outbound.acme"
    assert names.origin_key(PREFIX, requests, "outbound.acme", "anything") == "outbound.acme"
    # a retry (delay queue → work exchange) or a replay: published by the bridge, header trusted
    assert names.origin_key(PREFIX, names.work_exchange(PREFIX), "smsbridge.outbound", "outbound.acme") \
        == "outbound.acme"
    assert names.origin_key(PREFIX, names.work_exchange(PREFIX), "smsbridge.outbound", None) == "smsbridge.outbound"
    assert names.tenant_of_request_key("smsbridge.outbound") is None  # names no tenant: refused
