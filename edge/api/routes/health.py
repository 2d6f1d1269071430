from __future__ import annotations

import time
from typing import Any

import httpx
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from common.edge_config import DetectorConfig, EdgeConfig, redact_url
from common.wire.edge_facts import EdgeFacts, OutboxDepth
from common.wire.inference import ModelInfo
from edge.api.core.detectors import EdgeDetector
from edge.api.core.inference_client import InferenceUnavailableError
from edge.api.deps import INTERNAL, OPERATOR, EdgeState, StateDep

router = APIRouter(tags=["health"])


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
async def status(state: StateDep, request: Request) -> dict[str, Any]:
    """One page for an operator: models, cache, outbox, alert firings, cloud link."""
    depth = await state.store.run(state.store.depth)
    inference: dict[str, Any]
    served: dict[str, ModelInfo] | None
    try:
        models = await state.inference.models()
        inference = {"reachable": True, **models.model_dump(mode="json")}
        served = {m.detector_id: m for m in models.models}
    except InferenceUnavailableError as exc:
        inference = {"reachable": False, "error": str(exc)}
        served = None
    config = state.config.config
    return {
        "edge_id": state.settings.edge_id,
        "uptime_s": round(time.time() - state.started_at, 1),
        "config_source": str(state.config.source) if state.config.source else None,
        "inference": inference,
        "detectors": [_detector_status(state, config, d, served) for d in config.detectors],
        "outbox": {
            "pending": depth.pending,
            "dead": depth.dead,
            "oldest_pending_age_s": depth.oldest_pending_age_s,
            "alarm": depth.pending >= state.settings.outbox_alarm_depth,
        },
        "alerts": await _alerts_status(state),
        "cloud": {
            "url": state.cloud.url,
            "reachable": state.cloud.reachable,
            "last_success_at": state.cloud.last_success_at,
            "last_error": state.cloud.last_error,
        },
        "streams": await _streams_status(state),
        "updater": await _updater_status(state),
    }


async def _alerts_status(state: EdgeState) -> dict[str, Any]:
    """Firings waiting for the cloud and refused by it (from the store, so a restart keeps them), and
    the sender's latest failure (in memory)."""
    depth = await state.store.run(state.store.firing_depth)
    sender = state.alert_sender
    return {
        "pending": depth.pending,
        "dead": depth.dead,
        "oldest_pending_age_s": depth.oldest_pending_age_s,
        "last_sent_at": sender.last_sent_at,
        "last_error": sender.last_error,
        "last_error_at": sender.last_error_at,
    }


def _detector_status(
    state: EdgeState, config: EdgeConfig, det: DetectorConfig, served: dict[str, ModelInfo] | None
) -> dict[str, Any]:
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
    return {
        "detector_id": det.detector_id,
        "edge_inference_config": det.edge_inference_config,
        "confidence_threshold": threshold.value,
        "confidence_threshold_source": threshold.source,
        "enabled": enabled,
        "model_version": version,
        "state": model_state if enabled else "disabled",
        "answers_with": answers_with,
        "prior": prior,
    }


async def _ask_streams(state: EdgeState, path: str) -> httpx.Response:
    client = state.peers.streams
    assert client is not None  # opened whenever streams_url is set, and only then are streams asked
    return await client.get(path)


async def _streams_status(state: EdgeState) -> dict[str, Any]:
    """The streams service's own per-stream status, asked with a short timeout; when it does not answer,
    the streams of the edge config with the reason nobody reports on them."""
    url = state.settings.streams_url
    if url:
        try:
            response = await _ask_streams(state, "/status")
            if response.status_code == 200:
                return {"service": {"url": url, "reachable": True, "error": None}, **response.json()}
            error = f"streams service answered {response.status_code}"
        except (httpx.HTTPError, ValueError) as exc:
            error = f"streams service not running or not answering at {url} ({type(exc).__name__})"
    else:
        error = "no streams service configured (EDGE_STREAMS_URL is empty)"
    return {
        "service": {"url": url or None, "reachable": False, "error": error},
        "streams": [
            {
                "name": s.name,
                "url": redact_url(s.url),
                "detector_id": s.detector_id,
                "enabled": s.enabled,
                "fps": s.fps,
                "state": "unknown",
                "connected": None,
                "error": error if s.enabled else None,
            }
            for s in state.config.config.streams
        ],
    }


async def _updater_status(state: EdgeState) -> dict[str, Any]:
    """The model updater's status (per detector: version, last poll, errors, rejections), asked with a
    short timeout; when it does not answer, only why."""
    url = state.settings.updater_url
    if not url:
        return {
            "service": {
                "url": None,
                "reachable": False,
                "error": "no updater configured (EDGE_UPDATER_URL is empty)",
            }
        }
    client = state.peers.updater
    assert client is not None  # opened whenever updater_url is set
    try:
        response = await client.get("/status")
        if response.status_code == 200:
            return {"service": {"url": url, "reachable": True, "error": None}, **response.json()}
        error = f"updater answered {response.status_code}"
    except (httpx.HTTPError, ValueError) as exc:
        error = f"updater not running or not answering at {url} ({type(exc).__name__})"
    return {"service": {"url": url, "reachable": False, "error": error}}


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
