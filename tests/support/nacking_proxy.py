"""A TCP proxy in front of RabbitMQ that can make the broker nack every publish on the
channels open at a given moment, as RabbitMQ 3.10 does after a node dies (broker/renewal.py):
a channel whose first publish to a quorum queue came while the queue's leader on record was
the dead node nacks everything it publishes there until that node is back, while a channel
opened later publishes normally.

`stick()` marks every channel open now, on every connection through the proxy; from then on
each publisher confirm the broker sends on such a channel reaches the client as a nack. A
channel opened afterwards (a new channel number, or a number the client closed and reused) is
not marked. It reads the AMQP frames of the broker-to-client stream and rewrites only the
method id of `basic.ack` (60, 80) into `basic.nack` (60, 120): both carry a delivery tag and
one octet of flags, so every frame keeps its length."""

from __future__ import annotations

import struct
from collections.abc import Callable

from tests.support.tcpproxy import TcpProxy

FRAME_METHOD = 1
FRAME_END = 0xCE
CHANNEL_OPEN_OK = (20, 11)
CHANNEL_CLOSE = (20, 40)
CHANNEL_CLOSE_OK = (20, 41)
BASIC_ACK = (60, 80)
BASIC_NACK_METHOD = 120


class _Frames:
    """One connection's broker-to-client stream, frame by frame."""

    def __init__(self) -> None:
        self.buffer = b""
        self.open: set[int] = set()
        self.stuck: set[int] = set()
        self.nacked = 0

    def edit(self, data: bytes) -> bytes:
        self.buffer += data
        out = bytearray()
        while len(self.buffer) >= 7:
            kind, channel, size = struct.unpack(">BHI", self.buffer[:7])
            if len(self.buffer) < 8 + size:
                break
            frame = bytearray(self.buffer[:8 + size])
            self.buffer = self.buffer[8 + size:]
            assert frame[-1] == FRAME_END, "lost the frame boundaries"
            if kind == FRAME_METHOD:
                self._method(channel, frame)
            out += frame
        return bytes(out)

    def _method(self, channel: int, frame: bytearray) -> None:
        method = struct.unpack(">HH", frame[7:11])
        if method == CHANNEL_OPEN_OK:
            self.open.add(channel)
        elif method in (CHANNEL_CLOSE, CHANNEL_CLOSE_OK):
            self.open.discard(channel)
            self.stuck.discard(channel)
        elif method == BASIC_ACK and channel in self.stuck:
            frame[9:11] = struct.pack(">H", BASIC_NACK_METHOD)
            frame[19] &= 0x01  # keep "multiple", clear "requeue"
            self.nacked += 1


class NackingProxy(TcpProxy):
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        super().__init__(upstream_host, upstream_port)
        self._connections: list[_Frames] = []

    def _downstream(self) -> Callable[[bytes], bytes]:
        frames = _Frames()
        self._connections.append(frames)
        return frames.edit

    def stick(self) -> int:
        """Every channel open now nacks its publishes from now on; how many channels that is."""
        for frames in self._connections:
            frames.stuck |= frames.open
        return sum(len(f.stuck) for f in self._connections)

    @property
    def nacked(self) -> int:
        return sum(f.nacked for f in self._connections)
