"""Cloud settings from the environment (CLOUD_*; DATABASE_URL is accepted as well).

The secrets (`secret_fields`) may also come from files: `CLOUD_DATABASE_PASSWORD_FILE`,
`CLOUD_BOOTSTRAP_ADMIN_PASSWORD_FILE`, ... (common.secret_files).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from common.backbone import MAX_BACKBONE_BYTES
from common.secret_files import SecretFileSettings


class CloudSettings(SecretFileSettings):
    model_config = SettingsConfigDict(env_prefix="CLOUD_", extra="ignore")

    secret_fields: ClassVar[tuple[str, ...]] = (
        "database_password",
        "bootstrap_admin_password",
        "bootstrap_reviewer_password",
        "bootstrap_api_token",
        "azure_connection_string",
    )

    host: str = "127.0.0.1"
    port: int = 8000
    # uvicorn worker processes; the API keeps no state in-process that others need, so replicas are safe.
    workers: int = Field(default=1, ge=1)
    # Empty: an embedded SQLite file in data_dir (one-machine demo). Production: postgresql://...
    database_url: str = Field(default="", validation_alias=AliasChoices("CLOUD_DATABASE_URL", "DATABASE_URL"))
    # The database password apart from the URL (compose: the postgres-password secret file), put into
    # it URL-encoded, so any character works; the URL then names the user but no password.
    database_password: str = Field(default="", repr=False)
    data_dir: Path = Path(".intellioptics/cloud")
    # The address edges and browsers use to reach this service (download URLs, pagination links).
    public_url: str = "http://127.0.0.1:8000"

    blob_backend: Literal["local", "azure"] = "local"
    blob_dir: Path | None = None  # default: data_dir/blobs
    azure_connection_string: str = ""
    azure_container: str = "intellioptics"

    review_lease_s: float = Field(default=60.0, gt=0)
    session_ttl_s: float = Field(default=12 * 3600.0, gt=0)

    # Login throttling (cloud.app.core.login_limits), counted in the database so replicas agree: this
    # many failures within login_window_s lock a username (or a client address) for login_lockout_s.
    login_max_failures_per_user: int = Field(default=5, ge=1)
    login_max_failures_per_address: int = Field(default=20, ge=1)
    login_window_s: float = Field(default=300.0, gt=0)
    login_lockout_s: float = Field(default=300.0, gt=0)
    # A refused login (wrong password, locked, busy) is answered after this pause, which costs the server
    # nothing but caps how fast one client can retry: a flood then takes little of the event loop.
    login_refusal_delay_s: float = Field(default=1.0, ge=0, le=10)
    # Password checks (scrypt) run on this many threads of their own, with at most password_queue more
    # waiting; past that a login is answered 429 at once, so failed logins never starve other requests.
    # Each thread uses at most password_cpu_share of a core (it rests between checks when busy).
    password_workers: int = Field(default=1, ge=1, le=8)
    password_queue: int = Field(default=8, ge=0)
    password_cpu_share: float = Field(default=0.25, gt=0, le=1)

    # Request bodies (common.body_limits): the time from the first read to the end of a body, and that
    # time for the upload routes (model bundles, backbones, embeddings), whose bodies are large.
    body_timeout_s: float = Field(default=30.0, gt=0)
    upload_timeout_s: float = Field(default=600.0, gt=0)
    max_image_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    model_cache_size: int = Field(default=5, ge=1)
    # Largest backbone.onnx the registry stores (common.backbone.MAX_BACKBONE_BYTES at most).
    max_backbone_bytes: int = Field(default=MAX_BACKBONE_BYTES, gt=0, le=MAX_BACKBONE_BYTES)
    # Largest embeddings upload (one .npy of float16 rows plus their ids); the trainer sends batches.
    max_embeddings_upload_bytes: int = Field(default=64 * 1024 * 1024, gt=0)

    # First start: accounts created when the user table is empty. Empty values are generated, kept in
    # data_dir/credentials.json and printed, unless bootstrap_print_secrets is off (the images: a
    # container's output stays in `docker logs`), when only where they are is printed.
    bootstrap_admin_password: str = ""
    bootstrap_reviewer_password: str = ""
    bootstrap_api_token: str = ""
    bootstrap_print_secrets: bool = True
    # Where the first start writes the device API token for scripts ("" = do not write).
    api_token_file: str = ".intellioptics/api-token"
    # The first start also creates the `trainer` service account (admin role: a trainer queues exports,
    # registers and promotes models) and writes its token here, never printed. Unset:
    # data_dir/trainer-token; "" = no such account (an administrator can make one with the admin API).
    trainer_token_file: str | None = None

    # Worker (cloud.worker.jobs.retrain): the first job once every class has this many labels (COUNT:
    # two classes); afterwards one when the new labels reach max(retrain_min_labels, ceil(retrain_growth
    # x the labels of the last job)), or this long after the last job when any label is waiting.
    retrain_first_min_per_class: int = Field(default=3, ge=1)
    retrain_min_labels: int = Field(default=5, ge=1)
    retrain_growth: float = Field(default=0.10, ge=0)
    retrain_interval_s: float = Field(default=600.0, gt=0)
    worker_poll_s: float = Field(default=2.0, gt=0)

    log_level: str = "info"

    # A deleted detector can be restored for this long; then the worker purges it with its data.
    deleted_retention_s: float = Field(default=30 * 24 * 3600.0, ge=0)

    @property
    def blob_root(self) -> Path:
        return self.blob_dir or self.data_dir / "blobs"

    @property
    def trainer_token_path(self) -> Path | None:
        if self.trainer_token_file is None:
            return self.data_dir / "trainer-token"
        return Path(self.trainer_token_file) if self.trainer_token_file else None

    @property
    def async_database_url(self) -> str:
        """The URL the async drivers get (ValueError when the password has no URL to go into)."""
        if self.database_password:
            return to_async_url(database_url_with_password(self.database_url, self.database_password))
        return to_async_url(self.database_url or f"sqlite:///{self.data_dir / 'cloud.db'}")


def database_url_with_password(url: str, password: str) -> str:
    """`url` (naming a user, no password) with `password` URL-encoded into it: `p@ss/w0rd` works."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not parts.scheme.startswith("postgres") or not at or not hostport:
        raise ValueError(
            "CLOUD_DATABASE_PASSWORD needs a DATABASE_URL of the form postgresql://USER@HOST[:PORT]/DB "
            f"(got {redact_password(url)!r})"
        )
    if ":" in userinfo:
        raise ValueError(
            "DATABASE_URL has a password of its own and CLOUD_DATABASE_PASSWORD is set: give it once"
        )
    netloc = f"{userinfo}:{quote(password, safe='')}@{hostport}"
    return urlunsplit(parts._replace(netloc=netloc))


def redact_password(url: str) -> str:
    """The URL with any password in it as `***`, for messages."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{hostport}"))


def to_async_url(url: str) -> str:
    """postgresql:// and sqlite:// URLs as the async drivers (asyncpg, aiosqlite) want them."""
    for prefix in ("postgresql+psycopg2://", "postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    return url
