"""Text that quotes input, made safe to log and to carry in an AMQP header: bounded and masked.

An AMQP header frame must fit in one frame (RabbitMQ's `frame_max`, 128 KiB by default); a
longer one makes the broker close the whole connection, for every role of the process. So
nothing input-sized goes into a header: reasons are clipped, and full phone numbers in them are
masked like the log lines' (`mask`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REASON_LIMIT = 300  # characters of a reason in a header or a status: a sentence, never the input
QUOTE_LIMIT = 40  # characters of one quoted input value inside a reason

# 7 digits or more not inside a word: a phone number, whatever its prefix, or several run together.
_NUMBER = re.compile(r"(?<![\w])\+?\d{7,}")
_DIGIT = re.compile(r"\d")


def mask(number: str) -> str:
    """Hide all but the last four digits, for logs that must not carry full numbers."""
    if len(number) <= 4:
        return "*" * len(number)
    return number[:2] + "*" * (len(number) - 6) + number[-4:]


def clip(text: str, limit: int = REASON_LIMIT) -> str:
    """`text` if short enough, else its start and how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def quote(value: str, limit: int = QUOTE_LIMIT) -> str:
    """`repr` of an input value for a reason, clipped: a reason names a value, never carries it."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}… ({len(value)} characters)"


def mask_numbers(text: str) -> str:
    """Every full phone number in free text masked to its last four digits."""
    # The digit test is a C scan; a generator over the characters cost ~15 µs per log line.
    return _NUMBER.sub(lambda m: mask(m.group(0)), text) if _DIGIT.search(text) else text


def header_text(text: str) -> str:
    """A reason as it may go into an AMQP header: clipped, numbers masked."""
    return mask_numbers(clip(text))


# The headers a message keeps when the bridge republishes it (retry, dead letter): only the
# bridge's own, each bounded. A header someone else set (a PBX on its request) is not carried:
# it could be nearly a frame long, and our own additions would then overflow the frame.
CARRIED_LIMIT = 256


def carried(headers: Mapping[str, Any] | None, keys: frozenset[str]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, value in (headers or {}).items():
        if key in keys and not (isinstance(value, str | bytes) and len(value) > CARRIED_LIMIT):
            kept[key] = value
    return kept
