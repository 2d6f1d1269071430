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

    host: str = Field(default="127.0.0.1", description="Address edge-api listens on.")
    port: int = Field(default=8718, ge=1, le=65535, description="Port edge-api listens on.")
    inference_url: str = Field(
        default="http://127.0.0.1:8001", description="The inference service that runs the models."
    )
    cloud_url: str = Field(
        default="http://127.0.0.1:8000",
        description="The cloud API: escalations, answers, label priors and device-token checks.",
    )
    api_token: str = Field(default="", description="Device token sent to the cloud with escalations.")
    edge_id: str = Field(
        default_factory=default_edge_id,
        json_schema_extra={"default_text": "`edge-<host name>`"},
        description=(
            "This edge's id in escalations and heartbeats; empty (compose's `${INTELLIOPTICS_EDGE_ID:-}` "
            "when unset) is the default too. Set it in containers: their host name changes with every "
            "update."
        ),
    )
    config_path: Path = Field(
        default=Path("config/edge-config.yaml"), description="The edge config file (detectors, streams)."
    )
    data_dir: Path = Field(
        default=Path(".intellioptics/data/edge"),
        description="Where edge-api keeps its SQLite database (records, outbox, tokens) and the applied config.",
    )
    max_image_bytes: int = Field(
        default=ImageLimits.max_bytes, ge=1, description="Largest image accepted, in bytes (413 above)."
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description=(
            "A request body must arrive within this many seconds (408 and the connection closed "
            "otherwise), so slow clients hold no connection; bodies over the image limit plus 1 MiB are "
            "refused before they are read (413)."
        ),
    )
    max_image_pixels: int = Field(
        default=ImageLimits.max_pixels, ge=1, description="Largest image accepted, in pixels (413 above)."
    )
    inference_timeout_s: float = Field(
        default=8.0,
        gt=0,
        description="How long one inference call may take; keep it under the SDK's own 10 s.",
    )
    detector_info_ttl_s: float = Field(
        default=5.0, ge=0, description="How long edge-api caches a detector's model metadata, in seconds."
    )
    outbox_retry_base_s: float = Field(
        default=0.5, gt=0, description="First wait before an escalation that failed is sent again."
    )
    outbox_retry_max_s: float = Field(
        default=30.0,
        gt=0,
        description="Longest wait between tries of one escalation (the wait doubles, with jitter, up to this).",
    )
    outbox_concurrency: int = Field(
        default=4, ge=1, description="Requests to the cloud's escalation routes in parallel."
    )
    outbox_batch: int = Field(
        default=16,
        ge=1,
        le=32,
        description="Escalations per request (the cloud's batch route); 1 sends each on its own.",
    )
    outbox_alarm_depth: int = Field(
        default=10_000, ge=1, description="Pending escalations at which `/status` raises the alarm."
    )
    cloud_timeout_s: float = Field(default=10.0, gt=0, description="Timeout of one request to the cloud.")
    cloud_answer_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="Reading an escalated query asks the cloud for a person's answer; never longer than this.",
    )
    cloud_probe_interval_s: float = Field(
        default=15.0, gt=0, description="Seconds between checks whether the cloud is reachable."
    )
    prior_ttl_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Each configured detector's label prior and threshold from the cloud (edge.api.core.priors): "
            "fresh this long, then refreshed in the background, so a threshold changed in the cloud "
            "applies within about this long."
        ),
    )
    prior_wait_s: float = Field(
        default=1.0,
        ge=0,
        le=8,
        description="How long a request waits for a detector's first label prior (503 after that).",
    )
    prior_retry_s: float = Field(
        default=5.0, ge=0, description="After a failed label-prior fetch, none is tried for this long."
    )
    prior_timeout_s: float = Field(default=5.0, gt=0, description="Timeout of one label-prior fetch.")
    streams_url: str = Field(
        default="http://127.0.0.1:8720",
        description=(
            "The streams service (edge/streams), whose per-stream status `/status` and `/metrics` "
            "include; empty: not deployed."
        ),
    )
    streams_timeout_s: float = Field(
        default=1.0, gt=0, description="How long `/status` waits for the streams service."
    )
    updater_url: str = Field(
        default="http://127.0.0.1:8721",
        description=(
            "The model updater (edge/updater), whose per-detector status `/status` includes; empty: not "
            "deployed."
        ),
    )
    updater_timeout_s: float = Field(
        default=1.0, gt=0, description="How long `/status` waits for the updater."
    )
    # Who may call (edge.api.auth).
    admin_token: str = Field(
        default="",
        description=(
            "The edge operator's token (edge config, status, metrics, outbox); empty: the first line of "
            "`EDGE_ADMIN_TOKEN_FILE`."
        ),
    )
    admin_token_file: Path | None = Field(
        default=None,
        json_schema_extra={"default_text": "`<EDGE_DATA_DIR>/admin-token`"},
        description="Where the operator's token is kept when the variable is empty; created at first start.",
    )
    local_tokens_file: Path | None = Field(
        default=None,
        json_schema_extra={"default_text": "`<EDGE_DATA_DIR>/tokens.json`"},
        description=(
            "Device tokens accepted without asking the cloud (sha256 hashes only; managed with "
            "`python -m edge.api.tokens`)."
        ),
    )
    token_ttl_s: float = Field(
        default=3600.0,
        gt=0,
        description=(
            "How long the cloud's acceptance of a device token is taken as fresh; then it is checked "
            "again in the background, and kept while the cloud is unreachable."
        ),
    )
    token_negative_ttl_s: float = Field(
        default=30.0, ge=0, description="How long the cloud's refusal of a device token is kept."
    )
    token_cache_size: int = Field(
        default=10_000,
        ge=1,
        description="Device-token verdicts kept (in memory and SQLite; the least recently used go first).",
    )
    token_verify_timeout_s: float = Field(
        default=3.0, gt=0, le=8, description="How long a device-token check waits for the cloud."
    )
    log_level: str = Field(
        default="info",
        description="Log level (`debug`, `info`, `warning`, `error`); one JSON line per request, with its id.",
    )

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
