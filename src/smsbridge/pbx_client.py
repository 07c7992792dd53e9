"""What a PBX integration does, in a few lines: publish an outbound request, read statuses.

Used by `smsbridge send` and by the tests; a PBX integrator can read it as the reference.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager

import aio_pika
import aiormq
import msgspec
from aio_pika.abc import AbstractChannel, AbstractQueue

from smsbridge.broker import names
from smsbridge.errors import BrokerUnavailable
from smsbridge.events import OutboundRequest, StatusEvent, encoder

FINAL_STATES = frozenset({"delivered", "failed"})
_status_decoder = msgspec.json.Decoder(StatusEvent)


async def publish_request(channel: AbstractChannel, prefix: str, request: OutboundRequest) -> None:
    """Publish with a confirm to `<prefix>.requests`, key `outbound.<tenant>`; raise if not stored."""
    exchange = await channel.get_exchange(names.requests_exchange(prefix), ensure=False)
    confirmation = await exchange.publish(
        aio_pika.Message(encoder.encode(request), content_type="application/json",
                         delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=request.client_message_id),
        routing_key=names.request_routing_key(request.tenant), mandatory=True, timeout=10)
    if not isinstance(confirmation, aiormq.spec.Basic.Ack):
        raise BrokerUnavailable(f"request not confirmed: {confirmation!r}")


@asynccontextmanager
async def status_queue(channel: AbstractChannel, prefix: str, tenant: str) -> AsyncIterator[AbstractQueue]:
    """A private queue bound to every status of one tenant; gone with the connection at the latest.
    (Not auto-delete: that would vanish between two `watch` calls.)"""
    queue = await channel.declare_queue(f"{prefix}.statuses.{uuid.uuid4().hex[:8]}", exclusive=True)
    await queue.bind(names.status_exchange(prefix), routing_key=f"status.{tenant}.#")
    try:
        yield queue
    finally:
        await queue.delete(if_unused=False, if_empty=False)


async def watch(queue: AbstractQueue, client_message_ids: str | Collection[str], *,
                until: frozenset[str] = FINAL_STATES, timeout: float = 30.0) -> list[StatusEvent]:
    """Statuses of these messages, in arrival order, until each has reached one of `until` or
    `timeout` passes. Statuses of other messages on the queue are consumed and dropped."""
    wanted = {client_message_ids} if isinstance(client_message_ids, str) else set(client_message_ids)
    pending = set(wanted)
    seen: list[StatusEvent] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with queue.iterator() as messages:
        while loop.time() < deadline:
            try:
                message = await asyncio.wait_for(messages.__anext__(), deadline - loop.time())
            except TimeoutError:
                break
            await message.ack()
            status = _status_decoder.decode(message.body)
            if status.client_message_id in wanted:
                seen.append(status)
                if status.state in until:
                    pending.discard(status.client_message_id)
                    if not pending:
                        break
    return seen
