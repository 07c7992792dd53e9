"""A loopback TCP proxy in front of RabbitMQ, so a test can take "the broker" away and back
without touching the real broker other tests share: `cut` is an outage the client sees (resets,
refused connections), `blackhole` a silent partition (every connection stays open, nothing
goes through, nothing is reset) until `heal`; `lag_s` a slow broker (what it sends is held that
long before the client gets it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._closing = asyncio.Event()  # cleared: a side's close is held too (`blackhole(closes_too=True)`)
        self._closing.set()
        self.port = 0
        self.lag_s = 0.0  # each chunk from the broker is held this long: confirms come late

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._flowing.wait()  # during a partition the handshake goes nowhere
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        for src, dst, edit, lag in ((reader, up_writer, None, None),
                                    (up_reader, writer, self._downstream(), lambda: self.lag_s)):
            task = asyncio.create_task(self._pipe(src, dst, self._flowing, self._closing, edit, lag))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    def _downstream(self) -> Callable[[bytes], bytes] | None:
        """What each new connection's broker-to-client bytes go through (nothing: as they are)."""
        return None

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, flowing: asyncio.Event,
                    closing: asyncio.Event, edit: Callable[[bytes], bytes] | None = None,
                    lag: Callable[[], float] | None = None) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await src.read(65536):
                # Held, not dropped: like TCP retransmitting across a partition, the stream
                # resumes intact when it heals, and nothing reads on meanwhile.
                await flowing.wait()
                if lag is not None and lag() > 0:
                    await asyncio.sleep(lag())
                dst.write(data if edit is None else edit(data))
                await dst.drain()
            await closing.wait()
        dst.close()

    async def cut(self) -> None:
        """The broker "goes down": refuse new connections and drop the open ones."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    def blackhole(self, *, closes_too: bool = False) -> None:
        """A silent partition: connections stay open, no byte goes through either way. By default
        a side that closes its connection meanwhile still closes the other side at once;
        `closes_too`: that close is held until `heal` as well (the server never hears of it)."""
        self._flowing.clear()
        if closes_too:
            self._closing.clear()

    def heal(self) -> None:
        self._flowing.set()
        self._closing.set()

    async def restore(self) -> None:
        """The broker is back, on the same port."""
        await self.start()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"
