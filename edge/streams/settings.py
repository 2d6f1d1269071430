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

    host: str = "127.0.0.1"
    port: int = Field(default=8720, ge=1, le=65535)
    # Where the edge config comes from (`GET /edge-config`, polled): edge-api itself, never the gateway,
    # which would fall back to the cloud while edge-api is down.
    edge_api_url: str = "http://127.0.0.1:8718"
    # Where frames are posted as image queries; empty means edge_api_url. Point it at the gateway to
    # give frames exactly the cameras' path, cloud fallback included.
    submit_url: str = ""
    # Sent as x-api-token with frames: the cloud needs a device token when the gateway falls back to
    # it (the edge itself also takes the internal token, sent with every frame).
    api_token: str = ""
    config_poll_s: float = Field(default=3.0, gt=0, le=3600)
    submit_timeout_s: float = Field(default=10.0, gt=0)
    jpeg_quality: int = Field(default=90, ge=10, le=100)
    log_level: str = "info"

    @property
    def frames_url(self) -> str:
        return self.submit_url or self.edge_api_url
