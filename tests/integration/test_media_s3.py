"""The S3 media store through aiobotocore against moto in server mode, and the inbound stage on it:
a picture stays viewable through the bridge's link after Flowroute's URL has died."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from smsbridge.config import MediaSettings
from smsbridge.events import Media
from smsbridge.media.s3 import S3Store
from smsbridge.media.store import TooLarge
from tests.support.media import PICTURE, media_rig
from tests.support.moto_s3 import make_bucket, moto_server, object_keys


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


@pytest.fixture
async def s3(moto_url: str, tmp_path: Path) -> AsyncIterator[tuple[S3Store, MediaSettings]]:
    settings = await make_bucket(moto_url)
    store = await S3Store(settings, spool_dir=tmp_path).start()
    try:
        yield store, settings
    finally:
        await store.close()


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 10_000):
        yield data[start:start + 10_000]


async def test_the_same_bytes_twice_are_one_object_and_read_back_exactly(s3: tuple[S3Store, MediaSettings]) -> None:
    store, settings = s3
    first = await store.put(chunks(PICTURE), max_bytes=10**7)
    second = await store.put(chunks(PICTURE), max_bytes=10**7)
    assert first == second and first.key == hashlib.sha256(PICTURE).hexdigest()
    assert await object_keys(settings) == [f"media/{first.key}"]
    blob = await store.open(first.key)
    assert blob is not None and blob.size == len(PICTURE)
    assert b"".join([c async for c in blob.chunks]) == PICTURE
    assert await store.open("0" * 64) is None


async def test_too_large_leaves_no_object(s3: tuple[S3Store, MediaSettings]) -> None:
    store, settings = s3
    with pytest.raises(TooLarge):
        await store.put(chunks(PICTURE), max_bytes=1000)
    assert await object_keys(settings) == []


async def test_delete_if_idle_spares_what_was_stored_since(s3: tuple[S3Store, MediaSettings]) -> None:
    store, settings = s3
    stored = await store.put(chunks(b"a picture"), max_bytes=100)
    assert await store.delete_if_idle(stored.key, datetime.now(UTC) - timedelta(minutes=5)) is False
    assert await store.delete_if_idle(stored.key, datetime.now(UTC) + timedelta(minutes=5)) is True
    assert await object_keys(settings) == []


async def test_a_picture_on_s3_is_served_by_the_bridges_link_after_flowroutes_url_died(
        s3: tuple[S3Store, MediaSettings], tmp_path: Path) -> None:
    store, settings = s3
    async with media_rig(tmp_path, store) as rig:
        url = rig.server.add("beach.jpg", PICTURE)
        (delivery, _) = await rig.receive(Media(url=url, mime_type="image/jpeg", file_name="beach.jpg"))
        rig.server.expire("beach.jpg")
        status, body, headers = await rig.get(delivery.media[0].url)
        assert status == 200 and body == PICTURE
        assert headers["Content-Type"] == "image/jpeg" and headers["X-Content-Type-Options"] == "nosniff"
        assert 'filename="beach.jpg"' in headers["Content-Disposition"]
    assert len(await object_keys(settings)) == 1
