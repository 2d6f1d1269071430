"""The edge inference service's HTTP contract (its clients: edge-api, and the model updater for swaps)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from common.wire.device_api import Roi


class InferenceResult(BaseModel):
    detector_id: str
    model_version: str
    mode: str
    labels: list[str]
    probabilities: list[float]
    label: str
    raw_confidence: float
    in_domain: float
    confidence: float
    timings_ms: dict[str, float]
    rois: list[Roi] | None = Field(
        default=None, description="detection heads: the answer's boxes, as many as the count"
    )
    greater_than_max: bool | None = Field(
        default=None, description="detection heads: more objects than the detector's max_count"
    )


class ModelInfo(BaseModel):
    """A detector the inference service can serve, whether or not it is loaded right now."""

    detector_id: str
    version: str
    detector_name: str
    query: str
    mode: str
    labels: list[str]
    default_confidence_threshold: float
    loaded: bool
    provider: str | None = None
    bytes: int | None = Field(default=None, description="the loaded model's own graphs (not its backbone)")
    backbone: str | None = Field(
        default=None, description="sha256 of the shared backbone a split bundle runs on; null for single-file"
    )


class CacheStats(BaseModel):
    """The model cache's bounds and use; a shared backbone counts once, as one entry, however many
    loaded heads run on it."""

    entries: int = Field(
        description="loaded models (heads or single-file) plus the distinct backbones they hold"
    )
    max_entries: int
    bytes: int = Field(description="bytes of the loaded models plus each distinct backbone's once")
    max_bytes: int
    in_use: int
    backbones: int = Field(default=0, description="distinct backbones the loaded heads hold")
    backbone_bytes: int = Field(default=0, description="their bytes, each counted once")


class ModelList(BaseModel):
    provider: str
    cache: CacheStats
    models: list[ModelInfo]


class SwapResult(BaseModel):
    """`POST /models/{detector_id}/swap`: what serves now, after the bundle `current` points at was
    loaded and warmed beside the old one and swapped in."""

    detector_id: str
    version: str = Field(description="the version serving from now on")
    previous_version: str | None = Field(description="the version served before; null when none was loaded")
    swapped: bool = Field(description="false when this version was serving already")
    load_ms: float | None = Field(default=None, description="load and warm-up time of the new version")
