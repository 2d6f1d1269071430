"""Annotated dependencies: routes ask for what they need, the composition root provides it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from edge.api.alerts.firing_sender import FiringSender
from edge.api.auth.authenticator import Authenticator
from edge.api.auth.principal import Access, Principal
from edge.api.core.config_store import ConfigStore
from edge.api.core.detectors import DetectorDirectory
from edge.api.core.image_queries import ImageQueryService
from edge.api.core.inference_client import InferenceClient
from edge.api.core.peers import Peers
from edge.api.core.priors import PriorBook
from edge.api.core.store import EdgeStore
from edge.api.errors import ForbiddenError
from edge.api.escalation.cloud_link import CloudLink
from edge.api.escalation.sender import OutboxSender
from edge.api.metrics import EdgeMetrics
from edge.api.settings import EdgeSettings


@dataclass
class EdgeState:
    settings: EdgeSettings
    store: EdgeStore
    config: ConfigStore
    inference: InferenceClient
    directory: DetectorDirectory
    image_queries: ImageQueryService
    priors: PriorBook
    metrics: EdgeMetrics
    cloud: CloudLink
    outbox: OutboxSender
    alert_sender: FiringSender
    started_at: float
    auth: Authenticator
    internal_token: str
    peers: Peers


async def get_state(request: Request) -> EdgeState:
    state: EdgeState = request.app.state.edge
    return state


StateDep = Annotated[EdgeState, Depends(get_state)]


async def get_principal(request: Request) -> Principal:
    """Who is calling (401 when nobody vouches for the token); see edge.api.auth."""
    state: EdgeState = request.app.state.edge
    return await state.auth.authenticate_scope(request.scope)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def require_device(principal: PrincipalDep) -> Principal:
    """Any caller the edge accepts (devices, operators, the edge's own services)."""
    return principal


async def require_operator(principal: PrincipalDep) -> Principal:
    if not principal.may(Access.OPERATOR):
        raise ForbiddenError(
            "this route needs the edge operator's token (EDGE_ADMIN_TOKEN) or a cloud admin token"
        )
    return principal


async def require_internal_caller(principal: PrincipalDep) -> Principal:
    if not principal.may(Access.INTERNAL):
        raise ForbiddenError("this route answers only the edge's own services")
    return principal


# What each route declares; tests/edge/test_auth_sweep.py reads them back from the route table.
ACCESS_DEPENDENCIES = {
    require_device: Access.DEVICE,
    require_operator: Access.OPERATOR,
    require_internal_caller: Access.INTERNAL,
}

DeviceDep = Annotated[Principal, Depends(require_device)]

# For routes that need the check but not the caller: `dependencies=[DEVICE]`.
DEVICE = Depends(require_device)
OPERATOR = Depends(require_operator)
INTERNAL = Depends(require_internal_caller)
