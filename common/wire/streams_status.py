"""The streams service's `GET /status` (edge/streams/app.py), which edge-api's /status embeds.

The streams service builds it (edge.streams.supervisor and edge.streams.worker `snapshot`) and edge-api
parses it back (edge/api/routes/health.py), so both ends agree on one shape. Stream URLs in it are
always redacted (common.edge_config `redact_url`): the cameras' passwords never leave the service.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, Field


class SourceKind(StrEnum):
    """What a stream URL names (edge.streams.sources `kind_of`)."""

    RTSP = "rtsp"
    HTTP = "http"
    FILE = "file"
    FOLDER = "folder"


class LastImageQuery(BaseModel):
    """The answer to the last frame a stream submitted."""

    id: str = Field(description="the image query's id")
    label: str | None = Field(description="its answer; null while it has none")
    confidence: float | None = Field(description="the answer's confidence")
    done_processing: bool | None = Field(description="false while people may still answer it")


class StreamStatus(BaseModel):
    """A stream that runs: its reader and its submit loop."""

    name: str = Field(description="the stream's name in the edge config")
    url: str = Field(description="its URL, password redacted")
    kind: SourceKind = Field(description="what the URL names")
    detector_id: str = Field(description="the detector its frames are asked of")
    enabled: Literal[True] = Field(description="a running stream is enabled")
    fps: float = Field(description="frames per second it submits at most")
    motion_threshold: float | None = Field(description="motion gating's threshold; null: every frame")
    state: str = Field(
        description="starting, connecting, connected, reconnecting, waiting to connect, "
        "waiting to reconnect, ended or stopped"
    )
    connected: bool = Field(description="frames are arriving from the source")
    error: str | None = Field(description="why the source last failed; null while it works")
    error_at: float | None = Field(description="when (Unix time)")
    next_attempt_at: float | None = Field(description="when the next connection attempt is due (Unix time)")
    frames_read: int = Field(description="frames read from the source")
    frames_submitted: int = Field(description="frames edge-api answered")
    frames_skipped_motion: int = Field(description="frames motion gating skipped")
    submit_errors: int = Field(description="frames whose submission failed")
    last_submit_error: str | None = Field(description="why the last submission failed; null: it worked")
    reconnects: int = Field(description="times the source was opened again after its first connection")
    connect_failures: int = Field(description="failed attempts to open the source")
    last_frame_age_s: float | None = Field(description="seconds since the last frame was read")
    last_submit_age_s: float | None = Field(description="age of the last submitted frame when it was sent")
    max_submit_age_s: float | None = Field(description="the largest such age so far")
    submit_fps: float = Field(description="frames submitted per second over the last few seconds")
    last_motion_difference: float | None = Field(description="motion gating's last measured difference")
    last_image_query: LastImageQuery | None = Field(description="the last answer; null before the first")
    started_at: float = Field(description="when the stream started (Unix time)")


class DisabledStreamStatus(BaseModel):
    """A stream of the edge config that is disabled: configured, not run."""

    name: str = Field(description="the stream's name in the edge config")
    url: str = Field(description="its URL, password redacted")
    kind: SourceKind = Field(description="what the URL names")
    detector_id: str = Field(description="the detector its frames would be asked of")
    enabled: Literal[False] = Field(description="disabled in the edge config")
    fps: float = Field(description="frames per second it would submit at most")
    state: Literal["disabled"] = Field(description="always disabled")
    connected: Literal[False] = Field(description="never connected")
    error: None = Field(description="never an error")


StreamEntry = Annotated[StreamStatus | DisabledStreamStatus, Field(discriminator="enabled")]


class StreamsConfigStatus(BaseModel):
    """Where the streams service gets its `streams:`, and how the last fetch went."""

    source: str = Field(description="edge-api's internal edge-config URL")
    fetched_at: float | None = Field(description="the last successful fetch (Unix time)")
    applied_at: float | None = Field(description="when the streams last changed (Unix time)")
    error: str | None = Field(description="why the last fetch failed; null when it worked")


class StreamsStatus(BaseModel):
    """`GET /status` of the streams service: every stream of the edge config, in its order."""

    uptime_s: float = Field(description="seconds since the service started")
    submit_url: str = Field(description="where frames are posted as image queries (the gateway)")
    config: StreamsConfigStatus = Field(description="the edge config fetches")
    streams: list[StreamEntry] = Field(description="each configured stream, running or disabled")
