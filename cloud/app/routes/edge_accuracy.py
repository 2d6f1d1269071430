"""`GET /api/v1/detectors/{detector_id}/edge-accuracy`: the edge's accuracy on audited answers, for
people and devices. The logic is in cloud.app.core.edge_accuracy."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from cloud.app.core.edge_accuracy import edge_accuracy
from cloud.app.deps import ReaderDep, SessionDep
from cloud.app.schemas.edge_accuracy import EdgeAccuracyOut
from cloud.app.schemas.fields import ID_PATTERN

router = APIRouter(prefix="/api/v1/detectors", tags=["detectors"])


@router.get("/{detector_id}/edge-accuracy", operation_id="get_edge_accuracy")
async def get_edge_accuracy(
    detector_id: Annotated[str, Path(max_length=40, pattern=ID_PATTERN)],
    principal: ReaderDep,
    session: SessionDep,
) -> EdgeAccuracyOut:
    """n, correct and an exact 95 % interval over audits a reviewer answered, overall and per model version."""
    return await edge_accuracy(session, detector_id)
