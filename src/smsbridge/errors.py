"""The error tree, written once. Callers catch a branch, never a list of leaves.

- `RetryableError`: the other side may succeed later (timeouts, 429, 5xx, connection refused).
- `PermanentError`: retrying the same message cannot help (validation, most 4xx, routing misses).
"""

from __future__ import annotations

from smsbridge.redact import quote


class BridgeError(Exception):
    """Base of every error smsbridge raises on purpose."""


class RetryableError(BridgeError):
    """Try again later; `retry_after` is the delay the other side asked for, in seconds.
    `counted=False`: this try was not an attempt at the work (another worker holds it right
    now), so it does not use up `max_attempts`; the maximum age still bounds it."""

    def __init__(self, reason: str, *, retry_after: float | None = None, counted: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.counted = counted


class LedgerUnavailable(RetryableError):
    """The ledger's database cannot be reached or refused the connection: nothing was written.
    One condition for the whole outage, retried like any other (no traceback per message)."""


class PermanentError(BridgeError):
    """Do not retry; `code` is a short machine-readable reason, `reason` is for people."""

    def __init__(self, reason: str, *, code: str = "permanent") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class InvalidNumber(PermanentError):
    def __init__(self, number: str, why: str) -> None:
        super().__init__(f"invalid number {quote(number)}: {why}", code="invalid_number")
        self.number = number


class BrokerUnavailable(BridgeError):
    """The broker did not confirm a publish: nothing was stored, the caller must not ack."""
