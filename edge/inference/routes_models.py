"""Model lifecycle routes of the inference service: the hot swap the model updater asks for.

`POST /models/{detector_id}/swap` loads and warms the bundle `<model_root>/<detector_id>/current`
points at beside the serving version (off the event loop), then swaps it in atomically: requests in
flight finish on the version they started with, later ones get the new one. The updater calls it after
repointing `current`; when it answers 422 the old version is still serving and the updater points
`current` back. Inference also notices a moved `current` on its own (within a second, on the next
request), so a swap never depends on this call alone.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from starlette.responses import Response

from common.http import json_error
from common.internal_auth import InternalOnly
from common.wire.inference import SwapResult
from edge.inference.routes import MAX_DETECTOR_ID_CHARS, ServiceDep
from edge.inference.service import ModelSwapError

router = APIRouter(tags=["models"], dependencies=[InternalOnly])


@router.post(
    "/models/{detector_id}/swap",
    response_model=SwapResult,
    operation_id="swap_model",
    responses={
        400: {"description": "the detector id is malformed"},
        404: {"description": "no bundle is installed for this detector"},
        422: {"description": "the bundle failed to load or warm up; the previous version keeps serving"},
    },
)
async def swap_model(
    detector_id: Annotated[str, Path(max_length=MAX_DETECTOR_ID_CHARS)], service: ServiceDep
) -> SwapResult | Response:
    try:
        return await service.swap(detector_id)
    except ModelSwapError as exc:
        return json_error(422, f"model rejected, the previous version keeps serving: {exc}")
