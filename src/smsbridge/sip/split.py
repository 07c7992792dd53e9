"""Split a text into numbered parts that each fit a byte budget, never inside a grapheme.

Asterisk copies a MESSAGE body into a 1,024-byte buffer, so a PBX target has a budget in UTF-8
bytes. A cut inside an emoji (a ZWJ family, a flag, a skin tone) or between a letter and its
combining mark shows as garbage on the phone, so parts are cut between extended grapheme clusters
(UAX #29, `regex`'s `\\X`), preferably after a space. Each part starts with "(i/n) "; the parts
without their prefixes concatenate to the original text.
"""

from __future__ import annotations

import regex

GRAPHEME = regex.compile(r"\X", regex.DOTALL)
MIN_BUDGET = 32  # room for "(99/99) " and some text


def prefix(index: int, count: int) -> str:
    return f"({index}/{count}) "


def split_text(text: str, budget: int) -> list[str]:
    """The text itself when it fits, else numbered parts of at most `budget` UTF-8 bytes each."""
    if budget < MIN_BUDGET:
        raise ValueError(f"a body budget below {MIN_BUDGET} bytes cannot hold a numbered part")
    if len(text.encode("utf-8")) <= budget:
        return [text]
    count = 2
    while True:  # the prefix's width depends on the number of parts: grow until it is stable
        room = budget - len(prefix(count, count).encode("utf-8"))
        chunks = pack(text, room)
        if len(str(len(chunks))) <= len(str(count)):
            return [prefix(i, len(chunks)) + chunk for i, chunk in enumerate(chunks, 1)]
        count = len(chunks)


def pack(text: str, room: int) -> list[str]:
    """Greedy: fill each chunk with whole graphemes, going back to the last space if there is one
    in the second half of the chunk (a word is not cut when it need not be)."""
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    last_space = -1
    for grapheme in _graphemes(text, room):
        width = len(grapheme.encode("utf-8"))
        if size + width > room and current:
            cut = last_space + 1 if last_space >= 0 and _bytes(current[: last_space + 1]) * 2 >= room else len(current)
            chunks.append("".join(current[:cut]))
            current = current[cut:]
            size = _bytes(current)
            last_space = _last_space(current)
        current.append(grapheme)
        size += width
        if grapheme.isspace():
            last_space = len(current) - 1
    if current:
        chunks.append("".join(current))
    return chunks


def _graphemes(text: str, room: int) -> list[str]:
    """Extended grapheme clusters; one longer than a whole part (pathological stacks of combining
    marks) is cut between code points, the only way left to deliver it."""
    clusters: list[str] = []
    for cluster in GRAPHEME.findall(text):
        if len(cluster.encode("utf-8")) <= room:
            clusters.append(cluster)
        else:
            clusters.extend(cluster)
    return clusters


def _bytes(graphemes: list[str]) -> int:
    return sum(len(g.encode("utf-8")) for g in graphemes)


def _last_space(graphemes: list[str]) -> int:
    return next((i for i in range(len(graphemes) - 1, -1, -1) if graphemes[i].isspace()), -1)
