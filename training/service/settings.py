"""Trainer settings from the environment (TRAINER_*)."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# What the cloud accepts as a lease owner (common.wire.training_jobs.Owner).
OWNER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]*$"
MAX_OWNER_CHARS = 100


def default_owner() -> str:
    """`trainer-<host>-<pid>`: unique per process, and readable in the job's log."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()).strip("-.") or "host"
    return f"trainer-{host[:60]}-{os.getpid()}"


class TrainerSettings(BaseSettings):
    # Empty variables count as unset, so compose's `${NAME:-}` leaves the default in place.
    model_config = SettingsConfigDict(env_prefix="TRAINER_", extra="ignore", env_ignore_empty=True)

    cloud_url: str = Field(
        default="http://127.0.0.1:8000", description="The cloud the trainer leases jobs from."
    )
    api_token: SecretStr = Field(
        default=SecretStr(""),
        description=(
            "A trainer-role API token (the cloud's `trainer` service account; an admin's works too); it "
            "wins over `TRAINER_API_TOKEN_FILE`."
        ),
    )
    api_token_file: Path | None = Field(
        default=None,
        description="A file holding the token when the variable is empty, read again on every call (rotation).",
    )
    owner: str = Field(
        default_factory=default_owner,
        max_length=MAX_OWNER_CHARS,
        pattern=OWNER_PATTERN,
        json_schema_extra={"default_text": "`trainer-<host name>-<pid>`"},
        description="The lease owner name, shown in the job's log; unique per process by default.",
    )
    lease_s: float = Field(
        default=120.0,
        gt=0,
        le=3600,
        description="The lease on a job: when no heartbeat renews it this long, the job goes back to the queue.",
    )
    heartbeat_s: float | None = Field(
        default=None,
        gt=0,
        json_schema_extra={"default_text": "a quarter of the lease, 30 at most"},
        description="Seconds between heartbeats that renew the lease.",
    )
    poll_s: float = Field(
        default=5.0,
        gt=0,
        description="Seconds between asking for work when the queue is empty (and between checks of the credentials).",
    )
    work_dir: Path = Field(
        default=Path(".intellioptics/trainer"), description="Scratch space for dataset exports and bundles."
    )
    backbone_cache: Path | None = Field(
        default=None,
        json_schema_extra={"default_text": "`<TRAINER_WORK_DIR>/backbones`"},
        description="Where exported backbones are kept between jobs (rebuilt when the hash no longer matches).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description=(
            "Where a job trains unless its own config says: `auto` (CUDA when torch sees a GPU, else the "
            "CPU), `cpu` or `cuda`."
        ),
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        json_schema_extra={"default_text": "all cores"},
        description="torch threads of a job unless its own config says.",
    )
    export_timeout_s: float = Field(
        default=1800.0, gt=0, description="How long to wait for the worker to build a dataset export."
    )
    http_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Timeout of one request to the cloud (leases, downloads, uploads); raise it for slow links.",
    )
    nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description=(
            "Added to the process's nice value at start, so a trainer on a shared machine yields to the "
            "API and the edge (0: unchanged)."
        ),
    )
    log_level: str = Field(
        default="info",
        description="Log level (`debug`, `info`, `warning`, `error`) of the JSON log lines.",
    )

    @field_validator("cloud_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def heartbeat_interval_s(self) -> float:
        return self.heartbeat_s or min(30.0, self.lease_s / 4)

    def token(self) -> str:
        """The API token, read again on every call so a rotated token file is picked up."""
        token = self.api_token.get_secret_value().strip()
        if token or self.api_token_file is None:
            return token
        try:
            return self.api_token_file.read_text().strip()
        except OSError:
            return ""

    def token_source(self) -> str:
        if self.api_token.get_secret_value().strip():
            return "TRAINER_API_TOKEN"
        return str(self.api_token_file) if self.api_token_file is not None else "TRAINER_API_TOKEN (unset)"
