"""Image queries on the device API: submit (raw image body), get, list, and the image itself."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.background import BackgroundTask
from starlette.responses import Response

from cloud.app.core import image_queries as core
from cloud.app.core.model_answers import ProductionModels
from cloud.app.deps import DeviceDep, SessionDep, StateDep
from cloud.app.errors import BadRequestError
from cloud.app.routes.bodies import read_limited_body
from cloud.app.schemas.device import page_links
from common.http import REQUEST_ID_HEADER
from common.ids import is_detector_id
from common.imaging import ImageTooLargeError
from common.params import InvalidParameterError
from common.validation import parse_submit_params
from common.wire.device_api import ImageQuery, Page

router = APIRouter(prefix="/device-api/v1/image-queries", tags=["device"])

PageNumber = Annotated[int, Query(ge=1, le=1_000_000)]
PageSize = Annotated[int, Query(ge=1, le=1000)]


@router.post(
    "",
    response_model=ImageQuery,
    operation_id="device_submit_image_query",
    openapi_extra={
        "requestBody": {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}}
    },
)
async def submit_image_query(
    request: Request, principal: DeviceDep, state: StateDep, session: SessionDep
) -> Response:
    """The image is the raw body; its format is read from the bytes, whatever Content-Type says.
    A retry with the same X-Request-Id or image_query_id (same detector, same image) gets the first
    query back; another detector or image under either key is 409."""
    try:
        params = parse_submit_params(request.query_params)
    except InvalidParameterError as exc:
        raise BadRequestError(str(exc)) from None
    body = await read_limited_body(request, state.settings.max_image_bytes, ImageTooLargeError, "image")
    models = ProductionModels(state.blobs, state.bundles, state.model_cache)
    limits = core.image_limits(state.settings)
    submitted = await core.submit_image_query(
        session, state.blobs, models, limits, params, body, request.headers.get(REQUEST_ID_HEADER)
    )
    headers = {"Server-Timing": submitted.server_timing} if submitted.server_timing else None
    later = None
    if submitted.answer_later:
        iq = submitted.image_query
        later = BackgroundTask(
            core.answer_in_background, state.sessions, models, limits, iq.id, iq.detector_id, body, None
        )
    return Response(
        submitted.image_query.model_dump_json(),
        media_type="application/json",
        headers=headers,
        background=later,
    )


@router.get("", response_model=Page[ImageQuery], operation_id="device_list_image_queries")
async def list_image_queries(
    principal: DeviceDep,
    state: StateDep,
    session: SessionDep,
    page: PageNumber = 1,
    page_size: PageSize = 10,
    detector_id: str | None = None,
) -> Page[ImageQuery]:
    if detector_id and not is_detector_id(detector_id):
        raise BadRequestError("detector_id must be det_ followed by 27 base62 characters")
    rows, count = await core.list_image_queries(session, page, page_size, detector_id or None)
    params = {"detector_id": detector_id} if detector_id else {}
    next_url, previous_url = page_links(
        f"{state.settings.public_url.rstrip('/')}{router.prefix}", page, page_size, count, params
    )
    return Page[ImageQuery](
        count=count, next=next_url, previous=previous_url, results=[core.image_query_to_wire(r) for r in rows]
    )


@router.get("/{image_query_id}", response_model=ImageQuery, operation_id="device_get_image_query")
async def get_image_query(image_query_id: str, principal: DeviceDep, session: SessionDep) -> Response:
    row = await core.get_image_query(session, image_query_id)
    return Response(core.image_query_to_wire(row).model_dump_json(), media_type="application/json")


@router.get(
    "/{image_query_id}/image",
    operation_id="device_get_image",
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}}}},
)
async def get_image(
    image_query_id: str, principal: DeviceDep, state: StateDep, session: SessionDep
) -> Response:
    data, content_type = await core.get_image(session, state.blobs, image_query_id)
    return Response(data, media_type=content_type)
