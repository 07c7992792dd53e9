"""Hostile inputs, for the property tests and the fuzz runs: what a careless or malicious client
can send. Deterministic from a seed, so a failure can be replayed (`make fuzz` prints the seed)."""

from __future__ import annotations

import copy
import functools
import gzip
import json
import random
from collections.abc import Iterator
from typing import Any

from tests.support.fixtures import payload

NUMBERS = ["12065550199", "+14255550123", "2065550177"]  # full numbers a log must never show
BODY_MARK = "PRIVATE-BODY-7d1f"  # a body a log must never show

_TEMPLATES = ["sms_jsonapi_2024", "legacy_flat_mdr1", "mms_three_media", "dlr_jsonapi_level2", "dlr_flat_level1"]
_ODD_STRINGS = ["", " ", "\x00", "a\x00b", "\r\nX-Evil: 1", "²", "٣", "--5", "\ud7ff", "é" * 40, "\u202e",
                "9" * 5000, "+1" + "2" * 40, "m" * 81, "\t", "null", "{}", "[]", "' OR 1=1 --", "%00", "\\u0000"]
_ODD_VALUES: list[Any] = [None, True, False, 0, -1, 2**31, -(2**31) - 1, 2**63, 1.5, float("1e308"), [], {},
                          [[[]]], {"a": {"b": {}}}]


def _odd(rng: random.Random) -> Any:
    roll = rng.random()
    if roll < 0.45:
        return rng.choice(_ODD_STRINGS)
    if roll < 0.8:
        return copy.deepcopy(rng.choice(_ODD_VALUES))  # a shared list mutated later would loop
    return "x" * rng.choice([100, 10_000, 60_000]) if rng.random() < 0.7 else rng.choice(NUMBERS) * 3000


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield prefix + (key,)
            yield from _paths(value, prefix + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield prefix + (i,)
            yield from _paths(value, prefix + (i,))


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for step in path[:-1]:
        doc = doc[step]
    doc[path[-1]] = value


def mutated_webhook(rng: random.Random) -> dict[str, Any]:
    """A real Flowroute payload with one to three fields replaced by something odd."""
    doc = payload(rng.choice(_TEMPLATES))
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(list(_paths(doc)))
        _set(doc, path, _odd(rng))
    if "data" in doc and isinstance(doc["data"], dict) and isinstance(doc["data"].get("attributes"), dict):
        attributes = doc["data"]["attributes"]
        if isinstance(attributes.get("body"), str):
            attributes["body"] = f"{BODY_MARK} {rng.choice(NUMBERS)}"
    return doc


def _json_bytes(doc: Any) -> bytes:
    return json.dumps(doc).encode()  # ASCII: every odd character as a \u escape, as a client would


@functools.cache
def _bomb() -> bytes:
    return gzip.compress(b'{"x": "' + b"0" * 5_000_000 + b'"}')


def webhook_body(rng: random.Random) -> tuple[bytes, dict[str, str]]:
    """One hostile webhook: (body, extra request headers)."""
    kind = rng.randrange(10)
    headers: dict[str, str] = {"Content-Type": rng.choice(["application/json", "text/plain",
                                                           "application/x-www-form-urlencoded", "", "image/png"])}
    if kind <= 3:
        body = _json_bytes(mutated_webhook(rng))
    elif kind == 4:  # truncated
        whole = _json_bytes(mutated_webhook(rng))
        body = whole[: rng.randrange(len(whole))]
    elif kind == 5:  # nested
        depth = rng.choice([50, 500, 5000, 50_000])
        body = b'{"data": ' + b"[" * depth + b"]" * depth + b"}"
    elif kind == 6:  # invalid UTF-8 / NUL bytes / random bytes
        body = rng.choice([b'{"to": "\xff\xfe", "from": "1", "id": "x"}', b"\x00" * 100,
                           bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))])
    elif kind == 7:  # huge
        body = b'{"data": {"type": "message", "id": "' + b"m" * rng.choice([1000, 60_000]) + b'"}}'
    elif kind == 8:  # compressed bomb: small on the wire, huge if inflated
        body = _bomb()
        headers["Content-Encoding"] = "gzip"
    else:  # wrong types at the top
        body = _json_bytes(rng.choice([[], "text", 12, None, {"data": []}, {"data": {"type": None}}]))
    return body, headers


def outbound_body(rng: random.Random, tenant: str = "acme") -> bytes:
    """One hostile outbound request as a PBX could publish it with its own, allowed key."""
    base: dict[str, Any] = {"kind": "outbound_request", "tenant": tenant, "client_message_id": f"fz-{rng.random()}",
                            "from_extension": "101", "to": "+12065550199", "body": f"{BODY_MARK} hello"}
    kind = rng.randrange(8)
    if kind <= 3:
        for _ in range(rng.randint(1, 3)):
            base[rng.choice(["to", "body", "from_did", "config_id", "from_extension", "client_message_id",
                             "media_urls", "tenant", "kind", "version", "requested_at", "unknown"])] = _odd(rng)
        return _json_bytes(base)
    if kind == 4:
        whole = _json_bytes(base)
        return whole[: rng.randrange(len(whole))]
    if kind == 5:
        depth = rng.choice([50, 5000])
        return b'{"kind": "outbound_request", "media_urls": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == 6:
        return rng.choice([b"\xff\xfe\x00", b"", b"null", bytes(rng.randrange(256) for _ in range(64))])
    base["to"] = "1" * rng.choice([1000, 100_000])
    return _json_bytes(base)
