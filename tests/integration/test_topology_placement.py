"""Quorum queues are declared with their placement (replica count, leader locator), and a queue
an older release created without it, or with another placement, is still used, not refused."""

from __future__ import annotations

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from structlog.testing import capture_logs

from smsbridge.broker import names, topology
from smsbridge.broker.publisher import Publisher
from smsbridge.broker.topology import NO_PLACEMENT, Placement
from tests.support.broker import take


async def refusal(amqp: AbstractRobustConnection, queue: str, arguments: dict[str, object]) -> str:
    """What the broker says to a redeclare with these arguments ("" if it accepts it)."""
    probe = await amqp.channel()
    try:
        await probe.declare_queue(queue, durable=True, arguments=arguments)
    except aio_pika.exceptions.ChannelPreconditionFailed as exc:
        return str(exc)
    await probe.close()
    return ""


async def test_a_new_queue_gets_the_configured_group_size_and_leader_locator(
    channel: AbstractChannel, amqp: AbstractRobustConnection, prefix: str
) -> None:
    await topology.declare(channel, prefix, delivery_limit=20, placement=Placement(group_size=3))
    queue = names.stage_queue(prefix, "inbound")
    plain = topology.quorum_arguments(dead_letter_exchange=names.dead_exchange(prefix), delivery_limit=20)
    # The broker compares placement on a redeclare: refusing one without it proves the queue has it.
    assert "inequivalent arg 'x-quorum-initial-group-size'" in await refusal(amqp, queue, plain)
    assert await refusal(amqp, queue, {**plain, topology.GROUP_SIZE: 3,
                                       topology.LEADER_LOCATOR: "balanced"}) == ""


@pytest.mark.parametrize("before", [NO_PLACEMENT, Placement(group_size=5, leader_locator="client-local")],
                         ids=["created-without-placement", "created-with-other-placement"])
async def test_an_existing_queue_placed_otherwise_is_used_as_it_is_with_a_warning(
    channel: AbstractChannel, amqp: AbstractRobustConnection, prefix: str, before: Placement
) -> None:
    await topology.declare(channel, prefix, delivery_limit=20, placement=before)  # an older release
    with capture_logs() as logs:
        await topology.declare(channel, prefix, delivery_limit=20, placement=Placement(group_size=3))
    warned = {entry["queue"] for entry in logs if entry["event"].startswith("queue exists with other placement")}
    assert names.stage_queue(prefix, "inbound") in warned
    # The channel the refusals closed is open again and every stage still works through it.
    publisher = Publisher(channel, timeout=5)
    await publisher.to_stage(prefix, "inbound", b'{"still": "works"}', message_id="m-1")
    [got] = await take(channel, names.stage_queue(prefix, "inbound"))
    assert got.body == b'{"still": "works"}'
