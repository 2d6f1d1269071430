"""Administration (admins only): user accounts, API tokens, deleted detectors (list, restore), and,
included from cloud.app.routes.audit, the audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, status

from cloud.app.core import detector_lifecycle, users
from cloud.app.core.detectors import detector_to_wire
from cloud.app.deps import AdminDep, SessionDep, StateDep
from cloud.app.routes import audit
from cloud.app.schemas.admin import (
    DeletedDetector,
    DetectorRestore,
    TokenCreate,
    TokenCreated,
    TokenPublic,
    UserCreate,
    UserPublic,
    UserUpdate,
)
from cloud.app.schemas.fields import ID_PATTERN
from common.clock import as_utc
from common.wire.device_api import Detector

accounts = APIRouter(prefix="/api/v1/admin", tags=["admin"])

UserId = Annotated[str, Path(max_length=40, pattern=ID_PATTERN)]
TokenId = Annotated[str, Path(max_length=40, pattern=ID_PATTERN)]
DetectorId = Annotated[str, Path(max_length=40, pattern=ID_PATTERN)]


@accounts.get("/users")
async def list_users(session: SessionDep, admin: AdminDep) -> list[UserPublic]:
    return [UserPublic.model_validate(user) for user in await users.list_users(session)]


@accounts.post("/users", status_code=status.HTTP_201_CREATED)
async def create_user(body: UserCreate, session: SessionDep, admin: AdminDep) -> UserPublic:
    user = await users.add_user(
        session, body.username, body.role, body.password, body.email, audited_by=admin
    )
    return UserPublic.model_validate(user)


@accounts.patch(
    "/users/{user_id}",
    responses={409: {"description": "your own account, the last active admin, or a role of the other kind"}},
)
async def update_user(user_id: UserId, body: UserUpdate, session: SessionDep, admin: AdminDep) -> UserPublic:
    """The new role applies to the user's next request (tokens and sessions alike)."""
    user = await users.change_role(session, user_id, body.role, audited_by=admin)
    return UserPublic.model_validate(user)


@accounts.post(
    "/users/{user_id}/deactivate",
    responses={409: {"description": "your own account, or the last active admin"}},
)
async def deactivate_user(user_id: UserId, session: SessionDep, admin: AdminDep) -> UserPublic:
    """Its tokens and sessions stop working at once; the account and its history stay."""
    return UserPublic.model_validate(await users.deactivate_user(session, user_id, audited_by=admin))


@accounts.post("/users/{user_id}/activate")
async def activate_user(user_id: UserId, session: SessionDep, admin: AdminDep) -> UserPublic:
    """Undoes a deactivation: its password and unrevoked tokens work again."""
    return UserPublic.model_validate(await users.activate_user(session, user_id, audited_by=admin))


@accounts.get("/tokens")
async def list_tokens(
    session: SessionDep,
    admin: AdminDep,
    user_id: Annotated[str | None, Query(max_length=40, pattern=ID_PATTERN)] = None,
) -> list[TokenPublic]:
    return [TokenPublic.of(token, user) for token, user in await users.list_tokens(session, user_id)]


@accounts.post("/tokens", status_code=status.HTTP_201_CREATED)
async def create_token(body: TokenCreate, session: SessionDep, admin: AdminDep) -> TokenCreated:
    """The answer holds the token itself; it is stored hashed and cannot be shown again."""
    token, user, raw = await users.issue_token(session, body.user_id, body.name, audited_by=admin)
    return TokenCreated.issued(token, user, raw)


@accounts.post("/tokens/{token_id}/revoke")
async def revoke_token(token_id: TokenId, session: SessionDep, admin: AdminDep) -> TokenPublic:
    token, user = await users.revoke_token(session, token_id, audited_by=admin)
    return TokenPublic.of(token, user)


@accounts.get("/detectors/deleted")
async def list_deleted_detectors(
    session: SessionDep, state: StateDep, admin: AdminDep
) -> list[DeletedDetector]:
    """Most recently deleted first; each can be restored until its `purge_after`."""
    retention_s = state.settings.deleted_retention_s
    return [
        DeletedDetector(
            id=row.id,
            name=row.deleted_name or row.name,
            query=row.query,
            mode=row.mode,
            deleted_at=as_utc(row.deleted_at),
            deleted_by=row.deleted_by,
            purge_after=detector_lifecycle.purge_after(row, retention_s),
        )
        for row in await detector_lifecycle.list_deleted_detectors(session)
        if row.deleted_at is not None
    ]


@accounts.post(
    "/detectors/{detector_id}/restore",
    responses={
        404: {"description": "no deleted detector has this id"},
        409: {"description": "its name is taken now (give another), or its retention is over"},
    },
)
async def restore_detector(
    detector_id: DetectorId,
    session: SessionDep,
    state: StateDep,
    admin: AdminDep,
    body: DetectorRestore | None = None,
) -> Detector:
    """Back with its image queries, labels, models and pending review items."""
    row = await detector_lifecycle.restore_detector(
        session, detector_id, admin, state.settings.deleted_retention_s, body.name if body else None
    )
    return detector_to_wire(row)


# What cloud.app.app includes: the routes above and the audit log (its own prefix).
router = APIRouter()
router.include_router(accounts)
router.include_router(audit.router)
