"""What a keyed relay send does with the row that already holds its key (`relay_ops.verdict`):
a pure rule over the two rows and the window's and the stale time's edges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from smsbridge.ledger.relay_ops import RelaySend, verdict

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
WINDOW_START, STALE_BEFORE = NOW - timedelta(days=1), NOW - timedelta(seconds=15)


def row(state: str, age_s: float, request_hash: str = "h1") -> RelaySend:
    return RelaySend(bridge_id="mdr2-a", tenant="acme", access_key="acme-fusion", idempotency_key="k",
                     request_hash=request_hash, state=state, dlr_callback=None,
                     created_at=NOW - timedelta(seconds=age_s))


NEW = row("pending", 0)


@pytest.mark.parametrize(("existing", "expected"), [
    (row("queued", 60), "answer"),  # the first id, nothing sent
    (row("pending", 5), "answer"),  # in flight: 409
    (row("pending", 16), "retake"),  # abandoned between the confirm and `queued`
    (row("unconfirmed", 1), "retake"),  # a failed publish that may have been stored
    (row("unconfirmed", 1, "h2"), "answer"),  # a different request under the key: 422
    (row("pending", 16, "h2"), "answer"),  # ... abandoned or not: never a second id within the window
    (row("queued", 86_401), "new"),  # past the window the key is free again
    (row("unconfirmed", 86_401, "h2"), "new"),
])
def test_verdict(existing: RelaySend, expected: str) -> None:
    assert verdict(existing, NEW, WINDOW_START, STALE_BEFORE) == expected
