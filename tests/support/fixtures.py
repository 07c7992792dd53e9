"""Loading the payload fixtures in tests/fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def payload(name: str) -> Any:
    return json.loads((FIXTURES / "flowroute" / f"{name}.json").read_text())


def raw_payload(name: str) -> bytes:
    return (FIXTURES / "flowroute" / f"{name}.json").read_bytes()
