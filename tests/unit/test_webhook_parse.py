"""Every payload of flowroute-api.md §5–§6 parses to the right normalised form."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from smsbridge.events import MediaProblem
from smsbridge.flowroute.webhook import ParsedMessage, ParsedReceipt, UnknownShape, parse_timestamp, parse_webhook
from smsbridge.limits import FieldRejected, check_webhook
from tests.support.fixtures import payload


def test_jsonapi_sms_2024_capture() -> None:
    parsed = parse_webhook(payload("sms_jsonapi_2024"))
    assert isinstance(parsed, ParsedMessage)
    assert parsed.mdr_id == "mdr2-4e5435f325d9431f9e64118b20895b08"
    assert (parsed.from_, parsed.to) == ("12065550199", "12065550100")
    assert parsed.body == "Greetings on Friday evening!"
    assert parsed.is_mms is False and parsed.media == ()
    assert parsed.encoding == 0
    assert parsed.timestamp == datetime(2024, 10, 19, 1, 21, 21, 980000, tzinfo=UTC)
    assert parsed.shape == "jsonapi"


def test_mms_with_null_body_and_mismatched_media_ids_keeps_the_attachment() -> None:
    # The 2022 capture's relationship id ("xxxxxxx-1") does not match its included id
    # ("xxxxxxxx-1"): the attachment must still reach the PBX.
    parsed = parse_webhook(payload("mms_2022_null_body"))
    assert isinstance(parsed, ParsedMessage)
    assert parsed.body == ""
    assert parsed.is_mms is True
    assert [m.url for m in parsed.media] == ["https://s3.us-west-2.amazonaws.com/flowroute-messaging-media/xxxxxxxxx"]
    assert parsed.media[0].mime_type == "image/png" and parsed.media[0].size == 14832
    assert parsed.to == "2065550100"  # ten digits in this capture; intake normalises it


def test_mms_2017_presigned_media() -> None:
    parsed = parse_webhook(payload("mms_2017"))
    assert isinstance(parsed, ParsedMessage)
    assert parsed.body == "again message"
    (media,) = parsed.media
    assert media.file_name == "IMG_6692.jpg" and media.size == 662315
    assert media.media_id == "939305103458545664-IMG_6692.jpg"
    assert "Expires=" in media.url


def test_mms_media_follow_relationship_order_not_included_order() -> None:
    parsed = parse_webhook(payload("mms_three_media"))
    assert isinstance(parsed, ParsedMessage)
    assert [m.media_id for m in parsed.media] == ["m-2", "m-1", "m-3"]
    assert [m.size for m in parsed.media] == [2000, 1000, 3000]  # "1000" as a string too
    assert parsed.is_mms is True  # is_mms arrived as the string "true"


@pytest.mark.parametrize(
    ("name", "mdr_id", "to"),
    [
        ("legacy_flat_mdr1", "mdr1-febb118b9b034338adfc662a8c02fd88", "12065550100"),
        ("legacy_flat_mdr2_2024", "mdr2-6f8ec400c40f460d8b10b96d2de2abcd", "12065550101"),
    ],
)
def test_legacy_flat_inbound(name: str, mdr_id: str, to: str) -> None:
    parsed = parse_webhook(payload(name))
    assert isinstance(parsed, ParsedMessage)
    assert (parsed.mdr_id, parsed.to, parsed.shape) == (mdr_id, to, "legacy")
    assert parsed.timestamp is None and parsed.media == ()


@pytest.mark.parametrize(
    ("name", "level", "status", "code"),
    [
        ("dlr_jsonapi_level2", 2, "message buffered", 1003),
        ("dlr_jsonapi_level1_null_code", 1, "smsc submit", None),
        ("dlr_jsonapi_delivered_string_code", 2, "delivered", 1004),
        ("dlr_flat_level1", None, "smsc submit", None),
        ("dlr_flat_level2", None, "message buffered", 1003),
        ("dlr_jsonapi_opted_out", 2, "delivery failed", 1110),
    ],
)
def test_delivery_receipts_in_every_shape(name: str, level: int | None, status: str, code: int | None) -> None:
    parsed = parse_webhook(payload(name))
    assert isinstance(parsed, ParsedReceipt)
    assert (parsed.level, parsed.status, parsed.status_code) == (level, status, code)
    assert parsed.mdr_id.startswith("mdr2-")


@pytest.mark.parametrize("shape", ["jsonapi", "legacy", "dlr"])
def test_numbers_as_json_numbers_are_read_as_text(shape: str) -> None:
    """A real 2022 inbound SMS carries `"to": 16085612999`: every shape takes a number or a string."""
    docs = {
        "jsonapi": {"data": {"type": "message", "id": "mdr2-a",
                             "attributes": {"to": 16085612999, "from": 12065550199}}},
        "legacy": {"id": "mdr2-a", "to": 16085612999, "from": 12065550199, "body": "hi"},
        "dlr": {"type": "delivery_receipt", "id": "mdr2-a", "attributes": {"to": 16085612999, "from": 12065550199}},
    }
    parsed = parse_webhook(docs[shape])
    assert (parsed.to, parsed.from_) == ("16085612999", "12065550199")


def test_flat_dlr_keeps_to_and_from() -> None:
    parsed = parse_webhook(payload("dlr_flat_level2"))
    assert isinstance(parsed, ParsedReceipt)
    assert (parsed.to, parsed.from_) == ("17865550111", "14585550122")


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ([1, 2], "expected a JSON object"),
        ("text", "expected a JSON object"),
        ({}, "neither a Flowroute message nor a delivery receipt"),
        ({"hello": "world"}, "top-level keys: hello"),
        ({"data": {"type": "number", "id": "x"}}, "data.type is 'number'"),
        ({"data": {"type": "message", "id": "mdr2-x", "attributes": {"from": "1"}}}, "missing required field `to`"),
        ({"data": {"type": "message", "attributes": {"to": "1", "from": "2"}}}, "missing required field `id`"),
        ({"data": {"type": "message", "id": "m", "attributes": {"to": "1", "from": "2", "direction": "outbound"}}},
         "direction is 'outbound'"),
        ({"data": {"type": "message", "id": "m", "attributes": {"to": ["12065550100"], "from": "2"}}},
         "Expected `int | str`, got `array` - at `$.data.attributes.to`"),
        ({"data": {"type": "delivery_receipt", "attributes": {}}}, "missing required field `id`"),
        ({"to": "1", "from": "2", "id": 5}, "legacy message"),
    ],
)
def test_malformed_payloads_say_what_is_wrong(doc: object, fragment: str) -> None:
    with pytest.raises(UnknownShape) as info:
        parse_webhook(doc)
    assert fragment in info.value.reason


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [({"url": None}, "Flowroute gave no URL for it"), ({}, "Flowroute gave no URL for it"),
     ({"url": ""}, "Flowroute gave no URL for it"), ({"url": "ftp://x/1.png"}, "its URL is not http(s)"),
     ({"url": ["https://x"]}, "unreadable attributes: Expected `str | null`, got `array` - at `$.url`")],
)
def test_an_attachment_without_a_usable_url_costs_neither_the_text_nor_the_others(
        attributes: dict[str, object], reason: str) -> None:
    doc = payload("mms_three_media")
    bad = next(item for item in doc["included"] if item["id"] == "m-1")
    bad["attributes"] = {"file_name": "one.jpg", **attributes}
    parsed = parse_webhook(doc)
    assert isinstance(parsed, ParsedMessage)
    assert parsed.body == "photos from the site visit" and parsed.is_mms
    assert [m.media_id for m in parsed.media] == ["m-2", "m-3"]
    assert parsed.media_problems == (MediaProblem(media_id="m-1", file_name="one.jpg", reason=reason),)


def test_an_unusable_attachment_is_named_with_its_type_and_a_hostile_name_is_refused_naming_the_field() -> None:
    doc = payload("mms_three_media")
    bad = next(item for item in doc["included"] if item["id"] == "m-1")
    bad["attributes"] = {"file_name": "one.jpg", "mime_type": "image/png", "url": None}
    parsed = parse_webhook(doc)
    assert isinstance(parsed, ParsedMessage)
    assert parsed.media_problems[0].mime_type == "image/png"
    bad["attributes"] = {"file_name": "x" * 5000, "url": None}
    with pytest.raises(FieldRejected) as rejected:
        check_webhook(parse_webhook(doc))
    assert rejected.value.field == "included.attributes.file_name"


def test_an_mms_whose_only_attachment_is_unusable_is_still_an_mms() -> None:
    doc = payload("mms_2022_null_body")
    doc["included"][0]["attributes"]["url"] = None
    parsed = parse_webhook(doc)
    assert isinstance(parsed, ParsedMessage)
    assert parsed.is_mms and parsed.media == () and len(parsed.media_problems) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-10-19T01:21:21.980000Z", datetime(2024, 10, 19, 1, 21, 21, 980000, tzinfo=UTC)),
        ("2022-09-03T20:40:11.00Z", datetime(2022, 9, 3, 20, 40, 11, tzinfo=UTC)),
        ("2017-12-21T16:44:35+00:00", datetime(2017, 12, 21, 16, 44, 35, tzinfo=UTC)),
        ("2017-12-21T16:44:34.93Z", datetime(2017, 12, 21, 16, 44, 34, 930000, tzinfo=UTC)),
        ("2017-12-21T16:44:34", datetime(2017, 12, 21, 16, 44, 34, tzinfo=UTC)),
        ("yesterday", None),
        ("", None),
        (None, None),
    ],
)
def test_timestamps_of_any_precision(text: str | None, expected: datetime | None) -> None:
    assert parse_timestamp(text) == expected
