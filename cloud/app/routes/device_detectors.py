"""Detectors on the device API: create, get, list (also by name); update and delete (the SDK's
update_detector_* and delete_detector) are an admin's: a camera's token changes nothing it cannot undo.
Deletion is soft (cloud.app.core.detector_lifecycle): restore with POST /api/v1/admin/detectors/{id}/restore."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import unquote

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from cloud.app.core import detector_lifecycle
from cloud.app.core import detectors as core
from cloud.app.deps import AdminDep, DeviceDep, SessionDep, StateDep
from cloud.app.errors import BadRequestError
from cloud.app.schemas.device import DetectorCreationInput, DetectorUpdate, page_links
from common.validation import InvalidInputError, check_name
from common.wire.device_api import Detector, Page

router = APIRouter(prefix="/device-api/v1/detectors", tags=["device"])

PageNumber = Annotated[int, Query(ge=1, le=1_000_000)]
PageSize = Annotated[int, Query(ge=1, le=1000)]


def raw_query_value(request: Request, key: str) -> str | None:
    """Percent-decode without turning `+` into a space: the SDK sends names unencoded (docs/wire.md §11)."""
    for part in request.scope.get("query_string", b"").decode("latin-1").split("&"):
        name, sep, value = part.partition("=")
        if sep and unquote(name) == key:
            return unquote(value, encoding="utf-8", errors="replace")
    return None


@router.post("", response_model=Detector, status_code=201, operation_id="device_create_detector")
async def create_detector(body: DetectorCreationInput, principal: DeviceDep, session: SessionDep) -> Detector:
    return core.detector_to_wire(await core.create_detector(session, body, principal))


@router.get("", response_model=Page[Detector], operation_id="device_list_detectors")
async def list_detectors(
    request: Request,
    principal: DeviceDep,
    state: StateDep,
    session: SessionDep,
    page: PageNumber = 1,
    page_size: PageSize = 10,
    name: str | None = None,
) -> Page[Detector]:
    if name is not None:
        name = raw_query_value(request, "name")
        if name is not None and name.strip():
            # Names are stored as common.validation's rule leaves them, so look up the same form.
            try:
                name = check_name(name)
            except InvalidInputError as exc:
                raise BadRequestError(str(exc)) from None
    rows, count = await core.list_detectors(session, page, page_size, name)
    params = {} if name is None else {"name": name}
    next_url, previous_url = page_links(
        f"{state.settings.public_url.rstrip('/')}{router.prefix}", page, page_size, count, params
    )
    return Page[Detector](
        count=count, next=next_url, previous=previous_url, results=[core.detector_to_wire(r) for r in rows]
    )


@router.get("/{detector_id}", response_model=Detector, operation_id="device_get_detector")
async def get_detector(detector_id: str, principal: DeviceDep, session: SessionDep) -> Detector:
    return core.detector_to_wire(await core.get_detector(session, detector_id))


@router.patch("/{detector_id}", response_model=Detector, operation_id="device_update_detector")
async def update_detector(
    detector_id: str, body: DetectorUpdate, admin: AdminDep, session: SessionDep
) -> Detector:
    return core.detector_to_wire(await core.update_detector(session, detector_id, body, admin))


@router.delete("/{detector_id}", status_code=204, operation_id="device_delete_detector")
async def delete_detector(
    detector_id: str, admin: AdminDep, state: StateDep, session: SessionDep
) -> Response:
    """Hidden at once, restorable for CLOUD_DELETED_RETENTION_S, then purged with its data."""
    await detector_lifecycle.delete_detector(session, detector_id, admin, state.settings.deleted_retention_s)
    return Response(status_code=204)
