"""The shared secret between the edge's own services (edge-api, inference, updater, streams).

Inference, the updater and the streams service answer only the edge's other services: every route
but `/health/*` needs the `x-internal-token` header, compared in constant time. The secret comes from
`INTELLIOPTICS_INTERNAL_TOKEN`, else from the file `INTELLIOPTICS_INTERNAL_TOKEN_FILE`, which the first
service to start creates (atomically, mode 0600) so that every service on the box reads the same one
without anybody choosing it.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

from fastapi import Depends, Request
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.exceptions import HTTPException
from starlette.responses import Response

from common.http import PlainHandler, Receive, Scope

INTERNAL_TOKEN_HEADER = "x-internal-token"
_HEADER_BYTES = INTERNAL_TOKEN_HEADER.encode("latin-1")
DEFAULT_TOKEN_FILE = Path(".intellioptics/data/secrets/internal-token")
# Routes any caller may use: liveness and readiness probes (compose health checks, the launcher).
OPEN_PREFIX = "/health/"
REFUSED_DETAIL = (
    f"this service answers only the edge's own services (missing or wrong {INTERNAL_TOKEN_HEADER})"
)


class InternalTokenSettings(BaseSettings):
    """The two variables every edge service reads, whatever its own prefix is."""

    model_config = SettingsConfigDict(extra="ignore")

    internal_token: str = Field(
        default="",
        validation_alias="INTELLIOPTICS_INTERNAL_TOKEN",
        description=(
            "The secret the edge's services share (sent as `x-internal-token`); empty: the one in "
            "`INTELLIOPTICS_INTERNAL_TOKEN_FILE`."
        ),
    )
    internal_token_file: Path = Field(
        default=DEFAULT_TOKEN_FILE,
        validation_alias="INTELLIOPTICS_INTERNAL_TOKEN_FILE",
        description=(
            "Where that secret is kept when the variable is empty; the first service to start creates "
            "it (mode 0600), so every service on the box must see the same file (compose: "
            "`/data/secrets/internal-token`)."
        ),
    )

    def resolved_internal_token(self) -> str:
        """The variable when set, else the file's token (created on first use)."""
        return self.internal_token or load_or_create_token(self.internal_token_file)


def load_or_create_token(path: Path, prefix: str = "") -> str:
    """The token in `path` (its first line); a new random one (`prefix` + 64 hex digits) when the file
    does not exist yet.

    The new file is written beside and linked into place, which fails if another service created it
    meanwhile: then that one's token is read, so concurrent first starts agree.
    """
    with contextlib.suppress(FileNotFoundError):
        return _read(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".internal-token-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(prefix + secrets.token_hex(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> str:
    lines = path.read_text().strip().splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise ValueError(f"{path} is empty: remove it to have a new internal token generated")
    return token


def token_matches(expected: str, presented: str | None) -> bool:
    """Constant-time comparison; nothing matches an unset secret."""
    if not expected or not presented:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), presented.encode("utf-8"))


def internal_headers(token: str) -> dict[str, str]:
    return {INTERNAL_TOKEN_HEADER: token} if token else {}


def scope_header(scope: Scope, name: bytes) -> str | None:
    """One request header (its first occurrence) from an ASGI scope; `name` in lower case."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class InternalTokenRefused(Exception):
    """A call without the internal token reached a service that only answers the edge's own."""


def check_internal(scope: Scope, expected: str) -> None:
    if not token_matches(expected, scope_header(scope, _HEADER_BYTES)):
        raise InternalTokenRefused(REFUSED_DETAIL)


def guard_plain(handler: PlainHandler, expected: str) -> PlainHandler:
    """A fast-path endpoint (common.http.FastPathApp) that checks the internal token first."""

    async def guarded(scope: Scope, receive: Receive) -> Response:
        check_internal(scope, expected)
        return await handler(scope, receive)

    return guarded


async def require_internal(request: Request) -> None:
    """FastAPI dependency: the app keeps its secret in `app.state.internal_token`."""
    if not token_matches(request.app.state.internal_token, request.headers.get(INTERNAL_TOKEN_HEADER)):
        raise HTTPException(401, REFUSED_DETAIL)


InternalOnly = Depends(require_internal)
