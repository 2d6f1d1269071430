"""Reading a raw request body under a size limit, shared by the routes that take one (images, reports)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request


async def read_limited_body(
    request: Request, limit: int, too_large: Callable[[str], Exception], what: str = "the body"
) -> bytes:
    """The body, refused (413 through `too_large`) as soon as it is known to be over `limit` bytes:
    from Content-Length before reading, or while streaming when the header is absent or wrong."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(f"{what} is {declared} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(f"{what} is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
