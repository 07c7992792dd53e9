"""One builder for every configuration file a test, benchmark or demo writes.

`bridge_document` returns the configuration as a dict: one SMS configuration of tenant "acme" on
one DID, an inbound rule, an outbound rule for every extension, and one PBX target; secrets are
environment references (`Env`) whose values the caller puts in the process's environment.
`merge` applies a caller's differences (tables merge key by key; anything else replaces), and
`to_toml` writes the small subset of TOML the configuration uses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Document = dict[str, Any]


@dataclass(frozen=True)
class Env:
    """A secret reference: `{ env = "NAME" }`."""

    name: str


def secrets_env(prefix: str, *, access_key: str = "AK-test", secret_key: str = "SK-test",
                webhook_token: str = "test-token-0123456789abcdefghijkl",
                pbx_auth: str = "Bearer e2e") -> dict[str, str]:
    """The environment that `bridge_document(secrets=prefix)` refers to."""
    return {f"{prefix}_AK": access_key, f"{prefix}_SK": secret_key, f"{prefix}_TOKEN": webhook_token,
            f"{prefix}_PBX_AUTH": pbx_auth}


def bridge_document(*, amqp_url: str, prefix: str, ledger_url: str, port: int = 0, secrets: str = "E2E",
                    api_base: str = "http://127.0.0.1:9", pbx_url: str | None = "http://127.0.0.1:9/none",
                    pbx_exchange: str | None = None, account: str = "test", config_id: str = "main",
                    did: str = "+12065550100", extensions: tuple[str, ...] = ("101",)) -> Document:
    """A whole configuration; `pbx_exchange` makes the PBX target an AMQP one instead of HTTP."""
    target: Document = ({"kind": "amqp", "tenant": "acme", "exchange": pbx_exchange} if pbx_exchange else
                        {"kind": "http", "tenant": "acme", "url": pbx_url, "auth_value": Env(f"{secrets}_PBX_AUTH")})
    return {
        "drain_timeout_s": 10,
        "broker": {"urls": [amqp_url], "prefix": prefix},
        "receiver": {"port": port, "public_url": f"http://127.0.0.1:{port}"},
        "ledger": {"url": ledger_url},
        "flowroute": {"api_base": api_base, "timeout_s": 5},
        "logging": {"format": "json"},
        "observability": {"port": 0},
        "sms_configs": [{"id": config_id, "tenant": "acme", "account": account, "access_key": Env(f"{secrets}_AK"),
                         "secret_key": Env(f"{secrets}_SK"), "webhook_token": Env(f"{secrets}_TOKEN"),
                         "dids": [did]}],
        "inbound_rules": [{"config": config_id, "extensions": list(extensions)}],
        "outbound_rules": [{"config": config_id, "extensions": ["*"]}],
        "pbx_targets": [target],
    }


FAST_RETRY: Document = {"retry": {stage: {"max_attempts": 5, "base_delay_s": 0.2, "max_delay_s": 1.0}
                                  for stage in ("delivery", "dispatch")}}


def merge(base: Mapping[str, Any], *overrides: Mapping[str, Any]) -> Document:
    """`base` with each override applied in turn; a value of None removes the key."""
    merged = dict(base)
    for override in overrides:
        for key, value in override.items():
            if value is None:
                merged.pop(key, None)
            elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
                merged[key] = merge(merged[key], value)
            else:
                merged[key] = value
    return merged


def to_toml(document: Mapping[str, Any]) -> str:
    lines = _table_lines(document, ())
    return "\n".join(lines).lstrip("\n") + "\n"


def write(path: Path, document: Mapping[str, Any]) -> Path:
    path.write_text(to_toml(document))
    return path


def _table_lines(table: Mapping[str, Any], where: tuple[str, ...]) -> list[str]:
    lines = [f"{key} = {_value(value)}" for key, value in table.items() if not _is_table(value)]
    for key, value in table.items():
        if isinstance(value, Mapping):
            lines += ["", f"[{'.'.join((*where, key))}]", *_table_lines(value, (*where, key))]
        elif _is_table(value):
            for item in value:
                lines += ["", f"[[{'.'.join((*where, key))}]]", *_table_lines(item, (*where, key))]
    return lines


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping) or (isinstance(value, list) and bool(value)
                                          and all(isinstance(v, Mapping) for v in value))


def _value(value: Any) -> str:
    if isinstance(value, Env):
        return f"{{ env = {json.dumps(value.name)} }}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a TOML value")
