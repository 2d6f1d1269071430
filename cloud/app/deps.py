"""Annotated dependencies: the database session, the caller and its role, the shared services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from cloud.app.auth import (
    SESSION_COOKIE,
    AuthError,
    Principal,
    principal_from_session,
    principal_from_token,
    require_role,
)
from cloud.app.blobstore import BlobStore
from cloud.app.db.models import Role
from cloud.app.settings import CloudSettings

if TYPE_CHECKING:
    # For the annotations only: every route and page imports this module, so importing core modules
    # here at runtime would make a cycle as soon as one of them (or what it imports) imported deps.
    from cloud.app.core.backbones import LocalBackbones
    from cloud.app.core.model_answers import CloudModelCache
    from cloud.app.core.registry import InstalledBundles
    from cloud.app.core.web_sessions import LoginGate


@dataclass
class CloudState:
    """The API process's shared services, made (and closed) by the app's lifespan (cloud.app.app).
    Routes hand core functions the parts they use, never the whole container."""

    settings: CloudSettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    blobs: BlobStore
    login_gate: LoginGate
    # The cloud's own copies of production models: backbones, installed bundles, loaded runtimes.
    backbones: LocalBackbones
    bundles: InstalledBundles
    model_cache: CloudModelCache


async def get_state(request: Request) -> CloudState:
    state: CloudState = request.app.state.cloud
    return state


StateDep = Annotated[CloudState, Depends(get_state)]


async def get_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    async with state.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def get_principal(request: Request, session: SessionDep) -> Principal:
    """`x-api-token` first (the SDK's header), then the browser session cookie."""
    token = request.headers.get("x-api-token")
    if token:
        principal = await principal_from_token(session, token)
        if principal is None:
            raise AuthError("invalid API token")
        return principal
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        principal = await principal_from_session(session, cookie)
        if principal is not None:
            return principal
    raise AuthError("missing credentials: send the x-api-token header or log in")


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_device(principal: PrincipalDep) -> Principal:
    return require_role(principal, Role.DEVICE)


async def get_trainer(principal: PrincipalDep) -> Principal:
    return require_role(principal, Role.TRAINER)


async def get_device_or_trainer(principal: PrincipalDep) -> Principal:
    """What an edge and the trainer both fetch: production models, backbones, the SDK's whoami."""
    return require_role(principal, Role.DEVICE, Role.TRAINER)


async def get_reader(principal: PrincipalDep) -> Principal:
    """Registry and report reads for people and devices; the training service has no use for them."""
    return require_role(principal, Role.DEVICE, Role.REVIEWER)


async def get_reviewer(principal: PrincipalDep) -> Principal:
    return require_role(principal, Role.REVIEWER)


async def get_admin(principal: PrincipalDep) -> Principal:
    return require_role(principal, Role.ADMIN)


# Admins pass every check (cloud.app.auth.require_role); the README's role table lists each route.
DeviceDep = Annotated[Principal, Depends(get_device)]
TrainerDep = Annotated[Principal, Depends(get_trainer)]
DeviceOrTrainerDep = Annotated[Principal, Depends(get_device_or_trainer)]
ReaderDep = Annotated[Principal, Depends(get_reader)]
ReviewerDep = Annotated[Principal, Depends(get_reviewer)]
AdminDep = Annotated[Principal, Depends(get_admin)]
