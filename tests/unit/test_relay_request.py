"""The relay API's pure decisions: credentials, both body formats, DID ownership, the outbound
rules, and hostile input that must end in a Flowroute-shaped refusal, never a crash."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smsbridge.config import OutboundRule, RelayClient, Settings
from smsbridge.relay_request import (
    RelayError,
    authenticate,
    error_doc,
    idempotency_key,
    parse_send,
    to_outbound,
)
from smsbridge.secret import Secret
from tests.support.settings import DID_BILLING, DID_MAIN, sms_config

SECRET = "relay-secret-0123456789abcdef"
CLIENT = RelayClient(tenant="acme", access_key="acme-fusion", secret_key=Secret(SECRET), extension="fusion")
OTHER = RelayClient(tenant="globex", access_key="globex-pbx1", secret_key=Secret("globex-secret-0123456789ab"))
MOBILE = "+12065550199"


def bridge_settings() -> Settings:
    rules = [OutboundRule(config="main", extensions=["fusion"], dids=[DID_MAIN])]
    globex = sms_config(id="gx", tenant="globex", dids=["+14255550100"])
    return msgspec.structs.replace(Settings(), sms_configs=[sms_config(), globex], outbound_rules=rules,
                                   relay_clients=[CLIENT, OTHER])


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def parse(doc: Any) -> Any:
    return parse_send(msgspec.json.encode(doc), 5000)


def test_the_right_credentials_name_the_client() -> None:
    assert authenticate(bridge_settings(), basic("acme-fusion", SECRET)) is CLIENT


@pytest.mark.parametrize("header", [None, "", "Bearer x", basic("acme-fusion", "wrong"),
                                    basic("nobody-at-all", SECRET), "Basic !!!", "Basic " + "\xff",
                                    basic("globex-pbx1", SECRET)])
def test_anything_else_is_401(header: str | None) -> None:
    with pytest.raises(RelayError) as info:
        authenticate(bridge_settings(), header)
    assert info.value.status == 401 and info.value.detail == "Authentication failed."


def test_flat_body_as_fusionpbx_sends_it() -> None:
    sent = parse({"to": "2065550199", "from": "12065550100", "body": "hi"})
    assert (sent.to, sent.from_, sent.body, sent.media_urls) == ("2065550199", "12065550100", "hi", [])


def test_json_api_mms_as_freepbx_sends_it() -> None:
    sent = parse({"data": {"type": "message", "attributes": {
        "to": "+12065550199", "from": "+12065550100", "is_mms": "true", "media_urls": ["https://x.test/a.png"],
        "dlr_callback": "https://pbx.test/dlr"}}})
    assert sent.media_urls == ["https://x.test/a.png"] and sent.dlr_callback == "https://pbx.test/dlr"
    assert sent.body is None


def test_numbers_may_be_json_numbers() -> None:
    assert parse({"to": 12065550199, "from": 12065550100, "body": "x"}).to == 12065550199


@pytest.mark.parametrize(("doc", "status", "names"), [
    ({"from": "12065550100", "body": "x"}, 422, "to"),
    ({"to": ["1"], "from": "12065550100"}, 422, "to"),
    ({"to": "1", "from": True}, 422, "from"),
    ({"to": "1", "from": "1", "body": 7}, 422, "body"),
    ({"to": "1", "from": "1", "media_urls": "https://x"}, 422, "media_urls"),
    ({"to": "1", "from": "1", "dlr_callback": "ftp://x"}, 422, "dlr_callback"),
    ({"data": []}, 422, "data.attributes"),
    ({"data": {"type": "number", "attributes": {}}}, 422, "data.type"),
    ([1, 2], 422, "object"),
    ("text", 422, "object"),
])
def test_bad_fields_are_422_naming_the_field(doc: Any, status: int, names: str) -> None:
    with pytest.raises(RelayError) as info:
        parse(doc)
    assert info.value.status == status and names in info.value.detail


def test_not_json_is_400() -> None:
    with pytest.raises(RelayError) as info:
        parse_send(b'{"to": "1", "body": "say "hi""}', 5000)  # FusionPBX does not escape quotes
    assert info.value.status == 400


def test_an_overlong_body_is_422() -> None:
    with pytest.raises(RelayError, match="longer than 10"):
        parse_send(msgspec.json.encode({"to": "1", "from": "1", "body": "x" * 11}), 10)


def test_request_goes_through_the_rules_as_the_clients_extension() -> None:
    sent = parse({"to": "2065550199", "from": "12065550100", "body": "Your table is ready"})
    request = to_outbound(sent, CLIENT, bridge_settings(), "mdr2-x")
    assert (request.tenant, request.client_message_id, request.from_extension) == ("acme", "mdr2-x", "fusion")
    assert (request.to, request.from_did) == (MOBILE, DID_MAIN)


@pytest.mark.parametrize(("doc", "status", "detail"), [
    ({"to": "2065550199", "from": "+14255550100", "body": "x"}, 403, "'from' is not a messaging number"),
    ({"to": "2065550199", "from": DID_BILLING, "body": "x"}, 403, "may not send from that number"),
    ({"to": "12", "from": DID_MAIN, "body": "x"}, 422, "'to' is not a valid"),
    ({"to": "2065550199", "from": "abc", "body": "x"}, 422, "'from' is not a valid"),
    ({"to": "2065550199", "from": DID_MAIN, "body": "  "}, 422, "no text and no media"),
    ({"to": "2065550199", "from": DID_MAIN, "media_urls": ["http://x.test/a.png"]}, 422, "https"),
])
def test_refusals_name_the_field_and_never_echo_the_number(doc: Any, status: int, detail: str) -> None:
    with pytest.raises(RelayError) as info:
        to_outbound(parse(doc), CLIENT, bridge_settings(), "mdr2-x")
    assert info.value.status == status and detail in info.value.detail
    assert "2065550199" not in info.value.detail and "4255550100" not in info.value.detail


def test_an_extension_no_rule_names_is_403() -> None:
    stranger = RelayClient(tenant="acme", access_key="acme-other", secret_key=Secret(SECRET), extension="lobby")
    with pytest.raises(RelayError) as info:
        to_outbound(parse({"to": "2065550199", "from": DID_MAIN, "body": "x"}), stranger, bridge_settings(), "m")
    assert info.value.status == 403 and "lobby" in info.value.detail


@pytest.mark.parametrize("header", ["", "x" * 256, "tab\there"])
def test_bad_idempotency_keys_are_422(header: str) -> None:
    with pytest.raises(RelayError) as info:
        idempotency_key(header)
    assert info.value.status == 422


def test_error_doc_is_flowroutes_shape() -> None:
    (error,) = error_doc(403, "nope")["errors"]
    assert set(error) == {"id", "status", "title", "detail"}
    assert (error["status"], error["title"], error["detail"]) == (403, "Forbidden", "nope")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["to", "from", "body", "media_urls", "is_mms", "dlr_callback", "data", "attributes",
                         "type", "x"]), inner, max_size=6),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_hostile_documents_end_in_a_relay_error_or_a_request(doc: Any) -> None:
    try:
        to_outbound(parse(doc), CLIENT, bridge_settings(), "mdr2-x")
    except RelayError as exc:
        assert exc.status in (400, 403, 422)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_hostile_bytes_end_in_a_relay_error(raw: bytes) -> None:
    try:
        parse_send(raw, 5000)
    except RelayError as exc:
        assert exc.status in (400, 422)


@pytest.mark.parametrize("callback", [
    "http://127.0.0.1:8080/admin", "http://[::1]/x", "http://169.254.169.254/latest/meta-data",
    "http://[::ffff:10.0.0.7]/dlr", "http://10.1.2.3/dlr", "http://0.0.0.0/x",
])
def test_a_dlr_callback_at_a_private_or_reserved_address_is_422(callback: str) -> None:
    """SSRF: the bridge would POST there with every receipt. Refused when the send arrives,
    naming the field and the key that allows a PBX's own network, never echoing the address."""
    doc = {"to": "2065550199", "from": DID_MAIN, "body": "x", "dlr_callback": callback}
    with pytest.raises(RelayError) as info:
        to_outbound(parse(doc), CLIENT, bridge_settings(), "mdr2-x")
    assert info.value.status == 422 and "'dlr_callback'" in info.value.detail
    assert "dlr_callback_networks" in info.value.detail and callback.split("/")[2] not in info.value.detail


def test_a_dlr_callback_on_the_clients_allowed_network_or_a_public_name_is_accepted() -> None:
    lan = msgspec.structs.replace(CLIENT, dlr_callback_networks=["10.0.0.0/8"])
    for client, callback in ((lan, "http://10.1.2.3/dlr"), (CLIENT, "https://pbx.example.com/dlr")):
        doc = {"to": "2065550199", "from": DID_MAIN, "body": "x", "dlr_callback": callback}
        assert to_outbound(parse(doc), client, bridge_settings(), "mdr2-x").tenant == "acme"
