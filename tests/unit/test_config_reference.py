"""docs/configuration.md is generated from the settings Structs and says what every key means."""

from __future__ import annotations

from pathlib import Path

from smsbridge import config_reference

ROOT = Path(__file__).resolve().parents[2]


def test_every_key_has_a_meaning_and_no_meaning_is_stale() -> None:
    missing, stale = config_reference.missing_and_stale()
    assert missing == [], "write what these keys mean in config_reference.MEANING"
    assert stale == [], "these keys are gone: remove their meanings"


def test_docs_configuration_page_is_up_to_date() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page == config_reference.render(), "run: python -m smsbridge.config_reference > docs/configuration.md"


def test_the_page_shows_each_places_own_default() -> None:
    page = config_reference.render()
    delivery = page.split("## [retry.delivery]")[1].split("##")[0]
    assert "| `max_attempts` | integer (≥ 1) | `60` |" in delivery  # not RetryPolicy's own default of 10
    assert "| `kind` | `\"http\"` \\| `\"amqp\"` \\| `\"flowroute\"` \\| `\"sip\"` \\| `\"email\"` | required |" in page
