"""Crash recovery's question, "was it sent?", decided from Flowroute's list and the ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from smsbridge.flowroute.sent_lookup import AlreadySent, InDoubt, Lookup, NotSent, SentText, decide

STARTED = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return STARTED + timedelta(seconds=seconds)


def test_nothing_found_means_not_sent() -> None:
    assert decide(Lookup([]), set(), STARTED, []) == NotSent()


def test_the_one_text_sent_after_the_claim_is_ours() -> None:
    assert decide(Lookup([SentText("mdr2-mine", at(0.3))]), set(), STARTED, []) == AlreadySent("mdr2-mine")


def test_an_earlier_identical_text_the_ledger_holds_is_never_ours() -> None:
    # Issue 17 item 4: "OK" a minute ago (recorded for another request), and this "OK" in doubt.
    earlier = SentText("mdr2-earlier", at(-55))
    assert decide(Lookup([earlier]), {"mdr2-earlier"}, STARTED, []) == NotSent()
    mine = SentText("mdr2-mine", at(0.2))
    assert decide(Lookup([earlier, mine]), {"mdr2-earlier"}, STARTED, []) == AlreadySent("mdr2-mine")


def test_a_text_flowroute_created_before_the_claim_is_never_ours() -> None:
    # Not in the ledger (pruned, or sent from elsewhere), but older than this attempt.
    assert decide(Lookup([SentText("mdr2-old", at(-50))]), set(), STARTED, []) == NotSent()


def test_an_mdr_held_by_another_request_is_never_taken() -> None:
    # Issue 17 item 9: the lookup returned another request's MDR; recording it broke the unique
    # mdr_id constraint and the handler looped on IntegrityError.
    assert decide(Lookup([SentText("mdr2-other", at(0.5))]), {"mdr2-other"}, STARTED, []) == NotSent()


def test_as_many_unrecorded_texts_as_requests_in_doubt_means_each_was_sent() -> None:
    found = Lookup([SentText("mdr2-a", at(-0.5)), SentText("mdr2-b", at(0.4))])
    assert decide(found, set(), STARTED, [at(-1)]) == AlreadySent("mdr2-a")


def test_fewer_texts_than_requests_in_doubt_cannot_be_decided() -> None:
    decision = decide(Lookup([SentText("mdr2-a", at(0.4))]), set(), STARTED, [at(-1)])
    assert isinstance(decision, InDoubt)


def test_more_texts_than_requests_in_doubt_cannot_be_decided() -> None:
    found = Lookup([SentText("mdr2-a", at(0.1)), SentText("mdr2-b", at(0.4))])
    assert isinstance(decide(found, set(), STARTED, []), InDoubt)


def test_a_list_too_long_to_read_cannot_be_decided() -> None:
    assert isinstance(decide(Lookup([], complete=False), set(), STARTED, []), InDoubt)


def test_a_text_without_a_readable_timestamp_counts_as_maybe_ours() -> None:
    assert decide(Lookup([SentText("mdr2-x", None)]), set(), STARTED, []) == AlreadySent("mdr2-x")
