"""HTTP routes of the inference service; thin, the work is in service.py."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from common.wire.inference import InferenceResult, ModelInfo, ModelList
from edge.inference.service import InferenceService


async def get_service(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.service
    return service


ServiceDep = Annotated[InferenceService, Depends(get_service)]

router = APIRouter()


@router.post("/infer", response_model=InferenceResult, operation_id="infer")
async def infer(
    request: Request,
    service: ServiceDep,
    detector_id: Annotated[str, Query(max_length=64)],
) -> Response:
    body = await request.body()
    p = await service.infer(detector_id, body)
    result = InferenceResult(
        detector_id=p.detector_id,
        model_version=p.model_version,
        mode=p.mode,
        labels=p.labels,
        probabilities=p.probabilities,
        label=p.label,
        raw_confidence=p.raw_confidence,
        in_domain=p.in_domain,
        confidence=p.confidence,
        timings_ms=p.timings_ms,
    )
    return Response(result.model_dump_json(), media_type="application/json")


@router.get("/models", response_model=ModelList, operation_id="list_models")
async def list_models(service: ServiceDep) -> ModelList:
    return service.list_models()


@router.get("/models/{detector_id}", response_model=ModelInfo, operation_id="get_model")
async def get_model(detector_id: str, service: ServiceDep) -> ModelInfo:
    return service.model_info(detector_id)


@router.get("/health/live", operation_id="live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health/ready", operation_id="ready")
async def ready(service: ServiceDep) -> Response:
    if not service.model_root.is_dir():
        return JSONResponse({"status": "not ready", "detail": "model root is missing"}, status_code=503)
    return JSONResponse({"status": "ready", "provider": service.provider})


@router.get("/metrics", operation_id="metrics")
async def metrics(service: ServiceDep) -> Response:
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
