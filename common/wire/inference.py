"""The edge inference service's HTTP contract (its clients: edge-api, and the model updater for swaps)."""

from __future__ import annotations

from pydantic import BaseModel, Field


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
    bytes: int | None = None


class CacheStats(BaseModel):
    entries: int
    max_entries: int
    bytes: int
    max_bytes: int
    in_use: int


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
