"""Inbound routing and keyword rules: pure functions over frozen Structs, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

import msgspec

from smsbridge.config import InboundRule
from smsbridge.errors import PermanentError
from smsbridge.events import InboundMessage, Keyword

KEYWORDS: frozenset[str] = frozenset({"STOP", "UNSTOP", "START", "HELP"})


class Route(msgspec.Struct, frozen=True):
    extensions: tuple[str, ...]
    rule: str  # which rule matched, for the log line


class NoRoute(PermanentError):
    def __init__(self, did: str, config_id: str) -> None:
        super().__init__(f"no inbound rule for DID {did} in configuration '{config_id}'", code="no_route")


def keyword_of(body: str) -> Keyword | None:
    """STOP, UNSTOP, START or HELP when the whole message is that one word, any case.

    Flowroute acts on STOP/UNSTOP only as a single-word message ("STOP PLEASE" does nothing),
    so we apply the same rule to every keyword.
    """
    word = body.strip().upper()
    return word if word in KEYWORDS else None  # type: ignore[return-value]


def _matches(rule: InboundRule, message: InboundMessage) -> bool:
    if rule.did not in ("*", message.to):
        return False
    return rule.from_pattern is None or fnmatchcase(message.from_, rule.from_pattern)


def route(message: InboundMessage, rules: Sequence[InboundRule], fallback: Sequence[str]) -> Route:
    """The extensions that get this text: the first matching rule, else the fallback.

    Raises `NoRoute` (permanent) when nothing matches and there is no fallback.
    """
    for index, rule in enumerate(rules):
        if rule.config == message.config_id and _matches(rule, message):
            return Route(tuple(dict.fromkeys(rule.extensions)), rule.name or f"rule #{index + 1}")
    if fallback:
        return Route(tuple(dict.fromkeys(fallback)), "fallback")
    raise NoRoute(message.to, message.config_id)
