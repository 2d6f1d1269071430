"""`GET /edge-api/v1/detectors/{detector_id}/prior`: the label counts an edge answers a model-less
detector with, its threshold and its alert rules (common.wire.priors); the logic is in
cloud.app.core.priors and cloud.app.core.alert_rules."""

from __future__ import annotations

from fastapi import APIRouter

from cloud.app.core import alert_rules, priors
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
    """Counts per answer (key order, UNCLEAR not counted), whether a production model exists, the
    current threshold and the enabled alert rules: what an edge needs to answer like the cloud."""
    detector = await get_detector(session, detector_id)
    prior = await priors.detector_prior(session, detector)
    prior.alert_rules = await alert_rules.enabled_rules(session, detector.id)
    return prior
