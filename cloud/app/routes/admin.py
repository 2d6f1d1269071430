"""Administration: user accounts and API tokens (admins only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, status

from cloud.app.core import users
from cloud.app.deps import AdminDep, SessionDep
from cloud.app.schemas.admin import TokenCreate, TokenCreated, TokenPublic, UserCreate, UserPublic
from cloud.app.schemas.fields import ID_PATTERN

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])

UserId = Annotated[str, Path(max_length=40, pattern=ID_PATTERN)]
TokenId = Annotated[str, Path(max_length=40, pattern=ID_PATTERN)]


@router.get("/users")
async def list_users(session: SessionDep, admin: AdminDep) -> list[UserPublic]:
    return [UserPublic.model_validate(user) for user in await users.list_users(session)]


@router.post("/users", status_code=status.HTTP_201_CREATED)
async def create_user(body: UserCreate, session: SessionDep, admin: AdminDep) -> UserPublic:
    user = await users.add_user(session, body.username, body.role, body.password, body.email)
    return UserPublic.model_validate(user)


@router.post("/users/{user_id}/deactivate")
async def deactivate_user(user_id: UserId, session: SessionDep, admin: AdminDep) -> UserPublic:
    """Its tokens and sessions stop working at once; the account and its history stay."""
    return UserPublic.model_validate(await users.deactivate_user(session, user_id))


@router.get("/tokens")
async def list_tokens(
    session: SessionDep,
    admin: AdminDep,
    user_id: Annotated[str | None, Query(max_length=40, pattern=ID_PATTERN)] = None,
) -> list[TokenPublic]:
    return [TokenPublic.of(token, user) for token, user in await users.list_tokens(session, user_id)]


@router.post("/tokens", status_code=status.HTTP_201_CREATED)
async def create_token(body: TokenCreate, session: SessionDep, admin: AdminDep) -> TokenCreated:
    """The answer holds the token itself; it is stored hashed and cannot be shown again."""
    token, user, raw = await users.issue_token(session, body.user_id, body.name)
    return TokenCreated.issued(token, user, raw)


@router.post("/tokens/{token_id}/revoke")
async def revoke_token(token_id: TokenId, session: SessionDep, admin: AdminDep) -> TokenPublic:
    token, user = await users.revoke_token(session, token_id)
    return TokenPublic.of(token, user)
