"""The SDK's constructor handshake, answered on the edge so cameras work with the cloud unreachable.

Both calls need a token the edge accepts (edge.api.auth): a wrong one is answered 401 and the SDK's
constructor raises ApiTokenError, as against the cloud.
"""

from __future__ import annotations

from fastapi import APIRouter

from common.wire.device_api import Me, UserGroup
from edge.api.auth.principal import Role
from edge.api.deps import DEVICE, DeviceDep
from edge.api.errors import NotServedHereError

router = APIRouter(prefix="/device-api/v1", tags=["account"])


@router.get("/api-tokens/by-snippet/{snippet}", operation_id="token_by_snippet", dependencies=[DEVICE])
async def token_by_snippet(snippet: str) -> None:
    """404 tells the SDK that token rotation is off; the gateway passes this 404 through as-is."""
    raise NotServedHereError("this edge does not manage API tokens")


@router.get("/me", response_model=Me, operation_id="whoami")
async def whoami(principal: DeviceDep) -> Me:
    """The caller as the edge knows it: the cloud's account for a cloud token, else the local name."""
    return Me(
        email=principal.email,
        username=principal.username,
        group=UserGroup(id=1, name="edge"),
        is_superuser=principal.role is not Role.DEVICE,
    )
