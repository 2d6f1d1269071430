"""Model registry routes: upload, list, details, promote, rollback, delete, download, and the edge's
`fetch-model-urls` poll (ETag + 304). The logic is in cloud.app.core.registry.

The trainer uploads and promotes what it trained and downloads what is production (to compare);
rollback and delete stay an admin's."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from starlette.background import BackgroundTask
from starlette.responses import FileResponse, JSONResponse, Response

from cloud.app.core import registry
from cloud.app.deps import (
    AdminDep,
    CloudState,
    DeviceOrTrainerDep,
    ReaderDep,
    SessionDep,
    StateDep,
    TrainerDep,
)
from cloud.app.errors import BadRequestError, PayloadTooLargeError
from common.bundle_archive import ARCHIVE_CONTENT_TYPE, MAX_ARCHIVE_BYTES
from common.wire.model_registry import (
    SHA256_HEADER,
    ModelFetchInfo,
    ModelVersionDetail,
    ModelVersionList,
    ModelVersionOut,
)

router = APIRouter(tags=["models"])

MAX_LINEAGE_BYTES = 64 * 1024


def tmp_root(state: CloudState) -> Path:
    root = state.settings.data_dir / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    return root


def save_upload(src: IO[bytes], dest: Path, limit: int, what: str = "bundle archive") -> None:
    """Blocking copy of the spooled upload, refusing more than `limit` bytes."""
    written = 0
    with dest.open("wb") as out:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > limit:
                raise PayloadTooLargeError(f"{what} is over the limit of {limit} bytes")
            out.write(chunk)


def _parse_lineage(raw: str | None) -> dict[str, Any] | None:
    if raw is None or not raw.strip():
        return None
    if len(raw.encode()) > MAX_LINEAGE_BYTES:
        raise BadRequestError(f"lineage is over {MAX_LINEAGE_BYTES} bytes")
    try:
        value = json.loads(raw)
    except ValueError:
        raise BadRequestError("lineage must be a JSON object") from None
    if not isinstance(value, dict):
        raise BadRequestError("lineage must be a JSON object")
    return value


@router.post(
    "/api/v1/detectors/{detector_id}/models",
    response_model=ModelVersionDetail,
    status_code=201,
    operation_id="upload_model",
    responses={200: {"description": "this version was already registered with identical content"}},
)
async def upload_model(
    detector_id: str,
    response: Response,
    trainer: TrainerDep,
    state: StateDep,
    session: SessionDep,
    bundle: Annotated[UploadFile, File(description="the bundle as a tar.gz (common.bundle_archive)")],
    promote: Annotated[bool, Form(description="make it the production version at once")] = False,
    lineage: Annotated[str | None, Form(description="JSON object merged over the bundle's lineage")] = None,
) -> ModelVersionDetail:
    """201 with the new version; 200 when the same version was uploaded before with the same bytes.

    A split bundle is accepted only when its backbone is registered (PUT /api/v1/backbones/{sha256});
    every bundle is run once (warm-up) before it is stored, so graphs that do not run are a 422."""
    extra_lineage = _parse_lineage(lineage)
    work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="upload-", dir=tmp_root(state)))
    try:
        upload = work / "upload.tar.gz"
        await asyncio.to_thread(save_upload, bundle.file, upload, MAX_ARCHIVE_BYTES)
        row, created = await registry.register_bundle(
            session,
            state.blobs,
            state.backbones,
            detector_id,
            upload,
            work,
            actor=trainer,
            promote=promote,
            lineage=extra_lineage,
        )
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
    response.status_code = 201 if created else 200
    return registry.model_detail(row, state.settings.public_url)


@router.get(
    "/api/v1/detectors/{detector_id}/models", response_model=ModelVersionList, operation_id="list_models"
)
async def list_models(detector_id: str, principal: ReaderDep, session: SessionDep) -> ModelVersionList:
    detector, rows = await registry.list_models(session, detector_id)
    return ModelVersionList(
        detector_id=detector.id,
        production_version_id=detector.production_version_id,
        results=[registry.model_out(row) for row in rows],
    )


@router.post(
    "/api/v1/detectors/{detector_id}/models/rollback",
    response_model=ModelVersionOut,
    operation_id="rollback_model",
)
async def rollback_model(detector_id: str, admin: AdminDep, session: SessionDep) -> ModelVersionOut:
    """The alias goes back to the version promoted before the current one; 409 when there is none."""
    return registry.model_out(await registry.rollback_model(session, detector_id, admin))


@router.get("/api/v1/models/{model_id}", response_model=ModelVersionDetail, operation_id="get_model")
async def get_model(
    model_id: str, principal: ReaderDep, state: StateDep, session: SessionDep
) -> ModelVersionDetail:
    return registry.model_detail(await registry.get_model(session, model_id), state.settings.public_url)


@router.post(
    "/api/v1/models/{model_id}/promote", response_model=ModelVersionOut, operation_id="promote_model"
)
async def promote_model(model_id: str, trainer: TrainerDep, session: SessionDep) -> ModelVersionOut:
    return registry.model_out(await registry.promote_model(session, model_id, trainer))


@router.delete("/api/v1/models/{model_id}", status_code=204, operation_id="delete_model")
async def delete_model(model_id: str, admin: AdminDep, state: StateDep, session: SessionDep) -> Response:
    """409 for the production version; the blob goes with the row."""
    await registry.delete_model(session, state.blobs, model_id, admin)
    return Response(status_code=204)


@router.get(
    "/api/v1/models/{model_id}/download",
    operation_id="download_model",
    response_class=FileResponse,
    responses={200: {"content": {ARCHIVE_CONTENT_TYPE: {}}, "description": "the bundle tar.gz"}},
)
async def download_model(
    model_id: str, device: DeviceOrTrainerDep, state: StateDep, session: SessionDep
) -> Response:
    """The stored tar.gz, with its sha256 in `x-content-sha256` so the client can check what it got."""
    tmp = await new_temp_file(state)
    try:
        row = await registry.download_to(session, state.blobs, model_id, tmp)
    except BaseException:
        await asyncio.to_thread(tmp.unlink, True)
        raise
    return temp_file_response(
        tmp,
        f"{row.detector_id}-{row.version}.tar.gz",
        {
            SHA256_HEADER: row.sha256,
            "ETag": registry.fetch_etag(row.id, row.sha256, registry.backbone_sha(row)),
        },
    )


async def new_temp_file(state: CloudState) -> Path:
    """An empty private file under data_dir/tmp for a blob on its way to a client."""
    fd, name = await asyncio.to_thread(tempfile.mkstemp, prefix="download-", dir=tmp_root(state))
    await asyncio.to_thread(os.close, fd)
    return Path(name)


def temp_file_response(
    tmp: Path, filename: str, headers: dict[str, str] | None = None, media_type: str = ARCHIVE_CONTENT_TYPE
) -> FileResponse:
    """Streams `tmp` and removes it once sent (or once the client has gone)."""
    return FileResponse(
        tmp,
        media_type=media_type,
        filename=filename,
        headers=headers,
        background=BackgroundTask(tmp.unlink, missing_ok=True),
    )


@router.get(
    "/edge-api/v1/fetch-model-urls/{detector_id}/",
    response_model=ModelFetchInfo,
    operation_id="fetch_model_urls",
    responses={304: {"description": "If-None-Match matched: the production version is unchanged"}},
)
async def fetch_model_urls(
    detector_id: str, request: Request, device: DeviceOrTrainerDep, state: StateDep, session: SessionDep
) -> Response:
    """Edges poll this; a promote or rollback changes the ETag. 404 while there is no production model.
    A split bundle names its `backbone`, which the edge installs (once) before the bundle."""
    info = await registry.fetch_info(session, detector_id, state.settings.public_url)
    etag = registry.fetch_etag(
        info.model_version_id, info.sha256, info.backbone.sha256 if info.backbone is not None else None
    )
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if registry.etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return JSONResponse(info.model_dump(mode="json"), headers=headers)
