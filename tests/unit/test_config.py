"""Configuration: every problem is reported with where it is, secrets are references only."""

from __future__ import annotations

from pathlib import Path

import pytest

from smsbridge.cli.main import main
from smsbridge.config import MediaSettings
from smsbridge.config_file import ConfigError, check_file, load_settings
from smsbridge.media.check import media_problems
from smsbridge.secret import Secret

SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "sample.toml"
ENV = {
    "FLOWROUTE_ACCESS_KEY": "ak", "FLOWROUTE_SECRET_KEY": "sk",
    "SMSBRIDGE_WEBHOOK_TOKEN_MAIN": "t" * 32, "ACME_PBX_AUTH": "Bearer x",
    "SMSBRIDGE_WEBHOOK_TOKEN_GLOBEX": "g" * 32, "GLOBEX_RELAY_SECRET": "r" * 32,
    "SMSBRIDGE_MEDIA_LINK_KEY": "k" * 40, "SMSBRIDGE_RELAY_ID_KEY": "i" * 40,
}

GOOD = """
[[sms_configs]]
id = "main"
tenant = "acme"
access_key = { env = "AK" }
secret_key = { file = "sk.txt" }
webhook_token = { env = "TOKEN" }
dids = ["+12065550100"]

[[inbound_rules]]
config = "main"
did = "+12065550100"
extensions = ["101"]

[[pbx_targets]]
kind = "amqp"
tenant = "acme"
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "sk.txt").write_text("secret-from-file\n")
    path = tmp_path / "bridge.toml"
    path.write_text(text)
    return path


def test_the_shipped_sample_is_valid() -> None:
    settings = load_settings(SAMPLE, ENV)
    assert [c.id for c in settings.sms_configs] == ["main", "globex"]
    assert settings.webhook_url(settings.sms_configs[0]) == f"http://127.0.0.1:8080/webhooks/flowroute/main/{'t' * 32}"
    assert settings.media.store == "local" and settings.media_base_url() == "http://127.0.0.1:8080"


def test_secrets_resolve_from_env_and_file(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD), {"AK": "AK-7f3e9", "TOKEN": "x" * 30})
    config = settings.sms_configs[0]
    assert config.access_key.reveal() == "AK-7f3e9"
    assert config.secret_key.reveal() == "secret-from-file"
    assert "AK-7f3e9" not in repr(config) and "secret-from-file" not in repr(config)


def test_every_problem_is_listed_with_its_place(tmp_path: Path) -> None:
    bad = GOOD.replace('dids = ["+12065550100"]', 'dids = ["2065550100"]\nsender = "x"') + """
[[inbound_rules]]
config = "nope"
extensions = []

[broker]
prefetch = 0
"""
    _, problems = check_file(write(tmp_path, bad), {"AK": "a"})
    found = {(p.where, p.message.split(" `")[0]) for p in problems}
    wheres = [p.where for p in problems]
    assert "sms_configs[0].sender" in wheres  # unknown key
    assert "sms_configs[0].dids[0]" in wheres  # not E.164
    assert "sms_configs[0].webhook_token" in wheres  # env var missing
    assert "inbound_rules[1].extensions" in wheres  # empty
    assert "broker.prefetch" in wheres
    assert len(problems) >= 5, found


def test_cross_section_problems(tmp_path: Path) -> None:
    text = GOOD.replace('did = "+12065550100"', 'did = "+12065550199"').replace('tenant = "acme"\n\n', "") + """
[[sms_configs]]
id = "main"
tenant = "beta"
access_key = { env = "AK" }
secret_key = { env = "AK" }
webhook_token = { env = "SHORT" }
dids = ["+12065550100"]
"""
    _, problems = check_file(write(tmp_path, text), {"AK": "a", "TOKEN": "x" * 30, "SHORT": "abc"})
    messages = [str(p) for p in problems]
    assert "inbound_rules[0].did: +12065550199 is not a DID of configuration 'main'" in messages
    assert "sms_configs[1].id: duplicate SMS configuration id 'main'" in messages
    assert "sms_configs[1].dids: +12065550100 is already owned by 'main'" in messages
    assert any(m.startswith("sms_configs[1].webhook_token: too short") for m in messages)
    assert "sms_configs[1].tenant: no pbx_targets entry for tenant 'beta'" in messages


def test_inline_secrets_are_refused(tmp_path: Path) -> None:
    _, problems = check_file(write(tmp_path, GOOD.replace('{ env = "AK" }', '"AKIA-literal"', 1)), {"TOKEN": "x" * 30})
    (problem,) = problems
    assert problem.where == "sms_configs[0].access_key" and "never inline" in problem.message
    assert "AKIA-literal" not in str(problem)


def test_missing_secret_file(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    (tmp_path / "sk.txt").unlink()
    _, problems = check_file(path, {"AK": "a", "TOKEN": "x" * 30})
    assert [p.where for p in problems] == ["sms_configs[0].secret_key"]
    assert "cannot read secret file" in problems[0].message


def test_not_toml(tmp_path: Path) -> None:
    _, problems = check_file(write(tmp_path, "[[sms_configs]\nid="), {})
    assert "not valid TOML" in problems[0].message


def test_load_refuses_a_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, GOOD), {})
    assert "problem(s)" in str(info.value)


def test_check_config_command_prints_every_problem_and_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AK", raising=False)
    monkeypatch.delenv("TOKEN", raising=False)
    assert main(["check-config", str(write(tmp_path, GOOD))]) == 1
    out = capsys.readouterr().out
    assert "2 problem(s)" in out
    assert "sms_configs[0].access_key: environment variable AK is not set" in out
    assert "sms_configs[0].webhook_token: environment variable TOKEN is not set" in out


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AK", "a")
    monkeypatch.setenv("TOKEN", "x" * 30)
    assert main(["check-config", str(write(tmp_path, GOOD))]) == 0
    assert ": ok (1 SMS configuration(s), 1 inbound rule(s), 1 PBX target(s))" in capsys.readouterr().out


def test_run_refuses_to_start_on_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--config", str(write(tmp_path, "[broker]\nport = 1\n"))]) == 1
    assert "refusing to start" in capsys.readouterr().err


def test_webhook_url_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AK", "a")
    monkeypatch.setenv("TOKEN", "x" * 30)
    path = str(write(tmp_path, GOOD))
    assert main(["webhook-url", "main", "--config", path]) == 0
    assert capsys.readouterr().out.strip() == f"http://127.0.0.1:8080/webhooks/flowroute/main/{'x' * 30}"
    assert main(["webhook-url", "other", "--config", path]) == 1
    assert "no SMS configuration 'other' (known: main)" in capsys.readouterr().err


def test_wildcards_load_from_toml(tmp_path: Path) -> None:
    text = GOOD.replace('did = "+12065550100"', 'did = "*"') + """
[[outbound_rules]]
config = "main"
extensions = ["*"]
"""
    settings = load_settings(write(tmp_path, text), {"AK": "a", "TOKEN": "x" * 30})
    assert settings.inbound_rules[0].did == "*" and settings.outbound_rules[0].extensions == ["*"]


TWO_TENANTS = GOOD + """
[[sms_configs]]
id = "beta-main"
tenant = "beta"
access_key = { env = "AK" }
secret_key = { env = "AK" }
webhook_token = { env = "TOKEN" }
dids = ["+13125550100"]

[[pbx_targets]]
kind = "amqp"
tenant = "beta"
exchange = "beta.pbx"
"""

BAD_OUTBOUND = {
    "an unknown configuration": ('config = "nope"\nextensions = ["101"]',
                                 "outbound_rules[0].config: no SMS configuration with id 'nope'"),
    "a DID the configuration does not own": ('config = "main"\nextensions = ["101"]\ndids = ["+12065550177"]',
                                             "outbound_rules[0].dids: +12065550177 is not a DID of "
                                             "configuration 'main'"),
    "another tenant's DID": ('config = "main"\nextensions = ["101"]\ndids = ["+13125550100"]',
                             "outbound_rules[0].dids: +13125550100 is not a DID of configuration 'main' "
                             "(it belongs to configuration 'beta-main' of tenant 'beta')"),
    "a foreign default_did": ('config = "main"\nextensions = ["101"]\ndefault_did = "+13125550100"',
                              "outbound_rules[0].default_did: +13125550100 is not a DID of configuration 'main' "
                              "(it belongs to configuration 'beta-main' of tenant 'beta')"),
    "an invalid destination pattern": ('config = "main"\nextensions = ["101"]\ndestinations = ["1206*"]',
                                       "outbound_rules[0].destinations: invalid pattern '1206*': numbers are "
                                       "matched in E.164, which starts with '+': write e.g. '+1206*'"),
    "a destination pattern with letters": ('config = "main"\nextensions = ["101"]\ndestinations = ["+1206abc"]',
                                           "outbound_rules[0].destinations: invalid pattern '+1206abc': only "
                                           "digits, '+' and the glob characters * ? [ ] ! - are allowed"),
}


@pytest.mark.parametrize("case", BAD_OUTBOUND)
def test_check_config_refuses_each_bad_outbound_rule_with_its_place(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rule, expected = BAD_OUTBOUND[case]
    for key, value in {"AK": "a", "TOKEN": "x" * 30}.items():
        monkeypatch.setenv(key, value)
    assert main(["check-config", str(write(tmp_path, TWO_TENANTS + "\n[[outbound_rules]]\n" + rule + "\n"))]) == 1
    out = capsys.readouterr().out
    assert "1 problem(s)" in out and expected in out, out


def test_a_sender_id_of_another_tenant_is_refused(tmp_path: Path) -> None:
    text = TWO_TENANTS.replace('dids = ["+12065550100"]', 'dids = ["+12065550100"]\nsender_id = "+13125550100"', 1)
    _, problems = check_file(write(tmp_path, text), {"AK": "a", "TOKEN": "x" * 30})
    assert [str(p) for p in problems] == [
        "sms_configs[0].sender_id: +13125550100 is not a DID of configuration 'main' "
        "(it belongs to configuration 'beta-main' of tenant 'beta')"]


def test_a_good_outbound_rule_passes(tmp_path: Path) -> None:
    rule = ('\n[[outbound_rules]]\nconfig = "main"\nextensions = ["*"]\ndids = ["+12065550100"]\n'
            'default_did = "+12065550100"\ndestinations = ["+1206*", "+1[34]??5550100"]\n')
    _, problems = check_file(write(tmp_path, TWO_TENANTS + rule), {"AK": "a", "TOKEN": "x" * 30})
    assert problems == []


def test_a_media_store_needs_a_long_link_key_and_s3_a_bucket(tmp_path: Path) -> None:
    assert media_problems(MediaSettings()) == []  # off: nothing to check
    assert [w for w, _ in media_problems(MediaSettings(store="local"))] == ["media.link_key"]
    assert [w for w, _ in media_problems(MediaSettings(store="local", link_key=Secret("short")))] == ["media.link_key"]
    problems = media_problems(MediaSettings(store="s3", link_key=Secret("k" * 40), public_url="sms.example.com"))
    assert [w for w, _ in problems] == ["media.s3_bucket", "media.public_url"]


def test_a_config_file_with_a_store_and_no_link_key_fails_check_config_naming_the_field(tmp_path: Path) -> None:
    text = GOOD + '\n[media]\nstore = "local"\ndirectory = "media"\nfetch_allowed_networks = ["10.0.0.0/8", "lan"]\n'
    _, problems = check_file(write(tmp_path, text), {"AK": "a", "TOKEN": "x" * 30})
    found = {p.where: p.message for p in problems}
    assert set(found) == {"media.link_key", "media.fetch_allowed_networks[1]"}
    assert "needs a key" in found["media.link_key"] and "not a network" in found["media.fetch_allowed_networks[1]"]
    with_key = text + 'link_key = { env = "LINK" }\n'
    _, problems = check_file(write(tmp_path, with_key), {"AK": "a", "TOKEN": "x" * 30, "LINK": "k" * 40})
    assert [p.where for p in problems] == ["media.fetch_allowed_networks[1]"]


@pytest.mark.parametrize("field", ["timeout_s", "connect_timeout_s"])
@pytest.mark.parametrize("value", ["0.01", "1e9"])
def test_a_ledger_timeout_out_of_range_is_refused_naming_the_field(tmp_path: Path, field: str, value: str) -> None:
    """2 x timeout_s in ms becomes PostgreSQL's idle_in_transaction_session_timeout, an integer:
    1e9 s would overflow it (every connection refused, which looks like no outage), 0.01 s makes it
    milliseconds."""
    _, problems = check_file(write(tmp_path, GOOD + f"\n[ledger]\n{field} = {value}\n"), {"AK": "a", "TOKEN": "t" * 32})
    assert [p.where for p in problems] == [f"ledger.{field}"], problems
    with pytest.raises(ConfigError):
        load_settings(write(tmp_path, GOOD + f"\n[ledger]\n{field} = {value}\n"), {"AK": "a", "TOKEN": "t" * 32})


def test_a_ledger_timeout_in_range_loads(tmp_path: Path) -> None:
    config = load_settings(write(tmp_path, GOOD + "\n[ledger]\ntimeout_s = 0.5\nconnect_timeout_s = 3600\n"),
                           {"AK": "a", "TOKEN": "t" * 32})
    assert (config.ledger.timeout_s, config.ledger.connect_timeout_s) == (0.5, 3600)
