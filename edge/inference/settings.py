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

    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=1, le=65535)
    model_root: Path = Path(".intellioptics/data/models")
    cache_max_entries: int = Field(default=5, ge=1)
    cache_max_bytes: int = Field(default=2 * 1024**3, ge=1)
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = Field(default=1, ge=1)
    worker_threads: int = Field(default_factory=lambda: os.cpu_count() or 2, ge=1)
    max_image_bytes: int = Field(default=ImageLimits.max_bytes, ge=1)
    body_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    max_image_pixels: int = Field(default=ImageLimits.max_pixels, ge=1)
    max_batch: int = Field(default=8, ge=1, le=256)
    # Backbone outputs of recent images (split bundles): one frame asked of several detectors on a
    # backbone runs it once. 0 entries or 0 s keeps only the sharing of computations under way.
    embedding_cache_entries: int = Field(default=256, ge=0)
    embedding_cache_ttl_s: float = Field(default=10.0, ge=0)
    verify_on_load: bool = True
    log_level: str = "info"

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels)
