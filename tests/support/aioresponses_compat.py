"""aioresponses 0.7.9 predates aiohttp 3.14, whose `ClientResponse` needs a `stream_writer`.

Upstream issue: pnuckowski/aioresponses#289 (open). We keep aiohttp 3.14 (it carries a security
fix) and hand aioresponses, through its public `response_class` argument, a response class
that supplies the missing argument. Remove this once aioresponses ships a fix.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiohttp import ClientResponse


class CompatResponse(ClientResponse):
    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        # With no request writer, aiohttp reads only `output_size` (bytes sent) from it.
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)
