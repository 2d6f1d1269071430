from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.imaging import ImageLimits


class EdgeSettings(BaseSettings):
    """Environment variables EDGE_*; the README's settings table documents each."""

    model_config = SettingsConfigDict(env_prefix="EDGE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8718, ge=1, le=65535)
    inference_url: str = "http://127.0.0.1:8001"
    cloud_url: str = "http://127.0.0.1:8000"
    api_token: str = ""
    edge_id: str = Field(default_factory=lambda: f"edge-{socket.gethostname()}")
    config_path: Path = Path("config/edge-config.yaml")
    data_dir: Path = Path(".intellioptics/data/edge")
    max_image_bytes: int = Field(default=ImageLimits.max_bytes, ge=1)
    max_image_pixels: int = Field(default=ImageLimits.max_pixels, ge=1)
    inference_timeout_s: float = Field(default=8.0, gt=0)
    detector_info_ttl_s: float = Field(default=5.0, ge=0)
    outbox_retry_base_s: float = Field(default=0.5, gt=0)
    outbox_retry_max_s: float = Field(default=30.0, gt=0)
    outbox_concurrency: int = Field(default=4, ge=1)
    outbox_alarm_depth: int = Field(default=10_000, ge=1)
    cloud_timeout_s: float = Field(default=10.0, gt=0)
    # Reading an escalated query asks the cloud for a person's answer; never longer than this.
    cloud_answer_timeout_s: float = Field(default=2.0, gt=0)
    cloud_probe_interval_s: float = Field(default=15.0, gt=0)
    # A detector without a model answers with its label prior from the cloud (edge.api.core.priors):
    # fresh this long, then refreshed in the background; a request waits at most prior_wait_s for a
    # first one (else 503); after a failed fetch none is tried for prior_retry_s.
    prior_ttl_s: float = Field(default=30.0, gt=0)
    prior_wait_s: float = Field(default=1.0, ge=0, le=8)
    prior_retry_s: float = Field(default=5.0, ge=0)
    prior_timeout_s: float = Field(default=5.0, gt=0)
    # The streams service (edge/streams), whose per-stream status /status and /metrics include;
    # empty: not deployed.
    streams_url: str = "http://127.0.0.1:8720"
    streams_timeout_s: float = Field(default=1.0, gt=0)
    # The model updater (edge/updater), whose per-detector status /status includes; empty: not deployed.
    updater_url: str = "http://127.0.0.1:8721"
    updater_timeout_s: float = Field(default=1.0, gt=0)
    log_level: str = "info"

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels)
