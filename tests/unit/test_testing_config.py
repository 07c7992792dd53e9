"""The one configuration builder: what it writes loads, and is what the caller asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from smsbridge.config import AmqpTarget, HttpTarget
from smsbridge.config_file import load_settings
from smsbridge.testing.config import FAST_RETRY, bridge_document, merge, secrets_env, write


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = secrets_env("UNIT")
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def test_the_default_document_loads_with_its_secrets(tmp_path: Path, env: dict[str, str]) -> None:
    doc = bridge_document(amqp_url="amqp://guest:guest@127.0.0.1:5672/", prefix="p", secrets="UNIT",
                          ledger_url=f"sqlite:///{tmp_path / 'l.db'}", port=8123, pbx_url="http://127.0.0.1:9/x")
    settings = load_settings(str(write(tmp_path / "b.toml", merge(doc, FAST_RETRY))))
    (config,) = settings.sms_configs
    assert config.access_key.reveal() == env["UNIT_AK"] and config.webhook_token.reveal() == env["UNIT_TOKEN"]
    assert settings.receiver.public_url == "http://127.0.0.1:8123" and settings.broker.prefix == "p"
    assert settings.retry.delivery.max_attempts == 5 and settings.retry.dispatch.base_delay_s == 0.2
    (target,) = settings.pbx_targets
    assert isinstance(target, HttpTarget) and target.url == "http://127.0.0.1:9/x"


def test_overrides_merge_tables_replace_lists_and_none_removes(tmp_path: Path, env: dict[str, str]) -> None:
    doc = bridge_document(amqp_url="amqp://127.0.0.1/", prefix="p", secrets="UNIT", pbx_exchange="p.pbx",
                          ledger_url=f"sqlite:///{tmp_path / 'l.db'}")
    doc = merge(doc, {"broker": {"prefetch": 7}, "inbound_rules": None,
                      "sms_configs": [{**doc["sms_configs"][0], "sms_per_second": 3}]})
    settings = load_settings(str(write(tmp_path / "b.toml", doc)))
    assert settings.broker.prefetch == 7 and settings.broker.prefix == "p"
    assert settings.inbound_rules == [] and settings.sms_configs[0].sms_per_second == 3
    assert isinstance(settings.pbx_targets[0], AmqpTarget)
