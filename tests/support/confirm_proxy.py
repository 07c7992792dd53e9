"""A loopback proxy in front of RabbitMQ that can hold back the broker's publisher confirms for
some routing keys while it passes the rest: what a node cut off from its cluster looks like to a
client. Such a node still confirms a publish that needs no queue (the liveness probe) at once,
but not one its quorum queues would have to commit; its connections stay open.

Here the publishes themselves reach the real broker and are stored; only their confirms are
withheld, until `release` sends them (late, as a healed partition would) or `close` drops
them. The proxy reads the AMQP frames each way (with pamqp, which aiormq itself uses): from the
client, `Confirm.Select` and each `Basic.Publish` (to number the delivery tags per channel, as
the broker does); from the broker, each `Basic.Ack`, which it splits into one per delivery tag
so that a confirm covering several publishes passes for some and waits for the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable

from pamqp import commands, frame

from tests.support.tcpproxy import TcpProxy

FRAME_HEADER = 7  # type, channel, size; then the payload and one end octet


class Tags:
    """Per channel of one connection: the routing key of each publish not yet confirmed."""

    def __init__(self) -> None:
        self.confirming: dict[int, int] = {}  # channel -> the last delivery tag it used
        self.keys: dict[int, dict[int, str]] = {}  # channel -> delivery tag -> routing key

    def seen_from_client(self, channel: int, value: object) -> None:
        if isinstance(value, commands.Confirm.Select):
            self.confirming[channel], self.keys[channel] = 0, {}
        elif isinstance(value, commands.Basic.Publish) and channel in self.confirming:
            self.confirming[channel] += 1
            self.keys[channel][self.confirming[channel]] = value.routing_key
        elif isinstance(value, commands.Channel.Open | commands.Channel.Close):
            self.confirming.pop(channel, None)
            self.keys.pop(channel, None)

    def acked(self, channel: int, ack: commands.Basic.Ack) -> list[tuple[int, str]]:
        """The (tag, routing key) pairs one `Basic.Ack` confirms."""
        keys = self.keys.get(channel, {})
        tags = sorted(t for t in keys if t <= ack.delivery_tag) if ack.multiple else [ack.delivery_tag]
        return [(tag, keys.pop(tag, "")) for tag in tags]


def frames(buffer: bytearray) -> list[tuple[bytes, int, object]]:
    """Every whole frame at the start of `buffer` (removed from it): raw bytes, channel, value."""
    found = []
    while True:
        if buffer[:4] == b"AMQP":
            size = 8
        elif len(buffer) >= FRAME_HEADER:
            size = FRAME_HEADER + struct.unpack(">I", buffer[3:7])[0] + 1
        else:
            return found
        if len(buffer) < size:
            return found
        raw = bytes(buffer[:size])
        del buffer[:size]
        _, channel, value = frame.unmarshal(raw)
        found.append((raw, channel, value))


class ConfirmHoldingProxy(TcpProxy):
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        super().__init__(upstream_host, upstream_port)
        self._hold: Callable[[str], bool] | None = None
        self._held: list[tuple[asyncio.StreamWriter, bytes]] = []

    def hold(self, hold: Callable[[str], bool]) -> None:
        """From now on, withhold the confirm of every publish whose routing key `hold` picks."""
        self._hold = hold

    @property
    def held(self) -> int:
        return len(self._held)

    async def release(self) -> None:
        """Confirm everything withheld (late), and withhold nothing more."""
        self._hold = None
        held, self._held = self._held, []
        for writer, data in held:
            with contextlib.suppress(OSError, RuntimeError):
                writer.write(data)
                await writer.drain()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        tags = Tags()
        for work in (self._from_client(reader, up_writer, tags), self._from_broker(up_reader, writer, tags)):
            task = asyncio.create_task(work)
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _from_client(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, tags: Tags) -> None:
        buffer = bytearray()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await src.read(65536):
                await self._flowing.wait()  # `blackhole` works here too
                buffer += data
                for raw, channel, value in frames(buffer):
                    tags.seen_from_client(channel, value)
                    dst.write(raw)
                await dst.drain()
        dst.close()

    async def _from_broker(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, tags: Tags) -> None:
        buffer = bytearray()
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await src.read(65536):
                await self._flowing.wait()
                buffer += data
                for raw, channel, value in frames(buffer):
                    if not isinstance(value, commands.Basic.Ack):
                        dst.write(raw)
                        continue
                    for tag, key in tags.acked(channel, value):
                        one = frame.marshal(commands.Basic.Ack(delivery_tag=tag), channel)
                        if self._hold is not None and self._hold(key):
                            self._held.append((dst, one))
                        else:
                            dst.write(one)
                await dst.drain()
        dst.close()
