"""Reading what the bridge left in RabbitMQ: dead letters, status events."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue


async def scratch_queue(channel: AbstractChannel, name: str) -> AbstractQueue:
    """A test's own queue outside the topology. RabbitMQ removes it a minute after its last use
    (`x-expires`), so it goes even when the test fails half-way."""
    return await channel.declare_queue(name, arguments={"x-expires": 60_000})


LEFTOVER_POLICY = "smsbridge-test-leftovers"
LEFTOVER_PATTERN = "^(sbtest|bench)-"
LEFTOVER_EXPIRES_MS = 30 * 60 * 1000


def expire_leftover_queues(host: str) -> str | None:
    """Ask the local broker to delete the suite's and the benchmarks' queues 30 minutes after their
    last use (a policy on their name prefixes, priority 0, so a test's own policy wins).

    Each test deletes its topology when it ends, but a killed run (Ctrl-C, a CI timeout, a crashed
    worker) leaves its quorum queues behind, and hundreds of them slow a shared broker down. Returns
    why the policy could not be set (remote broker, no rabbitmqctl), or None."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        return f"the broker at {host} is not local"
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not on PATH"
    definition = json.dumps({"expires": LEFTOVER_EXPIRES_MS})
    done = subprocess.run(
        ["rabbitmqctl", "-q", "set_policy", "--apply-to", "queues", "--priority", "0",
         LEFTOVER_POLICY, LEFTOVER_PATTERN, definition],
        capture_output=True, text=True, timeout=60)
    return None if done.returncode == 0 else f"rabbitmqctl set_policy failed: {done.stderr.strip()[:300]}"


async def take(channel: AbstractChannel, queue_name: str, count: int = 1,
               timeout: float = 10.0) -> list[AbstractIncomingMessage]:
    """Get (and ack) `count` messages from a queue, waiting up to `timeout` seconds."""
    queue = await channel.get_queue(queue_name, ensure=False)
    found: list[AbstractIncomingMessage] = []
    deadline = time.monotonic() + timeout
    while len(found) < count and time.monotonic() < deadline:
        message = await queue.get(fail=False, no_ack=True)
        if message is None:
            await asyncio.sleep(0.05)
        else:
            found.append(message)
    assert len(found) == count, f"expected {count} message(s) in {queue_name}, got {len(found)}"
    return found


async def depth(channel: AbstractChannel, queue_name: str) -> int:
    """Ready messages, asked of the broker each time (a robust channel's declare returns its
    cached queue object, whose count never changes)."""
    underlying = await channel.get_underlay_channel()
    declared = await underlying.queue_declare(queue_name, passive=True)
    return int(declared.message_count or 0)


def header(message: AbstractIncomingMessage, name: str) -> Any:
    value = (message.headers or {}).get(name)
    return value.decode() if isinstance(value, bytes) else value
