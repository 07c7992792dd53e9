"""Every Flowroute send answer of flowroute-api.md §3 maps to the right outcome."""

from __future__ import annotations

import pytest

from smsbridge.flowroute.outcome import Accepted, Fail, RateLimited, Retry, classify_send, error_detail


def errors(status: int, detail: object = "", title: str | None = None, **extra: object) -> dict[str, object]:
    error: dict[str, object] = {"status": status, "detail": detail, **extra}
    if title is not None:
        error["title"] = title
    return {"errors": [error]}


def test_202_is_accepted_with_the_mdr_id_and_segments() -> None:
    body = {"data": {"id": "mdr2-39cadeace66e11e7aff806cd7f24ba2d", "type": "message",
                     "price_details": {"segment_count": 2}}}
    assert classify_send(202, body, {}) == Accepted("mdr2-39cadeace66e11e7aff806cd7f24ba2d", 2)


def test_price_details_under_attributes_is_read_too() -> None:
    # open question §13.9: data.price_details or data.attributes.price_details
    body = {"data": {"id": "mdr2-x", "attributes": {"price_details": {"segment_count": 3}}}}
    assert classify_send(202, body, {}) == Accepted("mdr2-x", 3)


def test_legacy_200_is_accepted() -> None:
    assert classify_send(200, {"data": {"id": "mdr1-abc"}}, {}) == Accepted("mdr1-abc", None)


def test_429_honours_retry_after_else_waits_at_least_a_second() -> None:
    assert classify_send(429, errors(429), {"Retry-After": "3"}) == RateLimited(3.0)
    limited = classify_send(429, errors(429), {}, rand=lambda: 0.25)
    assert limited == RateLimited(1.25)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_retried(status: int) -> None:
    outcome = classify_send(status, errors(status, "try again later", "Service Unavailable"), {})
    assert isinstance(outcome, Retry) and f"Flowroute answered {status}" in outcome.reason


@pytest.mark.parametrize("status", [400, 403, 422])
@pytest.mark.parametrize(
    "body",
    [errors(400, "Message not sent", "1110"), errors(400, "Message not sent", "Error 1110: User Opted Out"),
     errors(400, "1110 User Opted Out"), errors(400, {"code": 1110, "message": "opted out"}),
     errors(400, "", "Bad Request", code=1110), errors(400, "", code="1110"), errors(400, "", error_code=1110),
     {"errors": [{"status": 400, "title": "Bad Request"}, {"status": 400, "title": "1110"}]}],
)
def test_1110_in_any_field_of_any_error_is_the_stop_opt_out(status: int, body: dict[str, object]) -> None:
    """The docs say opt-out is "400 with error code 1110" without naming the field, and the
    documented error object (id, status, title, detail) has no `code`: 1110 counts wherever it is,
    whatever the status (a 403 saying 1110 is not a registration problem)."""
    outcome = classify_send(status, body, {}, from_number="+12065550100")
    assert outcome == Fail("opted_out",
                           "recipient opted out (STOP): they must text UNSTOP before you can text them again")


@pytest.mark.parametrize(
    "body",
    [errors(400, "11100 characters is too long"), errors(400, "call 2061110"),
     {"errors": [{"id": "7fc8c70a-1110-430c-b383-b89df84f8083", "status": 400, "title": "Bad Request"}]}],
)
def test_1110_inside_another_number_or_the_request_id_is_not_an_opt_out(body: dict[str, object]) -> None:
    """`id` is a random request id: a `1110` group in it is chance, not Flowroute's opt-out code."""
    outcome = classify_send(400, body, {})
    assert isinstance(outcome, Fail) and outcome.code == "flowroute_400"


def test_plain_400_keeps_flowroutes_words() -> None:
    outcome = classify_send(400, errors(400, "Invalid 'to'", "Bad Request"), {})
    assert outcome == Fail("flowroute_400", "Flowroute refused the message (400): Bad Request: Invalid 'to'")


def test_401_tells_the_operator_to_check_credentials() -> None:
    outcome = classify_send(401, errors(401, "Authentication failed.", "Unauthorized"), {})
    assert isinstance(outcome, Fail) and outcome.code == "credentials" and "Access Key / Secret Key" in outcome.reason


def test_403_mentions_the_number_and_10dlc_registration() -> None:
    outcome = classify_send(403, errors(403, "", "ActionNotAuthorizedError"), {}, from_number="+12065550100")
    assert isinstance(outcome, Fail) and outcome.code == "not_permitted"
    assert "+12065550100" in outcome.reason and "10DLC" in outcome.reason


def test_422_carries_flowroutes_detail() -> None:
    detail = 'Error fetching media: File at "" is over 767840 byte limit.'
    outcome = classify_send(422, errors(422, detail), {})
    assert outcome == Fail("invalid", f"Flowroute could not accept the message (422): {detail}")


def test_error_detail_tolerates_missing_title_object_detail_and_garbage() -> None:
    assert error_detail(errors(404, "Could not find that resource on your account.")) == \
        "Could not find that resource on your account."
    assert error_detail(errors(422, {"media_urls": ["bad"]})) == '{"media_urls":["bad"]}'
    assert error_detail(None) == "no detail given"
    assert error_detail({"errors": "nope"}) == "no detail given"
