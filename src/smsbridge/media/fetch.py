"""Downloading one attachment into the store: streamed, capped, timed out, retried with backoff.

A download that cannot succeed by trying again (larger than the cap, a type other than the one
announced) is refused at once; anything else (timeouts, refused connections, non-200 answers,
including the 403 of an expired S3 link, which may also be a transient signing error) is retried
`fetch_attempts` times in all before the caller gives up on that attachment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

import aiohttp

from smsbridge.backoff import compute_backoff
from smsbridge.config import MediaSettings
from smsbridge.destinations import DestinationRefused, NotHttp, TooManyRedirects, get_checked, networks, refusal
from smsbridge.media.store import MediaStore, Stored, TooLarge

CHUNK = 256 * 1024
MAX_REDIRECTS = 3
MAX_DELAY_S = 30.0


class FetchFailed(Exception):
    """This attempt failed; another may succeed. `reason` is safe to log and to show the PBX."""

    def __init__(self, reason: str, code: str = "failed") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class FetchRefused(FetchFailed):
    """No attempt can succeed (too large, wrong type): not retried."""


@dataclass(frozen=True)
class Fetched:
    stored: Stored
    mime_type: str
    file_name: str | None = None  # when known better than from the URL


def check_type(announced: str | None, served: str) -> str:
    """The type to record: the announced one, unless the server sent something of another kind
    (e.g. an HTML or XML error page in place of a picture)."""
    if not announced:
        return served or "application/octet-stream"
    if served and served != "application/octet-stream" and served.split("/")[0] != announced.split("/")[0]:
        raise FetchRefused(f"served {served} where {announced} was announced", "wrong_type")
    return announced


class MediaFetcher:
    def __init__(self, session: aiohttp.ClientSession, store: MediaStore, settings: MediaSettings, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._session = session
        self._store = store
        self._settings = settings
        self._sleep = sleep
        self._allowed = networks(settings.fetch_allowed_networks)

    async def fetch(self, url: str, announced: str | None, max_bytes: int,
                    allowed_types: Collection[str] | None = None) -> Fetched:
        """Download into the store, trying up to `fetch_attempts` times; raise the last failure.
        With `allowed_types`, a type outside them is refused before its bytes are read."""
        attempts = self._settings.fetch_attempts
        for attempt in range(attempts):
            try:
                return await self._once(url, announced, max_bytes, allowed_types)
            except FetchRefused:
                raise
            except FetchFailed:
                if attempt + 1 >= attempts:
                    raise
            await self._sleep(compute_backoff(attempt, base=self._settings.fetch_base_delay_s, cap=MAX_DELAY_S))
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _once(self, url: str, announced: str | None, max_bytes: int,
                    allowed_types: Collection[str] | None) -> Fetched:
        try:
            async with asyncio.timeout(self._settings.fetch_timeout_s):
                response = await get_checked(self._session, url, self._allowed, MAX_REDIRECTS)
                async with response:
                    return await self._keep(response, announced, max_bytes, allowed_types)
        except NotHttp as exc:
            raise FetchRefused(str(exc), "bad_url") from None
        except TooManyRedirects as exc:
            raise FetchFailed(str(exc)) from None
        except TooLarge as exc:
            raise FetchRefused(f"more than the {exc.limit} bytes allowed", "too_large") from None
        except TimeoutError:
            raise FetchFailed(f"no complete answer within {self._settings.fetch_timeout_s:g} s") from None
        except (DestinationRefused, aiohttp.ClientError) as exc:
            if (refused := refusal(exc)) is not None:
                raise FetchRefused(str(refused), "destination_refused") from None
            raise FetchFailed(f"download failed: {exc.__class__.__name__}") from None

    async def _keep(self, response: aiohttp.ClientResponse, announced: str | None, max_bytes: int,
                    allowed_types: Collection[str] | None) -> Fetched:
        if response.status != 200:
            raise FetchFailed(f"the media server answered {response.status}")
        mime_type = check_type(announced, response.content_type)
        if allowed_types is not None and mime_type not in allowed_types:
            raise FetchRefused(f"type {mime_type} is not one an MMS may carry", "wrong_type")
        if response.content_length is not None and response.content_length > max_bytes:
            raise FetchRefused(f"{response.content_length} bytes, more than the {max_bytes} allowed", "too_large")
        stored = await self._store.put(response.content.iter_chunked(CHUNK), max_bytes=max_bytes)
        return Fetched(stored, mime_type)
