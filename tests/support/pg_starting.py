"""A loopback server that answers every PostgreSQL connection as a server still starting up
does (`pg_ctl start` after a crash, while it replays its WAL): an ErrorResponse with SQLSTATE
57P03, then the connection closes. asyncpg reports it as `CannotConnectNowError`. Another
SQLSTATE can be given (53300: every connection slot taken)."""

from __future__ import annotations

import asyncio
import contextlib
import struct

SSL_REQUEST = 80877103


def error_response(sqlstate: str, text: str) -> bytes:
    fields = b"".join(kind + value.encode() + b"\0" for kind, value in
                      ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", sqlstate), (b"M", text)))
    body = fields + b"\0"
    return b"E" + struct.pack("!I", len(body) + 4) + body


class StartingPostgres:
    def __init__(self, sqlstate: str = "57P03", text: str = "the database system is starting up") -> None:
        self._sqlstate, self._text = sqlstate, text
        self._server: asyncio.Server | None = None
        self.port = 0
        self.refused = 0

    async def __aenter__(self) -> StartingPostgres:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            length, code = struct.unpack("!II", await reader.readexactly(8))
            if code == SSL_REQUEST:  # no TLS here; the startup message follows
                writer.write(b"N")
                (length,) = struct.unpack("!I", await reader.readexactly(4))
                await reader.readexactly(length - 4)
            else:
                await reader.readexactly(length - 8)
            writer.write(error_response(self._sqlstate, self._text))
            await writer.drain()
            self.refused += 1
        writer.close()
