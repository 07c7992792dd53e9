"""`make faults` reads leader elections from the RabbitMQ nodes' logs (faults/elections.py): the
lines Ra 2.2 (RabbitMQ 3.10.8) writes, the election time after a cut and its cause, and the
false alarms outside the faults."""

from __future__ import annotations

from faults.cluster import advanced_config
from faults.elections import election_after, parse, suspicions

Q = "faults1.inbound"
SBF2 = [
    "2026-11-30 21:55:30.000000+00:00 [info] <0.1.0> queue 'faults1.delivery' in vhost '/': "
    "Leader node 'sbf3@10.231.0.13' may be down, setting pre-vote timeout",
    f"2026-11-30 21:55:41.684824+00:00 [info] <0.648.0> queue '{Q}' in vhost '/': "
    "Leader node 'sbf1@10.231.0.11' may be down, setting pre-vote timeout",
    f"2026-11-30 21:55:41.776376+00:00 [info] <0.648.0> queue '{Q}' in vhost '/': "
    "leader call - leader not known. Command will be forwarded once leader is known.",
    f"2026-11-30 21:55:41.897097+00:00 [notice] <0.648.0> queue '{Q}' in vhost '/': "
    "candidate -> leader in term: 2 machine version: 2",
    "2026-11-30 21:55:42.000000+00:00 [info] <0.9.0> something else entirely",
]
CUT = 1796075739.0  # 2026-11-30 21:55:39 UTC


def test_parse_keeps_suspicions_and_elections_with_their_utc_time() -> None:
    events = parse("sbf2", SBF2)
    assert [(e.queue, e.kind) for e in events] == [("faults1.delivery", "aten"), (Q, "aten"), (Q, "leader")]
    assert round(events[2].at - CUT, 3) == 2.897


def test_election_after_a_cut_says_how_long_where_and_why() -> None:
    events = parse("sbf2", SBF2)
    assert election_after(events, Q, CUT) == (events[2].at - CUT, "sbf2", "aten")
    assert election_after(events, Q, events[2].at + 1) is None
    link = parse("sbf3", [SBF2[1].replace("Leader node 'sbf1@10.231.0.11' may be down, setting pre-vote timeout",
                                          "Leader monitor down with noconnection, setting election timeout"), SBF2[3]])
    assert election_after(link, Q, CUT)[2] == "link"  # type: ignore[index]


def test_suspicions_outside_the_faults_are_false_alarms() -> None:
    events = parse("sbf2", SBF2)
    assert suspicions(events, "faults1", []) == 2
    assert suspicions(events, "faults1", [(CUT, CUT + 10)]) == 1  # the delivery one, before the cut
    assert suspicions(events, "other", []) == 0


def test_advanced_config_sets_aten_poll_interval_only_when_given() -> None:
    assert advanced_config(None) == "[].\n"
    assert advanced_config(1000) == "[{aten, [{poll_interval, 1000}]}].\n"
