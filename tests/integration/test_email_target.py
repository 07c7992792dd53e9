"""The `email` target against a real SMTP server (aiosmtpd: STARTTLS and AUTH required)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from smsbridge.config import EmailTarget, MediaSettings, Settings
from smsbridge.errors import PermanentError, RetryableError
from smsbridge.events import InboundDelivery, Media
from smsbridge.pbx.email import EmailAdapter, fetch_networks
from smsbridge.secret import Secret
from tests.support.smtp import PASSWORD, USER, MailServer, smtp

__all__ = ["smtp"]  # the fixture

PICTURE = b"\x89PNG fake picture " * 10
BIG = b"B" * 5000


HITS: list[str] = []


@pytest.fixture
async def media_url() -> AsyncIterator[str]:
    """Where the pictures are: Flowroute's media URLs in production, a loopback server here."""
    HITS.clear()

    async def small(request: web.Request) -> web.Response:
        HITS.append(request.path)
        return web.Response(body=PICTURE, content_type="image/png")

    async def elsewhere(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def big(_: web.Request) -> web.Response:
        return web.Response(body=BIG, content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/small.png", small)
    app.router.add_get("/big.jpg", big)
    app.router.add_get("/elsewhere", elsewhere)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def target(smtp: MailServer, **overrides: Any) -> EmailTarget:
    fields: dict[str, Any] = dict(tenant="acme", host="127.0.0.1", port=smtp.port, ca_file=str(smtp.cert),
                                  username=USER, password=Secret(PASSWORD), sender="texts@bridge.test",
                                  recipients={"1001": "alice@example.test"}, attach_max_bytes=1000, timeout_s=10)
    fields.update(overrides)
    return EmailTarget(**fields)


def delivery(**overrides: Any) -> InboundDelivery:
    fields: dict[str, Any] = dict(tenant="acme", config_id="main", mdr_id="mdr2-mail", from_="+12065550199",
                                  to="+12065550100", extension="1001", body="Call me <back> 👋",
                                  received_at=datetime.now(UTC))
    fields.update(overrides)
    return InboundDelivery(**fields)


LOOPBACK_PICTURES = ["127.0.0.1/32"]  # the test's picture server, allowed as `[media] fetch_allowed_networks`


async def send(email_target: EmailTarget, item: InboundDelivery, allowed: list[str] | None = None) -> None:
    adapter = EmailAdapter(email_target, LOOPBACK_PICTURES if allowed is None else allowed)
    try:
        await adapter.deliver(item)
    finally:
        await adapter.close()


async def test_one_mail_with_headers_text_and_html(smtp: MailServer) -> None:
    await send(target(smtp), delivery())
    (mail,) = smtp.handler.mails
    assert smtp.handler.envelopes == [("texts@bridge.test", ["alice@example.test"])]
    assert mail["Subject"] == "Text from +12065550199 to +12065550100 (ext. 1001)"
    assert mail["From"] == "texts@bridge.test" and mail["To"] == "alice@example.test"
    parts = {p.get_content_type(): p.get_payload(decode=True).decode() for p in mail.walk() if not p.is_multipart()}
    assert "Call me <back> 👋" in parts["text/plain"]
    assert "Call me &lt;back&gt; 👋" in parts["text/html"]


async def test_a_resend_carries_the_same_message_id(smtp: MailServer) -> None:
    await send(target(smtp), delivery())
    await send(target(smtp), delivery(event_id="another-copy"))
    first, again = smtp.handler.mails
    assert first["Message-ID"] == again["Message-ID"]
    await send(target(smtp, default_recipient="desk@example.test"), delivery(extension="1002"))
    assert smtp.handler.mails[2]["Message-ID"] != first["Message-ID"]


async def test_pictures_attached_up_to_the_cap_and_linked_beyond(smtp: MailServer, media_url: str) -> None:
    media = (Media(url=f"{media_url}/small.png", mime_type="image/png", file_name="small.png"),
             Media(url=f"{media_url}/big.jpg", mime_type="image/jpeg", file_name="big.jpg"))
    await send(target(smtp, default_recipient="desk@example.test"), delivery(is_mms=True, media=media))
    (mail,) = smtp.handler.mails
    attached = [(p.get_filename(), p.get_payload(decode=True)) for p in mail.walk() if p.get_filename()]
    assert attached == [("small.png", PICTURE)]
    text = next(p for p in mail.walk() if p.get_content_type() == "text/plain").get_payload(decode=True).decode()
    assert f"{media_url}/big.jpg" in text
    assert mail["Subject"].startswith("Picture message from")


async def test_a_451_is_retried(smtp: MailServer) -> None:
    smtp.handler.script = ["451 4.3.0 try again later"]
    with pytest.raises(RetryableError, match="451"):
        await send(target(smtp), delivery())
    await send(target(smtp), delivery())  # the retry goes through
    assert len(smtp.handler.mails) == 1


async def test_a_550_is_permanent_with_the_smtp_code(smtp: MailServer) -> None:
    smtp.handler.script = ["550 5.1.1 no such mailbox"]
    with pytest.raises(PermanentError) as failure:
        await send(target(smtp), delivery())
    assert failure.value.code == "smtp_550"


async def test_wrong_credentials_are_permanent(smtp: MailServer) -> None:
    with pytest.raises(PermanentError) as failure:
        await send(target(smtp, password=Secret("wrong")), delivery())
    assert failure.value.code == "smtp_535"


async def test_an_extension_without_an_address_is_permanent(smtp: MailServer) -> None:
    with pytest.raises(PermanentError) as failure:
        await send(target(smtp), delivery(extension="999"))
    assert failure.value.code == "no_email_address"


async def test_an_unreachable_server_is_retried(smtp: MailServer) -> None:
    with pytest.raises(RetryableError):
        await send(target(smtp, port=9), delivery())


async def test_a_picture_on_a_refused_address_is_never_fetched_and_linked(smtp: MailServer, media_url: str) -> None:
    """Loopback not allowed (no fetch_allowed_networks): the picture server is never asked, by
    address or by a name that resolves to it, and hostile URLs are linked, never followed."""
    port = media_url.rsplit(":", 1)[1]
    urls = [f"{media_url}/small.png", f"http://localhost:{port}/small.png", "http://169.254.169.254/latest/meta-data",
            "file:///etc/passwd"]
    media = tuple(Media(url=url, mime_type="image/png", file_name=f"p{i}.png") for i, url in enumerate(urls))
    await send(target(smtp), delivery(is_mms=True, media=media), allowed=[])
    (mail,) = smtp.handler.mails
    assert HITS == []
    assert [p for p in mail.walk() if p.get_filename()] == []
    text = next(p for p in mail.walk() if p.get_content_type() == "text/plain").get_payload(decode=True).decode()
    assert all(url in text for url in urls)


async def test_a_redirect_to_a_refused_address_is_not_followed(smtp: MailServer, media_url: str) -> None:
    """The allowed server (127.0.0.1) redirects to the same pictures on 127.0.0.2, not allowed."""
    app = web.Application()

    async def small(request: web.Request) -> web.Response:
        HITS.append(f"other{request.path}")
        return web.Response(body=PICTURE, content_type="image/png")

    app.router.add_get("/small.png", small)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.2", 0)
    await site.start()
    other_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        media = (Media(url=f"{media_url}/elsewhere?to=http://127.0.0.2:{other_port}/small.png",
                       mime_type="image/png", file_name="moved.png"),
                 Media(url=f"{media_url}/elsewhere?to=/small.png", mime_type="image/png", file_name="here.png"))
        await send(target(smtp), delivery(is_mms=True, media=media))
    finally:
        await runner.cleanup()
    (mail,) = smtp.handler.mails
    assert HITS == ["/small.png"]  # the redirect within the allowed host was followed, the other one not
    assert [p.get_filename() for p in mail.walk() if p.get_filename()] == ["here.png"]


@pytest.mark.parametrize(("public_url", "extra"), [
    ("http://10.1.2.3:8080", ["10.1.2.3/32"]),
    ("http://[fd00::5]:8080/", ["fd00::5/128"]),
    ("https://sms.example.com", []),
    ("", ["127.0.0.1/32"]),  # falls back to [receiver] public_url, http://127.0.0.1:8080 by default
])
def test_pictures_may_come_from_the_allowed_networks_and_the_bridges_own_media_host(public_url: str,
                                                                                      extra: list[str]) -> None:
    settings = Settings(media=MediaSettings(public_url=public_url, fetch_allowed_networks=["192.168.7.0/24"]))
    assert fetch_networks(settings) == ["192.168.7.0/24", *extra]
