from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from common.http import request_id_of
from common.wire.device_api import ImageQuery
from edge.api.core.params import parse_submit_params
from edge.api.deps import StateDep

router = APIRouter(prefix="/device-api/v1/image-queries", tags=["image-queries"])

_JSON = "application/json"


@router.post(
    "",
    response_model=ImageQuery,
    operation_id="submit_image_query",
    openapi_extra={
        "requestBody": {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}
    },
)
async def submit_image_query(request: Request, state: StateDep) -> Response:
    """The image is the raw body; its format is read from the bytes, whatever Content-Type says."""
    params = parse_submit_params(dict(request.query_params))
    body = await request.body()
    answer = await state.image_queries.submit(params, body, request_id_of(request))
    headers = {"Server-Timing": answer.server_timing} if answer.server_timing else None
    return Response(answer.body, media_type=_JSON, headers=headers)


@router.get("/{image_query_id}", response_model=ImageQuery, operation_id="get_image_query")
async def get_image_query(image_query_id: str, state: StateDep) -> Response:
    return Response(await state.image_queries.get(image_query_id), media_type=_JSON)
