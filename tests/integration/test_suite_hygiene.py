"""The suite keeps the shared broker lean: queues a killed run leaves behind expire."""

from __future__ import annotations

import subprocess

from aio_pika.abc import AbstractChannel

from smsbridge.broker import names, topology
from tests.support.broker import LEFTOVER_POLICY
from tests.support.settings import ACCOUNT
from tests.support.wait import eventually


def _policy_of(queue: str) -> str:
    done = subprocess.run(["rabbitmqctl", "-q", "list_queues", "--no-table-headers", "name", "policy"],
                          capture_output=True, text=True, timeout=60, check=True)
    for line in done.stdout.splitlines():
        name, _, policy = line.partition("\t")
        if name == queue:
            return policy.strip()
    return "<no such queue>"


async def test_the_suite_s_quorum_queues_carry_the_leftover_expiry_policy(
        amqp_url: str, channel: AbstractChannel, prefix: str) -> None:
    await topology.declare(channel, prefix, delivery_limit=5, accounts=[ACCOUNT])
    inbound = names.stage_queue(prefix, "inbound")
    await eventually(lambda: _policy_of(inbound) == LEFTOVER_POLICY, timeout=30,
                     what=f"{inbound} carrying the {LEFTOVER_POLICY} policy")
