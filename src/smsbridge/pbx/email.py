"""Email delivery (aiosmtplib): a text as a mail to the extension's address, as a fallback when
the tenant's previous target gave up, or as a copy of every text.

STARTTLS or implicit TLS, with credentials from secret references and an optional private CA.
SMTP 4xx answers, timeouts and refused connections are retried; 5xx answers are permanent and
dead-lettered with the SMTP code. Logs carry neither the text nor the addresses.

Pictures are fetched through a guarded session of the adapter's own (`smsbridge.destinations`):
a media URL comes from a webhook, so it could name 127.0.0.1, the cloud's metadata address or a
private service. Only public addresses are fetched, plus `[media] fetch_allowed_networks` and the
bridge's own media host when `[media] public_url` names it by address (`fetch_networks`);
redirects are followed one hop at a time, each hop checked. A picture refused is never fetched:
the mail links it instead, like one beyond the size cap.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
from collections.abc import Iterable

import aiohttp
import aiosmtplib
import structlog
import yarl

from smsbridge.config import EmailTarget, Settings
from smsbridge.destinations import DestinationRefused, TooManyRedirects, get_checked, guarded_session, networks, refusal
from smsbridge.errors import PermanentError, RetryableError
from smsbridge.events import InboundDelivery, Media
from smsbridge.pbx.email_message import Attachment, build
from smsbridge.targets import EMAIL_SMTP_TIMEOUTS

log = structlog.get_logger("smsbridge.email")
MAX_REDIRECTS = 3


def fetch_networks(settings: Settings) -> list[str]:
    """Where pictures may be fetched from besides public addresses: `[media]
    fetch_allowed_networks`, and the bridge's own media host when its public URL names an address
    (a name is resolved and checked like any other)."""
    allowed = list(settings.media.fetch_allowed_networks)
    host = (yarl.URL(settings.media_base_url()).host or "").strip("[]")
    try:
        allowed.append(str(ipaddress.ip_network(host)))
    except ValueError:
        pass
    return allowed


def classify_smtp(code: int, message: str) -> None:
    """Raise the right error for an SMTP refusal. Only the code and the enhanced status (e.g.
    5.1.1) are kept: the server's text often quotes the recipient's address."""
    status = _enhanced_status(message)
    if 400 <= code < 500:
        raise RetryableError(f"mail server answered {code}{status}")
    raise PermanentError(f"mail server refused the mail with {code}{status}", code=f"smtp_{code}")


def _enhanced_status(message: str) -> str:
    match = re.match(r"\s*([245]\.\d{1,3}\.\d{1,3})\b", message)
    return f" ({match.group(1)})" if match else ""


class EmailAdapter:
    kind = "email"

    def __init__(self, target: EmailTarget, allowed_networks: Iterable[str]) -> None:
        self._target = target
        self._allowed_entries = list(allowed_networks)
        self._allowed = networks(self._allowed_entries)
        self._session: aiohttp.ClientSession | None = None
        self._tls = ssl.create_default_context(cafile=target.ca_file or None)

    def recipient(self, extension: str) -> str:
        address = self._target.recipients.get(extension) or self._target.default_recipient
        if not address:
            raise PermanentError(f"no email address for extension {extension}", code="no_email_address")
        return address

    async def deliver(self, delivery: InboundDelivery) -> None:
        recipient = self.recipient(delivery.extension)
        attachments, links = await self._media(delivery.media)
        mail = build(delivery, sender=self._target.sender, recipient=recipient, attachments=attachments, links=links)
        t = self._target
        try:
            async with asyncio.timeout(EMAIL_SMTP_TIMEOUTS * t.timeout_s):  # aiosmtplib's timeout is per command
                await aiosmtplib.send(
                    mail, hostname=t.host, port=t.port, use_tls=t.security == "tls",
                    start_tls=t.security == "starttls", username=t.username or None,
                    password=t.password.reveal() if t.password else None,
                    tls_context=self._tls if t.security != "none" else None, timeout=t.timeout_s)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            first = exc.recipients[0]
            classify_smtp(first.code, first.message)
        except aiosmtplib.SMTPResponseException as exc:
            classify_smtp(exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise RetryableError(f"mail server unreachable: {exc.__class__.__name__}") from None

    async def _media(self, media: tuple[Media, ...]) -> tuple[list[Attachment], list[Media]]:
        """Attach pictures while they fit the cap (in the order sent), link the rest; a picture
        that cannot be fetched, or not within `timeout_s` for all of them, is linked too: the mail
        must not wait for it."""
        attachments: list[Attachment] = []
        links: list[Media] = []
        room = self._target.attach_max_bytes
        deadline = asyncio.get_running_loop().time() + self._target.timeout_s  # for all pictures together
        for item in media:
            fits = item.size is None or item.size <= room
            data = await self._fetch(item.url, room, deadline) if fits else None
            if data is None:
                links.append(item)
            else:
                attachments.append(Attachment(item, data))
                room -= len(data)
        return attachments, links

    async def _fetch(self, url: str, limit: int, deadline: float) -> bytes | None:
        if self._session is None:
            self._session = guarded_session(self._allowed_entries)
        try:
            async with asyncio.timeout_at(deadline):
                response = await get_checked(self._session, url, self._allowed, MAX_REDIRECTS)
                async with response:
                    if response.status != 200:
                        return None
                    data = await response.content.read(limit + 1)
        except (DestinationRefused, aiohttp.ClientError) as exc:
            if (refused := refusal(exc)) is not None:
                log.warning("picture linked, not attached: its address is not allowed", reason=str(refused))
            return None
        except (TooManyRedirects, TimeoutError, ValueError):  # ValueError: `NotHttp`, or a URL yarl cannot parse
            return None
        return data if len(data) <= limit else None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
