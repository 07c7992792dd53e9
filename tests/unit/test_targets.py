"""A tenant's targets as an ordered list: first, fallbacks in order, `always` email copies."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from smsbridge.config import EmailTarget, HttpTarget, PbxTarget, Settings, SipTarget
from smsbridge.events import InboundMessage
from smsbridge.targets import adapter_key, after, copies, delivery_lease_s, first
from smsbridge.workers.inbound import deliveries_for

SIP = SipTarget(tenant="acme", host="127.0.0.1", domain="pbx.test")
HTTP = HttpTarget(tenant="acme", url="http://127.0.0.1:9/x")
MAIL = EmailTarget(tenant="acme", host="127.0.0.1", sender="t@b.test", default_recipient="d@b.test")
COPY = msgspec.structs.replace(MAIL, mode="always")
OTHER = HttpTarget(tenant="other", url="http://127.0.0.1:9/y")


def settings(*targets: PbxTarget) -> Settings:
    return Settings(pbx_targets=list(targets))


def test_one_target_is_all_there_is() -> None:
    s = settings(HTTP, OTHER)
    assert (first(s, "acme"), copies(s, "acme"), after(s, "acme", 0)) == (0, [], None)


def test_fallbacks_follow_in_file_order_and_copies_are_skipped() -> None:
    s = settings(OTHER, COPY, SIP, HTTP, MAIL)  # acme's list: copy, sip, http, email
    assert first(s, "acme") == 1 and copies(s, "acme") == [0]
    assert [after(s, "acme", i) for i in (1, 2, 3)] == [2, 3, None]
    assert after(s, "acme", 0) is None  # a failed copy hands over to nobody


def test_adapter_keys_keep_the_first_target_under_the_tenant() -> None:
    assert (adapter_key("acme", 0), adapter_key("acme", 2)) == ("acme", "acme#2")


def test_a_text_goes_to_the_first_target_and_to_each_copy_per_extension() -> None:
    message = InboundMessage(tenant="acme", config_id="main", mdr_id="mdr2-t", from_="+12065550199",
                             to="+12065550100", body="hi", occurred_at=datetime.now(UTC))
    found = deliveries_for(message, ("101", "102"), first=1, copies=(0,))
    assert [(d.target, d.extension) for d in found] == [(1, "101"), (1, "102"), (0, "101"), (0, "102")]
    assert [d.claim_key for d in found] == ["101#1", "102#1", "101", "102"]


def test_the_delivery_lease_outlasts_the_longest_attempt_of_any_target_email_included() -> None:
    """A claim whose lease ran out while its attempt still runs lets a second worker deliver the
    same text again: the lease is twice the longest attempt (plus 10 s). An email attempt is its
    pictures (one timeout for all) and the SMTP conversation (two), so 3 × its `timeout_s`."""
    http = msgspec.structs.replace(HTTP, timeout_s=10.0)
    sip = msgspec.structs.replace(SIP, timeout_s=5.0)
    mail = msgspec.structs.replace(MAIL, timeout_s=30.0)
    publish = Settings().broker.publish_timeout_s
    assert delivery_lease_s(settings(http)) == 2 * max(10.0, publish) + 10
    assert delivery_lease_s(settings(http, sip)) == 2 * max(10.0, 2 * 5.0, publish) + 10
    assert delivery_lease_s(settings(http, sip, mail)) == 2 * 90.0 + 10
    assert delivery_lease_s(settings(mail)) == 2 * 90.0 + 10  # email alone: was 2 × publish timeout + 10
