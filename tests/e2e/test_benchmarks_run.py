"""The benchmarks are not timed tests: this only checks that `bench/run.py --quick` runs every
benchmark on a tiny load against the real broker and prints every figure with a number."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

from tests.support.bench_modules import load

ROOT = Path(__file__).resolve().parents[2]

EXPECTED_ROLES = ("receiver", "inbound", "delivery", "outbound", "dispatcher")
# Every figure issue 6 asks for, by the start of its label ("…" stands for a count in the label).
EXPECTED = {
    "receiver": ["webhooks/s", "p50 latency", "p99 latency", "non-200 answers"],
    "inbound": [f"{label}: {figure}" for label in ("100/s offered", "500/s offered", "1000/s offered", "max (…)")
                for figure in ("delivered/s", "p50 latency", "p99 latency", "lost")],
    # the same inbound figures with the ledger on PostgreSQL (issue 22)
    "inbound-pg": [f"{label}: {figure}" for label in ("100/s offered", "500/s offered", "max (…)")
                   for figure in ("delivered/s", "p50 latency", "p99 latency", "lost")],
    "dispatch": ["limits off: sent/s", "limits off: accepted"]
    + [f"5/s, {n} dispatcher{'s' if n > 1 else ''}{jitter}: {figure}" for n in (1, 2, 3)
       for jitter in ("", ", jitter 0-50 ms") for figure in ("sent/s vs limit", "429 answers", "max attempts in 1 s")]
    + [f"5/s, 2 dispatchers, jitter 0-50 ms, takeover: {figure}"
       for figure in ("sent/s vs limit", "429 answers", "max attempts in 1 s", "duplicate sends", "longest pause")],
    "accounts": [f"… accounts, {n} dispatcher{'s' if n > 1 else ''}: {figure}" for n in (1, 2)
                 for figure in ("aggregate sent/s", "slowest account sent/s", "429 answers",
                                "max attempts in 1 s, any account", "accepted of", "accounts per process")],
    "relay": ["sends accepted/s", "CPU per send", "non-202 answers", "5/s, 3 PBX clients: sent/s vs limit",
              "5/s, 3 PBX clients: 429 answers", "5/s, 3 PBX clients: accepted of"],
    "sip": ["… at once: sip target deliveries/s", "proxy out of shared memory", "… at once: intake MESSAGE",
            "failed operations"],
    "scaling": ["inbound stage, 1 process", "inbound stage, 2 processes", "inbound stage, 4 processes"],
    "memory": [f"{role}: RSS after" for role in EXPECTED_ROLES],
}


def _matches(rows: list[dict[str, object]], bench: str, prefix: str) -> list[dict[str, object]]:
    pattern = re.compile(".*?".join(re.escape(part) for part in prefix.split("…")))
    return [r for r in rows if r["bench"] == bench and pattern.match(str(r["figure"]))]


def test_every_benchmark_runs_on_a_tiny_load_and_prints_its_figures(amqp_url: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--amqp", amqp_url, "--results", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "quick.json").read_text())
    rows = report["rows"]
    for bench, figures in EXPECTED.items():
        for figure in figures:
            found = _matches(rows, bench, figure)
            assert len(found) == 1, f"{bench} / {figure}: {found}"
            value = found[0]["value"]
            assert isinstance(value, int | float) and math.isfinite(value), found[0]
            assert str(found[0]["figure"]) in done.stdout  # printed in the table, not only in the JSON
    # what each benchmark took of the run's budget, in the table and in the JSON
    benches = ("receiver", "inbound", "dispatch", "accounts", "relay", "sip", "scaling", "memory")
    for bench in benches:
        (found,) = _matches(rows, bench, "wall clock, seconds")
        assert found["value"] > 0, found
    assert list(report["seconds_by_bench"]) == list(benches)
    # a reference beside the real figure wherever the issue asks for a ratio
    ratios = [("receiver", "webhooks/s"), ("receiver", "p99 latency"), ("dispatch", "limits off: sent/s"),
              ("relay", "sends accepted/s"), ("sip", "… at once: sip target deliveries/s"),
              ("sip", "… at once: intake MESSAGE"),
              ("sip", "intake requests/s beside the receiver's webhooks/s"),
              ("inbound", "max (…): delivered/s"), ("inbound-pg", "max (…): delivered/s"),
              *(("memory", f"{role}: RSS after") for role in EXPECTED_ROLES)]
    for bench, figure in ratios:
        (found,) = _matches(rows, bench, figure)
        assert found["reference"] is not None and found["ratio"] is not None, found
    # README's sizing reads its per-process figures from this JSON: every one is there
    for ledger in ("sqlite", "postgresql"):
        figures = load("sizing").figures_from(report, ledger)
        assert min(figures.receiver, figures.inbound_stage, figures.inbound_pipeline, figures.dispatcher) > 0
        assert figures.accounts_shown >= 1
    # the tiny load still has to be correct: nothing lost, no 429 under the limiter, no double send
    for found in rows:
        if any(word in str(found["figure"]) for word in ("lost", "429", "duplicate")):
            assert found["value"] == 0, found


def test_the_media_benchmark_runs_on_a_tiny_load_and_prints_its_figures() -> None:
    """`make bench-media` needs no broker, so it is not in `bench/run.py`: run it here on 10 small
    MMS so it cannot rot (RSS flatness means nothing at this size: only that it ran and printed)."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_media.py"), "--messages", "10", "--mb", "0.2"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]  # 1: RSS "not flat"
    figures = json.loads(done.stdout[:done.stdout.rindex("}") + 1])
    for name in ("before", "peak", "after", "stage_mb_s", "bare_mb_s", "bare_to_file_mb_s"):
        assert math.isfinite(figures[name]) and figures[name] > 0, (name, figures)
    assert "inbound stage" in done.stdout and "bare aiohttp" in done.stdout
