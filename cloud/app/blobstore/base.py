"""The interface every blob store implements. Keys are relative paths like `images/det_x/iq_y.jpg`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*(/[A-Za-z0-9][A-Za-z0-9._\-]*)*$")


class BlobNotFoundError(Exception):
    """The key names no blob (routes answer 404)."""


def validate_key(key: str) -> str:
    """Keys come from our own ids, but never trust that: no `..`, no absolute paths."""
    if not _KEY_RE.match(key) or ".." in key.split("/"):
        raise ValueError(f"invalid blob key: {key!r}")
    return key


class BlobStore(Protocol):
    async def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    async def put_file(
        self, key: str, path: Path, content_type: str = "application/octet-stream"
    ) -> None: ...

    async def get(self, key: str) -> bytes:
        """Raises BlobNotFoundError."""
        ...

    async def get_to_file(self, key: str, path: Path) -> None:
        """Raises BlobNotFoundError."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None:
        """Deleting a missing blob is not an error."""
        ...

    async def close(self) -> None: ...
