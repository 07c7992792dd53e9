"""`smsbridge media`: show a message's attachments with fresh links, fetch a missing one again
while its source still works, prune; on a SQLite ledger, the local store and the fake media server."""

from __future__ import annotations

import argparse
from pathlib import Path

import msgspec
import pytest

from smsbridge.cli import media as media_cli
from smsbridge.cli.main import build_parser
from smsbridge.config import LedgerSettings, Settings
from smsbridge.ledger import open_from_settings
from smsbridge.ledger.media_ops import MediaRecord, inbound_ref
from smsbridge.media import links
from tests.support.media import LINK_KEY, PICTURE, media_settings, with_media
from tests.support.media_server import media_server
from tests.support.settings import settings


def bridge_settings(tmp_path: Path) -> Settings:
    base = msgspec.structs.replace(settings(prefix="unit"),
                                   ledger=LedgerSettings(url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}"))
    return with_media(base, media_settings(tmp_path / "media", public_url="https://sms.example.com"))


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["media", *argv, "-c", "unused.toml"])


async def test_fetch_again_stores_a_missing_attachment_and_show_gives_its_link(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = bridge_settings(tmp_path)
    async with media_server() as server:
        url = server.add("late.jpg", PICTURE)
        ledger = open_from_settings(config.ledger)
        await ledger.upgrade()
        ref = inbound_ref("acme", "main", "mdr2-m")
        await ledger.record_media(MediaRecord(direction="inbound", tenant="acme", message_ref=ref, position=0,
                                              state="missing", mime_type="image/jpeg", file_name="late.jpg",
                                              source_url=url, reason="the media server answered 503"))
        await ledger.close()
        assert await media_cli.run(config, args("show", "acme", "mdr2-m")) == 2  # missing: not all stored
        assert "missing" in capsys.readouterr().out
        assert await media_cli.run(config, args("show", "globex", "mdr2-m")) == 1  # not another tenant's to see
        assert "no attachments" in capsys.readouterr().out
        assert await media_cli.run(config, args("fetch", "acme", "mdr2-m", "--json")) == 0
    (line,) = capsys.readouterr().out.splitlines()
    shown = msgspec.json.decode(line)
    assert shown["state"] == "stored" and shown["size"] == len(PICTURE) and shown["reason"] is None
    claims = links.verify(LINK_KEY, shown["link"].rsplit("/", 1)[1])
    assert shown["link"].startswith("https://sms.example.com/media/") and claims.tenant == "acme"
    assert (tmp_path / "media" / claims.key[:2] / claims.key).read_bytes() == PICTURE


async def test_an_unknown_message_and_a_store_that_is_off_exit_1(tmp_path: Path) -> None:
    config = bridge_settings(tmp_path)
    ledger = open_from_settings(config.ledger)
    await ledger.upgrade()
    await ledger.close()
    assert await media_cli.run(config, args("show", "acme", "mdr2-nope")) == 1
    off = msgspec.structs.replace(config, media=msgspec.structs.replace(config.media, store="off"))
    assert await media_cli.run(off, args("prune")) == 1
    assert await media_cli.run(config, args("prune")) == 0
