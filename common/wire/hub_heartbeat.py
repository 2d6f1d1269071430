"""The hub heartbeat (`POST /api/v1/hubs/heartbeat`): what an edge's updater reports to the cloud.

The updater builds `HubHeartbeat` (edge.updater.runner) and the cloud validates it
(cloud/app/routes/hubs.py): an edge registers with its first heartbeat, later ones update it.

`info` stays free-form JSON for the cloud, which stores it as sent (at most MAX_INFO_BYTES) and reads
what it knows of it leniently (cloud.app.core.hubs `reported_problems`), since an older or another
edge may send something else. Our updater fills it with `HubInfo`, whose `updater` part is typed here.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from common.wire.fields import StorableJson, StorableStr, json_size
from common.wire.updater_status import PollError, PollOutcome

EDGE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"
MAX_INFO_BYTES = 16 * 1024

DetectorKey = Annotated[str, StringConstraints(max_length=60, pattern=r"^[A-Za-z0-9_-]+$")]
VersionValue = Annotated[str, StringConstraints(max_length=100, pattern=r"^[A-Za-z0-9_.:+-]+$")]


class HeartbeatRejection(BaseModel):
    """A version the edge refused to serve (the dashboard lists it as a problem)."""

    version: str = Field(description="the rejected version")
    reason: str = Field(description="why, cut to a few hundred characters")


class HeartbeatDetector(BaseModel):
    """A detector whose updates are in trouble: a poll error or a rejected version."""

    outcome: PollOutcome | None = Field(description="how its last poll ended")
    version: str | None = Field(description="the version `current` names")
    consecutive_failures: int = Field(description="errors in a row")
    last_error: str | None = Field(description="the last error, cut short; null: none")
    rejected: HeartbeatRejection | None = Field(description="the version last rejected; null: none")


class HeartbeatBackbone(BaseModel):
    """A shared backbone installed on the edge."""

    sha256: str = Field(description="the backbone's sha256")
    id: str | None = Field(description="its readable id; null when unknown")
    bytes: int | None = Field(description="its size; null when it cannot be read")
    used_by: int = Field(description="how many versions on disk need it")


class UpdaterInfo(BaseModel):
    """`info.updater`: the updater's own view, which the edges dashboard shows (dead escalations,
    problems) beside what the heartbeat's top-level fields say."""

    refresh_rate_s: float | None = Field(description="seconds between polls of a detector with a model")
    detectors_polled: int = Field(description="how many detectors it polls")
    config_error: str | None = Field(description="why the edge config could not be fetched; null: it was")
    edge_api_error: str | None = Field(description="why edge-api could not be asked; null: it answered")
    outbox_depth_known: bool = Field(description="false: the top-level outbox_depth is a 0 nobody measured")
    outbox_dead: int | None = Field(description="escalations the cloud refused for good; null: not known")
    outbox_oldest_pending_age_s: float | None = Field(description="age of the oldest waiting escalation")
    detectors: dict[str, HeartbeatDetector] = Field(description="the detectors in trouble, by id")
    recent_errors: list[PollError] = Field(description="the last errors and rejections, newest last")
    backbones: list[HeartbeatBackbone] = Field(description="the shared backbones installed")


class HubInfo(BaseModel):
    """What our updater puts in the heartbeat's `info`."""

    updater: UpdaterInfo = Field(description="the updater's report")


class HubHeartbeat(BaseModel):
    """The request body. Unknown keys are ignored; a left-out name or info keeps the hub's last one."""

    model_config = ConfigDict(extra="ignore")

    edge_id: str = Field(
        max_length=100, pattern=EDGE_ID_PATTERN, examples=["edge-line-3"], description="the edge's id"
    )
    name: StorableStr | None = Field(
        default=None, max_length=200, examples=["Line 3, east door"], description="a readable name"
    )
    deployed_versions: dict[DetectorKey, VersionValue] = Field(
        default_factory=dict,
        max_length=1000,
        description="the model version the edge serves, per detector id",
        examples=[{"det_2Z3Yb8kq0cJ1mHq3T9rWnXbV5aD": "v20240102-0304"}],
    )
    outbox_depth: int = Field(default=0, ge=0, le=2**31 - 1, description="escalations not yet delivered")
    info: StorableJson | None = Field(
        default=None, description=f"free-form, at most {MAX_INFO_BYTES} bytes (our updater sends HubInfo)"
    )

    @field_validator("info")
    @classmethod
    def _info_small(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and json_size(value) > MAX_INFO_BYTES:
            raise ValueError(f"info is larger than {MAX_INFO_BYTES} bytes")
        return value
