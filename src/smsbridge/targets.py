"""A tenant's PBX targets as an ordered list (pure).

Targets are listed in the file in order. The first that is not an `always` copy gets every text;
when it gives up on one (maximum age or a permanent failure), the next such target gets it, and
so on (e.g. `sip`, then `email`). An `email` target with `mode = "always"` gets a copy of every
text at once, whatever happens to the others.
"""

from __future__ import annotations

from smsbridge.config import EmailTarget, FlowrouteTarget, HttpTarget, PbxTarget, Settings, SipTarget


def is_copy(target: PbxTarget) -> bool:
    return isinstance(target, EmailTarget) and target.mode == "always"


def first(settings: Settings, tenant: str) -> int:
    """The index of the target every text goes to first (0 when the tenant has only copies)."""
    targets = settings.targets_of(tenant)
    return next((i for i, t in enumerate(targets) if not is_copy(t)), 0)


def copies(settings: Settings, tenant: str) -> list[int]:
    return [i for i, t in enumerate(settings.targets_of(tenant)) if is_copy(t)]


def after(settings: Settings, tenant: str, current: int) -> int | None:
    """The fallback for a text that target `current` gave up on, if any."""
    targets = settings.targets_of(tenant)
    if current < len(targets) and is_copy(targets[current]):
        return None  # a copy that failed has no fallback of its own
    return next((i for i in range(current + 1, len(targets)) if not is_copy(targets[i])), None)


def adapter_key(tenant: str, index: int) -> str:
    return tenant if index == 0 else f"{tenant}#{index}"


# How many of a target's `timeout_s` one request to it can take at the most: the lease is sized
# by these, and renewed while an attempt of several requests (a long SIP text's parts) runs.
SIP_ATTEMPT_TIMEOUTS = 2  # a part may be challenged once: two transactions
EMAIL_SMTP_TIMEOUTS = 2  # the SMTP conversation (aiosmtplib's own timeout is per command)
EMAIL_ATTEMPT_TIMEOUTS = 1 + EMAIL_SMTP_TIMEOUTS  # the pictures, all within one timeout, then SMTP


def attempt_bound_s(target: PbxTarget) -> float:
    """The longest one request to `target` can take (SIP: one part; AMQP: bounded by the publish
    timeout). A whole attempt may take longer: its claim is renewed meanwhile (`workers/held.py`)."""
    if isinstance(target, HttpTarget | FlowrouteTarget):
        return target.timeout_s
    if isinstance(target, SipTarget):
        return SIP_ATTEMPT_TIMEOUTS * target.timeout_s
    if isinstance(target, EmailTarget):
        return EMAIL_ATTEMPT_TIMEOUTS * target.timeout_s
    return 0.0


def delivery_lease_s(settings: Settings) -> float:
    """How long a delivery claim lasts unless renewed: twice the longest request any target (or a
    publish) can take, plus 10 s. The worker holding it renews it every third of that while its
    attempt runs and stops the attempt a quarter of a lease before the lease it last renewed
    ends (`lease.py`), so a live claim is never taken over by another worker, and a claim whose
    worker died is free again within one lease."""
    longest = max([attempt_bound_s(t) for t in settings.pbx_targets] + [settings.broker.publish_timeout_s])
    return 2 * longest + 10
