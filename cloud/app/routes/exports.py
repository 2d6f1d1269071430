"""Dataset export routes (the trainer, and admins): queue an export, follow it, download the
archive. The worker builds it (cloud.app.core.exports.run_export)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from starlette.responses import Response

from cloud.app.core import exports
from cloud.app.deps import SessionDep, StateDep, TrainerDep
from cloud.app.routes.models import new_temp_file, temp_file_response
from common.wire.dataset_export import ExportJobOut, ExportRequest

router = APIRouter(tags=["exports"])


@router.post(
    "/api/v1/detectors/{detector_id}/exports",
    response_model=ExportJobOut,
    status_code=202,
    operation_id="create_export",
)
async def create_export(
    detector_id: str,
    trainer: TrainerDep,
    state: StateDep,
    session: SessionDep,
    body: ExportRequest | None = None,
) -> ExportJobOut:
    """Queued for the worker; poll `GET /api/v1/exports/{id}` until it has succeeded. Without a body:
    every image; with `backbone_sha256` the stored embeddings by that backbone come too, and with
    `images="missing"` only the images of items that have no such embedding."""
    job = await exports.create_export(session, detector_id, trainer.user_id, body)
    return exports.export_out(job, state.settings.public_url)


@router.get("/api/v1/exports/{export_id}", response_model=ExportJobOut, operation_id="get_export")
async def get_export(
    export_id: str, trainer: TrainerDep, state: StateDep, session: SessionDep
) -> ExportJobOut:
    return exports.export_out(await exports.get_export(session, export_id), state.settings.public_url)


@router.get(
    "/api/v1/exports/{export_id}/download",
    operation_id="download_export",
    responses={
        200: {"content": {"application/gzip": {}}, "description": "the export tar.gz"},
        409: {"description": "the export has not succeeded (yet)"},
    },
)
async def download_export(
    export_id: str, trainer: TrainerDep, state: StateDep, session: SessionDep
) -> Response:
    tmp = await new_temp_file(state)
    try:
        job = await exports.download_export_to(session, state.blobs, export_id, tmp)
    except BaseException:
        await asyncio.to_thread(tmp.unlink, True)
        raise
    return temp_file_response(tmp, f"{job.detector_id}-{job.id}.tar.gz")
