"""Minimal references, the floor our real code is measured against in the same run.

- receiver: aiohttp + one msgspec decode + one aio-pika confirmed publish, nothing else;
- pipeline: that receiver plus, in the same process, a consumer that POSTs each message to the
  fake PBX and acks: inbound end to end with no rules, ledger or retries;
- dispatcher: consume a queue, POST each message to the simulator, ack.
Run as `python bench/reference.py receiver PORT AMQP_URL QUEUE`, `... pipeline PORT AMQP_URL QUEUE
PBX_URL` or `... dispatcher AMQP_URL QUEUE URL AUTH PREFETCH`. Each prints "ready" once it serves.
"""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import UTC, datetime

import aio_pika
import aiohttp
import msgspec
from aiohttp import web


async def receiver(port: int, amqp_url: str, queue_name: str, pbx_url: str | None = None) -> None:
    connection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    queue = await channel.declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})

    async def hook(request: web.Request) -> web.Response:
        raw = await request.read()
        msgspec.json.decode(raw)
        message = aio_pika.Message(raw, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                   headers={"received-us": time.time_ns() // 1000})
        # (AMQP's timestamp property is whole seconds, and aio-pika sends a float header as 32 bits)
        await channel.default_exchange.publish(message, routing_key=queue_name)
        return web.json_response({"status": "accepted"})

    if pbx_url is not None:
        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=64)
        session = aiohttp.ClientSession()

        async def forward(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            received = datetime.fromtimestamp(int(message.headers["received-us"]) / 1e6, UTC)  # type: ignore[arg-type]
            async with session.post(pbx_url, json={"received_at": received.isoformat()}) as response:
                await response.read()
            await message.ack()

        await (await consumer.get_queue(queue.name)).consume(forward)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


async def dispatcher(amqp_url: str, queue_name: str, url: str, auth: str, prefetch: int) -> None:
    connection = await aio_pika.connect_robust(amqp_url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    queue = await channel.declare_queue(queue_name, durable=True, arguments={"x-queue-type": "quorum"})
    async with aiohttp.ClientSession() as session:
        async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with session.post(url, data=message.body, headers={
                    "Authorization": auth, "Content-Type": "application/vnd.api+json"}) as response:
                await response.read()
            await message.ack()

        await queue.consume(handle)
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    kind, *rest = sys.argv[1:]
    if kind == "receiver":
        asyncio.run(receiver(int(rest[0]), rest[1], rest[2]))
    elif kind == "pipeline":
        asyncio.run(receiver(int(rest[0]), rest[1], rest[2], rest[3]))
    else:
        asyncio.run(dispatcher(rest[0], rest[1], rest[2], rest[3], int(rest[4])))
