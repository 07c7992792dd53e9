"""The relay row the outbound stage records for a send the relay API took without an
`Idempotency-Key` (`OutboundRequest.relay`): the receiver answered it as soon as RabbitMQ had
it, and the row (who sent it, where its receipts go) comes with the request's own.

Requests reach the outbound stage from PBXs too, and a PBX may put anything in `relay`. Only a
request of a tenant whose `client_message_id` the bridge signed for that tenant (`relay_ids.py`),
naming a relay client of that same tenant, gets a row: anything else is sent as any PBX's
request is, without one (no relay receipts, no lookup).
"""

from __future__ import annotations

from smsbridge.config import Settings
from smsbridge.events import OutboundRequest
from smsbridge.ledger import RelaySend
from smsbridge.relay_ids import issued


def relay_row(request: OutboundRequest, settings: Settings) -> RelaySend | None:
    """The row to record with `request`, or None: no relay origin, or one the bridge did not set."""
    origin = request.relay
    if origin is None or not issued(settings.relay.id_key, request.tenant, request.client_message_id):
        return None
    client = settings.relay_client(origin.access_key)
    if client is None or client.tenant != request.tenant:
        return None
    # No request hash: only a keyed send's row is ever compared with a repeat (`relay_ops.verdict`).
    return RelaySend(bridge_id=request.client_message_id, tenant=request.tenant, access_key=client.access_key,
                     idempotency_key=None, request_hash="", state="queued", dlr_callback=origin.dlr_callback,
                     created_at=origin.accepted_at)
