"""A `sip` PBX target in the TOML file: read with its defaults, bad values named by place."""

from __future__ import annotations

from pathlib import Path

import pytest

from smsbridge.config import SipTarget
from smsbridge.config_file import check_file
from smsbridge.testing.config import Env, bridge_document, secrets_env, write

ENV = {**secrets_env("T"), "SIP_PW": "bridgepw"}


def document(**target: object) -> dict[str, object]:
    doc = bridge_document(amqp_url="amqp://x/", prefix="p", ledger_url="sqlite:///x.db", secrets="T")
    doc["pbx_targets"] = [{"kind": "sip", "tenant": "acme", "host": "127.0.0.1", "domain": "pbx.example",
                           "username": "bridge", "password": Env("SIP_PW"), **target}]
    return doc


def test_a_sip_target_is_read_with_its_defaults(tmp_path: Path) -> None:
    settings, problems = check_file(write(tmp_path / "c.toml", document()), ENV)
    assert problems == [] and settings is not None
    target = settings.pbx_target("acme")
    assert isinstance(target, SipTarget)
    assert (target.port, target.transport, target.body_budget_bytes, target.from_format) == (5060, "auto", 1000,
                                                                                             "sender")
    assert target.password is not None and target.password.reveal() == "bridgepw"


@pytest.mark.parametrize(("key", "value"), [("transport", "tls"), ("body_budget_bytes", 10), ("port", 0)])
def test_a_bad_sip_value_is_named_by_place(tmp_path: Path, key: str, value: object) -> None:
    _, problems = check_file(write(tmp_path / "c.toml", document(**{key: value})), ENV)
    assert [p.where for p in problems] == [f"pbx_targets[0].{key}"]


def test_a_tenant_may_list_sip_then_email_and_an_email_needs_an_address(tmp_path: Path) -> None:
    doc = document()
    mail = {"kind": "email", "tenant": "acme", "host": "127.0.0.1", "sender": "texts@bridge.test"}
    doc["pbx_targets"] = [*doc["pbx_targets"], {**mail, "default_recipient": "desk@example.test"}]  # type: ignore[misc]
    settings, problems = check_file(write(tmp_path / "c.toml", doc), ENV)
    assert problems == [] and settings is not None and len(settings.targets_of("acme")) == 2
    doc["pbx_targets"] = [*doc["pbx_targets"], mail]  # type: ignore[misc]
    _, problems = check_file(write(tmp_path / "d.toml", doc), ENV)
    assert [p.where for p in problems] == ["pbx_targets[2].recipients"]
