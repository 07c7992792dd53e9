from __future__ import annotations

import pytest

from smsbridge.config import InboundRule
from smsbridge.events import InboundMessage
from smsbridge.rules import NoRoute, keyword_of, route


def message(to: str = "+12065550100", sender: str = "+12065550199", config: str = "main") -> InboundMessage:
    return InboundMessage(tenant="acme", config_id=config, mdr_id="mdr2-1", from_=sender, to=to, body="hi")


RULES = [
    InboundRule(config="main", did="+12065550100", extensions=["101", "102"], name="front desk"),
    InboundRule(config="main", did="+12065550101", from_pattern="+1206*", extensions=["201"]),
    InboundRule(config="main", did="+12065550101", extensions=["202"]),
    InboundRule(config="other", did="*", extensions=["999"]),
]


def test_did_routes_to_every_extension_of_a_ring_group() -> None:
    chosen = route(message(), RULES, fallback=[])
    assert chosen.extensions == ("101", "102") and chosen.rule == "front desk"


def test_sender_pattern_selects_a_rule() -> None:
    assert route(message("+12065550101", "+12065550199"), RULES, []).extensions == ("201",)
    assert route(message("+12065550101", "+13125550199"), RULES, []).extensions == ("202",)


def test_first_matching_rule_wins_and_rules_of_other_configs_are_ignored() -> None:
    chosen = route(message("+12065550102"), RULES, fallback=["100"])
    assert chosen.extensions == ("100",) and chosen.rule == "fallback"


def test_wildcard_did() -> None:
    assert route(message("+15035550100", config="other"), RULES, []).extensions == ("999",)


def test_duplicate_extensions_get_the_text_once() -> None:
    rules = [InboundRule(config="main", extensions=["101", "101", "102"])]
    assert route(message(), rules, []).extensions == ("101", "102")


def test_no_rule_and_no_fallback_is_a_permanent_no_route() -> None:
    with pytest.raises(NoRoute) as info:
        route(message("+12065550109"), RULES, fallback=[])
    assert info.value.reason == "no inbound rule for DID +12065550109 in configuration 'main'"
    assert info.value.code == "no_route"


@pytest.mark.parametrize(
    ("body", "keyword"),
    [("STOP", "STOP"), ("stop", "STOP"), ("  Stop \n", "STOP"), ("unstop", "UNSTOP"), ("Start", "START"),
     ("help", "HELP"), ("HELP me", None), ("stop it", None), ("STOP PLEASE", None), ("", None), ("stopp", None)],
)
def test_keywords_only_as_a_single_word(body: str, keyword: str | None) -> None:
    assert keyword_of(body) == keyword
