from __future__ import annotations

from fastapi import APIRouter

from common.bundle import DetectorMode
from common.edge_config import EdgeConfig
from common.wire.device_api import Detector, utc_now_iso
from edge.api.core.inference_client import InferenceUnavailableError
from edge.api.deps import DEVICE, StateDep
from edge.api.errors import NotServedHereError

router = APIRouter(prefix="/device-api/v1/detectors", tags=["detectors"])


@router.get("/{detector_id}", response_model=Detector, operation_id="get_detector", dependencies=[DEVICE])
async def get_detector(detector_id: str, state: StateDep) -> Detector:
    """Served for detectors this edge answers (the SDK asks before waiting); others go to the cloud.
    Its threshold is the one queries are answered at without their own (edge.api.core.detectors)."""
    config: EdgeConfig = state.config.config
    try:
        detector = await state.directory.lookup(config, detector_id)
    except InferenceUnavailableError:
        detector = None
    if detector is None:
        raise NotServedHereError(f"detector {detector_id} is not served by this edge")
    model = detector.model
    enabled = detector.inference_config.enabled
    if model is not None:
        mode, name, query, labels = DetectorMode(model.mode), model.detector_name, model.query, model.labels
        cloud = state.priors.cloud_threshold(detector_id) if enabled else None
    else:
        # No model yet: described by its label prior, which it answers with (else the cloud knows it).
        prior = state.priors.known(detector_id) if enabled else None
        if prior is None:
            raise NotServedHereError(f"detector {detector_id} is not served by this edge")
        mode, name, query, labels = prior.mode, prior.name, prior.query, prior.labels
        cloud = prior.confidence_threshold
    mode_configuration: dict[str, object] | None = None
    if mode is DetectorMode.MULTI_CLASS:
        mode_configuration = {"class_names": labels, "num_classes": len(labels)}
    elif mode is DetectorMode.COUNT:
        mode_configuration = {"max_count": len(labels) - 1, "class_name": name}
    elif mode is DetectorMode.BOUNDING_BOX:
        # A model's labels are its count buckets "0".."max_num_bboxes"; a label prior's are the
        # answers (NO_OBJECTS, ...), which do not tell the limit.
        mode_configuration = {"class_name": name}
        if labels and all(label.isdecimal() for label in labels):
            mode_configuration["max_num_bboxes"] = len(labels) - 1
    return Detector(
        id=detector_id,
        created_at=utc_now_iso(),
        name=name or detector_id,
        query=query,
        mode=mode,
        mode_configuration=mode_configuration,
        confidence_threshold=detector.threshold(cloud).value,
    )
