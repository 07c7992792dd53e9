"""The results table: one row per figure, with its reference and the ratio between them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROWS: list[dict[str, Any]] = []

HEADER = (f"{'bench':<10} {'figure':<62} {'value':>10} {'unit':<5} {'reference':>10} {'ratio':>7}  "
          f"{'target':<16} verdict")


def value(rows: list[dict[str, Any]], bench: str, figure_start: str) -> float | None:
    """The value of the first row of `bench` whose figure starts with `figure_start`, if any."""
    found = [r for r in rows if r["bench"] == bench and str(r["figure"]).startswith(figure_start)]
    return float(found[0]["value"]) if found else None


def row(bench: str, figure: str, value: float, reference: float | None = None, *, unit: str = "",
        target: str = "", ok: bool | None = None) -> None:
    """Record and print one figure. `ok` is None when the figure has no target."""
    ratio = round(value / reference, 3) if reference else None
    ROWS.append({"bench": bench, "figure": figure, "value": round(value, 2), "unit": unit,
                 "reference": None if reference is None else round(reference, 2), "ratio": ratio,
                 "target": target, "ok": ok})
    ref = f"{reference:>10.2f}" if reference is not None else f"{'-':>10}"
    rat = f"{ratio:>7.3f}" if ratio is not None else f"{'-':>7}"
    verdict = "" if ok is None else ("ok" if ok else "MISSED")
    print(f"{bench:<10} {figure:<62} {value:>10.2f} {unit:<5} {ref} {rat}  {target:<16} {verdict}", flush=True)


@dataclass(frozen=True)
class Row:
    """A figure measured now and printed later (for benchmarks that run side by side)."""

    bench: str
    figure: str
    value: float
    reference: float | None = None
    unit: str = ""
    target: str = ""
    ok: bool | None = None

    def print(self) -> None:
        row(self.bench, self.figure, self.value, self.reference, unit=self.unit, target=self.target, ok=self.ok)
