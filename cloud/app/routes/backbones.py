"""Backbone registry routes: register (the trainer), read (anyone signed in), download (devices: edges
install a split bundle's backbone from here; the trainer), and the embedding store (the trainer).
The logic is in cloud.app.core.backbones.

Bodies are multipart, parsed here rather than by FastAPI so that the size limits apply before the
parts are spooled and the id list of a large embeddings batch is not cut at Starlette's 1 MB per field.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from starlette.datastructures import FormData, UploadFile
from starlette.responses import Response

from cloud.app.core import backbones
from cloud.app.deps import DeviceOrTrainerDep, PrincipalDep, SessionDep, StateDep, TrainerDep
from cloud.app.errors import BadRequestError, PayloadTooLargeError
from cloud.app.routes.models import new_temp_file, save_upload, temp_file_response, tmp_root
from common.wire.model_registry import SHA256_HEADER, BackboneOut, EmbeddingsStored

router = APIRouter(prefix="/api/v1/backbones", tags=["backbones"])

Sha256 = Annotated[str, PathParam(max_length=64, pattern=r"^[0-9a-f]{64}$")]
MAX_REF_BYTES = 64 * 1024
# Multipart framing around the parts; a request larger than the limits plus this is refused unread.
_SLACK = 256 * 1024


def _multipart(description: dict[str, object], required: list[str]) -> dict[str, object]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": description, "required": required}
                }
            },
        }
    }


def _check_declared_size(request: Request, limit: int, what: str) -> None:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadRequestError(f"send multipart/form-data ({what})")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + _SLACK:
        raise PayloadTooLargeError(f"request is {declared} bytes; the limit is {limit} bytes")


async def _text_part(form: FormData, name: str, limit: int) -> str:
    part = form.get(name)
    if part is None:
        raise BadRequestError(f"multipart part {name!r} is required")
    if isinstance(part, UploadFile):
        data = await part.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLargeError(f"part {name!r} is over {limit} bytes")
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise BadRequestError(f"part {name!r} must be UTF-8 JSON") from None
    return part


def _file_part(form: FormData, name: str) -> UploadFile:
    part = form.get(name)
    if not isinstance(part, UploadFile):
        raise BadRequestError(f"multipart part {name!r} must be a file")
    return part


@router.put(
    "/{sha256}",
    response_model=BackboneOut,
    status_code=201,
    operation_id="register_backbone",
    responses={
        200: {"model": BackboneOut, "description": "this backbone was already registered"},
        409: {"description": "registered before with other inputs or outputs"},
        413: {"description": "over the backbone size limit"},
        422: {"description": "the bytes do not hash to the name, or do not load with the ref's outputs"},
    },
    openapi_extra=_multipart(
        {
            "ref": {"type": "string", "description": "common.backbone.BackboneRef as JSON"},
            "file": {"type": "string", "format": "binary", "description": "backbone.onnx"},
        },
        ["ref", "file"],
    ),
)
async def register_backbone(
    sha256: Sha256, request: Request, trainer: TrainerDep, state: StateDep, session: SessionDep
) -> Response:
    """201 when stored, 200 when this sha256 was registered before (the stored row is returned)."""
    limit = state.settings.max_backbone_bytes
    _check_declared_size(request, limit, "parts 'ref' (BackboneRef JSON) and 'file' (backbone.onnx)")
    work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="backbone-", dir=tmp_root(state)))
    try:
        async with request.form(max_files=1, max_fields=1, max_part_size=MAX_REF_BYTES) as form:
            ref = backbones.parse_ref(await _text_part(form, "ref", MAX_REF_BYTES))
            upload = work / "backbone.onnx"
            await asyncio.to_thread(save_upload, _file_part(form, "file").file, upload, limit, "backbone")
        row, created = await backbones.register_backbone(session, state.blobs, sha256, ref, upload, limit)
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
    out = backbones.backbone_out(row, state.settings.public_url)
    return Response(out.model_dump_json(), status_code=201 if created else 200, media_type="application/json")


@router.get("/{sha256}", response_model=BackboneOut, operation_id="get_backbone")
async def get_backbone(
    sha256: Sha256, principal: PrincipalDep, state: StateDep, session: SessionDep
) -> BackboneOut:
    return backbones.backbone_out(await backbones.get_backbone(session, sha256), state.settings.public_url)


@router.get(
    "/{sha256}/download",
    operation_id="download_backbone",
    responses={200: {"content": {backbones.BACKBONE_CONTENT_TYPE: {}}, "description": "backbone.onnx"}},
)
async def download_backbone(
    sha256: Sha256, device: DeviceOrTrainerDep, state: StateDep, session: SessionDep
) -> Response:
    """The stored backbone.onnx, with its sha256 in `x-content-sha256` (it is also its name)."""
    tmp = await new_temp_file(state)
    try:
        row = await backbones.download_to(session, state.blobs, sha256, tmp)
    except BaseException:
        await asyncio.to_thread(tmp.unlink, True)
        raise
    return temp_file_response(
        tmp,
        f"backbone-{row.sha256[:12]}.onnx",
        {SHA256_HEADER: row.sha256, "ETag": f'"{row.sha256}"'},
        media_type=backbones.BACKBONE_CONTENT_TYPE,
    )


@router.post(
    "/{sha256}/embeddings",
    response_model=EmbeddingsStored,
    operation_id="store_embeddings",
    responses={
        404: {"description": "the backbone is not registered"},
        413: {"description": "over the upload limit: send smaller batches"},
    },
    openapi_extra=_multipart(
        {
            "image_query_ids": {"type": "string", "description": "JSON array of image query ids"},
            "vectors": {
                "type": "string",
                "format": "binary",
                "description": ".npy (numpy.save) float16 (N, embedding_dim), rows in the order of the ids",
            },
        },
        ["image_query_ids", "vectors"],
    ),
)
async def store_embeddings(
    sha256: Sha256, request: Request, trainer: TrainerDep, state: StateDep, session: SessionDep
) -> EmbeddingsStored:
    """Rows that exist are kept; ids this cloud does not know are listed in `unknown`."""
    limit = state.settings.max_embeddings_upload_bytes
    _check_declared_size(request, limit, "parts 'image_query_ids' (JSON array) and 'vectors' (.npy)")
    await backbones.get_backbone(session, sha256)  # 404 before reading a large body for nothing
    async with request.form(max_files=2, max_fields=2, max_part_size=limit) as form:
        ids = backbones.parse_ids(await _text_part(form, "image_query_ids", limit))
        vectors = _file_part(form, "vectors")
        data = await vectors.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLargeError(f"vectors is over the limit of {limit} bytes")
    return await backbones.store_embeddings(session, sha256, ids, data)
