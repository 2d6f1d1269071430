"""`add_label` on the device API: a customer's answer to one of its image queries."""

from __future__ import annotations

from fastapi import APIRouter

from cloud.app.core.labels import add_label
from cloud.app.deps import DeviceDep, SessionDep
from cloud.app.schemas.device import LabelCreate, LabelValue

router = APIRouter(prefix="/device-api/v1/labels", tags=["device"])


@router.post("", response_model=LabelValue, status_code=201, operation_id="device_create_label")
async def create_label(body: LabelCreate, principal: DeviceDep, session: SessionDep) -> LabelValue:
    """Resolves the query with this answer (confidence 1.0) and closes its review item."""
    return await add_label(session, principal, body)
