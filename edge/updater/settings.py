from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from common.internal_auth import InternalTokenSettings


class UpdaterSettings(InternalTokenSettings):
    """Environment variables UPDATER_* (and INTELLIOPTICS_INTERNAL_TOKEN*); the README's settings
    table documents each."""

    model_config = SettingsConfigDict(env_prefix="UPDATER_", extra="ignore")

    host: str = Field(
        default="127.0.0.1", description="Address of the updater's status and metrics endpoint."
    )
    port: int = Field(
        default=8721, ge=1, le=65535, description="Port of the updater's status and metrics endpoint."
    )
    cloud_url: str = Field(
        default="http://127.0.0.1:8000", description="The cloud's model registry and hubs."
    )
    api_token: str = Field(
        default="",
        description=(
            "Device token sent to the cloud as `x-api-token`; empty: the first line of "
            "`UPDATER_API_TOKEN_FILE`."
        ),
    )
    api_token_file: Path | None = Field(
        default=None,
        description=(
            "A file whose first line is the device token, read again for each request, so a token "
            "written after the start is used."
        ),
    )
    model_root: Path = Field(
        default=Path(".intellioptics/data/models"),
        description="Where bundles are installed; the same directory as the inference service's.",
    )
    inference_url: str = Field(
        default="http://127.0.0.1:8001", description="The inference service, told to swap in a new model."
    )
    edge_api_url: str = Field(
        default="http://127.0.0.1:8718",
        description=(
            "edge-api itself (never the gateway): the edge config (which detectors, refresh rate), the "
            "edge id and the outbox depth for the heartbeat."
        ),
    )
    edge_id: str = Field(
        default="",
        max_length=100,
        pattern=r"^([A-Za-z0-9][A-Za-z0-9_.:-]*)?$",
        description="The id the heartbeat reports; empty: edge-api's own (`EDGE_EDGE_ID`), so both name the same edge.",
    )
    edge_name: str = Field(default="", max_length=200, description="A readable name the heartbeat reports.")
    refresh_rate_s: float = Field(
        default=0.0,
        ge=0,
        le=86400,
        description="Seconds between registry polls per detector; 0: the edge config's `global_config.refresh_rate`.",
    )
    no_model_refresh_s: float = Field(
        default=5.0,
        gt=0,
        le=86400,
        description=(
            "Seconds between polls of a detector that has no model on this edge yet (never slower than "
            "the refresh rate), so the first version promoted in the cloud arrives within seconds."
        ),
    )
    young_model_window_s: float = Field(
        default=600.0,
        ge=0,
        le=86400,
        description=(
            "For this long after a new version was deployed, poll as often as without a model, so the "
            "retrains of a detector that is learning arrive quickly (0: never)."
        ),
    )
    jitter: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description=(
            "Each wait is up to this share shorter than the refresh rate (never longer), so edges spread "
            "out and a change still arrives within one refresh period."
        ),
    )
    backoff_max_s: float = Field(
        default=300.0, gt=0, description="After errors the wait doubles per failure in a row, up to this."
    )
    heartbeat_interval_s: float = Field(
        default=30.0, gt=0, description="Seconds between heartbeats to the cloud's hub."
    )
    config_poll_s: float = Field(
        default=10.0, gt=0, description="Seconds between reads of edge-api's edge config."
    )
    keep_versions: int = Field(
        default=2,
        ge=1,
        le=100,
        description="Versions of each detector kept on disk, so a rollback needs no download.",
    )
    cloud_timeout_s: float = Field(default=30.0, gt=0, description="Timeout of one request to the cloud.")
    download_timeout_s: float = Field(default=600.0, gt=0, description="Timeout of one bundle download.")
    swap_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="How long inference may take to load and warm a new model (slow on a busy CPU box).",
    )
    edge_api_timeout_s: float = Field(default=5.0, gt=0, description="Timeout of one request to edge-api.")
    shutdown_grace_s: float = Field(
        default=20.0,
        ge=0,
        description="On SIGTERM, a poll under way (download, install, swap) gets this long to finish.",
    )
    log_level: str = Field(
        default="info",
        description="Log level (`debug`, `info`, `warning`, `error`) of the JSON log lines.",
    )

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
