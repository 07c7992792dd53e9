"""`check-config` for the `[media]` section."""

from __future__ import annotations

from smsbridge.config import MediaSettings
from smsbridge.destinations import network_problems

MIN_LINK_KEY_LENGTH = 32


def media_problems(media: MediaSettings) -> list[tuple[str, str]]:
    """(where, what) for each problem of the section."""
    problems = network_problems(media.fetch_allowed_networks, "media.fetch_allowed_networks")
    if media.store == "off":
        return problems
    if media.link_key is None:
        problems.append(("media.link_key", f'store = "{media.store}" needs a key to sign media links'))
    elif len(media.link_key.reveal()) < MIN_LINK_KEY_LENGTH:
        problems.append(("media.link_key", f"too short: use at least {MIN_LINK_KEY_LENGTH} random "
                                                       "characters"))
    if media.store == "s3" and not media.s3_bucket:
        problems.append(("media.s3_bucket", 'store = "s3" needs a bucket'))
    if media.public_url and not media.public_url.startswith(("http://", "https://")):
        problems.append(("media.public_url", "must start with http:// or https://"))
    return problems

