"""Blobs as files under one root; writes go to a temp file and are renamed into place."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

from cloud.app.blobstore.base import BlobNotFoundError, validate_key


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _write(self, key: str, data: bytes | None, source: Path | None) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                if data is not None:
                    out.write(data)
                elif source is not None:
                    with source.open("rb") as src:
                        shutil.copyfileobj(src, out, 1 << 20)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        await asyncio.to_thread(self._write, key, data, None)

    async def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None:
        await asyncio.to_thread(self._write, key, None, path)

    def _read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise BlobNotFoundError(key) from exc

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self._read, key)

    def _copy_out(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise BlobNotFoundError(key)
        shutil.copyfile(source, path)

    async def get_to_file(self, key: str, path: Path) -> None:
        await asyncio.to_thread(self._copy_out, key, path)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, True)

    async def close(self) -> None:
        return None
