"""Which publishes readiness watches, and when a destination counts as stalled (`broker/flows.py`),
on a clock the test moves: no broker here (tests/integration/test_stuck_queue.py has the real one)."""

from __future__ import annotations

from smsbridge.broker import names
from smsbridge.broker.flows import Flow, Flows, essential

STALE_S = 3.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_broker_whose_confirms_come_ever_later_up_to_5_s_is_not_stalled_while_they_keep_coming() -> None:
    # bench/README.md: a loaded broker confirmed 4,000 status publishes 1-5 s late. Here a publish
    # every 0.1 s for a minute, confirmed 0.05 s after it went at first, then later and later (up
    # to 5 s after 12 s): most wait longer than the threshold, but while one waits earlier ones
    # keep being confirmed. (A destination that confirms nothing at all for 3 s while a publish
    # waits is stalled, whatever the reason: the next test.)
    clock = Clock()
    flow = Flow("x.work/x.inbound", clock)
    pending: list[tuple[float, object]] = []  # (when its confirm comes, its token)
    waited = 0.0
    for step in range(600):
        clock.now = 100.0 + step * 0.1
        for _, token in [p for p in pending if p[0] <= clock.now]:
            flow.ended(token, confirmed=True)
        pending = [p for p in pending if p[0] > clock.now]
        pending.append((clock.now + min(0.05 + step * 0.04, 5.0), flow.went()))
        waited = max(waited, clock.now - min(flow.waiting.values()))
        assert not flow.stalled(STALE_S, clock.now), f"stalled at {clock.now - 100:.1f} s"
    assert waited > 4.5


def test_a_publish_waiting_3_s_with_none_confirmed_since_stalls_its_destination_until_one_is() -> None:
    clock = Clock()
    flow = Flow("x.work/x.inbound", clock)
    first = flow.went()
    clock.now += 2.9
    later = flow.went()
    assert not flow.stalled(STALE_S, clock.now)
    clock.now += 0.1
    assert flow.stalled(STALE_S, clock.now)
    flow.ended(later, confirmed=True)  # a later publish confirmed: the destination commits again
    assert not flow.stalled(STALE_S, clock.now)
    flow.ended(first, confirmed=True)
    assert not flow.waiting


def test_an_older_publish_still_waiting_does_not_hide_that_nothing_sent_since_the_last_confirm_is_confirmed() -> None:
    # make faults, the inbound queue's leader cut off: a webhook sent just before the cut waits on,
    # one sent just after it is confirmed, then nothing is; readiness turned false only when the
    # first one finally failed, 5 s after the cut, instead of 3 s after the last confirm.
    clock = Clock()
    flow = Flow("x.work/x.inbound", clock)
    stuck_before = flow.went()
    clock.now += 0.05
    flow.ended(flow.went(), confirmed=True)  # confirmed out of order
    clock.now += 0.05
    flow.went()  # the first of those that wait for good
    clock.now += 2.9
    assert not flow.stalled(STALE_S, clock.now)
    clock.now += 0.1
    assert flow.stalled(STALE_S, clock.now)
    flow.ended(stuck_before, confirmed=True)
    assert not flow.stalled(STALE_S, clock.now)


def test_publishes_that_fail_for_good_stall_it_until_one_is_confirmed_or_3_s_pass_without_one() -> None:
    clock = Clock()
    flow = Flow("x.requests", clock)
    for _ in range(4):  # refused until their deadline, one a second
        flow.ended(flow.went(), confirmed=False)
        clock.now += 1.0
    assert flow.stalled(STALE_S, clock.now) and not flow.waiting
    clock.now += 2.1  # the traffic stopped (perhaps because readiness was false): ready to try again
    assert not flow.stalled(STALE_S, clock.now)
    flow.ended(flow.went(), confirmed=False)
    flow.ended(flow.went(), confirmed=True)
    clock.now += 5
    assert not flow.stalled(STALE_S, clock.now)


def test_a_cancelled_publish_says_nothing_about_its_destination() -> None:
    clock = Clock()
    flow = Flow("x.work/x.inbound", clock)
    flow.ended(flow.went(), confirmed=None)
    clock.now += 10
    assert not flow.stalled(STALE_S, clock.now) and flow.failing_since == float("inf")


def test_each_role_watches_what_it_exists_to_publish_and_the_dispatcher_nothing() -> None:
    p, work = "x", names.work_exchange("x")
    requests = (names.requests_exchange(p), None)
    assert essential(p, ["receiver"], ["acme"]) == [(work, "x.inbound"), requests]
    assert essential(p, ["sip"], ["acme"]) == [requests]
    assert essential(p, ["inbound"], ["acme"]) == [(work, "x.delivery")]
    assert essential(p, ["outbound"], ["acme", "globex"]) == [(work, "x.dispatch.acme"), (work, "x.dispatch.globex")]
    assert essential(p, ["dispatcher", "delivery"], ["acme"]) == []
    assert essential(p, ["receiver", "sip"], ["acme"]) == [(work, "x.inbound"), requests]  # once each


def test_only_watched_destinations_are_tracked_every_tenant_alike() -> None:
    clock = Clock()
    flows = Flows(clock)
    assert flows.get("x.work", "x.inbound") is None  # nothing watched: no bookkeeping at all
    flows.watch(essential("x", ["receiver"], ["acme"]))
    assert flows.get("x.work", "x.inbound") is not None
    assert flows.get("x.work", "x.delivery") is None
    assert flows.get("x.status", "status.acme") is None
    acme, globex = flows.get("x.requests", "outbound.acme"), flows.get("x.requests", "outbound.globex")
    assert acme is globex is not None  # one outbound queue behind every tenant's key
    assert flows.get("x.requests", "outbound.\x00../../evil") is acme  # any key: still bounded, one flow
    token = acme.went()
    clock.now += STALE_S
    assert flows.stalled(STALE_S) == ["x.requests"]
    acme.ended(token, confirmed=True)
    assert flows.stalled(STALE_S) == []
