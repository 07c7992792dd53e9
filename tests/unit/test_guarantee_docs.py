"""Every test the README and docs/operations.md name as backing a guarantee exists, so a renamed
or deleted test cannot leave a guarantee backed by nothing."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAMED = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")


def named_tests(doc: str) -> set[tuple[str, str]]:
    return set(NAMED.findall((ROOT / doc).read_text()))


def test_the_guarantees_section_names_a_test_on_every_row() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Guarantees", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| path")]
    assert len(rows) >= 6
    assert all(NAMED.search(row) for row in rows), [row[:60] for row in rows if not NAMED.search(row)]


def test_every_named_test_exists() -> None:
    named = named_tests("README.md") | named_tests("docs/operations.md")
    assert len(named) >= 15
    missing = [f"{path}::{name}" for path, name in sorted(named)
               if not (ROOT / path).exists()
               or not re.search(rf"^(async )?def {name}\(", (ROOT / path).read_text(), re.MULTILINE)]
    assert missing == []
