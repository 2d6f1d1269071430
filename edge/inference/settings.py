from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from common.imaging import ImageLimits
from common.internal_auth import InternalTokenSettings


class InferenceSettings(InternalTokenSettings):
    """Environment variables INFERENCE_* (and INTELLIOPTICS_INTERNAL_TOKEN*); the README's settings
    table documents each."""

    model_config = SettingsConfigDict(env_prefix="INFERENCE_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Address the inference service listens on.")
    port: int = Field(default=8001, ge=1, le=65535, description="Port the inference service listens on.")
    model_root: Path = Field(
        default=Path(".intellioptics/data/models"),
        description="Where the model bundles live (shared with the updater, which installs them).",
    )
    cache_max_entries: int = Field(
        default=5, ge=1, description="Models kept loaded at most (least recently used go first)."
    )
    cache_max_bytes: int = Field(
        default=2 * 1024**3, ge=1, description="Memory the loaded models may take at most, in bytes."
    )
    provider: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="Where models run: `auto` (CUDA when onnxruntime has it, else the CPU), `cpu` or `cuda`.",
    )
    intra_op_threads: int = Field(
        default=1,
        ge=1,
        description="ONNX Runtime threads for one inference; raise it for few, large models on an idle machine.",
    )
    worker_threads: int = Field(
        default_factory=lambda: os.cpu_count() or 2,
        ge=1,
        json_schema_extra={"default_text": "the CPU count"},
        description="Threads running models, so this many inferences run at once.",
    )
    max_image_bytes: int = Field(
        default=ImageLimits.max_bytes, ge=1, description="Largest image accepted, in bytes (413 above)."
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="A request body must arrive within this many seconds (408 and the connection closed otherwise).",
    )
    max_image_pixels: int = Field(
        default=ImageLimits.max_pixels, ge=1, description="Largest image accepted, in pixels (413 above)."
    )
    max_batch: int = Field(
        default=8,
        ge=1,
        le=256,
        description=(
            "Most requests for one model (or one backbone) that a free worker runs in one forward pass; "
            "no request waits to fill a batch, so this only matters under load (1: no batching)."
        ),
    )
    embedding_cache_entries: int = Field(
        default=256,
        ge=0,
        description=(
            "Backbone outputs of recent images kept (split bundles), so one image asked of several "
            "detectors on a backbone runs it once (0: only computations under way are shared)."
        ),
    )
    embedding_cache_ttl_s: float = Field(
        default=10.0,
        ge=0,
        description="How long such a backbone output is reused, in seconds (0: only computations under way).",
    )
    verify_on_load: bool = Field(default=True, description="Check a bundle's file hashes before loading it.")
    log_level: str = Field(
        default="info",
        description="Log level (`debug`, `info`, `warning`, `error`) of the JSON log lines.",
    )

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels)
