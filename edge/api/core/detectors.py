"""What the edge knows about a detector: its edge config entry plus its installed model's metadata.

Model metadata is asked of the inference service and kept for a few seconds, so the hot path costs
one dictionary lookup while a newly installed model still shows up quickly.

The threshold a query is answered at is chosen here, so answers, the detector route and /status agree:
the request's, else the edge config's (a local override), else the cloud's current setting for the
detector (edge.api.core.priors keeps it, so an admin's change in the cloud reaches edges that already
have a model), else the model's default.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from common.edge_config import DetectorConfig, EdgeConfig, InferenceConfig
from common.wire.inference import ModelInfo
from edge.api.core.inference_client import InferenceClient

# "default": nothing says (no model, no cloud value, no edge config); such a detector is not answered here.
ThresholdSource = Literal["request", "edge_config", "cloud", "model", "default"]
FALLBACK_THRESHOLD = 0.9


@dataclass(frozen=True)
class Threshold:
    value: float
    source: ThresholdSource


@dataclass(frozen=True)
class EdgeDetector:
    config: DetectorConfig
    inference_config: InferenceConfig
    model: ModelInfo | None

    @property
    def detector_id(self) -> str:
        return self.config.detector_id

    def threshold(self, cloud: float | None, requested: float | None = None) -> Threshold:
        """The threshold to answer at: `requested` (the request's), else the edge config's, else
        `cloud` (the cloud's detector setting, as last fetched), else the model's default."""
        if requested is not None:
            return Threshold(requested, "request")
        if self.config.confidence_threshold is not None:
            return Threshold(self.config.confidence_threshold, "edge_config")
        if cloud is not None:
            return Threshold(cloud, "cloud")
        if self.model is not None:
            return Threshold(self.model.default_confidence_threshold, "model")
        return Threshold(FALLBACK_THRESHOLD, "default")


class DetectorDirectory:
    def __init__(self, inference: InferenceClient, ttl_s: float) -> None:
        self._inference = inference
        self._ttl = ttl_s
        self._models: dict[str, tuple[float, ModelInfo | None]] = {}

    async def model(self, detector_id: str) -> ModelInfo | None:
        now = time.monotonic()
        cached = self._models.get(detector_id)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        info = await self._inference.model_info(detector_id)
        self._models[detector_id] = (now, info)
        return info

    async def lookup(self, config: EdgeConfig, detector_id: str) -> EdgeDetector | None:
        """None when the detector is not configured on this edge at all."""
        det = config.detector(detector_id)
        if det is None:
            return None
        return EdgeDetector(det, config.inference_config(det), await self.model(detector_id))
