from __future__ import annotations

import msgspec
import pytest

from smsbridge.config import OutboundRule, OutboundSettings, Settings
from smsbridge.events import OutboundRequest
from smsbridge.outbound_rules import Refused, decide
from tests.support.settings import DID_BILLING, DID_MAIN, sms_config

RULES = [
    OutboundRule(config="main", extensions=["101", "102"], dids=[DID_MAIN], name="front desk"),
    OutboundRule(config="main", extensions=["201"], dids=[DID_MAIN, DID_BILLING], default_did=DID_BILLING,
                 destinations=["+1206*", "+1425*"], name="billing"),
]


def make_settings(**config: object) -> Settings:
    return msgspec.structs.replace(Settings(), sms_configs=[sms_config(**config)], outbound_rules=RULES)


def request(**fields: object) -> OutboundRequest:
    base: dict[str, object] = dict(tenant="acme", client_message_id="c-1", from_extension="101",
                                   to="(206) 555-0199", body="Your order is ready")
    base.update(fields)
    return OutboundRequest(**base)  # type: ignore[arg-type]


def refusal(req: OutboundRequest, settings: Settings | None = None) -> Refused:
    with pytest.raises(Refused) as info:
        decide(req, settings or make_settings())
    return info.value


def test_allowed_request_becomes_a_dispatch_with_normalised_numbers() -> None:
    dispatch = decide(request(), make_settings())
    assert (dispatch.from_, dispatch.to) == (DID_MAIN, "+12065550199")
    assert (dispatch.segments, dispatch.encoding, dispatch.is_mms) == (1, "ascii", False)
    assert dispatch.client_message_id == "c-1" and dispatch.config_id == "main"
    assert dispatch.dlr_callback is not None and dispatch.dlr_callback.endswith("?cmid=c-1")


def test_deny_by_default() -> None:
    refused = refusal(request(from_extension="999"))
    assert refused.code == "not_allowed"
    assert refused.reason == (
        "extension 999 may not send texts through configuration 'main' (no outbound rule allows it)")


def test_wildcard_extension_rule() -> None:
    settings = msgspec.structs.replace(make_settings(), outbound_rules=[OutboundRule(config="main", extensions=["*"])])
    assert decide(request(from_extension="777"), settings).from_ == DID_MAIN


def test_explicit_from_did_outside_the_rule_is_refused() -> None:
    refused = refusal(request(from_did="+12065550101"))
    assert refused.code == "from_did_not_allowed"
    assert "may not send from +12065550101; allowed: +12065550100" in refused.reason


def test_explicit_from_did_inside_the_rule_is_used() -> None:
    assert decide(request(from_extension="201", from_did="2065550100"), make_settings()).from_ == DID_MAIN


def test_sender_choice_rule_default_then_sender_id_then_did() -> None:
    assert decide(request(from_extension="201"), make_settings()).from_ == DID_BILLING  # rule default
    with_sender = make_settings(sender_id="+12065550123")
    assert decide(request(), with_sender).from_ == "+12065550123"  # configuration's Sender ID
    assert decide(request(), make_settings()).from_ == DID_MAIN  # the DID


@pytest.mark.parametrize(
    ("to", "fragment"),
    [("+442071234567", "is not a 10- or 11-digit North American number"), ("555-0199", "not a 10- or 11-digit"),
     ("12061550199", "must not start with 0 or 1"), ("call me", "characters other than digits")],
)
def test_invalid_destinations_say_which_number_and_why(to: str, fragment: str) -> None:
    refused = refusal(request(to=to))
    assert refused.code == "invalid_number" and fragment in refused.reason and to in refused.reason


def test_destination_patterns() -> None:
    assert decide(request(from_extension="201", to="+14255550100"), make_settings()).to == "+14255550100"
    refused = refusal(request(from_extension="201", to="+13125550100"))
    assert refused.code == "destination_not_allowed" and "+13125550100" in refused.reason


def test_smart_quotes_replaced_by_default_and_kept_when_switched_off() -> None:
    body = "It\u2019s \u201cready\u201d"
    assert decide(request(body=body), make_settings()).body == 'It\'s "ready"'
    settings = msgspec.structs.replace(make_settings(), outbound=OutboundSettings(replace_smart_punctuation=False))
    dispatch = decide(request(body=body), settings)
    assert dispatch.body == body and dispatch.encoding == "ucs2"


def test_too_many_segments_is_refused_with_the_count() -> None:
    settings = msgspec.structs.replace(make_settings(), outbound=OutboundSettings(max_segments=2))
    refused = refusal(request(body="é" * 141), settings)
    assert refused.code == "too_long" and "3 segments (141 ucs2 characters), at most 2" in refused.reason


def test_mms_needs_https_media_and_respects_the_cap() -> None:
    dispatch = decide(request(body="", media_urls=("https://cdn.example/a.jpg",)), make_settings())
    assert dispatch.is_mms and dispatch.media_urls == ("https://cdn.example/a.jpg",)
    assert refusal(request(media_urls=("http://cdn.example/a.jpg",))).code == "media_not_https"
    settings = msgspec.structs.replace(make_settings(), outbound=OutboundSettings(max_media=1))
    assert refusal(request(media_urls=("https://a/1", "https://a/2")), settings).code == "too_many_media"


def test_empty_message_is_refused() -> None:
    assert refusal(request(body="  ")).code == "empty"


def test_unknown_tenant_and_foreign_config_are_refused() -> None:
    assert refusal(request(tenant="beta")).code == "unknown_tenant"
    assert refusal(request(config_id="other")).code == "unknown_config"


@pytest.mark.parametrize(("to", "country"), [("+18765550100", "Jamaica"), ("1 809 555 0100", "the Dominican Republic")])
def test_destinations_outside_the_us_and_canada_are_refused_before_sending(to: str, country: str) -> None:
    refused = refusal(request(to=to))
    assert refused.code == "destination_not_us_ca"
    assert refused.reason.endswith(f"is in {country}: Flowroute sends only to the US and Canada")
