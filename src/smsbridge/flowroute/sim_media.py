"""Media for the Flowroute simulator: sample pictures it serves as Flowroute's media host would
(`GET /_sim/media/{name}`, for inbound MMS in the sandbox), and fetching an outbound MMS's media
as Flowroute does before it accepts a send (over 767,840 bytes, or unfetchable: 422)."""

from __future__ import annotations

import struct
import zlib

import aiohttp
from aiohttp import web

FLOWROUTE_MMS_LIMIT = 767_840  # the byte limit quoted in Flowroute's 422 example (flowroute-api.md §3)


def sample_png(width: int = 64, height: int = 64) -> bytes:
    """A small valid PNG (a colour gradient), made here so the sandbox needs no binary file."""
    rows = b"".join(b"\x00" + b"".join(bytes((x * 4 % 256, y * 4 % 256, 160)) for x in range(width))
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


class SimMedia:
    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {"sample.png": (sample_png(), "image/png")}
        self.fetched: list[tuple[str, int, int]] = []  # outbound media fetched: (url, HTTP status, bytes)

    async def serve(self, request: web.Request) -> web.Response:
        found = self.files.get(request.match_info["name"])
        if found is None:
            return web.Response(status=404)
        return web.Response(body=found[0], content_type=found[1])

    async def check_outbound(self, session: aiohttp.ClientSession, urls: list[str]) -> str | None:
        """Fetch an MMS's media like Flowroute; the 422 detail if it would refuse them, else None."""
        total = 0
        for url in urls:
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response:
                    data = await response.content.read(FLOWROUTE_MMS_LIMIT + 1)
                    self.fetched.append((url, response.status, len(data)))
                    if response.status != 200:
                        return f'Error fetching media: File at "{url}" answered {response.status}.'
            except (aiohttp.ClientError, TimeoutError):
                self.fetched.append((url, 0, 0))
                return f'Error fetching media: File at "{url}" could not be fetched.'
            total += len(data)
            if total > FLOWROUTE_MMS_LIMIT:
                return f'Error fetching media: File at "{url}" is over {FLOWROUTE_MMS_LIMIT} byte limit.'
        return None
