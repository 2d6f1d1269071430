"""Blobs in one Azure Blob Storage container (or Azurite), through the SDK's asyncio client.

The container is created on first use if it does not exist. File transfers move in chunks with the
disk reads and writes off the event loop; a download lands in a temp file renamed into place, so a
failed transfer never leaves a truncated file at the target path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import BlobServiceClient, ContainerClient

from cloud.app.blobstore.base import BlobNotFoundError, validate_key

_CHUNK = 4 * 1024 * 1024

# The SDK logs every request and response at INFO; our own request log is enough.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)


class AzureBlobStore:
    def __init__(self, connection_string: str, container: str) -> None:
        if not connection_string:
            raise ValueError("CLOUD_AZURE_CONNECTION_STRING is required when CLOUD_BLOB_BACKEND=azure")
        self._service = BlobServiceClient.from_connection_string(connection_string)
        self._container: ContainerClient = self._service.get_container_client(container)
        self._ready = False
        self._ready_lock = asyncio.Lock()

    async def _ensure_container(self) -> None:
        if self._ready:
            return
        async with self._ready_lock:
            if self._ready:
                return
            with contextlib.suppress(ResourceExistsError):
                await self._container.create_container()
            self._ready = True

    async def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        await self._ensure_container()
        await self._container.upload_blob(
            validate_key(key),
            data,
            overwrite=True,
            content_settings=ContentSettings(content_type=content_type),
        )

    async def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None:
        validate_key(key)
        await self._ensure_container()
        size = (await asyncio.to_thread(path.stat)).st_size
        src = await asyncio.to_thread(path.open, "rb")
        try:
            await self._container.upload_blob(
                key,
                _read_chunks(src),
                length=size,
                overwrite=True,
                content_settings=ContentSettings(content_type=content_type),
            )
        finally:
            await asyncio.to_thread(src.close)

    async def get(self, key: str) -> bytes:
        try:
            downloader = await self._container.download_blob(validate_key(key))
            return await downloader.readall()
        except ResourceNotFoundError as exc:
            raise BlobNotFoundError(key) from exc

    async def get_to_file(self, key: str, path: Path) -> None:
        validate_key(key)
        fd, tmp_name = await asyncio.to_thread(tempfile.mkstemp, dir=path.parent, prefix=".tmp-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    downloader = await self._container.download_blob(key)
                except ResourceNotFoundError as exc:
                    raise BlobNotFoundError(key) from exc
                async for chunk in downloader.chunks():
                    await asyncio.to_thread(out.write, chunk)
            await asyncio.to_thread(os.replace, tmp, path)
        except BaseException:
            await asyncio.to_thread(tmp.unlink, True)
            raise

    async def exists(self, key: str) -> bool:
        blob = self._container.get_blob_client(validate_key(key))
        try:
            return bool(await blob.exists())
        except ResourceNotFoundError:  # the container itself is missing
            return False

    async def delete(self, key: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            await self._container.delete_blob(validate_key(key))

    async def close(self) -> None:
        await self._container.close()
        await self._service.close()


async def _read_chunks(src: IO[bytes]) -> AsyncIterator[bytes]:
    while True:
        chunk = await asyncio.to_thread(src.read, _CHUNK)
        if not chunk:
            return
        yield chunk
