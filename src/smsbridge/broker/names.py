"""Every exchange, queue, routing key and header name, from small pure functions.

Layout for a prefix `p` (default `smsbridge`):
- `p.work` (direct): stage queues `p.<stage>`, routing key = the queue name.
- `p.delay` (headers): delay tiers `p.delay.<k>`, chosen by the tier header; each holds delays in
  [2^k, 2^(k+1)) s (tier 0: under 2 s) and dead-letters expired messages back to `p.work` with the
  original routing key, i.e. back to their stage.
- `p.dlx` (fanout) → `p.dead-letters`: what cannot be processed, with why in the headers.
- `p.requests` (topic): PBXs publish outbound requests with key `outbound.<tenant>`; bound to
  the `p.outbound` stage queue.
- `p.dispatch.<account>`: one stage per Flowroute account, single active consumer.
- `p.status` (topic): status events for the PBX, key `status.<tenant>.<state>`; what nobody
  is bound for goes to `p.unrouted` (via the alternate exchange) instead of vanishing.
"""

from __future__ import annotations

import math

MAX_TIER = 13  # 2^13 s ≈ 2.3 h: the longest single wait
MAX_DELAY_S = float(2 ** (MAX_TIER + 1) - 1)

H_ATTEMPT = "x-smsbridge-attempt"
H_FIRST_SEEN = "x-smsbridge-first-seen-ms"
# No "x-" prefix: a headers exchange ignores x- headers when matching, so a binding on an
# x- header would match every message and copy it into every tier.
H_DELAY_TIER = "smsbridge-delay-tier"
H_STAGE = "x-smsbridge-stage"
H_REASON = "x-smsbridge-reason"
H_REASON_CODE = "x-smsbridge-reason-code"
H_DEAD_AT = "x-smsbridge-dead-at-ms"
# Set on a message whose dead-lettering is decided but whose `given_up` hook failed: its next
# delivery only finishes giving up (the hook again, then the dead-letter copy), never handles it.
H_GIVING_UP = "x-smsbridge-dead-pending"
H_ROUTING_KEY = "x-smsbridge-routing-key"
H_CONFIG = "x-smsbridge-config"
H_ORIGIN_KEY = "x-smsbridge-origin-key"
# What a republish (retry, dead letter) keeps of a message's headers; the rest it sets anew.
CARRIED_HEADERS = frozenset({H_ATTEMPT, H_FIRST_SEEN, H_CONFIG, H_ORIGIN_KEY})


def work_exchange(prefix: str) -> str:
    return f"{prefix}.work"


def delay_exchange(prefix: str) -> str:
    return f"{prefix}.delay"


def dead_exchange(prefix: str) -> str:
    return f"{prefix}.dlx"


def dead_queue(prefix: str) -> str:
    return f"{prefix}.dead-letters"


def status_exchange(prefix: str) -> str:
    return f"{prefix}.status"


def unrouted_exchange(prefix: str) -> str:
    return f"{prefix}.unrouted"


def unrouted_queue(prefix: str) -> str:
    return f"{prefix}.unrouted"


def stage_queue(prefix: str, stage: str) -> str:
    return f"{prefix}.{stage}"


def delay_queue(prefix: str, tier: int) -> str:
    return f"{prefix}.delay.{tier}"


def status_routing_key(tenant: str, state: str) -> str:
    return f"status.{tenant}.{state}"


def requests_exchange(prefix: str) -> str:
    """Where PBXs publish outbound requests, routing key `outbound.<tenant>`."""
    return f"{prefix}.requests"


def request_routing_key(tenant: str) -> str:
    return f"outbound.{tenant}"


def tenant_of_request_key(routing_key: str) -> str | None:
    head, _, tenant = routing_key.partition(".")
    return tenant if head == "outbound" and tenant and "." not in tenant else None


def origin_key(prefix: str, exchange: str, routing_key: str, header: str | None) -> str:
    """The routing key a message was first published with, from what its publisher could not choose.

    A PBX reaches a stage queue only through `<prefix>.requests`, whose topic permissions pin its
    key: there the key the broker routed by is the origin, and a header the PBX set means nothing.
    Through any other exchange (`<prefix>.work`, a delay queue's dead-lettering, the default
    exchange) only a user with wider write rights, the bridge itself, can have published, so the
    origin header that its retries and replays carry is trusted there.
    """
    if exchange == requests_exchange(prefix) or not header or len(header) > 255:  # 255: an AMQP key's limit
        return routing_key
    return header


def dispatch_stage(account: str) -> str:
    return f"dispatch.{account}"


def pbx_routing_key(tenant: str, extension: str) -> str:
    return f"{tenant}.{extension}"


def delay_tier(seconds: float) -> int:
    """The tier whose range holds `seconds`: tier k holds [2^k, 2^(k+1)), tier 0 holds [0, 2)."""
    if seconds < 2:
        return 0
    return min(int(math.log2(seconds)), MAX_TIER)
