"""connect(attempts=None) keeps trying, however long the broker stays away."""

from __future__ import annotations

import pytest

from smsbridge.connection import connect, following, node, rotated, tuned
from tests.support.ports import free_port


class Enough(Exception):
    pass


async def test_waits_for_ever_when_attempts_is_none() -> None:
    delays: list[float] = []

    async def sleep(seconds: float) -> None:  # no real waiting: count the rounds instead
        delays.append(seconds)
        if len(delays) >= 1100:
            raise Enough

    # Nothing listens on this port: every round fails at once. Before the fix, round 1024 raised
    # OverflowError (2 ** 1024 in the backoff): about two hours into a real outage.
    with pytest.raises(Enough):
        await connect([f"amqp://guest:guest@127.0.0.1:{free_port()}/"], sleep=sleep)
    assert len(delays) == 1100 and max(delays) <= 10.0 and min(delays[10:]) >= 5.0


A, B, C = (f"amqp://guest:guest@10.0.0.{n}:5672/" for n in (1, 2, 3))


def test_the_next_node_skips_the_one_the_other_connection_uses() -> None:
    # The connection's own URL carries our query (heartbeat, reconnect_interval): same node.
    assert node(following([A, B, C], tuned(A) + "&reconnect_interval=0.5", avoid=tuned(B))) == node(C)
    assert node(following([A, B, C], C, avoid=A)) == node(B)
    assert node(following([A, B, C], B)) == node(C)


def test_with_two_nodes_the_next_is_the_other_even_if_the_other_connection_is_there() -> None:
    assert node(following([A, B], A, avoid=B)) == node(B)
    assert node(following([A], A)) == node(A)


def test_an_unknown_current_url_moves_to_the_first_node() -> None:
    assert node(following([A, B, C], "amqp://guest:guest@10.9.9.9:5672/")) == node(A)


def test_the_second_connection_starts_on_the_second_node() -> None:
    assert rotated([A, B, C], 1) == [B, C, A]
    assert rotated([A], 1) == [A]
