"""Is the broker answering right now? A confirmed round trip every half second says so.

A silent partition (packets dropped, no reset) leaves the TCP connection looking open: aio-pika
still reports "connected" until AMQP heartbeats give up, and every publish waits its whole
confirm timeout. So readiness and the receiver's fail-fast both ask one question instead: did
the broker confirm a publish of ours in the last `stale_after_s` seconds? The probe publishes
an empty, non-mandatory message to the bridge's own work exchange with a routing key no queue
is bound with: the broker drops it and confirms it at once, and nothing is stored. (Not the
default exchange: the bridge's RabbitMQ user may write only to `<prefix>.*` exchanges, see
deploy/rabbitmq/definitions.json, and a refused publish would close the publishing channel.) It goes through the same
channel as the real publishes, so a broker that blocks publishers (memory or disk alarm)
counts as not answering too, which it is for a webhook.

The probe needs no queue, so a node that can no longer commit to its queues (cut off from the
rest of its cluster) still answers it. The publishes themselves tell: for readiness, a route
with a publish that has waited `stale_after_s` for its confirm, with nothing confirmed since it
went, is not answering either, however its probes fare; nor is one whose publishes the broker
has refused (nacked) for `stale_after_s`, still lately, with none confirmed since the first
refusal (a nacked publish waits no more, so only the failures show it). A single queue can stop
committing while the others confirm on the same routes (its leader on the cut-off node), so
readiness also watches the destinations the process's roles exist to publish to, each on its
own (`broker/flows.py`). The gate does not refuse for that alone: the same happens while a
queue's leader is re-elected (5-6 s after a partition in `make faults`), and a webhook that waits
may then still be taken.

With two routes (a connection to a second node, see `broker/publisher.py`), each is probed on
its own: the broker answers while either route does, and the publisher tries the answering
route first.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from smsbridge.broker import names
from smsbridge.broker.publisher import Basic, Publisher
from smsbridge.broker.routes import Route
from smsbridge.errors import BrokerUnavailable

log = structlog.get_logger("smsbridge.broker")

PROBE_INTERVAL_S = 0.5
PROBE_TIMEOUT_S = 2.0
STALE_AFTER_S = 3.0  # readiness goes false this long after the last confirmed round trip


def probe_key(prefix: str) -> str:
    """A routing key no queue is bound with: the probe is confirmed, then dropped."""
    return f"{prefix}.liveness-probe.no-such-queue"


class BrokerLiveness:
    """Remembers when each route last confirmed a probe; `responsive()` reads that, without I/O,
    so it can serve as the publisher's gate and as a readiness check."""

    def __init__(self, publisher: Publisher, prefix: str, *, interval_s: float = PROBE_INTERVAL_S,
                 timeout_s: float = PROBE_TIMEOUT_S, stale_after_s: float = STALE_AFTER_S) -> None:
        self._publisher = publisher
        self._exchange = names.work_exchange(prefix)
        self._key = probe_key(prefix)
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._stale_after_s = stale_after_s

    def responsive(self) -> bool:
        """Some route confirmed a round trip in the last `stale_after_s` seconds: the publisher's
        gate. A route whose probe passes but whose publishes wait still gets them: its queues may
        be electing a leader (seconds, in a partition), and a publish that waits may yet be taken,
        where a refused webhook waits for Flowroute's next resend."""
        return any(r.fresh(self._stale_after_s) for r in self._publisher.routes)

    def committing(self) -> bool:
        """Readiness: some route is responsive, has no publish that has waited `stale_after_s`
        with nothing confirmed since, and has not had its publishes refused for `stale_after_s`
        with none confirmed since (the probe alone does not show that a route's queues can commit);
        and no destination the process's roles exist to publish to is stalled (`broker/flows.py`:
        one queue can stop committing while the others confirm on the same routes)."""
        now, stale = time.monotonic(), self._stale_after_s
        return any(r.fresh(stale) and not r.lagging(stale, now) and not r.refusing(stale, now)
                   for r in self._publisher.routes) and not self._publisher.flows.stalled(stale)

    async def probe(self) -> bool:
        """Probe every route at once; True if any answered."""
        answers = await asyncio.gather(*(self._probe(route) for route in self._publisher.routes))
        return any(answers)

    async def _probe(self, route: Route) -> bool:
        properties = Basic.Properties(delivery_mode=1)
        try:
            await self._publisher.publish_on(route, self._exchange, self._key, b"", properties, False,
                                             self._timeout_s, probe=True)
        except BrokerUnavailable:
            return False
        except Exception as exc:  # never let the prober die: readiness would stay false for good
            log.warning("liveness probe failed unexpectedly", route=route.name, error=repr(exc))
            return False
        return True

    async def run(self) -> None:
        """Probe for ever (cancel to stop); logs only when the answer changes."""
        was = (True, True)
        while True:
            await self.probe()
            now = (self.responsive(), self.committing())
            if now != was:
                log.warning("broker answering again" if all(now)
                            else "broker not answering: readiness false, webhooks answered 503 at once"
                            if not now[0] else "broker not confirming publishes: readiness false",
                            stale_after_s=self._stale_after_s,
                            stalled=self._publisher.flows.stalled(self._stale_after_s),
                            unconfirmed_s=self._publisher.flows.unconfirmed_s())
                was = now
            await asyncio.sleep(self._interval_s)
