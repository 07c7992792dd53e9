"""How many processes of each role serve N Flowroute accounts and M inbound texts/s, from the
per-process figures a `make bench` run measured (bench/results/latest.json); README,
"Deploying", says how to read it.

Usage: python bench/sizing.py [--results FILE] [--accounts N ...] [--inbound M ...] [--utilisation U]

The model, one Python process being one core at most:
- the receiver, the inbound stage and the dispatcher each have a per-process rate measured alone
  (`receiver` webhooks/s, `scaling` one inbound process, `dispatch` limits off);
- the delivery stage is not measured alone: one process running receiver, inbound and delivery
  (`inbound` at the maximum) spends the three roles' CPU per text in turn, so the delivery
  stage's time per text is that process's time per text less the other two's (with
  `--ledger postgresql` the stage figures are SQLite's, so PostgreSQL's extra cost is all
  charged to delivery: more delivery processes than needed, never fewer);
- the outbound stage is not measured alone either: it does what the inbound stage does (rules,
  one ledger write, one confirmed publish), so it is sized like the inbound stage;
- a dispatcher carries at most `dispatch rate x U / 5` accounts (each account sends at most
  5 SMS/s), and never more than the `accounts` benchmark showed one process serving in full
  (all 100 when it met its 0.95 target, else its aggregate rate / 5);
- every role is planned at `U` of a core (0.5 by default: room for bursts and for Flowroute's
  re-posts after an outage) and gets one process more than the load needs, so that losing one
  process or host loses no capacity.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from report import value

SMS_PER_ACCOUNT = 5.0  # Flowroute's limit per account


@dataclass(frozen=True)
class Figures:
    """Per-process rates, each measured with one process on a core of its own."""

    receiver: float  # webhooks/s
    inbound_stage: float  # texts/s through the inbound stage alone
    inbound_pipeline: float  # texts/s, webhook to PBX, one process with receiver + inbound + delivery
    dispatcher: float  # sends/s, limits off
    accounts_shown: int | None  # accounts one dispatcher process served at their limits (None: not measured)

    @property
    def delivery(self) -> float:
        """Texts/s of the delivery stage alone: the pipeline's time per text less the other two roles'."""
        per_text = 1 / self.inbound_pipeline
        left = per_text - 1 / self.receiver - 1 / self.inbound_stage
        # Less than a tenth of the pipeline's time left for delivery: the pipeline was not CPU-bound
        # (a tiny or starved run), and the difference is noise. No estimate beats a wrong one.
        if left < 0.1 * per_text:
            raise ValueError("the inbound pipeline's figure is not CPU-bound (it ran about as fast as its parts)")
        return 1 / left


@dataclass(frozen=True)
class Plan:
    accounts: int
    inbound_per_s: float
    processes: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.processes.values())


def processes_for(load: float, rate_per_process: float, utilisation: float) -> int:
    """Processes that carry `load` at `utilisation` of each one's rate, plus one spare."""
    return max(1, math.ceil(load / (rate_per_process * utilisation))) + 1


def accounts_per_dispatcher(figures: Figures, utilisation: float) -> int:
    by_cpu = int(figures.dispatcher * utilisation / SMS_PER_ACCOUNT)
    shown = by_cpu if figures.accounts_shown is None else figures.accounts_shown
    return max(1, min(by_cpu, shown))


def plan(figures: Figures, accounts: int, inbound_per_s: float, utilisation: float = 0.5) -> Plan:
    """Processes of each role for `accounts` Flowroute accounts sending at their limit and
    `inbound_per_s` texts arriving per second."""
    if not 0 < utilisation <= 1:
        raise ValueError("utilisation must be in (0, 1]")
    outbound_per_s = accounts * SMS_PER_ACCOUNT
    dispatchers = max(1, math.ceil(accounts / accounts_per_dispatcher(figures, utilisation))) + 1
    return Plan(accounts, inbound_per_s, {
        "receiver": processes_for(inbound_per_s, figures.receiver, utilisation),
        "inbound": processes_for(inbound_per_s, figures.inbound_stage, utilisation),
        "delivery": processes_for(inbound_per_s, figures.delivery, utilisation),
        "outbound": processes_for(outbound_per_s, figures.inbound_stage, utilisation),
        "dispatcher": dispatchers,
    })


def _value(rows: list[dict[str, Any]], bench: str, figure_start: str) -> float:
    found = value(rows, bench, figure_start)
    if found is None:
        raise KeyError(f"{bench}: no figure starting {figure_start!r} (run the full `make bench` first)")
    return found


def figures_from(report: dict[str, Any], ledger: str = "sqlite") -> Figures:
    """The per-process figures of one `make bench` run's JSON; `ledger` picks the inbound
    pipeline measured on SQLite or on PostgreSQL."""
    rows = report["rows"]
    carried = [r for r in rows if r["bench"] == "accounts" and " 1 dispatcher: aggregate" in str(r["figure"])]
    # the accounts one process served in full: all of them at the target, else the aggregate
    # rate's worth (465/s for 100 accounts: 93); no such row: the CPU figure alone decides
    shown = None
    if carried:
        served = carried[0]["value"] if carried[0]["ratio"] < 0.95 else carried[0]["reference"]
        shown = int(served / SMS_PER_ACCOUNT)
    return Figures(receiver=_value(rows, "receiver", "webhooks/s"),
                   inbound_stage=_value(rows, "scaling", "inbound stage, 1 process"),
                   inbound_pipeline=_value(rows, "inbound" if ledger == "sqlite" else "inbound-pg", "max "),
                   dispatcher=_value(rows, "dispatch", "limits off: sent/s"),
                   accounts_shown=shown)


def table(figures: Figures, plans: list[Plan], utilisation: float) -> str:
    roles = list(plans[0].processes)
    lines = [f"per process: receiver {figures.receiver:.0f}/s, inbound stage {figures.inbound_stage:.0f}/s, "
             f"delivery {figures.delivery:.0f}/s (derived), dispatcher {figures.dispatcher:.0f}/s = "
             f"{accounts_per_dispatcher(figures, utilisation)} accounts at {utilisation:.0%} of a core",
             "| accounts | inbound/s | " + " | ".join(roles) + " | processes |",
             "|---" * (len(roles) + 3) + "|"]
    for p in plans:
        lines.append(f"| {p.accounts} | {p.inbound_per_s:g} | "
                     + " | ".join(str(p.processes[r]) for r in roles) + f" | {p.total} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(Path(__file__).resolve().parent / "results" / "latest.json"))
    parser.add_argument("--accounts", type=int, action="append", help="Flowroute accounts (repeatable)")
    parser.add_argument("--inbound", type=float, action="append", help="inbound texts/s (repeatable)")
    parser.add_argument("--ledger", choices=("sqlite", "postgresql"), default="sqlite",
                        help="whose inbound pipeline figure to use")
    parser.add_argument("--utilisation", type=float, default=0.5, help="share of a core to plan each process at")
    args = parser.parse_args()
    figures = figures_from(json.loads(Path(args.results).read_text()), args.ledger)
    try:
        plans = [plan(figures, n, m, args.utilisation)
                 for n in (args.accounts or [10, 100, 1000]) for m in (args.inbound or [50, 500, 2000])]
    except ValueError as exc:
        raise SystemExit(f"sizing: {exc}; use the figures of a full `make bench` run") from exc
    if figures.accounts_shown is None:
        print("note: no accounts benchmark in this run; dispatchers are sized by CPU alone")
    print(table(figures, plans, args.utilisation))


if __name__ == "__main__":
    main()
