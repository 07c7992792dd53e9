"""The log audit: every line JSON, and none holding a secret, a full phone number or a body."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def audit(lines: Iterable[str], *, secrets: Iterable[str], numbers: Iterable[str], bodies: Iterable[str]) -> list[str]:
    """What is wrong with these log lines, one sentence per problem (empty: nothing). `numbers`
    are given as their last ten digits, so every form of a number (`+1…`, `1…`, bare) is caught."""
    needles = [("a secret", s) for s in secrets] + [("a full number", n) for n in numbers] + \
        [("a body", b) for b in bodies]
    problems = []
    for n, line in enumerate(lines, 1):
        try:
            json.loads(line)
        except ValueError:
            problems.append(f"line {n} is not JSON: {line[:160]!r}")
        for what, needle in needles:
            if needle in line:
                problems.append(f"line {n} holds {what} ({needle[:4]}…): {line[:160]!r}")
    return problems


def read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
