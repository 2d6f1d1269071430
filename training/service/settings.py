"""Trainer settings from the environment (TRAINER_*)."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# What the cloud accepts as a lease owner (cloud.app.schemas.training_jobs.Owner).
OWNER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@/-]*$"
MAX_OWNER_CHARS = 100


def default_owner() -> str:
    """`trainer-<host>-<pid>`: unique per process, and readable in the job's log."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()).strip("-.") or "host"
    return f"trainer-{host[:60]}-{os.getpid()}"


class TrainerSettings(BaseSettings):
    # Empty variables count as unset, so compose's `${NAME:-}` leaves the default in place.
    model_config = SettingsConfigDict(env_prefix="TRAINER_", extra="ignore", env_ignore_empty=True)

    cloud_url: str = "http://127.0.0.1:8000"
    # A trainer-role API token (the `trainer` service account); TRAINER_API_TOKEN wins over the file.
    api_token: SecretStr = SecretStr("")
    api_token_file: Path | None = None
    owner: str = Field(default_factory=default_owner, max_length=MAX_OWNER_CHARS, pattern=OWNER_PATTERN)
    # The lease on a job; heartbeats renew it every `heartbeat_s` (default: a quarter of it, ≤ 30 s).
    lease_s: float = Field(default=120.0, gt=0, le=3600)
    heartbeat_s: float | None = Field(default=None, gt=0)
    # Seconds between asking for work when the queue is empty (and between checks of the credentials).
    poll_s: float = Field(default=5.0, gt=0)
    work_dir: Path = Path(".intellioptics/trainer")
    # Where exported backbones are kept between jobs (default: <work_dir>/backbones).
    backbone_cache: Path | None = None
    # Defaults for a job's `device` and `threads` (a job's own config wins).
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(default=None, ge=1)
    # How long to wait for the worker to build a dataset export.
    export_timeout_s: float = Field(default=1800.0, gt=0)
    http_timeout_s: float = Field(default=60.0, gt=0)
    # Added to the process's nice value at start (0 = keep it): a trainer on a shared machine yields.
    nice: int = Field(default=10, ge=0, le=19)
    log_level: str = "info"

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
