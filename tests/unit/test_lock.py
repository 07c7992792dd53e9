"""The environment the suite runs in is exactly requirements/dev.lock, and the two locks agree."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", re.MULTILINE)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: str) -> dict[str, str]:
    return {canonical(name): version for name, version in PIN.findall((ROOT / "requirements" / lock).read_text())}


def test_installed_distributions_are_exactly_the_dev_lock() -> None:
    installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions()}
    installed.pop("smsbridge")
    assert installed == pins("dev.lock"), "run `make clean test`, or `make lock` after changing pyproject.toml"


def test_every_pin_carries_a_hash() -> None:
    for lock in ("dev.lock", "runtime.lock"):
        entries = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / "requirements" / lock).read_text())
        for entry in entries:
            if PIN.match(entry):
                assert "--hash=sha256:" in entry, f"{lock}: {entry.splitlines()[0]} has no hash"


def test_runtime_lock_is_the_dev_lock_without_the_dev_extra() -> None:
    runtime, dev = pins("runtime.lock"), pins("dev.lock")
    assert {name: dev.get(name) for name in runtime} == runtime
