from __future__ import annotations

import pytest

from smsbridge.events import DeliveryReceipt, InboundMessage
from smsbridge.flowroute.webhook import parse_webhook
from smsbridge.intake import Unroutable, to_event
from tests.support.fixtures import payload
from tests.support.settings import sms_config


def test_inbound_numbers_become_e164_and_tenant_is_attached() -> None:
    event = to_event(parse_webhook(payload("sms_jsonapi_2024")), sms_config())
    assert isinstance(event, InboundMessage)
    assert (event.from_, event.to) == ("+12065550199", "+12065550100")
    assert (event.tenant, event.config_id) == ("acme", "main")
    assert event.event_id and event.version == 1


def test_ten_digit_did_is_recognised() -> None:
    event = to_event(parse_webhook(payload("mms_2022_null_body")), sms_config())
    assert isinstance(event, InboundMessage) and event.to == "+12065550100"


def test_a_did_the_configuration_does_not_own_is_unroutable() -> None:
    doc = payload("sms_jsonapi_2024")
    doc["data"]["attributes"]["to"] = "13125550100"
    with pytest.raises(Unroutable) as info:
        to_event(parse_webhook(doc), sms_config())
    assert info.value.code == "unknown_did"
    assert "+13125550100 is not a DID of SMS configuration 'main'" in info.value.reason


def test_a_to_that_is_not_a_number_is_unroutable() -> None:
    doc = payload("legacy_flat_mdr1")
    doc["to"] = "not-a-number"
    with pytest.raises(Unroutable) as info:
        to_event(parse_webhook(doc), sms_config())
    assert info.value.code == "bad_did"


def test_short_code_sender_is_kept_not_refused() -> None:
    doc = payload("legacy_flat_mdr1")
    doc["from"] = "72345"
    event = to_event(parse_webhook(doc), sms_config())
    assert isinstance(event, InboundMessage) and event.from_ == "72345"


def test_dlr_carries_the_client_id_from_the_callback_url() -> None:
    event = to_event(parse_webhook(payload("dlr_flat_level2")), sms_config(), client_message_id="pbx-42")
    assert isinstance(event, DeliveryReceipt)
    assert event.client_message_id == "pbx-42"
    assert event.to == "+17865550111"
