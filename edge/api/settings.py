from __future__ import annotations

import socket
from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from common.imaging import ImageLimits
from common.internal_auth import InternalTokenSettings
from common.secret_files import SecretFileSettings

ADMIN_TOKEN_FILE = "admin-token"
LOCAL_TOKENS_FILE = "tokens.json"


def default_edge_id() -> str:
    """`edge-<host name>`: stable on a machine, but new with every container; compose sets EDGE_EDGE_ID."""
    return f"edge-{socket.gethostname()}"


class EdgeSettings(InternalTokenSettings, SecretFileSettings):
    """Environment variables EDGE_* (and INTELLIOPTICS_INTERNAL_TOKEN*); the README's settings table
    documents each. EDGE_API_TOKEN may come from the file EDGE_API_TOKEN_FILE (common.secret_files)."""

    model_config = SettingsConfigDict(env_prefix="EDGE_", extra="ignore")

    secret_fields: ClassVar[tuple[str, ...]] = ("api_token",)

    host: str = "127.0.0.1"
    port: int = Field(default=8718, ge=1, le=65535)
    inference_url: str = "http://127.0.0.1:8001"
    cloud_url: str = "http://127.0.0.1:8000"
    api_token: str = ""
    # Empty (compose's `${INTELLIOPTICS_EDGE_ID:-}` when unset): the default.
    edge_id: str = Field(default_factory=default_edge_id)
    config_path: Path = Path("config/edge-config.yaml")
    data_dir: Path = Path(".intellioptics/data/edge")
    max_image_bytes: int = Field(default=ImageLimits.max_bytes, ge=1)
    # A request body must arrive within this many seconds (408 otherwise): slow clients hold no connection.
    body_timeout_s: float = Field(default=30.0, gt=0, le=3600)
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
    # Who may call (edge.api.auth): the edge operator's token (the variable, else the file's first line;
    # by default <data_dir>/admin-token, created at first start), locally accepted device tokens
    # (sha256 hashes, managed with `python -m edge.api.tokens`), and how long the cloud's verdict on a
    # device token is kept: a positive one `token_ttl_s` (then re-checked in the background, and kept
    # while the cloud is unreachable), a negative one `token_negative_ttl_s`.
    admin_token: str = ""
    admin_token_file: Path | None = None
    local_tokens_file: Path | None = None
    token_ttl_s: float = Field(default=3600.0, gt=0)
    token_negative_ttl_s: float = Field(default=30.0, ge=0)
    token_cache_size: int = Field(default=10_000, ge=1)
    token_verify_timeout_s: float = Field(default=3.0, gt=0, le=8)
    log_level: str = "info"

    @field_validator("edge_id")
    @classmethod
    def _empty_edge_id_is_the_default(cls, value: str) -> str:
        return value or default_edge_id()

    @property
    def admin_token_path(self) -> Path:
        return self.admin_token_file or self.data_dir / ADMIN_TOKEN_FILE

    @property
    def local_tokens_path(self) -> Path:
        return self.local_tokens_file or self.data_dir / LOCAL_TOKENS_FILE

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels)
