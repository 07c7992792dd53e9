"""The local content-addressed store and the signed links, with plain values."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from smsbridge.media import links
from smsbridge.media.store import Blob, LocalStore, TooLarge
from smsbridge.secret import Secret

KEY = Secret("k" * 40)


async def stream(data: bytes, chunk: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), chunk):
        yield data[start:start + chunk]


async def read_all(blob: Blob) -> bytes:
    return b"".join([chunk async for chunk in blob.chunks])


def files_in(store: LocalStore) -> list[Path]:
    return [p for p in store.directory.rglob("*") if p.is_file() and ".spool" not in p.parts]


async def test_the_same_bytes_twice_are_stored_once_under_their_sha256(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    picture = bytes(range(256)) * 50
    first = await store.put(stream(picture), max_bytes=10**6)
    second = await store.put(stream(picture, chunk=777), max_bytes=10**6)
    assert first == second and first.key == hashlib.sha256(picture).hexdigest() and first.size == len(picture)
    assert len(files_in(store)) == 1
    blob = await store.open(first.key)
    assert blob is not None and blob.size == len(picture) and await read_all(blob) == picture


async def test_bytes_past_the_cap_are_refused_and_leave_nothing_behind(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(TooLarge):
        await store.put(stream(b"x" * 5000), max_bytes=4999)
    assert files_in(store) == [] and list((tmp_path / ".spool").iterdir()) == []


async def test_a_missing_blob_opens_as_none_and_a_key_cannot_name_a_path(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    assert await store.open("0" * 64) is None
    with pytest.raises(ValueError):
        await store.open("../../etc/passwd")


async def test_delete_if_idle_spares_a_blob_stored_again_since(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    stored = await store.put(stream(b"picture"), max_bytes=100)
    before = datetime.now(UTC) - timedelta(minutes=1)
    assert await store.delete_if_idle(stored.key, before) is False  # stored after `before`
    assert await store.delete_if_idle(stored.key, datetime.now(UTC) + timedelta(seconds=5)) is True
    assert await store.open(stored.key) is None


def claims(expires_in: float = 3600) -> links.LinkClaims:
    return links.claims_for(7, "a" * 64, "acme", expires_in)


def test_a_signed_token_verifies_to_its_claims() -> None:
    token = links.sign(KEY, claims())
    verified = links.verify(KEY, token)
    assert (verified.media_id, verified.key, verified.tenant) == (7, "a" * 64, "acme")


@pytest.mark.parametrize("tamper", [
    lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # the signature
    # another record's claims under this token's signature
    lambda t: links.sign(KEY, links.claims_for(8, "a" * 64, "acme", 3600)).split(".")[0] + "." + t.split(".")[1],
    lambda t: t.split(".")[0],  # no signature at all
    lambda t: "garbage",
])
def test_a_tampered_token_is_refused(tamper: object) -> None:
    token = links.sign(KEY, claims())
    changed = tamper(token)  # type: ignore[operator]
    assert changed != token
    with pytest.raises(links.BadToken):
        links.verify(KEY, changed)


def test_a_token_signed_with_another_key_is_refused() -> None:
    with pytest.raises(links.BadToken):
        links.verify(KEY, links.sign(Secret("other" * 10), claims()))


def test_an_expired_token_is_expired_not_bad() -> None:
    token = links.sign(KEY, claims())
    with pytest.raises(links.ExpiredToken):
        links.verify(KEY, token, now=time.time() + 3601)
