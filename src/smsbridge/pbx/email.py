"""Email delivery (aiosmtplib): a text as a mail to the extension's address, as a fallback when
the tenant's previous target gave up, or as a copy of every text.

STARTTLS or implicit TLS, with credentials from secret references and an optional private CA.
SMTP 4xx answers, timeouts and refused connections are retried; 5xx answers are permanent and
dead-lettered with the SMTP code. Logs carry neither the text nor the addresses.
"""

from __future__ import annotations

import ssl

import aiohttp
import aiosmtplib

from smsbridge.config import EmailTarget
from smsbridge.errors import PermanentError, RetryableError
from smsbridge.events import InboundDelivery, Media
from smsbridge.pbx.email_message import Attachment, build


def classify_smtp(code: int, message: str) -> None:
    """Raise the right error for an SMTP refusal."""
    if 400 <= code < 500:
        raise RetryableError(f"mail server answered {code}: {message[:200]}")
    raise PermanentError(f"mail server refused the mail with {code}: {message[:200]}", code=f"smtp_{code}")


class EmailAdapter:
    kind = "email"

    def __init__(self, target: EmailTarget, session: aiohttp.ClientSession) -> None:
        self._target = target
        self._session = session
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
            await aiosmtplib.send(
                mail, hostname=t.host, port=t.port, use_tls=t.security == "tls", start_tls=t.security == "starttls",
                username=t.username or None, password=t.password.reveal() if t.password else None,
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
        that cannot be fetched is linked too: the mail must not wait for it."""
        attachments: list[Attachment] = []
        links: list[Media] = []
        room = self._target.attach_max_bytes
        for item in media:
            data = None if item.size is not None and item.size > room else await self._fetch(item.url, room)
            if data is None:
                links.append(item)
            else:
                attachments.append(Attachment(item, data))
                room -= len(data)
        return attachments, links

    async def _fetch(self, url: str, limit: int) -> bytes | None:
        try:
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=self._target.timeout_s)) as got:
                if got.status != 200:
                    return None
                data = await got.content.read(limit + 1)
        except (aiohttp.ClientError, TimeoutError):
            return None
        return data if len(data) <= limit else None

    async def close(self) -> None:
        return None
