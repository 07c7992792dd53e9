"""When the inbound stage holds texts after its connection comes back (`broker/handback.py`).

The exceptions are made the way aiormq makes them when a connection ends (seen against the real
broker through a proxy: an end of file, a reset, and `rabbitmqctl close_connection`)."""

from __future__ import annotations

import asyncio

import aiormq.exceptions
import pytest
import structlog.testing

from smsbridge.broker.handback import HandBack, process_gone


def raised_from(cause: BaseException, outer: Exception) -> BaseException:
    try:
        try:
            raise cause
        except BaseException as exc:
            raise outer from exc
    except Exception as caught:
        return caught


EOF_LOST = raised_from(asyncio.IncompleteReadError(b"", 1), aiormq.exceptions.AMQPConnectionError(
    "Server connection unexpectedly closed. Read 0 bytes but 1 bytes expected"))
RESET = raised_from(ConnectionResetError(104, "Connection reset by peer"),
                    aiormq.exceptions.AMQPConnectionError("Server connection reset"))
PAUSED = aiormq.exceptions.ConnectionClosed(
    320, "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'")
FORCED_AFTER_RESET = raised_from(ConnectionResetError(104, "reset"), PAUSED)  # the node spoke first: alive
SILENT = aiormq.exceptions.AMQPConnectionError("Server connection probably hang, last heartbeat received 33 s ago")


@pytest.mark.parametrize(("exc", "gone"), [
    (EOF_LOST, True), (RESET, True), (BrokenPipeError(), True),
    (PAUSED, False), (FORCED_AFTER_RESET, False), (SILENT, False), (TimeoutError(), False), (None, False),
])
def test_only_a_connection_the_nodes_operating_system_ended_says_the_process_is_gone(
        exc: BaseException | None, gone: bool) -> None:
    assert process_gone(exc) is gone


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_pausing_node_holds_texts_from_the_loss_until_the_hold_after_the_reconnection() -> None:
    clock = Clock()
    hand_back = HandBack(10.0, clock)
    assert hand_back.remaining() == 0.0
    hand_back.closed(PAUSED)
    clock.now += 3.0
    assert hand_back.remaining() == 10.0  # a message taken before `reconnected` runs waits a whole hold
    with structlog.testing.capture_logs() as logs:
        hand_back.reconnected()
    assert [e["log_level"] for e in logs] == ["warning"] and logs[0]["hold_s"] == 10.0
    assert "320" in logs[0]["reason"]
    clock.now += 4.0
    assert hand_back.remaining() == pytest.approx(6.0)
    clock.now += 6.0
    assert hand_back.remaining() == 0.0
    hand_back.reconnected()  # a reconnection after no loss that holds: nothing new
    assert hand_back.remaining() == 0.0


def test_a_dead_node_our_own_close_or_a_zero_hold_hold_nothing() -> None:
    clock = Clock()
    for hold_s, exc in ((10.0, EOF_LOST), (10.0, RESET), (10.0, None), (0.0, PAUSED)):
        hand_back = HandBack(hold_s, clock)
        hand_back.closed(exc)
        assert hand_back.remaining() == 0.0
        hand_back.reconnected()
        assert hand_back.remaining() == 0.0, (hold_s, exc)


def test_only_the_loss_counts_not_the_failed_attempts_to_reconnect_after_it() -> None:
    clock = Clock()
    hand_back = HandBack(5.0, clock)
    hand_back.closed(RESET)
    hand_back.closed(PAUSED)  # an attempt at a node that was pausing: never consumed there
    hand_back.reconnected()
    assert hand_back.remaining() == 0.0
    hand_back.closed(PAUSED)  # lost again, this time to a pausing node
    hand_back.closed(raised_from(ConnectionRefusedError(111, "refused"), aiormq.exceptions.AMQPConnectionError()))
    hand_back.reconnected()
    assert hand_back.remaining() == 5.0
