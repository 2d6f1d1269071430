"""The SDK's constructor handshake, answered on the edge so cameras work with the cloud unreachable."""

from __future__ import annotations

from fastapi import APIRouter

from common.wire.device_api import Me, UserGroup
from edge.api.errors import NotServedHereError

router = APIRouter(prefix="/device-api/v1", tags=["account"])


@router.get("/api-tokens/by-snippet/{snippet}", operation_id="token_by_snippet")
async def token_by_snippet(snippet: str) -> None:
    """404 tells the SDK that token rotation is off; the gateway passes this 404 through as-is."""
    raise NotServedHereError("this edge does not manage API tokens")


@router.get("/me", response_model=Me, operation_id="whoami")
async def whoami() -> Me:
    return Me(email="edge@intellioptics.local", username="edge", group=UserGroup(id=1, name="edge"))
