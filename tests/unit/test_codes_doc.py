"""docs/flowroute-codes.md is generated from the code's own tables and is up to date."""

from __future__ import annotations

from pathlib import Path

from smsbridge.flowroute import codes_doc
from smsbridge.flowroute.dlr import CODES

ROOT = Path(__file__).resolve().parents[2]


def test_docs_flowroute_codes_page_is_up_to_date() -> None:
    page = (ROOT / "docs" / "flowroute-codes.md").read_text()
    assert page == codes_doc.render(), "run: python -m smsbridge.flowroute.codes_doc > docs/flowroute-codes.md"


def test_the_page_has_a_row_for_every_code_and_every_error_status() -> None:
    page = codes_doc.render()
    for code in CODES:
        assert f"\n| {code} | {CODES[code].label} | `" in page
    for status in (400, 401, 403, 404, 405, 415, 422, 429, 500, 503):
        assert f"\n| {status} " in page
    assert "| `failed` | `opted_out` | recipient opted out (STOP)" in page
