"""edge-api's `GET /status` (edge/api/routes/health.py): one page for an operator about the whole box.

edge-api is the only aggregator: it asks inference, the streams service and the updater, and embeds
their answers (common.wire.inference, common.wire.streams_status, common.wire.updater_status) beside a
`service` part that says whether the peer answered. A peer that cannot be asked, or that answers
something that does not parse as its status, is reported unreachable with the reason; the page itself
always answers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from common.wire.edge_facts import OutboxDepth
from common.wire.inference import ModelList
from common.wire.streams_status import StreamsStatus
from common.wire.updater_status import UpdaterStatus


class PeerReachability(BaseModel):
    """Whether edge-api could ask one of the box's services for its status."""

    url: str | None = Field(description="the service's URL; null when none is configured")
    reachable: bool = Field(description="it answered with its status")
    error: str | None = Field(description="why not; null when it answered")


class _Peer(BaseModel):
    # A base listed last among a model's bases: its field comes first in the answer.
    service: PeerReachability = Field(description="whether the service answered")


class _Unreported(_Peer):
    # Forbids the status's own fields, so a reachable peer's answer never parses as this.
    model_config = ConfigDict(extra="forbid")


class _Reached(BaseModel):
    reachable: Literal[True] = Field(description="inference answered")


class InferenceReport(ModelList, _Reached):
    """Inference's models and cache (`GET /models`), as it answered."""


class InferenceUnreachable(BaseModel):
    """Inference did not answer: the detectors' model state is unknown."""

    reachable: Literal[False] = Field(description="inference did not answer")
    error: str = Field(description="why")


class PriorStatus(BaseModel):
    """A detector's label prior (edge.api.core.priors): how the edge answers it without a model."""

    labels: list[str] = Field(description="the detector's answers, in key order")
    counts: list[int] = Field(description="labels so far per answer (same order)")
    label: str = Field(description="the answer the prior gives")
    confidence: float = Field(description="its confidence")
    confidence_threshold: float = Field(description="the cloud's threshold for the detector")
    fetched_at: float = Field(description="when it was fetched from the cloud (Unix time)")
    age_s: float = Field(description="seconds since then")
    last_error: str | None = Field(description="why the last refresh failed; null when it worked")


class DetectorStatus(BaseModel):
    """How the edge answers one detector of its edge config."""

    detector_id: str = Field(description="the detector")
    edge_inference_config: str = Field(description="the name of its inference config (preset)")
    confidence_threshold: float = Field(description="the threshold its answers use")
    confidence_threshold_source: str = Field(
        description="where the threshold comes from: edge_config, cloud, model, or default when none says"
    )
    enabled: bool = Field(description="false: its inference config is disabled (the cloud answers it)")
    model_version: str | None = Field(description="the version inference serves; null: none known")
    state: str = Field(description="serving, no model yet, unknown (inference unreachable), or disabled")
    answers_with: str | None = Field(
        description="model, label prior, or null when the edge does not answer it (the cloud does)"
    )
    prior: PriorStatus | None = Field(description="its label prior; null when none is known")


class OutboxStatus(OutboxDepth):
    """The escalation outbox."""

    alarm: bool = Field(description="pending has reached EDGE_OUTBOX_ALARM_DEPTH")


class AlertsStatus(BaseModel):
    """Alert firings waiting for the cloud and refused by it (from the store, so a restart keeps them),
    and the sender's latest failure (in memory)."""

    pending: int = Field(description="firings waiting to reach the cloud")
    dead: int = Field(description="firings the cloud refused for good")
    oldest_pending_age_s: float | None = Field(description="age of the oldest waiting one")
    last_sent_at: float | None = Field(description="the last firing the cloud took (Unix time)")
    last_error: str | None = Field(description="the sender's last failure")
    last_error_at: float | None = Field(description="when (Unix time)")


class CloudLinkStatus(BaseModel):
    """What edge-api knows about its cloud connection."""

    url: str = Field(description="the cloud edge-api talks to")
    reachable: bool | None = Field(description="the last call reached it; null before the first call")
    last_success_at: float | None = Field(description="the last call that worked (Unix time)")
    last_error: str | None = Field(description="the last call's failure")


class StreamsReport(StreamsStatus, _Peer):
    """The streams service answered: its own status, per stream."""


class UnreportedStream(BaseModel):
    """A stream of the edge config that nobody reports on (the streams service did not answer)."""

    name: str = Field(description="the stream's name in the edge config")
    url: str = Field(description="its URL, password redacted")
    detector_id: str = Field(description="the detector its frames are asked of")
    enabled: bool = Field(description="enabled in the edge config")
    fps: float = Field(description="frames per second it submits at most")
    state: Literal["unknown"] = Field(description="always unknown")
    connected: None = Field(description="not known")
    error: str | None = Field(description="why nobody reports on it (for an enabled stream)")


class StreamsUnreachable(_Unreported):
    """The streams service did not answer: the streams of the edge config, with the reason."""

    streams: list[UnreportedStream] = Field(description="each configured stream")


class UpdaterReport(UpdaterStatus, _Peer):
    """The updater answered: per detector its version, last poll, errors and rejections."""


class UpdaterUnreachable(_Unreported):
    """The updater did not answer: only why."""


class EdgeStatus(BaseModel):
    """`GET /status` of edge-api (operators): models, cache, outbox, alert firings, cloud link, peers."""

    edge_id: str = Field(description="the edge's id at the cloud")
    uptime_s: float = Field(description="seconds since edge-api started")
    config_source: str | None = Field(description="the edge config file in use; null: none, the defaults")
    inference: InferenceReport | InferenceUnreachable = Field(
        discriminator="reachable", description="the inference service's models and cache"
    )
    detectors: list[DetectorStatus] = Field(description="each detector of the edge config")
    outbox: OutboxStatus = Field(description="the escalation outbox")
    alerts: AlertsStatus = Field(description="the alert firings outbox")
    cloud: CloudLinkStatus = Field(description="the cloud connection")
    streams: StreamsReport | StreamsUnreachable = Field(description="the streams service")
    updater: UpdaterReport | UpdaterUnreachable = Field(description="the model updater")
