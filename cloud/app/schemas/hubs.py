"""Hub heartbeats (what an edge reports) and hubs as administrators see them."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from cloud.app.db.models import Hub
from cloud.app.schemas.fields import StorableJson, StorableStr, UtcDatetime, json_size

EDGE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
MAX_INFO_BYTES = 16 * 1024

DetectorKey = Annotated[str, StringConstraints(max_length=60, pattern=r"^[A-Za-z0-9_-]+$")]
VersionValue = Annotated[str, StringConstraints(max_length=100, pattern=r"^[A-Za-z0-9_.:+-]+$")]


class HubHeartbeat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    edge_id: str = Field(max_length=100, pattern=EDGE_ID_PATTERN, examples=["edge-line-3"])
    name: StorableStr | None = Field(default=None, max_length=200, examples=["Line 3, east door"])
    deployed_versions: dict[DetectorKey, VersionValue] = Field(
        default_factory=dict,
        max_length=1000,
        description="the model version the edge serves, per detector id",
        examples=[{"det_2Z3Yb8kq0cJ1mHq3T9rWnXbV5aD": "v20240102-0304"}],
    )
    outbox_depth: int = Field(default=0, ge=0, le=2**31 - 1, description="escalations not yet delivered")
    info: StorableJson | None = Field(default=None, description=f"free-form, at most {MAX_INFO_BYTES} bytes")

    @field_validator("info")
    @classmethod
    def _info_small(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and json_size(value) > MAX_INFO_BYTES:
            raise ValueError(f"info is larger than {MAX_INFO_BYTES} bytes")
        return value


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
