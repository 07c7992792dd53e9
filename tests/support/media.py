"""Media settings for tests: the local store in a temp dir, a link key, quick retries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from smsbridge.config import MediaSettings, Settings
from smsbridge.secret import Secret

LINK_KEY = Secret("test-link-key-0123456789abcdefghijklmnop")


def media_settings(directory: Path, **overrides: Any) -> MediaSettings:
    fields: dict[str, Any] = dict(store="local", directory=str(directory), link_key=LINK_KEY, fetch_attempts=3,
                                  fetch_base_delay_s=0.01, fetch_timeout_s=10.0,
                                  fetch_allowed_networks=["127.0.0.0/8"])  # the fake media server
    fields.update(overrides)
    return MediaSettings(**fields)


def with_media(settings: Settings, media: MediaSettings) -> Settings:
    return msgspec.structs.replace(settings, media=media)
