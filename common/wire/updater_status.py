"""The model updater's `GET /status` (edge/updater/app.py), which edge-api's /status embeds.

The updater builds it (edge.updater.runner `Updater.snapshot`) and edge-api parses it back
(edge/api/routes/health.py), so both ends agree on one shape; operators read it through edge-api.
The words of a poll's outcome live here too, since the status and the hub heartbeat report them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field


class PollOutcome(StrEnum):
    """How the last poll of one detector ended."""

    UNCHANGED = "unchanged"  # 304
    UP_TO_DATE = "up_to_date"  # the cloud's version is the one serving
    DEPLOYED = "deployed"  # another version went into service
    NO_MODEL = "no_model"  # the cloud has no production model for this detector yet
    REJECTED = "rejected"  # the cloud's version failed verification or warm-up; the old one serves
    ERROR = "error"  # could not find out or finish; retried with backoff


class DeploySource(StrEnum):
    """Where the version that went into service came from."""

    CLOUD = "cloud"  # downloaded
    DISK = "disk"  # one of the kept versions (a rollback)


class RejectedVersion(BaseModel):
    """A version that must not serve; kept until the cloud's answer changes, so it is not fetched again."""

    version: str = Field(description="the rejected version")
    reason: str = Field(description="why it failed verification or warm-up")
    at: float = Field(description="when it was rejected (Unix time)")


class DetectorPollStatus(BaseModel):
    """What the updater knows about one detector it polls."""

    detector_id: str = Field(description="the detector polled")
    version: str | None = Field(description="the version `current` names after the last poll; null: none")
    outcome: PollOutcome | None = Field(description="how the last poll ended; null before the first")
    detail: str | None = Field(description="what the last poll said beyond its outcome")
    polled_at: float | None = Field(description="when the last poll began (Unix time)")
    deployed_at: float | None = Field(description="when this process last put a version into service")
    deployed_from: DeploySource | None = Field(description="where that version came from")
    consecutive_failures: int = Field(description="errors in a row; the backoff grows with them")
    last_error: str | None = Field(description="the last error or rejection")
    last_error_at: float | None = Field(description="when it happened (Unix time)")
    rejected: RejectedVersion | None = Field(description="the version last rejected, until another serves")
    next_poll_at: float | None = Field(description="when the next poll is due (Unix time)")
    delay_s: float | None = Field(description="the wait chosen after the last poll (backoff and jitter)")


class PollError(BaseModel):
    """One of the last errors or rejections of any detector, newest last."""

    at: float = Field(description="when the poll ended (Unix time)")
    detector_id: str = Field(description="the detector polled")
    outcome: Literal[PollOutcome.ERROR, PollOutcome.REJECTED] = Field(description="error or rejected")
    error: str | None = Field(description="what went wrong")


class InstalledBackbone(BaseModel):
    """A shared backbone in the model root (edge.updater.installer `installed_backbones`)."""

    sha256: str = Field(description="the backbone's sha256, its directory name")
    id: str | None = Field(description="its readable id; null when backbone.json is missing")
    bytes: int | None = Field(description="size of backbone.onnx; null when it cannot be read")
    used_by: list[str] = Field(description="`detector_id/version` of every version on disk that needs it")


class UpdaterConfigStatus(BaseModel):
    """Where the updater gets the edge config, and how the last fetch went."""

    source: str = Field(description="edge-api's edge-config URL")
    fetched_at: float | None = Field(description="the last successful fetch (Unix time)")
    error: str | None = Field(description="why the last fetch failed; null when it worked")


class HeartbeatStatus(BaseModel):
    """The heartbeat to the cloud (common.wire.hub_heartbeat)."""

    interval_s: float = Field(description="seconds between heartbeats")
    last_at: float | None = Field(description="the last heartbeat the cloud took (Unix time)")
    error: str | None = Field(description="why the last heartbeat failed or was skipped; null when it worked")
    outbox_depth: int | None = Field(description="edge-api's outbox depth it reports; null: not known")


class UpdaterStatus(BaseModel):
    """`GET /status` of the updater: its schedule, each detector's last poll, the shared backbones."""

    uptime_s: float = Field(description="seconds since the updater started")
    edge_id: str | None = Field(description="the edge id the heartbeat uses; null until one is known")
    cloud_url: str = Field(description="the cloud it polls")
    model_root: str = Field(description="the model root it installs into (shared with inference)")
    refresh_rate_s: float | None = Field(description="seconds between polls of a detector with a model")
    refresh_rate_source: Literal["UPDATER_REFRESH_RATE_S", "edge config global_config.refresh_rate"] = Field(
        description="which setting gives the refresh rate"
    )
    config: UpdaterConfigStatus = Field(description="the edge config fetches")
    heartbeat: HeartbeatStatus = Field(description="the heartbeat to the cloud")
    no_model_refresh_s: float = Field(description="seconds between polls of a detector without a model")
    detectors: list[DetectorPollStatus] = Field(description="every detector polled")
    backbones: list[InstalledBackbone] = Field(description="the shared backbones installed")
    recent_errors: list[PollError] = Field(description="the last errors and rejections, newest last")
