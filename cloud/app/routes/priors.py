"""`GET /edge-api/v1/detectors/{detector_id}/prior`: the label counts an edge answers a model-less
detector with (common.wire.priors); the logic is in cloud.app.core.priors."""

from __future__ import annotations

from fastapi import APIRouter

from cloud.app.core import priors
from cloud.app.core.detectors import get_detector
from cloud.app.deps import DeviceDep, SessionDep
from common.wire.priors import DetectorPrior

router = APIRouter(tags=["edge"])


@router.get(
    "/edge-api/v1/detectors/{detector_id}/prior",
    response_model=DetectorPrior,
    operation_id="get_detector_prior",
    responses={404: {"description": "unknown detector"}},
)
async def get_detector_prior(detector_id: str, device: DeviceDep, session: SessionDep) -> DetectorPrior:
    """Counts per answer (key order, UNCLEAR not counted) and whether a production model exists."""
    return await priors.detector_prior(session, await get_detector(session, detector_id))
