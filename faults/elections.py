"""Quorum queue leader elections, read from the RabbitMQ nodes' own logs.

Why the logs: the time that matters in the partition is how long the majority side takes to
elect a new leader for a queue whose leader was cut off, and only the broker knows that to the
millisecond. Polling `rabbitmqctl list_queues leader` would take a second or more per answer on
a busy host and miss the moment. Ra logs each step with a UTC timestamp:

- `Leader node N may be down, setting pre-vote timeout`: a follower's failure detector (aten,
  polled every `aten.poll_interval` ms) gave up on the leader's node;
- `Leader monitor down with noconnection, setting election timeout`: the Erlang distribution
  link to the leader's node went down (a silent peer is declared down after `net_ticktime`);
- `candidate -> leader in term: T`: the new leader.

The first two also show false positives: a follower that suspects a leader that was fine (a
busy host answering heartbeats late), which is what a shorter poll interval risks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

_LINE = re.compile(r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+[+-]\d\d:\d\d) \[\w+\] <[^>]*> "
                   r"queue '(?P<queue>[^']+)' in vhost '[^']*': (?P<text>.*)$")
SUSPECT_ATEN = "may be down"
SUSPECT_LINK = "monitor down with noconnection"
ELECTED = "candidate -> leader"


@dataclass(frozen=True)
class Event:
    at: float  # seconds since the epoch (UTC)
    node: str
    queue: str
    kind: str  # "aten" (failure detector), "link" (distribution link down) or "leader" (elected)


def parse(node: str, lines: list[str]) -> list[Event]:
    """The suspicion and election events of one node's log lines; other lines are skipped."""
    events = []
    for line in lines:
        m = _LINE.match(line)
        if m is None:
            continue
        text = m["text"]
        kind = ("aten" if SUSPECT_ATEN in text else "link" if SUSPECT_LINK in text
                else "leader" if text.startswith(ELECTED) else None)
        if kind is not None:
            at = datetime.fromisoformat(m["ts"]).astimezone(UTC).timestamp()
            events.append(Event(at, node, m["queue"], kind))
    return events


def read(logs: dict[str, Path]) -> list[Event]:
    """Every node's events (node name -> its main log file), oldest first."""
    events = []
    for node, path in logs.items():
        if path.exists():
            events += parse(node, path.read_text(errors="replace").splitlines())
    return sorted(events, key=lambda e: e.at)


def election_after(events: list[Event], queue: str, since: float) -> tuple[float, str, str] | None:
    """(seconds after `since`, the new leader's node, what set it off: "aten", "link" or "?")
    for the first election of `queue` after `since`; None if there was none."""
    later = [e for e in events if e.queue == queue and e.at >= since]
    elected = next((e for e in later if e.kind == "leader"), None)
    if elected is None:
        return None
    cause = next((e.kind for e in later if e.kind != "leader" and e.at <= elected.at), "?")
    return elected.at - since, elected.node, cause


def suspicions(events: list[Event], prefix: str, outside: list[tuple[float, float]]) -> int:
    """How many times a follower of a queue of `prefix` suspected its leader outside the given
    windows (the faults): each one a false alarm of the failure detector or the link."""
    return sum(1 for e in events if e.kind in ("aten", "link") and e.queue.startswith(prefix + ".")
               and not any(a <= e.at <= b for a, b in outside))
