"""Hubs as administrators see them. The heartbeat an edge sends is common.wire.hub_heartbeat: a contract
with the edge's updater, which builds it, so it is defined once for both."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from cloud.app.db.models import Hub
from cloud.app.schemas.fields import UtcDatetime


class HubPublic(BaseModel):
    id: str
    name: str
    registered_at: UtcDatetime
    last_seen_at: UtcDatetime
    deployed_versions: dict[str, Any]
    outbox_depth: int
    info: dict[str, Any]
    online: bool = Field(description="last heartbeat within three heartbeat intervals")

    @classmethod
    def of(cls, hub: Hub, online: bool) -> HubPublic:
        return cls(
            id=hub.id,
            name=hub.name,
            registered_at=hub.registered_at,
            last_seen_at=hub.last_seen_at,
            deployed_versions=hub.deployed_versions,
            outbox_depth=hub.outbox_depth,
            info=hub.info,
            online=online,
        )
