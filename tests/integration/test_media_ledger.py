"""The ledger's media records (migration 2), the same tests on SQLite and PostgreSQL, and pruning
them with the history: blobs go once no record refers to them."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from smsbridge.ledger import Ledger
from smsbridge.ledger.media_ops import MediaRecord
from smsbridge.media.setup import prune_media
from smsbridge.media.store import LocalStore
from tests.support.ledger import BACKENDS, open_ledger


@pytest.fixture(params=BACKENDS)
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    async with open_ledger(request.param, tmp_path) as opened:
        yield opened


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def record(message: str, position: int = 0, key: str | None = "a" * 64, state: str = "stored") -> MediaRecord:
    return MediaRecord(direction="inbound", tenant="acme", message_ref=message, position=position, state=state,
                       blob_key=key, mime_type="image/jpeg", file_name="cat.jpg", size=10,
                       source_url="https://media.example/1")


async def test_a_record_written_twice_keeps_its_id_and_takes_the_new_values(ledger: Ledger) -> None:
    first = await ledger.record_media(record("mdr2-1", state="missing", key=None))
    again = await ledger.record_media(record("mdr2-1"))
    other = await ledger.record_media(record("mdr2-1", position=1))
    assert again == first != other
    row = await ledger.media(first)
    assert row is not None and (row.state, row.blob_key, row.tenant, row.size) == ("stored", "a" * 64, "acme", 10)
    assert [r.position for r in await ledger.media_of("mdr2-1")] == [0, 1]
    assert await ledger.media(999_999) is None


async def test_pruning_returns_only_blobs_no_record_refers_to_any_more(ledger: Ledger) -> None:
    clock = Clock()
    ledger._now = clock  # type: ignore[method-assign]
    await ledger.record_media(record("mdr2-old", key="a" * 64))
    await ledger.record_media(record("mdr2-old", position=1, key="b" * 64))
    clock.now += timedelta(days=40)
    await ledger.record_media(record("mdr2-new", key="b" * 64))  # the same picture, texted again
    assert await ledger.prune_media(timedelta(days=30)) == ["a" * 64]
    assert await ledger.media_of("mdr2-old") == [] and len(await ledger.media_of("mdr2-new")) == 1


async def test_prune_media_deletes_the_blob_of_a_pruned_record(ledger: Ledger, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "media")

    async def picture() -> AsyncIterator[bytes]:
        yield b"an old picture"

    stored = await store.put(picture(), max_bytes=100)
    path = store.path_of(stored.key)
    old = datetime.now(UTC).timestamp() - 40 * 86400
    os.utime(path, (old, old))  # stored long ago, like its record
    clock = Clock()
    clock.now = datetime.now(UTC) - timedelta(days=40)
    ledger._now = clock  # type: ignore[method-assign]
    await ledger.record_media(record("mdr2-old", key=stored.key))
    clock.now = datetime.now(UTC)
    assert await prune_media(ledger, store, timedelta(days=30)) == 1
    assert await store.open(stored.key) is None
