"""bench/sizing.py: processes per role from per-process figures (README, "Deploying")."""

from __future__ import annotations

import pytest

from tests.support.bench_modules import load

sizing = load("sizing")

# per process: receiver 2,000/s (0.5 ms a text), inbound stage 1,000/s (1 ms), and a process doing
# all three inbound roles 250/s (4 ms): the delivery stage's share is 2.5 ms, 400/s
FIGURES = sizing.Figures(receiver=2000, inbound_stage=1000, inbound_pipeline=250, dispatcher=800,
                         accounts_shown=100)


def test_the_delivery_stage_gets_what_the_pipeline_spends_beyond_the_other_two_roles() -> None:
    assert FIGURES.delivery == pytest.approx(400)


def test_a_pipeline_faster_than_its_parts_gives_no_delivery_estimate() -> None:
    with pytest.raises(ValueError, match="not CPU-bound"):
        _ = sizing.Figures(receiver=2000, inbound_stage=1000, inbound_pipeline=900, dispatcher=800,
                           accounts_shown=100).delivery
    with pytest.raises(ValueError, match="not CPU-bound"):  # 0.05 ms of 1.55 left: noise, not delivery
        _ = sizing.Figures(receiver=2000, inbound_stage=1000, inbound_pipeline=1000 / 1.55, dispatcher=800,
                           accounts_shown=100).delivery


def test_each_role_is_planned_at_half_a_core_with_one_process_to_spare() -> None:
    plan = sizing.plan(FIGURES, accounts=100, inbound_per_s=500)
    # 500/s at half of 2,000/s: 1 receiver (+1); at half of 1,000/s: 1 inbound (+1); at half of 400/s:
    # 3 delivery (+1); 100 accounts send 500/s, at half of 1,000/s: 1 outbound (+1); a dispatcher
    # carries 800 x 0.5 / 5 = 80 accounts: 2 (+1)
    assert plan.processes == {"receiver": 2, "inbound": 2, "delivery": 4, "outbound": 2, "dispatcher": 3}
    assert plan.total == 13


def test_a_dispatcher_never_carries_more_accounts_than_one_process_was_shown_carrying() -> None:
    fast = sizing.Figures(receiver=2000, inbound_stage=1000, inbound_pipeline=250, dispatcher=10_000,
                          accounts_shown=100)
    assert sizing.accounts_per_dispatcher(fast, 0.5) == 100
    assert sizing.plan(fast, accounts=1000, inbound_per_s=10).processes["dispatcher"] == 11


def test_without_an_accounts_figure_the_dispatchers_cpu_alone_decides() -> None:
    unshown = sizing.Figures(receiver=2000, inbound_stage=1000, inbound_pipeline=250, dispatcher=800,
                             accounts_shown=None)
    assert sizing.accounts_per_dispatcher(unshown, 0.5) == 80


def test_no_load_still_gets_one_process_and_a_spare() -> None:
    assert set(sizing.plan(FIGURES, accounts=0, inbound_per_s=0).processes.values()) == {2}


def test_utilisation_outside_a_core_is_refused() -> None:
    with pytest.raises(ValueError, match="utilisation"):
        sizing.plan(FIGURES, accounts=1, inbound_per_s=1, utilisation=1.5)
