"""Configuration of the `flowroute` target and of relay clients, and their checks."""

from __future__ import annotations

from pathlib import Path

from smsbridge.config import FlowrouteTarget
from smsbridge.config_file import check_file, load_settings
from tests.unit.test_config import GOOD, write

ENV = {"AK": "AK-7f3e9", "TOKEN": "x" * 30, "RELAY": "r" * 30}
FLOWROUTE_TARGET = GOOD.replace('kind = "amqp"', '''kind = "flowroute"
url = "https://pbx.example/api/sms/hook/abc"
extension_urls = { fusion = "https://fusion.example/app/sms/hook/sms_hook_flowroute.php" }
forward_dlrs = true''')
RELAY = """
[[relay_clients]]
tenant = "acme"
access_key = "acme-portsip"
secret_key = { env = "RELAY" }
extension = "portsip"
"""


def test_a_flowroute_target_loads(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, FLOWROUTE_TARGET + RELAY), ENV)
    (target,) = settings.pbx_targets
    assert isinstance(target, FlowrouteTarget) and target.forward_dlrs
    assert target.extension_urls == {"fusion": "https://fusion.example/app/sms/hook/sms_hook_flowroute.php"}
    (client,) = settings.relay_clients
    assert settings.relay_client("acme-portsip") is client and client.extension == "portsip"
    assert settings.relay.path_prefix == "/flowroute"


def test_relay_client_problems_are_each_reported(tmp_path: Path) -> None:
    text = GOOD + RELAY + RELAY.replace('tenant = "acme"', 'tenant = "nobody"') + """
[[relay_clients]]
tenant = "acme"
access_key = "acme-weak01"
secret_key = { env = "WEAK" }
dlr_callback_networks = ["192.168.10.0/24", "the office"]

[[relay_clients]]
tenant = "acme"
access_key = "acme-reused"
secret_key = { file = "sk.txt" }
"""
    _, problems = check_file(write(tmp_path, text), {**ENV, "WEAK": "short"})
    found = {str(p) for p in problems}
    assert "relay_clients[1].access_key: 'acme-portsip' is used by another client" in found
    assert "relay_clients[1].tenant: tenant 'nobody' has no SMS configuration" in found
    assert any(p.startswith("relay_clients[2].secret_key: too short") for p in found)
    assert any(p.startswith("relay_clients[2].dlr_callback_networks[1]: not a network") for p in found)
    assert not any("dlr_callback_networks[0]" in p for p in found)
    assert "relay_clients[3]: relay credentials must not be Flowroute's own keys: issue new ones" in found


def test_a_bad_target_url_is_reported(tmp_path: Path) -> None:
    text = FLOWROUTE_TARGET.replace("https://pbx.example", "pbx.example")
    _, problems = check_file(write(tmp_path, text), ENV)
    assert [p.where for p in problems] == ["pbx_targets[0].url"]


def test_previous_id_keys_load_as_secrets_and_each_is_checked_for_length(tmp_path: Path) -> None:
    """A rotation: the old key verifies ids still on their way; a short one is refused as the
    current key would be."""
    keys = {"IDK": "k" * 32, "OLD": "o" * 32, "WEAK": "w" * 31}
    relay = '\n[relay]\nid_key = { env = "IDK" }\nprevious_id_keys = [{ env = "OLD" }, { env = "WEAK" }]\n'
    settings = load_settings(write(tmp_path, GOOD + relay), {**ENV, **keys, "WEAK": "w" * 32})
    assert [k.reveal() for k in settings.relay.id_keys()] == ["k" * 32, "o" * 32, "w" * 32]
    _, problems = check_file(write(tmp_path, GOOD + relay), {**ENV, **keys})
    found = [str(p) for p in problems]
    assert [p for p in found if p.startswith("relay.")] == [
        "relay.previous_id_keys[1]: too short: use at least 32 random characters"]
