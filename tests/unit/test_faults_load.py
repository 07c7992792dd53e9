"""How `make faults` counts what reached the PBX (the run itself is `make faults`, not part of
the suite): a repeat of a delivered text is a duplicate, not a text out of order."""

from __future__ import annotations

from collections import Counter

from faults.load import out_of_order, readiness_note


def arrival(conversation: int, seq: int, extension: str = "101") -> dict[str, object]:
    """One text as the sandbox PBX records it (the fields `out_of_order` reads)."""
    return {"mdr_id": f"mdr1-c{conversation}-{seq}", "extension": extension, "from": f"1206555{conversation:04d}",
            "body": f"c{conversation} n{seq}"}


def test_a_text_arriving_after_a_later_text_of_its_conversation_is_out_of_order() -> None:
    assert out_of_order([arrival(0, 0), arrival(0, 2), arrival(0, 1), arrival(0, 3)]) == 1


def test_conversations_and_extensions_are_ordered_each_on_their_own() -> None:
    received = [arrival(0, 1), arrival(1, 0), arrival(0, 0, extension="102"), arrival(1, 1), arrival(0, 1, "102")]
    assert out_of_order(received) == 0


def test_a_repeat_of_a_delivered_text_is_not_counted_out_of_order() -> None:
    """n1 reaches the PBX again after n2 (a process died between the PBX's answer and its ack):
    dup@PBX counts that; its first arrival was in order."""
    assert out_of_order([arrival(0, 0), arrival(0, 1), arrival(0, 2), arrival(0, 1), arrival(0, 3)]) == 0


def test_a_first_arrival_out_of_order_still_counts_when_it_is_repeated() -> None:
    assert out_of_order([arrival(0, 0), arrival(0, 2), arrival(0, 1), arrival(0, 1)]) == 1


def test_the_readiness_note_says_how_many_polls_were_ready_and_what_the_others_got() -> None:
    assert readiness_note(Counter({"200": 358, "503": 2})) == "readiness: 358 of 360 polls ready (2 x 503)"
    assert readiness_note(Counter({"200": 4})) == "readiness: 4 of 4 polls ready"
