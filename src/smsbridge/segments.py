"""Message bodies as Flowroute counts them (flowroute-api.md §10), pure functions.

Flowroute speaks of ASCII, not GSM-7: an all-ASCII body fits 160 characters in one segment and
is split into segments of at most 140 beyond that; any other character makes the whole body
UCS-2, 70 UTF-16 code units per segment (an emoji takes two).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

ASCII_SINGLE = 160
ASCII_MULTI = 140
UCS2_SEGMENT = 70

# Smart punctuation that Flowroute is known to choke on, and what we send instead.
SMART_PUNCTUATION = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"',
    "\u2013": "-", "\u2014": "-", "\u2212": "-",
    "\u2026": "...", "\u00a0": " ",
})


class BodyInfo(NamedTuple):
    encoding: Literal["ascii", "ucs2"]
    units: int
    segments: int


def replace_smart_punctuation(body: str) -> str:
    return body.translate(SMART_PUNCTUATION)


def body_info(body: str) -> BodyInfo:
    """Encoding, length in that encoding's units, and the segment count Flowroute bills."""
    if body.isascii():
        units = len(body)
        segments = 1 if units <= ASCII_SINGLE else math.ceil(units / ASCII_MULTI)
        return BodyInfo("ascii", units, segments)
    units = len(body.encode("utf-16-le")) // 2
    return BodyInfo("ucs2", units, max(1, math.ceil(units / UCS2_SEGMENT)))
