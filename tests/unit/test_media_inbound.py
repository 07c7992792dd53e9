"""The inbound stage with media kept: a fake Flowroute media server on loopback, the local store,
a SQLite ledger in a temp dir, the in-memory broker, and the receiver's `/media/{token}` route
served on loopback. The PBX's view is the published delivery; its links are fetched for real."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from smsbridge.errors import BrokerUnavailable
from smsbridge.events import InboundMessage, Media, MediaProblem
from smsbridge.ledger.media_ops import inbound_ref
from smsbridge.media import links
from smsbridge.media.setup import prune_media
from smsbridge.media.store import LocalStore, MediaStore
from tests.support.media import LINK_KEY, PICTURE, Rig, media_rig, media_settings
from tests.support.settings import DID_MAIN


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with media_rig(tmp_path, LocalStore(tmp_path / "media")) as built:
        yield built


def blobs(store: MediaStore) -> list[Path]:
    assert isinstance(store, LocalStore)
    return [p for p in store.directory.rglob("*") if p.is_file() and ".spool" not in p.parts]


async def test_the_delivery_carries_the_bridges_link_which_serves_the_exact_bytes_after_flowroute_expired(
        rig: Rig) -> None:
    url = rig.server.add("cat.jpg", PICTURE)
    deliveries = await rig.receive(Media(url=url, mime_type="image/jpeg", file_name="cat.jpg", media_id="m-1"))
    assert {d.extension for d in deliveries} == {"101", "102"}
    (item,) = deliveries[0].media
    assert not item.url.startswith(rig.server.url) and "/media/" in item.url
    assert (item.mime_type, item.file_name, item.size, item.media_id) == ("image/jpeg", "cat.jpg", len(PICTURE), "m-1")
    assert deliveries[0].media_problems == ()
    rig.server.expire("cat.jpg")  # Flowroute's link is dead from now on
    assert (await rig.get(url))[0] == 403
    status, body, headers = await rig.get(item.url)
    assert status == 200 and body == PICTURE
    assert headers["Content-Type"] == "image/jpeg" and headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Disposition"].startswith('inline; filename="cat.jpg"')


async def test_the_same_picture_in_two_texts_is_stored_once(rig: Rig) -> None:
    first = await rig.receive(Media(url=rig.server.add("a.jpg", PICTURE), mime_type="image/jpeg"), mdr_id="mdr2-a")
    second = await rig.receive(Media(url=rig.server.add("b.jpg", PICTURE), mime_type="image/jpeg"), mdr_id="mdr2-b",
                               from_="+12065550198")
    assert len(blobs(rig.store)) == 1
    assert first[0].media[0].url != second[0].media[0].url  # one link per message, one blob for both
    for delivery in (first[0], second[0]):
        assert (await rig.get(delivery.media[0].url))[:2] == (200, PICTURE)
    assert [len(await rig.ledger.media_of(inbound_ref("acme", "main", m))) for m in ("mdr2-a", "mdr2-b")] == [1, 1]


async def test_a_tampered_link_is_403_an_expired_one_410_and_a_pruned_one_404(rig: Rig) -> None:
    (delivery, _) = await rig.receive(Media(url=rig.server.add("c.jpg", PICTURE), mime_type="image/jpeg"))
    link = delivery.media[0].url
    token = link.rsplit("/", 1)[1]
    claims = links.verify(LINK_KEY, token)
    forged = links.sign(LINK_KEY, links.claims_for(claims.media_id, claims.key, "other-tenant", 3600))
    tampered = forged.split(".")[0] + "." + token.split(".")[1]  # another tenant's claims, this link's signature
    assert (await rig.get(link.replace(token, tampered)))[0] == 403
    expired = links.sign(LINK_KEY, links.claims_for(claims.media_id, claims.key, "acme", -1))
    status, body, _ = await rig.get(link.replace(token, expired))
    assert status == 410 and b"expired" in body
    await prune_media(rig.ledger, rig.store, timedelta(seconds=-1))  # everything is past retention
    assert (await rig.get(link))[0] == 404


async def test_a_download_that_never_works_delivers_the_text_without_it_named_and_counted(rig: Rig) -> None:
    good = rig.server.add("ok.jpg", PICTURE)
    dead = rig.server.add("gone.png", b"never seen", "image/png")
    rig.server.expire("gone.png")
    deliveries = await rig.receive(Media(url=good, mime_type="image/jpeg", file_name="ok.jpg"),
                                   Media(url=dead, mime_type="image/png", file_name="gone.png", media_id="m-2"))
    delivery = deliveries[0]
    assert delivery.body == "look at this" and [m.file_name for m in delivery.media] == ["ok.jpg"]
    (problem,) = delivery.media_problems
    assert (problem.media_id, problem.file_name, problem.mime_type) == ("m-2", "gone.png", "image/png")
    assert "403" in problem.reason and rig.server.hits["gone.png"] == 3
    assert rig.metrics.registry.get_sample_value(
        "smsbridge_media_missing_total", {"tenant": "acme", "reason": "failed"}) == 1.0


async def test_a_download_that_fails_then_recovers_is_delivered_with_the_picture(rig: Rig) -> None:
    url = rig.server.add("flaky.jpg", PICTURE)
    rig.server.fail_first("flaky.jpg", 2)
    (delivery, _) = await rig.receive(Media(url=url, mime_type="image/jpeg"))
    assert len(delivery.media) == 1 and delivery.media_problems == ()
    assert (await rig.get(delivery.media[0].url))[:2] == (200, PICTURE)


async def test_attachments_past_the_per_message_cap_are_named_not_fetched(rig: Rig) -> None:
    big = b"b" * 600_000  # two of these exceed the rig's 1,000,000-byte message cap
    first, second = rig.server.add("one.jpg", big), rig.server.add("two.jpg", big + b"2")
    (delivery, _) = await rig.receive(Media(url=first, mime_type="image/jpeg"),
                                      Media(url=second, mime_type="image/jpeg"))
    assert len(delivery.media) == 1 and [p.file_name for p in delivery.media_problems] == ["attachment-2.jpg"]
    assert "allowed" in delivery.media_problems[0].reason


async def test_a_redelivered_message_keeps_what_an_earlier_try_stored(rig: Rig) -> None:
    url = rig.server.add("once.jpg", PICTURE)
    rig.publisher.available = False
    with pytest.raises(BrokerUnavailable):
        await rig.receive(Media(url=url, mime_type="image/jpeg"))
    rig.publisher.available = True
    rig.server.expire("once.jpg")  # by the retry, Flowroute's URL has died
    (delivery, _) = await rig.receive(Media(url=url, mime_type="image/jpeg"))
    assert delivery.media_problems == () and (await rig.get(delivery.media[0].url))[:2] == (200, PICTURE)


def test_links_expire_after_the_tenants_lifetime() -> None:
    media = media_settings(Path("/unused"), link_days=30.0, link_days_by_tenant={"acme": 90.0})
    assert media.link_lifetime_s("acme") == 90 * 86400 and media.link_lifetime_s("other") == 30 * 86400
    claims = links.claims_for(1, "a" * 64, "acme", media.link_lifetime_s("acme"), now=0.0)
    assert claims.expires == 90 * 86400 > 7 * 86400  # longer than an S3 presigned URL can live


async def test_an_attachment_flowroute_gave_no_url_for_and_a_failed_download_are_named_in_one_list(
        rig: Rig) -> None:
    """Issue 18's unusable attachment and issue 20's failed download are one notion: both named in
    media_problems, both counted by smsbridge_media_missing_total, the text delivered regardless."""
    dead = rig.server.add("gone.png", b"never seen", "image/png")
    rig.server.expire("gone.png")
    unusable = MediaProblem(media_id="m-0", file_name="nourl.jpg", reason="Flowroute gave no URL for it")
    (delivery, _) = await rig.receive(Media(url=dead, mime_type="image/png", file_name="gone.png", media_id="m-1"),
                                      unusable=(unusable,))
    assert delivery.body == "look at this" and delivery.media == ()
    assert [(p.media_id, p.file_name) for p in delivery.media_problems] == [("m-0", "nourl.jpg"), ("m-1", "gone.png")]
    sample = rig.metrics.registry.get_sample_value
    assert sample("smsbridge_media_missing_total", {"tenant": "acme", "reason": "unusable"}) == 1.0
    assert sample("smsbridge_media_missing_total", {"tenant": "acme", "reason": "failed"}) == 1.0


async def test_another_tenant_posting_the_same_flowroute_id_never_gets_the_first_tenants_picture(rig: Rig) -> None:
    await rig.receive(Media(url=rig.server.add("acme.jpg", PICTURE), mime_type="image/jpeg"), mdr_id="mdr2-same")
    theirs = b"\xff\xd8\xff globex's own picture"
    message = InboundMessage(tenant="globex", config_id="gx", mdr_id="mdr2-same", from_="+12065550199", to=DID_MAIN,
                             body="hi", is_mms=True,
                             media=(Media(url=rig.server.add("globex.jpg", theirs), mime_type="image/jpeg"),))
    (kept,), problems = await rig.media.keep(message)
    assert problems == () and rig.server.hits["globex.jpg"] == 1  # fetched, not taken from acme's record
    assert (await rig.get(kept.url))[:2] == (200, theirs)
    assert links.verify(LINK_KEY, kept.url.rsplit("/", 1)[1]).tenant == "globex"


async def test_a_head_request_answers_the_headers_and_a_dangerous_type_is_a_download(rig: Rig) -> None:
    (delivery, _) = await rig.receive(Media(url=rig.server.add("x.svg", b"<svg onload=alert(1)/>", "image/svg+xml"),
                                            mime_type="image/svg+xml", file_name='x".svg'))
    link = delivery.media[0].url
    async with rig.http.head(link) as response:
        assert response.status == 200 and response.headers["Content-Length"] == "22"
    status, body, headers = await rig.get(link)
    assert status == 200 and body == b"<svg onload=alert(1)/>"
    assert headers["Content-Type"] == "application/octet-stream"  # never rendered on the bridge's origin
    assert headers["Content-Disposition"].startswith('attachment; filename="x_.svg"')
    assert "sandbox" in headers["Content-Security-Policy"]


@pytest.mark.parametrize("token", ["no-dot", "a.b.c", "%C3%A9.%C3%BC", "x" * 4000 + "." + "y" * 64, "%00.%00"])
async def test_hostile_tokens_get_403_and_the_route_keeps_serving(rig: Rig, token: str) -> None:
    (delivery, _) = await rig.receive(Media(url=rig.server.add("h.jpg", PICTURE), mime_type="image/jpeg"))
    link = delivery.media[0].url
    status, body, _ = await rig.get(f"{link.rsplit('/', 1)[0]}/{token}")
    assert status == 403 and b"not valid" in body
    assert (await rig.get(link))[:2] == (200, PICTURE)
