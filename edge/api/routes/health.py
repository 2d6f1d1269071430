from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TypeVar

import httpx
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, Response

from common.edge_config import DetectorConfig, EdgeConfig, redact_url
from common.error_detail import first_validation_error
from common.wire.edge_facts import EdgeFacts, OutboxDepth
from common.wire.edge_status import (
    AlertsStatus,
    CloudLinkStatus,
    DetectorStatus,
    EdgeStatus,
    InferenceReport,
    InferenceUnreachable,
    OutboxStatus,
    PeerReachability,
    PriorStatus,
    StreamsReport,
    StreamsUnreachable,
    UnreportedStream,
    UpdaterReport,
    UpdaterUnreachable,
)
from common.wire.inference import ModelInfo
from common.wire.streams_status import StreamsStatus
from common.wire.updater_status import UpdaterStatus
from edge.api.core.detectors import EdgeDetector
from edge.api.core.inference_client import InferenceUnavailableError
from edge.api.deps import INTERNAL, OPERATOR, EdgeState, StateDep

router = APIRouter(tags=["health"])

PeerStatus = TypeVar("PeerStatus", bound=BaseModel)


@router.get("/health/live", operation_id="live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health/ready", operation_id="ready")
async def ready(state: StateDep) -> Response:
    if not await state.inference.live():
        return JSONResponse(
            {"status": "not ready", "detail": "inference service unreachable"}, status_code=503
        )
    return JSONResponse({"status": "ready"})


@router.get("/internal/facts", operation_id="internal_facts", dependencies=[INTERNAL])
async def facts(state: StateDep) -> EdgeFacts:
    """For the box's own services (the updater's heartbeat); answered without asking anyone."""
    depth = await state.store.run(state.store.depth)
    return EdgeFacts(
        edge_id=state.settings.edge_id,
        outbox=OutboxDepth(
            pending=depth.pending, dead=depth.dead, oldest_pending_age_s=depth.oldest_pending_age_s
        ),
    )


@router.get("/status", operation_id="status", dependencies=[OPERATOR])
async def status(state: StateDep, request: Request) -> EdgeStatus:
    """One page for an operator: models, cache, outbox, alert firings, cloud link."""
    depth = await state.store.run(state.store.depth)
    inference: InferenceReport | InferenceUnreachable
    served: dict[str, ModelInfo] | None
    try:
        models = await state.inference.models()
        inference = InferenceReport(reachable=True, **dict(models))
        served = {m.detector_id: m for m in models.models}
    except InferenceUnavailableError as exc:
        inference = InferenceUnreachable(reachable=False, error=str(exc))
        served = None
    config = state.config.config
    return EdgeStatus(
        edge_id=state.settings.edge_id,
        uptime_s=round(time.time() - state.started_at, 1),
        config_source=str(state.config.source) if state.config.source else None,
        inference=inference,
        detectors=[_detector_status(state, config, d, served) for d in config.detectors],
        outbox=OutboxStatus(
            pending=depth.pending,
            dead=depth.dead,
            oldest_pending_age_s=depth.oldest_pending_age_s,
            alarm=depth.pending >= state.settings.outbox_alarm_depth,
        ),
        alerts=await _alerts_status(state),
        cloud=CloudLinkStatus(
            url=state.cloud.url,
            reachable=state.cloud.reachable,
            last_success_at=state.cloud.last_success_at,
            last_error=state.cloud.last_error,
        ),
        streams=await _streams_status(state),
        updater=await _updater_status(state),
    )


async def _alerts_status(state: EdgeState) -> AlertsStatus:
    """Firings waiting for the cloud and refused by it (from the store, so a restart keeps them), and
    the sender's latest failure (in memory)."""
    depth = await state.store.run(state.store.firing_depth)
    sender = state.alert_sender
    return AlertsStatus(
        pending=depth.pending,
        dead=depth.dead,
        oldest_pending_age_s=depth.oldest_pending_age_s,
        last_sent_at=sender.last_sent_at,
        last_error=sender.last_error,
        last_error_at=sender.last_error_at,
    )


def _detector_status(
    state: EdgeState, config: EdgeConfig, det: DetectorConfig, served: dict[str, ModelInfo] | None
) -> DetectorStatus:
    """How the edge answers one detector: with its model, with its label prior ("no model yet"), or
    not at all (disabled, or neither known: the gateway asks the cloud); and at which threshold, from
    where (edge_config, cloud, model; "default" when none of them says)."""
    inference_config = config.inference_config(det)
    enabled = inference_config.enabled
    model = served.get(det.detector_id) if served is not None else None
    version = model.version if model is not None else None
    prior = state.priors.snapshot(det.detector_id)
    cloud = state.priors.cloud_threshold(det.detector_id) if enabled else None
    threshold = EdgeDetector(det, inference_config, model).threshold(cloud)
    if version is not None:
        model_state, answers_with = "serving", "model"
    elif served is None:
        model_state, answers_with = "unknown (inference unreachable)", None
    else:
        model_state = "no model yet"
        answers_with = "label prior" if prior is not None else None
    if not enabled:
        answers_with = None
    return DetectorStatus(
        detector_id=det.detector_id,
        edge_inference_config=det.edge_inference_config,
        confidence_threshold=threshold.value,
        confidence_threshold_source=threshold.source,
        enabled=enabled,
        model_version=version,
        state=model_state if enabled else "disabled",
        answers_with=answers_with,
        prior=PriorStatus.model_validate(prior) if prior is not None else None,
    )


async def _ask_streams(state: EdgeState, path: str) -> httpx.Response:
    client = state.peers.streams
    assert client is not None  # opened whenever streams_url is set, and only then are streams asked
    return await client.get(path)


class _Unanswered(Exception):
    """A peer gave no status that edge-api can embed; the message says why."""


async def _peer_status(
    ask: Awaitable[httpx.Response], model: type[PeerStatus], name: str, url: str
) -> PeerStatus:
    """A peer's `GET /status` parsed into its model; _Unanswered when it cannot be had."""
    try:
        response = await ask
    except httpx.HTTPError as exc:
        raise _Unanswered(f"{name} not running or not answering at {url} ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise _Unanswered(f"{name} answered {response.status_code}")
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise _Unanswered(
            f"{name} at {url} answered a status that does not parse ({first_validation_error(exc, 'body')})"
        ) from None


def _answered(url: str) -> PeerReachability:
    return PeerReachability(url=url, reachable=True, error=None)


async def _streams_status(state: EdgeState) -> StreamsReport | StreamsUnreachable:
    """The streams service's own per-stream status, asked with a short timeout; when it does not answer,
    the streams of the edge config with the reason nobody reports on them."""
    url = state.settings.streams_url
    if url:
        try:
            answer = await _peer_status(_ask_streams(state, "/status"), StreamsStatus, "streams service", url)
        except _Unanswered as exc:
            error = str(exc)
        else:
            return StreamsReport(service=_answered(url), **dict(answer))
    else:
        error = "no streams service configured (EDGE_STREAMS_URL is empty)"
    return StreamsUnreachable(
        service=PeerReachability(url=url or None, reachable=False, error=error),
        streams=[
            UnreportedStream(
                name=s.name,
                url=redact_url(s.url),
                detector_id=s.detector_id,
                enabled=s.enabled,
                fps=s.fps,
                state="unknown",
                connected=None,
                error=error if s.enabled else None,
            )
            for s in state.config.config.streams
        ],
    )


async def _updater_status(state: EdgeState) -> UpdaterReport | UpdaterUnreachable:
    """The model updater's status (per detector: version, last poll, errors, rejections), asked with a
    short timeout; when it does not answer, only why."""
    url = state.settings.updater_url
    if not url:
        error = "no updater configured (EDGE_UPDATER_URL is empty)"
        return UpdaterUnreachable(service=PeerReachability(url=None, reachable=False, error=error))
    client = state.peers.updater
    assert client is not None  # opened whenever updater_url is set
    try:
        answer = await _peer_status(client.get("/status"), UpdaterStatus, "updater", url)
    except _Unanswered as exc:
        return UpdaterUnreachable(service=PeerReachability(url=url, reachable=False, error=str(exc)))
    return UpdaterReport(service=_answered(url), **dict(answer))


@router.get("/metrics", operation_id="metrics", dependencies=[OPERATOR])
async def metrics(state: StateDep) -> Response:
    """edge-api's metrics, followed by the streams service's (edge_stream_*) when it answers, so the
    gateway's one /metrics covers both."""
    body = generate_latest(state.metrics.registry)
    if state.settings.streams_url:
        try:
            response = await _ask_streams(state, "/metrics")
        except httpx.HTTPError:
            pass
        else:
            if response.status_code == 200:
                body += response.content
    return Response(body, media_type=CONTENT_TYPE_LATEST)
