"""What the edge knows about a detector: its edge config entry plus its installed model's metadata.

Model metadata is asked of the inference service and kept for a few seconds, so the hot path costs
one dictionary lookup while a newly installed model still shows up quickly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from common.edge_config import DetectorConfig, EdgeConfig, InferenceConfig
from common.wire.inference import ModelInfo
from edge.api.core.inference_client import InferenceClient


@dataclass(frozen=True)
class EdgeDetector:
    config: DetectorConfig
    inference_config: InferenceConfig
    model: ModelInfo | None

    @property
    def detector_id(self) -> str:
        return self.config.detector_id

    @property
    def confidence_threshold(self) -> float:
        if self.config.confidence_threshold is not None:
            return self.config.confidence_threshold
        return self.model.default_confidence_threshold if self.model else 0.9


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
