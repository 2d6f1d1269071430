"""The SDK's constructor handshake and account calls (docs/wire.md §2, §3)."""

from __future__ import annotations

from fastapi import APIRouter

from cloud.app.core.image_queries import month_to_date_usage
from cloud.app.db.models import Role, User
from cloud.app.deps import DeviceDep, DeviceOrTrainerDep, SessionDep
from cloud.app.errors import NotFoundError
from cloud.app.schemas.device import AccountMonthToDateInfo
from common.wire.device_api import AccountMe, UserGroup

router = APIRouter(prefix="/device-api", tags=["device"])

# One tenant per deployment: every user is in the same group.
_GROUP = UserGroup(id=1, name="intellioptics")


@router.get("/v1/me", response_model=AccountMe, operation_id="device_whoami")
async def whoami(principal: DeviceOrTrainerDep, session: SessionDep) -> AccountMe:
    """Also the trainer's check that its token works and has a role that may run training jobs."""
    user = await session.get(User, principal.user_id)
    email = user.email if user is not None and user.email else f"{principal.username}@intellioptics.local"
    return AccountMe(
        email=email,
        username=principal.username,
        group=_GROUP,
        is_superuser=principal.role is Role.ADMIN,
        role=principal.role,
    )


@router.get("/v1/api-tokens/by-snippet/{snippet}", operation_id="device_token_by_snippet")
async def token_by_snippet(snippet: str, principal: DeviceDep) -> None:
    """A bad token has already been answered 401; a good one gets 404: tokens are not rotated here."""
    raise NotFoundError("this service does not rotate API tokens; keep using the one you have")


@router.get(
    "/v1/month-to-date-account-info",
    response_model=AccountMonthToDateInfo,
    operation_id="device_month_to_date_account_info",
)
async def month_to_date(principal: DeviceDep, session: SessionDep) -> AccountMonthToDateInfo:
    return await month_to_date_usage(session)
