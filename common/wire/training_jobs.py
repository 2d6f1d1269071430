"""The training-jobs API (`/api/v1/training-jobs`): what administrators create and read, what a
trainer sends while it holds a job's lease, and what the cloud answers. The cloud's routes and the
trainer (training.service.client) both use these models."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from common.wire.fields import ID_PATTERN, StorableJson, StorableStr, UtcDatetime, json_size

MAX_CONFIG_BYTES = 16 * 1024
MAX_PROGRESS_BYTES = 256 * 1024
MAX_LOG_LINES = 1000
MAX_LOG_LINE_CHARS = 4000
DEFAULT_LEASE_S = 120.0
MAX_LEASE_S = 3600.0


# A training job's or a dataset export's state.
class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# Who holds a lease: a trainer names itself (host and process, for example).
Owner = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]*$")
]
LeaseSeconds = Annotated[float, Field(gt=0, le=MAX_LEASE_S, description="how long the lease lasts")]


def _bounded(value: dict[str, Any], limit: int, what: str) -> dict[str, Any]:
    if json_size(value) > limit:
        raise ValueError(f"{what} is larger than {limit} bytes")
    return value


class TrainingJobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    detector_id: str = Field(max_length=40, pattern=ID_PATTERN, examples=["det_2Z3Yb8kq0cJ1mHq3T9rWnXbV5aD"])
    config: StorableJson = Field(
        default_factory=dict, description="trainer options (epochs, ...)", examples=[{"epochs": 10}]
    )

    @field_validator("config")
    @classmethod
    def _config_small(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _bounded(value, MAX_CONFIG_BYTES, "config")


class TrainingJobPublic(BaseModel):
    id: str
    detector_id: str
    status: JobStatus
    trigger: str = Field(description="labels | timer | manual")
    labels_at_creation: int = Field(description="the detector's labels (not undone) when the job was made")
    # Free-form: the trainer validates it (training.service.job.job_options).
    config: dict[str, Any]
    lease_owner: str | None
    lease_expires_at: UtcDatetime | None
    cancel_requested: bool
    # Free-form: whatever the trainer last reported (JobHeartbeat.progress).
    progress: dict[str, Any]
    result_version_id: str | None
    error: str | None
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    duration_s: float | None = Field(description="from start to finish, or to now while running")


class LeaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    owner: Owner = Field(examples=["trainer-gpu1-4242"])
    lease_s: LeaseSeconds = DEFAULT_LEASE_S


class JobHeartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    owner: Owner
    progress: StorableJson = Field(
        default_factory=dict,
        description="replaces the stored progress: epoch, epochs, loss, accuracy, eta_s, history, ...",
        examples=[{"epoch": 3, "epochs": 10, "loss": 0.41, "accuracy": 0.88, "eta_s": 70}],
    )
    log_lines: list[Annotated[StorableStr, StringConstraints(max_length=MAX_LOG_LINE_CHARS)]] = Field(
        default_factory=list, max_length=MAX_LOG_LINES, description="appended to the job's log"
    )
    lease_s: LeaseSeconds = DEFAULT_LEASE_S

    @field_validator("progress")
    @classmethod
    def _progress_small(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _bounded(value, MAX_PROGRESS_BYTES, "progress")


class HeartbeatAck(BaseModel):
    cancel_requested: bool = Field(description="stop, then report with /fail")
    lease_expires_at: UtcDatetime | None


class JobComplete(BaseModel):
    model_config = ConfigDict(extra="forbid")

    owner: Owner
    result_version_id: str | None = Field(
        default=None, max_length=60, pattern=ID_PATTERN, description="the registered model version"
    )


class JobFail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    owner: Owner
    error: StorableStr = Field(min_length=1, max_length=20000)
