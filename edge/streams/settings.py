from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from common.internal_auth import InternalTokenSettings
from common.secret_files import SecretFileSettings


class StreamsSettings(InternalTokenSettings, SecretFileSettings):
    """Environment variables STREAMS_* (and INTELLIOPTICS_INTERNAL_TOKEN*); the README's settings
    table documents each. STREAMS_API_TOKEN may come from the file STREAMS_API_TOKEN_FILE
    (common.secret_files)."""

    model_config = SettingsConfigDict(env_prefix="STREAMS_", extra="ignore")

    secret_fields: ClassVar[tuple[str, ...]] = ("api_token",)

    host: str = Field(
        default="127.0.0.1", description="Address of the streams service's status and metrics endpoint."
    )
    port: int = Field(
        default=8720, ge=1, le=65535, description="Port of the streams service's status and metrics endpoint."
    )
    edge_api_url: str = Field(
        default="http://127.0.0.1:8718",
        description=(
            "Where the edge config comes from (`GET /edge-config`, polled): edge-api itself, never the "
            "gateway, which would fall back to the cloud while edge-api is down."
        ),
    )
    submit_url: str = Field(
        default="",
        description=(
            "Where frames are posted as image queries; empty: `STREAMS_EDGE_API_URL`. Point it at the "
            "gateway to give frames exactly the cameras' path, cloud fallback included (compose does)."
        ),
    )
    api_token: str = Field(
        default="",
        description=(
            "Device token sent as `x-api-token` with frames: the cloud needs one when the gateway falls "
            "back to it (the edge itself takes the internal token, sent with every frame)."
        ),
    )
    config_poll_s: float = Field(
        default=3.0, gt=0, le=3600, description="Seconds between reads of edge-api's edge config."
    )
    submit_timeout_s: float = Field(default=10.0, gt=0, description="Timeout of posting one frame.")
    jpeg_quality: int = Field(
        default=90,
        ge=10,
        le=100,
        description="JPEG quality of the frames posted; lower sends less data, at some cost in detail.",
    )
    log_level: str = Field(
        default="info",
        description="Log level (`debug`, `info`, `warning`, `error`) of the JSON log lines.",
    )

    @property
    def frames_url(self) -> str:
        return self.submit_url or self.edge_api_url
