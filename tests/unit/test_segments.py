from __future__ import annotations

import pytest

from smsbridge.segments import body_info, replace_smart_punctuation


@pytest.mark.parametrize(
    ("body", "encoding", "units", "segments"),
    [
        ("", "ascii", 0, 1),
        ("hello", "ascii", 5, 1),
        ("a" * 160, "ascii", 160, 1),
        ("a" * 161, "ascii", 161, 2),  # Flowroute: above 160, segments of at most 140
        ("a" * 280, "ascii", 280, 2),
        ("a" * 281, "ascii", 281, 3),
        ("café", "ucs2", 4, 1),  # é is not ASCII: the whole body goes UCS-2 (Flowroute says ASCII, not GSM-7)
        ("é" * 70, "ucs2", 70, 1),
        ("é" * 71, "ucs2", 71, 2),
        ("é" * 80, "ucs2", 80, 2),  # Flowroute's example: 80 UCS-2 characters, 2 charges
        ("👍", "ucs2", 2, 1),  # an emoji is two UTF-16 code units
        ("👍" * 36, "ucs2", 72, 2),
        ("£5 off", "ucs2", 6, 1),
    ],
)
def test_encoding_and_segments_by_flowroutes_rule(body: str, encoding: str, units: int, segments: int) -> None:
    assert tuple(body_info(body)) == (encoding, units, segments)


def test_smart_punctuation_becomes_ascii() -> None:
    text = "\u201cIt\u2019s ready\u201d \u2013 pick up at 5\u2026"
    assert replace_smart_punctuation(text) == "\"It's ready\" - pick up at 5..."
    assert body_info(replace_smart_punctuation(text)).encoding == "ascii"


def test_other_non_ascii_is_left_alone() -> None:
    assert replace_smart_punctuation("café 👍") == "café 👍"
