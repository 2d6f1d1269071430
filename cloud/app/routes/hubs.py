"""Hubs (edge boxes): edges send heartbeats with a device token; administrators list them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from cloud.app.core import hubs
from cloud.app.deps import AdminDep, DeviceDep, SessionDep, StateDep
from cloud.app.schemas.hubs import HubPublic
from common.wire.hub_heartbeat import EDGE_ID_PATTERN, HubHeartbeat

router = APIRouter(prefix="/api/v1/hubs", tags=["hubs"])

HubId = Annotated[str, Path(max_length=100, pattern=EDGE_ID_PATTERN)]


@router.post("/heartbeat")
async def heartbeat(body: HubHeartbeat, session: SessionDep, device: DeviceDep) -> HubPublic:
    """Registers the edge on its first heartbeat; afterwards updates what it reports."""
    hub = await hubs.record_heartbeat(
        session,
        body.edge_id,
        deployed_versions=dict(body.deployed_versions),
        outbox_depth=body.outbox_depth,
        name=body.name,
        info=body.info,
    )
    return HubPublic.of(hub, online=True)


@router.get("")
async def list_hubs(session: SessionDep, state: StateDep, admin: AdminDep) -> list[HubPublic]:
    window_s = state.settings.edge_online_window_s
    return [HubPublic.of(hub, hubs.is_online(hub, window_s)) for hub in await hubs.list_hubs(session)]


@router.get("/{hub_id}")
async def get_hub(hub_id: HubId, session: SessionDep, state: StateDep, admin: AdminDep) -> HubPublic:
    hub = await hubs.get_hub(session, hub_id)
    return HubPublic.of(hub, hubs.is_online(hub, state.settings.edge_online_window_s))
