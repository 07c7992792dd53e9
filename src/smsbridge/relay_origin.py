"""The relay row the outbound stage records for a send the relay API took without an
`Idempotency-Key` (`OutboundRequest.relay`): the receiver answered it as soon as RabbitMQ had
it, and the row (who sent it, where its receipts go) comes with the request's own.

Requests reach the outbound stage from PBXs too, and a PBX may fill `relay` in. A `relay` that
decodes is checked here: only a request whose `client_message_id` the bridge signed for its
tenant (`relay_ids.py`, any of `[relay] id_key` and `previous_id_keys`), naming a relay client of
that same tenant, gets a row; anything else is sent as any PBX's request is, without one (no
relay receipts, no lookup), and the reason is logged. A `relay` that does not decode (a field
missing or of the wrong type) makes the whole request invalid, as any malformed field does: it
is dead-lettered with the decode error naming `relay`, never sent.
"""

from __future__ import annotations

from typing import Literal

from smsbridge.config import Settings
from smsbridge.events import OutboundRequest
from smsbridge.ledger import RelaySend
from smsbridge.relay_ids import issued

# Why a relay origin got no row; bounded values for logs and metrics.
Ignored = Literal["no_key", "not_signed", "unknown_client", "other_tenant"]


def relay_row(request: OutboundRequest, settings: Settings) -> RelaySend | Ignored | None:
    """The row to record with `request`; None without a relay origin; else why it is ignored."""
    origin = request.relay
    if origin is None:
        return None
    keys = settings.relay.id_keys()
    if not keys:
        return "no_key"  # this worker has no key yet: `[relay] id_key` goes on workers first
    if not issued(keys, request.tenant, request.client_message_id):
        return "not_signed"
    client = settings.relay_client(origin.access_key)
    if client is None:
        return "unknown_client"
    if client.tenant != request.tenant:
        return "other_tenant"
    # No request hash: only a keyed send's row is ever compared with a repeat (`relay_ops.verdict`).
    return RelaySend(bridge_id=request.client_message_id, tenant=request.tenant, access_key=client.access_key,
                     idempotency_key=None, request_hash="", state="queued", dlr_callback=origin.dlr_callback,
                     created_at=origin.accepted_at)
