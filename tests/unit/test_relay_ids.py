"""The relay API's signed ids (`relay_ids.py`) and the row the outbound stage records from a
request's relay origin (`relay_origin.py`): pure functions over plain values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from smsbridge.events import OutboundRequest, RelayOrigin, outbound_stage_decoder
from smsbridge.ledger import RelaySend
from smsbridge.relay_ids import EPOCH, issued, issued_at, new_id
from smsbridge.relay_origin import relay_row
from smsbridge.secret import Secret
from tests.support.relay import FREEPBX, GLOBEX, RELAY_ID_KEY, relay_settings

KEY = Secret(RELAY_ID_KEY)
KEYS = (KEY,)
OLD_KEY = Secret("the-key-before-the-rotation-0123456789")
ACCEPTED = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def test_an_id_is_shaped_like_flowroutes_and_proves_itself_for_its_tenant_only() -> None:
    ids = {new_id(KEY, "acme") for _ in range(1000)}
    assert len(ids) == 1000
    for message_id in ids:
        assert message_id.startswith("mdr2-") and len(message_id) == 37 and int(message_id[5:], 16) >= 0
        assert issued(KEYS, "acme", message_id)
        assert not issued(KEYS, "globex", message_id)
        assert not issued((Secret("another-key-of-at-least-32-characters"),), "acme", message_id)
        assert not issued((), "acme", message_id)


def flip(message_id: str, at: int) -> str:
    digit = message_id[at]
    return message_id[:at] + ("0" if digit != "0" else "1") + message_id[at + 1:]


@pytest.mark.parametrize("at", [5, 9, 10, 25, 26, 36])  # the hour, the random part, and the tag
def test_an_id_changed_in_any_digit_is_not_ours(at: int) -> None:
    message_id = new_id(KEY, "acme")
    assert not issued(KEYS, "acme", flip(message_id, at))


@pytest.mark.parametrize("made_up", [
    "", "mdr2-", "mdr2-" + "0" * 32, "mdr2-" + "f" * 32, "x" * 100_000, "mdr2-" + "a" * 33,
    "mdr1-" + "0" * 32, "MDR2-" + "0" * 32, "mdr2-" + "G" * 32, "mdr2-" + "0" * 31 + "\n",
])
def test_made_up_ids_are_not_ours(made_up: str) -> None:
    assert not issued(KEYS, "acme", made_up)
    assert not issued(KEYS, "acme", made_up.upper())


def test_an_id_says_the_hour_it_was_issued_in_and_cannot_be_made_younger() -> None:
    long_ago = datetime(2026, 11, 28, 17, 42, 9, tzinfo=UTC)
    message_id = new_id(KEY, "acme", now=long_ago)
    assert issued_at(KEYS, "acme", message_id) == datetime(2026, 11, 28, 17, tzinfo=UTC)
    hours = int(message_id[5:10], 16) + 60  # the same id, two and a half days later
    assert issued_at(KEYS, "acme", f"{message_id[:5]}{hours:05x}{message_id[10:]}") is None
    assert issued_at(KEYS, "acme", new_id(KEY, "acme", now=EPOCH)) == EPOCH
    now = datetime.now(UTC)
    assert timedelta(0) <= now - (issued_at(KEYS, "acme", new_id(KEY, "acme")) or EPOCH) < timedelta(hours=1)


def test_after_a_rotation_ids_signed_with_a_previous_key_are_still_ours() -> None:
    before = new_id(OLD_KEY, "acme")
    assert issued((KEY, OLD_KEY), "acme", before) and issued((OLD_KEY,), "acme", before)
    assert not issued(KEYS, "acme", before) and not issued((KEY, OLD_KEY), "globex", before)


def test_without_a_key_an_id_is_128_random_bits_and_proves_nothing() -> None:
    message_id = new_id(None, "acme")
    assert message_id.startswith("mdr2-") and len(message_id) == 37
    assert not issued((), "acme", message_id)


def request(tenant: str, message_id: str, access_key: str | None, dlr_callback: str | None = None
            ) -> OutboundRequest:
    origin = (RelayOrigin(access_key=access_key, dlr_callback=dlr_callback, accepted_at=ACCEPTED)
              if access_key is not None else None)
    return OutboundRequest(tenant=tenant, client_message_id=message_id, from_extension="freepbx",
                           to="+12065550199", body="hi", relay=origin)


def test_the_outbound_stage_records_a_signed_send_as_queued_with_its_callback() -> None:
    settings = relay_settings("p")
    message_id = new_id(KEY, "acme")
    row = relay_row(request("acme", message_id, FREEPBX[0], "https://pbx.example/dlr"), settings)
    assert isinstance(row, RelaySend)
    assert (row.bridge_id, row.tenant, row.access_key, row.state) == (message_id, "acme", FREEPBX[0], "queued")
    assert (row.dlr_callback, row.created_at, row.idempotency_key) == ("https://pbx.example/dlr", ACCEPTED, None)


def test_a_relay_origin_the_bridge_did_not_set_records_nothing() -> None:
    settings = relay_settings("p")
    ours, theirs = new_id(KEY, "acme"), new_id(KEY, "globex")
    assert relay_row(request("acme", ours, None), settings) is None  # a PBX's own request
    assert relay_row(request("acme", "pbx-chosen-id", FREEPBX[0]), settings) == "not_signed"
    assert relay_row(request("acme", theirs, FREEPBX[0]), settings) == "not_signed"  # signed for globex
    assert relay_row(request("acme", ours, GLOBEX[0]), settings) == "other_tenant"  # another tenant's client
    assert relay_row(request("acme", ours, "nobody-at-all"), settings) == "unknown_client"
    unkeyed = msgspec.structs.replace(settings, relay=msgspec.structs.replace(settings.relay, id_key=None))
    assert relay_row(request("acme", ours, FREEPBX[0]), unkeyed) == "no_key"


def test_a_worker_given_the_new_key_first_still_records_sends_signed_with_the_old_one() -> None:
    """A rotation: the outbound workers get the new key (and the old one as previous) before the
    receivers do, so a receiver still signing with the old key loses no row, and after the
    receivers switch, requests signed with the old key still on their way get theirs too."""
    settings = relay_settings("p")
    rotated = msgspec.structs.replace(settings, relay=msgspec.structs.replace(
        settings.relay, id_key=Secret("the-key-after-the-rotation-0123456789"), previous_id_keys=[KEY]))
    for message_id in (new_id(KEY, "acme"), new_id(rotated.relay.id_key, "acme")):
        row = relay_row(request("acme", message_id, FREEPBX[0]), rotated)
        assert isinstance(row, RelaySend) and row.bridge_id == message_id
    assert relay_row(request("acme", new_id(OLD_KEY, "acme"), FREEPBX[0]), rotated) == "not_signed"


def test_the_relay_origin_is_optional_on_the_wire() -> None:
    """An old message (no `relay`) decodes as before; a new one round-trips."""
    old = b'{"kind":"outbound_request","tenant":"acme","client_message_id":"c1","from_extension":"101","to":"+1"}'
    assert outbound_stage_decoder.decode(old).relay is None
    new = request("acme", new_id(KEY, "acme"), FREEPBX[0], "https://pbx.example/dlr")
    assert outbound_stage_decoder.decode(msgspec.json.encode(new)) == new
