from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from common.internal_auth import InternalTokenSettings


class UpdaterSettings(InternalTokenSettings):
    """Environment variables UPDATER_* (and INTELLIOPTICS_INTERNAL_TOKEN*); the README's settings
    table documents each."""

    model_config = SettingsConfigDict(env_prefix="UPDATER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8721, ge=1, le=65535)
    cloud_url: str = "http://127.0.0.1:8000"
    # Sent as x-api-token (a device token); when empty, the first line of api_token_file (read for each
    # request, so a token written after the start is used).
    api_token: str = ""
    api_token_file: Path | None = None
    model_root: Path = Path(".intellioptics/data/models")
    inference_url: str = "http://127.0.0.1:8001"
    # edge-api itself (never the gateway): the edge config (which detectors, refresh_rate), the edge
    # id and the outbox depth for the heartbeat.
    edge_api_url: str = "http://127.0.0.1:8718"
    # The id the heartbeat reports; empty: edge-api's own (EDGE_EDGE_ID), so both name the same edge.
    edge_id: str = Field(default="", max_length=100, pattern=r"^([A-Za-z0-9][A-Za-z0-9_.:-]*)?$")
    edge_name: str = Field(default="", max_length=200)
    # Seconds between polls per detector; 0: the edge config's global_config.refresh_rate.
    refresh_rate_s: float = Field(default=0.0, ge=0, le=86400)
    # Seconds between polls of a detector that has no model on this edge yet (never slower than the
    # refresh rate), so the first version promoted in the cloud arrives within seconds.
    no_model_refresh_s: float = Field(default=5.0, gt=0, le=86400)
    # For this long after a new version was deployed, poll as often as without a model (0: never).
    young_model_window_s: float = Field(default=600.0, ge=0, le=86400)
    # Each wait is up to this share shorter than the refresh rate (never longer), so edges spread out
    # and a change still arrives within one refresh period.
    jitter: float = Field(default=0.1, ge=0, lt=1)
    # After errors the wait doubles per failure in a row, up to this.
    backoff_max_s: float = Field(default=300.0, gt=0)
    heartbeat_interval_s: float = Field(default=30.0, gt=0)
    config_poll_s: float = Field(default=10.0, gt=0)
    keep_versions: int = Field(default=2, ge=1, le=100)
    cloud_timeout_s: float = Field(default=30.0, gt=0)
    download_timeout_s: float = Field(default=600.0, gt=0)
    # Loading and warming a model on a busy CPU box can take a while.
    swap_timeout_s: float = Field(default=120.0, gt=0)
    edge_api_timeout_s: float = Field(default=5.0, gt=0)
    # On SIGTERM, a poll under way (download, install, swap) gets this long to finish.
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    log_level: str = "info"

    def token(self) -> str:
        if self.api_token:
            return self.api_token
        if self.api_token_file is None:
            return ""
        try:
            lines = self.api_token_file.read_text().strip().splitlines()
        except OSError:
            return ""
        return lines[0].strip() if lines else ""
