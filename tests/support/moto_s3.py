"""S3 for tests: moto in server mode (`python -m moto.server`) as a subprocess on a loopback port.
In-process moto patches botocore's synchronous HTTP layer, which aiobotocore does not use, so the
S3 store is tested against a real HTTP server instead."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiobotocore.session import get_session

from smsbridge.config import MediaSettings
from smsbridge.secret import Secret
from tests.support.ports import free_port

START_TIMEOUT_S = 90.0  # a Python process importing moto on a loaded host


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=5) as response:
            return bool(response.status < 500)
    except OSError:
        return False


@contextmanager
def moto_server(log: Path) -> Iterator[str]:
    """A moto server on a free loopback port, for a whole test module (sync: module-scoped fixtures
    outlive any one test's event loop); yields its URL."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(url):  # readiness, polled against a generous deadline
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"moto server did not start (see {log})")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def make_bucket(endpoint: str) -> MediaSettings:
    """A fresh bucket on the moto server, and media settings that use it."""
    bucket = f"sbtest-{uuid.uuid4().hex[:10]}"
    settings = MediaSettings(store="s3", s3_bucket=bucket, s3_endpoint_url=endpoint, s3_region="us-east-1",
                             s3_access_key=Secret("testing"), s3_secret_key=Secret("testing"))
    async with get_session().create_client("s3", region_name="us-east-1", endpoint_url=endpoint,
                                           aws_access_key_id="testing", aws_secret_access_key="testing") as s3:
        await s3.create_bucket(Bucket=bucket)
    return settings


async def object_keys(settings: MediaSettings) -> list[str]:
    async with get_session().create_client("s3", region_name="us-east-1", endpoint_url=settings.s3_endpoint_url,
                                           aws_access_key_id="testing", aws_secret_access_key="testing") as s3:
        listing = await s3.list_objects_v2(Bucket=settings.s3_bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))
