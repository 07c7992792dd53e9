"""Render docs/contracts.md from the event Structs: `python -m smsbridge.contracts > docs/contracts.md`.

A test regenerates it and compares, so the page can never drift from the code.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import msgspec

from smsbridge.events import (
    SCHEMA_VERSION,
    DeliveryReceipt,
    DispatchRequest,
    InboundDelivery,
    InboundMessage,
    OutboundRequest,
    StatusEvent,
)

PUBLIC: list[tuple[type[msgspec.Struct], str]] = [
    (OutboundRequest, "PBX → bridge, published to the requests exchange with routing key `outbound.<tenant>`"),
    (InboundDelivery, "bridge → PBX, one per target extension (HTTP POST body, or AMQP message body)"),
    (StatusEvent, "bridge → PBX, on the status exchange with routing key `status.<tenant>.<state>`"),
    (InboundMessage, "internal: receiver → inbound stage"),
    (DeliveryReceipt, "internal: receiver → inbound stage"),
    (DispatchRequest, "internal: outbound stage → dispatch stage of the Flowroute account"),
]

INTRO = f"""# smsbridge event contracts (schema version {SCHEMA_VERSION})

Generated from `src/smsbridge/events.py` by `python -m smsbridge.contracts`; do not edit by hand.
Every event is JSON, tagged by `kind`, and carries `version`, `event_id` (unique per event; use it
to drop repeats), `occurred_at` (RFC 3339, UTC), `tenant` and `config_id` (the SMS configuration).
The outbound request is the PBX's own message: it needs only `kind`, `tenant`,
`client_message_id` (your id; statuses carry it back), `from_extension`, `to` and `body`
(or `media_urls`).

Evolution: fields are only ever added, with defaults, so a consumer must ignore fields it does
not know. A breaking change gets a new `version`. Samples of each event live in
`tests/fixtures/contracts/` and are checked against these definitions by the test suite.
"""


def _type(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in prop:
        return " or ".join(_type(p) for p in prop["anyOf"])
    if "enum" in prop:
        return " | ".join(json.dumps(v) for v in prop["enum"])
    if "const" in prop:
        return json.dumps(prop["const"])
    kind = prop.get("type", "any")
    if kind == "array":
        return f"array of {_type(prop.get('items', {}))}"
    return f"{kind} ({prop['format']})" if "format" in prop else str(kind)


def _table(name: str, schema: dict[str, Any]) -> list[str]:
    required = set(schema.get("required", []))
    # cleandoc: msgspec versions differ in whether they strip a docstring's indentation
    lines = [f"### {name}", "", inspect.cleandoc(schema.get("description", "")), "",
             "| field | type | required | default |", "|---|---|---|---|"]
    for field, prop in schema.get("properties", {}).items():
        default = json.dumps(prop["default"]) if "default" in prop else ""
        lines.append(f"| `{field}` | {_type(prop)} | {'yes' if field in required else 'no'} | {default} |")
    return lines + [""]


def render() -> str:
    _, components = msgspec.json.schema_components([t for t, _ in PUBLIC])
    out = [INTRO, "## Events", ""]
    for typ, where in PUBLIC:
        out.append(f"- **{typ.__name__}** (`kind` = `{typ.__struct_config__.tag}`): {where}")
    out += ["", "## Definitions", ""]
    for name in sorted(components):
        out += _table(name, components[name])
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
