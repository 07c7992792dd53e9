"""S3-compatible object storage (AWS S3, MinIO, Ceph) through aiobotocore, for bridges on several hosts.

Keys are `<prefix><sha256>`. A blob is spooled to a local temporary file while it is hashed (its
key is its hash, known only at the end), then uploaded once unless the bucket already has it.
Served by streaming through the bridge (see `serve.py` for why not a presigned redirect).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from smsbridge.config import MediaSettings
from smsbridge.media.store import READ_CHUNK, Blob, Stored, spool


class S3Store:
    kind = "s3"

    def __init__(self, settings: MediaSettings, spool_dir: str | Path | None = None) -> None:
        self._settings = settings
        self._spool = Path(spool_dir or tempfile.gettempdir())
        self._stack = AsyncExitStack()
        self._client: Any = None

    async def start(self) -> S3Store:
        s = self._settings
        credentials = {}
        if s.s3_access_key is not None and s.s3_secret_key is not None:
            credentials = {"aws_access_key_id": s.s3_access_key.reveal(),
                           "aws_secret_access_key": s.s3_secret_key.reveal()}
        self._client = await self._stack.enter_async_context(get_session().create_client(
            "s3", region_name=s.s3_region, endpoint_url=s.s3_endpoint_url, **credentials))
        return self

    def _key(self, key: str) -> str:
        return f"{self._settings.s3_prefix}{key}"

    async def _head(self, key: str) -> dict[str, Any] | None:
        try:
            answer: dict[str, Any] = await self._client.head_object(Bucket=self._settings.s3_bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return answer

    async def put(self, chunks: AsyncIterator[bytes], *, max_bytes: int) -> Stored:
        spooled = await spool(chunks, self._spool, max_bytes)
        try:
            bucket, name = self._settings.s3_bucket, self._key(spooled.key)
            if await self._head(spooled.key) is not None:
                # stored again now: refresh its date so the pruner leaves it alone (see delete_if_idle)
                await self._client.copy_object(Bucket=bucket, Key=name, CopySource={"Bucket": bucket, "Key": name},
                                               MetadataDirective="REPLACE")
            else:
                handle = await asyncio.to_thread(spooled.path.open, "rb")
                with handle:
                    await self._client.put_object(Bucket=bucket, Key=name, Body=handle,
                                                  ContentLength=spooled.size)
        finally:
            spooled.path.unlink(missing_ok=True)
        return Stored(spooled.key, spooled.size)

    async def open(self, key: str) -> Blob | None:
        try:
            answer = await self._client.get_object(Bucket=self._settings.s3_bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return Blob(int(answer["ContentLength"]), _read(answer["Body"]))

    async def delete_if_idle(self, key: str, since: datetime) -> bool:
        head = await self._head(key)
        if head is None or head["LastModified"] >= since:
            return False
        await self._client.delete_object(Bucket=self._settings.s3_bucket, Key=self._key(key))
        return True

    async def close(self) -> None:
        await self._stack.aclose()


async def _read(body: Any) -> AsyncGenerator[bytes, None]:
    try:
        while chunk := await body.read(READ_CHUNK):
            yield chunk
    finally:
        body.close()
