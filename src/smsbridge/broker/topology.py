"""All exchanges, queues and bindings, declared idempotently at start-up (see `names`).

Stage and delay queues are quorum queues: durable, replicated in a cluster, and their
`x-delivery-limit` dead-letters a message that keeps crashing its consumer. Dead-lettering is
at-least-once (needs `reject-publish` overflow), so an expiring delay never loses a message.
Changing an argument here needs the queue deleted first (RabbitMQ refuses a redeclare).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel

from smsbridge.broker import names

STAGES = ("inbound", "delivery", "outbound")


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
) -> None:
    """Declare the whole topology for `prefix`; safe to run from every process at every start."""
    work = await channel.declare_exchange(names.work_exchange(prefix), aio_pika.ExchangeType.DIRECT, durable=True)
    delay = await channel.declare_exchange(names.delay_exchange(prefix), aio_pika.ExchangeType.HEADERS, durable=True)
    dlx = await channel.declare_exchange(names.dead_exchange(prefix), aio_pika.ExchangeType.FANOUT, durable=True)
    dead = await channel.declare_queue(names.dead_queue(prefix), durable=True, arguments={"x-queue-type": "quorum"})
    await dead.bind(dlx, routing_key="#")
    await _declare_status(channel, prefix)
    for stage in stages:
        await declare_stage(channel, prefix, stage, delivery_limit=delivery_limit)
    requests = await channel.declare_exchange(
        names.requests_exchange(prefix), aio_pika.ExchangeType.TOPIC, durable=True
    )
    outbound = await channel.get_queue(names.stage_queue(prefix, "outbound"), ensure=False)
    await outbound.bind(requests, routing_key="outbound.*")
    for account in accounts:
        # Single active consumer: one dispatcher sends for an account at a time, so its limiter
        # alone decides the account's rate; the others stand by and take over when it dies.
        await declare_stage(channel, prefix, names.dispatch_stage(account), delivery_limit=delivery_limit,
                            single_active=True)
    for tier in range(names.MAX_TIER + 1):
        args = quorum_arguments(dead_letter_exchange=work.name, delivery_limit=None)
        queue = await channel.declare_queue(names.delay_queue(prefix, tier), durable=True, arguments=args)
        await queue.bind(delay, arguments={"x-match": "all", names.H_DELAY_TIER: str(tier)})
    for exchange in pbx_exchanges:
        await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)


async def declare_stage(
    channel: AbstractChannel, prefix: str, stage: str, *, delivery_limit: int, single_active: bool = False
) -> str:
    args = quorum_arguments(dead_letter_exchange=names.dead_exchange(prefix), delivery_limit=delivery_limit)
    if single_active:
        args["x-single-active-consumer"] = True
    name = names.stage_queue(prefix, stage)
    queue = await channel.declare_queue(name, durable=True, arguments=args)
    await queue.bind(names.work_exchange(prefix), routing_key=name)
    return name


async def _declare_status(channel: AbstractChannel, prefix: str) -> None:
    unrouted = await channel.declare_exchange(
        names.unrouted_exchange(prefix), aio_pika.ExchangeType.FANOUT, durable=True
    )
    queue = await channel.declare_queue(
        names.unrouted_queue(prefix), durable=True, arguments={"x-queue-type": "quorum"}
    )
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
