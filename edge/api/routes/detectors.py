from __future__ import annotations

from fastapi import APIRouter

from common.bundle import DetectorMode
from common.edge_config import EdgeConfig
from common.wire.device_api import Detector, utc_now_iso
from edge.api.core.inference_client import InferenceUnavailableError
from edge.api.deps import StateDep
from edge.api.errors import NotServedHereError

router = APIRouter(prefix="/device-api/v1/detectors", tags=["detectors"])


@router.get("/{detector_id}", response_model=Detector, operation_id="get_detector")
async def get_detector(detector_id: str, state: StateDep) -> Detector:
    """Served for detectors this edge runs (the SDK asks before waiting); others go to the cloud."""
    config: EdgeConfig = state.config.config
    try:
        detector = await state.directory.lookup(config, detector_id)
    except InferenceUnavailableError:
        detector = None
    if detector is None or detector.model is None:
        raise NotServedHereError(f"detector {detector_id} is not served by this edge")
    model = detector.model
    mode = DetectorMode(model.mode)
    mode_configuration: dict[str, object] | None = None
    if mode is DetectorMode.MULTI_CLASS:
        mode_configuration = {"class_names": model.labels, "num_classes": len(model.labels)}
    elif mode is DetectorMode.COUNT:
        mode_configuration = {"max_count": len(model.labels) - 1, "class_name": model.detector_name}
    return Detector(
        id=detector_id,
        created_at=utc_now_iso(),
        name=model.detector_name or detector_id,
        query=model.query,
        mode=mode,
        mode_configuration=mode_configuration,
        confidence_threshold=detector.confidence_threshold,
    )
