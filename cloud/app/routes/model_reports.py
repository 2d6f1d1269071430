"""Reports of a model version: the trainer uploads its plots and metrics.json, people and devices read
them (the review pages show them as images). The logic is in cloud.app.core.model_reports."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from cloud.app.core import model_reports as reports
from cloud.app.deps import ReaderDep, SessionDep, StateDep, TrainerDep
from cloud.app.errors import PayloadTooLargeError
from cloud.app.routes.bodies import read_limited_body
from cloud.app.schemas.fields import ID_PATTERN
from common.wire.model_registry import ModelReportList, ModelReportOut, ReportName

router = APIRouter(tags=["models"])

ModelId = Annotated[str, Path(max_length=60, pattern=ID_PATTERN)]


@router.post(
    "/api/v1/models/{model_id}/reports/{name}",
    status_code=201,
    operation_id="upload_model_report",
    responses={413: {"description": "over the size limit of this report"}},
)
async def upload_model_report(
    model_id: ModelId,
    name: ReportName,
    request: Request,
    trainer: TrainerDep,
    state: StateDep,
    session: SessionDep,
) -> ModelReportOut:
    """The body is the file itself (PNG, or a JSON object for metrics.json); a second upload replaces it."""
    data = await read_limited_body(request, reports.max_bytes(name), PayloadTooLargeError)
    return await reports.store_report(session, state.blobs, model_id, name, data)


@router.get("/api/v1/models/{model_id}/reports", operation_id="list_model_reports")
async def list_model_reports(
    model_id: ModelId, principal: ReaderDep, state: StateDep, session: SessionDep
) -> ModelReportList:
    return await reports.list_reports(session, state.blobs, model_id)


@router.get(
    "/api/v1/models/{model_id}/reports/{name}",
    operation_id="get_model_report",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "application/json": {}}, "description": "the file"}},
)
async def get_model_report(
    model_id: ModelId, name: ReportName, principal: ReaderDep, state: StateDep, session: SessionDep
) -> Response:
    data, content_type = await reports.read_report(session, state.blobs, model_id, name)
    return Response(
        data,
        media_type=content_type,
        headers={"Cache-Control": "private, no-cache", "X-Content-Type-Options": "nosniff"},
    )
