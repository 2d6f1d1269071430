from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from edge.api.core.inference_client import InferenceUnavailableError
from edge.api.deps import StateDep

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


@router.get("/status", operation_id="status")
async def status(state: StateDep) -> dict[str, Any]:
    """One page for an operator: models, cache, outbox, cloud link."""
    depth = await state.store.run(state.store.depth)
    inference: dict[str, Any]
    try:
        models = await state.inference.models()
        inference = {"reachable": True, **models.model_dump(mode="json")}
    except InferenceUnavailableError as exc:
        inference = {"reachable": False, "error": str(exc)}
    config = state.config.config
    return {
        "edge_id": state.settings.edge_id,
        "uptime_s": round(time.time() - state.started_at, 1),
        "config_source": str(state.config.source) if state.config.source else None,
        "inference": inference,
        "detectors": [
            {
                "detector_id": d.detector_id,
                "edge_inference_config": d.edge_inference_config,
                "confidence_threshold": d.confidence_threshold,
            }
            for d in config.detectors
        ],
        "outbox": {
            "pending": depth.pending,
            "dead": depth.dead,
            "oldest_pending_age_s": depth.oldest_pending_age_s,
            "alarm": depth.pending >= state.settings.outbox_alarm_depth,
        },
        "cloud": {
            "url": state.cloud.url,
            "reachable": state.cloud.reachable,
            "last_success_at": state.cloud.last_success_at,
            "last_error": state.cloud.last_error,
        },
    }


@router.get("/metrics", operation_id="metrics")
async def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
