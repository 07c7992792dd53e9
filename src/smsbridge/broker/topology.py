"""All exchanges, queues and bindings, declared idempotently at start-up (see `names`).

Stage and delay queues are quorum queues: durable, replicated in a cluster, and their
`x-delivery-limit` dead-letters a message that keeps crashing its consumer. Dead-lettering is
at-least-once (needs `reject-publish` overflow), so an expiring delay never loses a message.
Changing an argument here needs the queue deleted first (RabbitMQ refuses a redeclare).

Placement (`Placement`: `x-quorum-initial-group-size`, `x-queue-leader-locator`) only matters
when a queue is created, and RabbitMQ compares it on every redeclare like any argument: a queue
created by an older release, without it, would refuse the new arguments (PRECONDITION_FAILED),
and so would one created with another group size. Such a queue is used as it is (declared
passively) with a warning: placement for existing queues is a policy's job (docs/operations.md,
"Several hosts"). A broker that rejects the locator's value (`invalid arg`) gets the queue
without it. Either refusal closes the channel; aio-pika's robust channel reopens it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import aio_pika
import msgspec
import structlog
from aio_pika.abc import AbstractChannel, AbstractQueue

from smsbridge.broker import names
from smsbridge.config import BrokerSettings

log = structlog.get_logger("smsbridge.broker")
STAGES = ("inbound", "delivery", "outbound")
GROUP_SIZE = "x-quorum-initial-group-size"
LEADER_LOCATOR = "x-queue-leader-locator"


class Placement(msgspec.Struct, frozen=True):
    """Where a new quorum queue goes: how many replicas, and how its leader's node is chosen."""

    group_size: int | None = 3
    leader_locator: str = "balanced"  # "" declares no locator (the broker's default or a policy)

    def arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self.group_size is not None:
            args[GROUP_SIZE] = self.group_size
        if self.leader_locator:
            args[LEADER_LOCATOR] = self.leader_locator
        return args


DEFAULT_PLACEMENT = Placement()
NO_PLACEMENT = Placement(group_size=None, leader_locator="")


def placement_of(broker: BrokerSettings) -> Placement:
    return Placement(group_size=broker.quorum_initial_group_size, leader_locator=broker.queue_leader_locator)


def quorum_arguments(*, dead_letter_exchange: str, delivery_limit: int | None) -> dict[str, Any]:
    args: dict[str, Any] = {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": dead_letter_exchange,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }
    if delivery_limit is not None:
        args["x-delivery-limit"] = delivery_limit
    return args


async def declare(
    channel: AbstractChannel,
    prefix: str,
    *,
    delivery_limit: int,
    stages: Iterable[str] = STAGES,
    accounts: Iterable[str] = (),
    pbx_exchanges: Iterable[str] = (),
    placement: Placement = DEFAULT_PLACEMENT,
) -> None:
    """Declare the whole topology for `prefix`; safe to run from every process at every start."""
    work = await channel.declare_exchange(names.work_exchange(prefix), aio_pika.ExchangeType.DIRECT, durable=True)
    delay = await channel.declare_exchange(names.delay_exchange(prefix), aio_pika.ExchangeType.HEADERS, durable=True)
    dlx = await channel.declare_exchange(names.dead_exchange(prefix), aio_pika.ExchangeType.FANOUT, durable=True)
    dead = await declare_quorum(channel, names.dead_queue(prefix), {"x-queue-type": "quorum"}, placement)
    await dead.bind(dlx, routing_key="#")
    await _declare_status(channel, prefix, placement)
    for stage in stages:
        await declare_stage(channel, prefix, stage, delivery_limit=delivery_limit, placement=placement)
    requests = await channel.declare_exchange(
        names.requests_exchange(prefix), aio_pika.ExchangeType.TOPIC, durable=True
    )
    outbound = await channel.get_queue(names.stage_queue(prefix, "outbound"), ensure=False)
    await outbound.bind(requests, routing_key="outbound.*")
    for account in accounts:
        # Single active consumer: one dispatcher sends for an account at a time, so its limiter
        # alone decides the account's rate; the others stand by and take over when it dies.
        await declare_stage(channel, prefix, names.dispatch_stage(account), delivery_limit=delivery_limit,
                            single_active=True, placement=placement)
    for tier in range(names.MAX_TIER + 1):
        args = quorum_arguments(dead_letter_exchange=work.name, delivery_limit=None)
        queue = await declare_quorum(channel, names.delay_queue(prefix, tier), args, placement)
        await queue.bind(delay, arguments={"x-match": "all", names.H_DELAY_TIER: str(tier)})
    for exchange in pbx_exchanges:
        await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)


async def declare_stage(
    channel: AbstractChannel, prefix: str, stage: str, *, delivery_limit: int, single_active: bool = False,
    placement: Placement = NO_PLACEMENT,
) -> str:
    args = quorum_arguments(dead_letter_exchange=names.dead_exchange(prefix), delivery_limit=delivery_limit)
    if single_active:
        args["x-single-active-consumer"] = True
    name = names.stage_queue(prefix, stage)
    queue = await declare_quorum(channel, name, args, placement)
    await queue.bind(names.work_exchange(prefix), routing_key=name)
    return name


async def declare_quorum(channel: AbstractChannel, name: str, args: dict[str, Any],
                         placement: Placement) -> AbstractQueue:
    """Declare a quorum queue with its placement; an existing queue placed otherwise is used as is."""
    wanted = {**args, **placement.arguments()}
    refused = await _refusal(channel, name, wanted) if placement.arguments() else ""
    if not refused:
        return await channel.declare_queue(name, durable=True, arguments=wanted)
    if not any(key in refused for key in placement.arguments()):
        raise aio_pika.exceptions.ChannelPreconditionFailed(refused)
    if "invalid arg" in refused:  # a broker that does not know this locator value
        log.warning("broker refused the queue leader locator: declared without it", queue=name, refused=refused)
        return await declare_quorum(channel, name, args, msgspec.structs.replace(placement, leader_locator=""))
    log.warning("queue exists with other placement arguments: used as it is (set a policy to place it)",
                queue=name, refused=refused)
    return await channel.declare_queue(name, durable=True, passive=True)


async def _refusal(channel: AbstractChannel, name: str, arguments: dict[str, Any]) -> str:
    """Try the declaration on a scratch channel first: a refusal closes the channel it came on."""
    underlay = await channel.get_underlay_channel()
    scratch = await underlay.connection.channel()
    try:
        await scratch.queue_declare(name, durable=True, arguments=arguments)
    except aio_pika.exceptions.ChannelPreconditionFailed as exc:
        return str(exc)
    await scratch.close()
    return ""


async def _declare_status(channel: AbstractChannel, prefix: str, placement: Placement = NO_PLACEMENT) -> None:
    unrouted = await channel.declare_exchange(
        names.unrouted_exchange(prefix), aio_pika.ExchangeType.FANOUT, durable=True
    )
    queue = await declare_quorum(channel, names.unrouted_queue(prefix), {"x-queue-type": "quorum"}, placement)
    await queue.bind(unrouted, routing_key="#")
    await channel.declare_exchange(
        names.status_exchange(prefix),
        aio_pika.ExchangeType.TOPIC,
        durable=True,
        arguments={"alternate-exchange": unrouted.name},
    )


async def delete(channel: AbstractChannel, prefix: str, stages: Iterable[str] = STAGES,
                 accounts: Iterable[str] = ()) -> None:
    """Remove everything `declare` made for `prefix` (tests and `smsbridge` teardown tools)."""
    stages = [*stages, *(names.dispatch_stage(a) for a in accounts)]
    queues = [names.stage_queue(prefix, s) for s in stages]
    queues += [names.delay_queue(prefix, t) for t in range(names.MAX_TIER + 1)]
    queues += [names.dead_queue(prefix), names.unrouted_queue(prefix)]
    for queue in queues:
        await channel.queue_delete(queue)
    exchanges = [names.work_exchange, names.delay_exchange, names.dead_exchange, names.status_exchange,
                 names.requests_exchange]
    for exchange in [f(prefix) for f in exchanges] + [names.unrouted_exchange(prefix)]:
        await channel.exchange_delete(exchange)
