"""A loopback proxy in front of RabbitMQ standing for a node that is cut off from its cluster and
then pauses itself (`pause_minority`), as in `make faults`' partition:

- `pause_on_deliver(key)`: from the next message the broker delivers with routing key `key`,
  nothing more reaches the client (that message and all after it are dropped: sent over the
  cut link, they never arrive), and the client is told the connection is closed, with the
  code and words of a pausing node (320, shutdown). New connections are refused.
- the broker is not told: the proxy keeps its side of every connection open, so the queue
  still counts the dropped messages as the lost consumer's, as the leader does until it
  declares the cut-off node down;
- `notice()`: it does now (the proxy closes its side): the broker hands the messages back.

Frames are read with pamqp (`confirm_proxy.frames`), so the close goes in between two frames.
"""

from __future__ import annotations

import asyncio
import contextlib

from pamqp import commands, frame

from tests.support.confirm_proxy import frames
from tests.support.tcpproxy import TcpProxy

SHUTDOWN = "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
PAUSING = commands.Connection.Close(reply_code=320, reply_text=SHUTDOWN, class_id=0, method_id=0)


class PausingProxy(TcpProxy):
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        super().__init__(upstream_host, upstream_port)
        self._key: str | None = None
        self.paused = asyncio.Event()
        self._held: list[asyncio.StreamWriter] = []  # the broker's side of each paused connection

    def pause_on_deliver(self, routing_key: str) -> None:
        self._key = routing_key

    async def notice(self) -> None:
        """The cluster declares the node down: the broker sees every paused connection close."""
        held, self._held = self._held, []
        for writer in held:
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.paused.is_set():
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        for work in (self._from_client(reader, up_writer), self._from_broker(up_reader, writer, up_writer)):
            task = asyncio.create_task(work)
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _from_client(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await src.read(65536):
                if not self.paused.is_set():  # once paused, nothing the client says gets through
                    dst.write(data)
                    await dst.drain()
        if not self.paused.is_set():
            dst.close()

    async def _from_broker(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                           upstream: asyncio.StreamWriter) -> None:
        buffer = bytearray()
        told = False  # this connection's client was told it is closed
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await src.read(65536):
                if told:
                    continue  # dropped: the broker goes on sending into the cut link
                buffer += data
                for raw, _, value in frames(buffer):
                    if (self._key is not None and isinstance(value, commands.Basic.Deliver)
                            and value.routing_key == self._key):
                        self._pause()
                    if self.paused.is_set():
                        break
                    dst.write(raw)
                if self.paused.is_set():  # this connection's, or another's: the node pauses as a whole
                    told = True
                    self._held.append(upstream)
                    dst.write(frame.marshal(PAUSING, 0))
                await dst.drain()
        dst.close()

    def _pause(self) -> None:
        """Every connection pauses at once, as the node does."""
        if not self.paused.is_set():
            self.paused.set()
            if self._server is not None:
                self._server.close()
