"""HTTP routes of the inference service; thin, the work is in service.py. Every route but
`/health/*` answers only callers with the internal token (common.internal_auth).

`POST /infer` is on every image query, so the app serves it through `infer_endpoint`, a plain ASGI
endpoint ahead of FastAPI's stack (common.http.FastPathApp); the FastAPI route below declares it for
the OpenAPI document and answers the same way if ever reached.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from common.http import Receive, Scope, query_dict, read_body
from common.internal_auth import InternalOnly
from common.runtime import Prediction
from common.wire.device_api import Roi
from common.wire.inference import InferenceResult, ModelInfo, ModelList
from edge.inference.service import InferenceService, InvalidDetectorIdError

INFER_PATH = "/infer"
MAX_DETECTOR_ID_CHARS = 64
_JSON = "application/json"


async def get_service(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.service
    return service


ServiceDep = Annotated[InferenceService, Depends(get_service)]

router = APIRouter()


async def _infer(service: InferenceService, detector_id: str, image: bytes) -> Response:
    p = await service.infer(detector_id, image)
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
        rois=_rois(p),
        greater_than_max=p.greater_than_max,
    )
    return Response(result.model_dump_json(), media_type=_JSON)


def _rois(p: Prediction) -> list[Roi] | None:
    if p.boxes is None:
        return None
    label = p.class_name or "object"
    return [Roi.from_box(label, round(b.score, 6), b.left, b.top, b.right, b.bottom) for b in p.boxes]


def _detector_id(scope: Scope) -> str | None:
    raw: bytes = scope.get("query_string", b"")
    # What edge-api sends: the one parameter, nothing to unquote (ids are det_ + base62).
    if raw.startswith(b"detector_id=") and b"&" not in raw and b"%" not in raw and b"+" not in raw:
        return raw[12:].decode("latin-1")
    return query_dict(scope).get("detector_id")


async def infer_endpoint(scope: Scope, receive: Receive) -> Response:
    """`POST /infer` without FastAPI: the same checks and messages as the declared route."""
    detector_id = _detector_id(scope)
    if detector_id is None:
        raise InvalidDetectorIdError("detector_id: Field required")
    if len(detector_id) > MAX_DETECTOR_ID_CHARS:
        raise InvalidDetectorIdError(
            f"detector_id: String should have at most {MAX_DETECTOR_ID_CHARS} characters"
        )
    service: InferenceService = scope["app"].state.service
    return await _infer(service, detector_id, await read_body(receive))


@router.post(INFER_PATH, response_model=InferenceResult, operation_id="infer", dependencies=[InternalOnly])
async def infer(
    request: Request,
    service: ServiceDep,
    detector_id: Annotated[str, Query(max_length=MAX_DETECTOR_ID_CHARS)],
) -> Response:
    return await _infer(service, detector_id, await request.body())


@router.get("/models", response_model=ModelList, operation_id="list_models", dependencies=[InternalOnly])
async def list_models(service: ServiceDep) -> ModelList:
    return service.list_models()


@router.get(
    "/models/{detector_id}", response_model=ModelInfo, operation_id="get_model", dependencies=[InternalOnly]
)
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


@router.get("/metrics", operation_id="metrics", dependencies=[InternalOnly])
async def metrics(service: ServiceDep) -> Response:
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
