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

    host: str = Field(default="127.0.0.1", description="Address the cloud API listens on.")
    port: int = Field(default=8000, description="Port the cloud API listens on.")
    workers: int = Field(
        default=1,
        ge=1,
        description=(
            "uvicorn worker processes; the API keeps no state in-process that others need, so replicas "
            "are safe."
        ),
    )
    database_url: str = Field(
        default="",
        validation_alias=AliasChoices("CLOUD_DATABASE_URL", "DATABASE_URL"),
        description=(
            "The cloud's database: `postgresql://user[:password]@host:5432/db` in production (compose: "
            "the `postgres` service); empty: an embedded SQLite file in `CLOUD_DATA_DIR` (a one-machine "
            "demo)."
        ),
    )
    database_password: str = Field(
        default="",
        repr=False,
        description=(
            "The database password apart from the URL, URL-encoded into it (any character works, "
            "`p@ss/w0rd` too); the URL then names the user and no password."
        ),
    )
    data_dir: Path = Field(
        default=Path(".intellioptics/cloud"),
        description="The embedded database, local blobs and the first start's `credentials.json`.",
    )
    public_url: str = Field(
        default="http://127.0.0.1:8000",
        description="The address edges and browsers use to reach this service (download URLs, pagination links).",
    )

    blob_backend: Literal["local", "azure"] = Field(
        default="local",
        description="Where images, bundles and exports are stored: `local` (`CLOUD_BLOB_DIR`) or `azure`.",
    )
    blob_dir: Path | None = Field(
        default=None,
        json_schema_extra={"default_text": "`<CLOUD_DATA_DIR>/blobs`"},
        description="The directory of the `local` blob backend.",
    )
    azure_connection_string: str = Field(
        default="", description="Azure Blob Storage (or Azurite) connection string, for `azure`."
    )
    azure_container: str = Field(
        default="intellioptics", description="The Azure Blob container, for `azure`."
    )

    review_lease_s: float = Field(
        default=60.0,
        gt=0,
        description="How long a claimed review item stays with its reviewer without a heartbeat.",
    )
    session_ttl_s: float = Field(
        default=12 * 3600.0, gt=0, description="Lifetime of a review UI session, in seconds."
    )

    # Login throttling (cloud.app.core.login_limits), counted in the database so replicas agree.
    login_max_failures_per_user: int = Field(
        default=5,
        ge=1,
        description=(
            "Failed logins within `CLOUD_LOGIN_WINDOW_S` that lock a username (known or not); a success "
            "clears its count."
        ),
    )
    login_max_failures_per_address: int = Field(
        default=20,
        ge=1,
        description="Failed logins within `CLOUD_LOGIN_WINDOW_S` that lock a client address.",
    )
    login_window_s: float = Field(default=300.0, gt=0, description="The window failed logins are counted in.")
    login_lockout_s: float = Field(
        default=300.0,
        gt=0,
        description="How long a lock lasts after the last failure (429 with `Retry-After`, then it ends by itself).",
    )
    login_refusal_delay_s: float = Field(
        default=1.0,
        ge=0,
        le=10,
        description=(
            "A refused login (wrong password, locked, busy) is answered after this pause, which costs the "
            "server nothing but caps how fast one client can retry."
        ),
    )
    # Password checks (scrypt) run on threads of their own, so failed logins never starve other requests.
    password_workers: int = Field(default=1, ge=1, le=8, description="Threads that check passwords (scrypt).")
    password_queue: int = Field(
        default=8,
        ge=0,
        description="Password checks that may wait for a thread; past that a login is answered 429 at once.",
    )
    password_cpu_share: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description=(
            "Share of a core each password thread may use (it rests between checks while busy), so a "
            "login flood leaves the rest of the machine to image queries."
        ),
    )

    # Request bodies (common.body_limits); bodies are capped before they are read (413).
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "A request body must arrive within this long from its first read (408 and the connection "
            "closed otherwise)."
        ),
    )
    upload_timeout_s: float = Field(
        default=600.0,
        gt=0,
        description="The same for the upload routes (model bundles, backbones, embeddings), whose bodies are large.",
    )
    max_image_bytes: int = Field(
        default=16 * 1024 * 1024,
        gt=0,
        description="Largest image of the cloud's device API and of escalations, in bytes.",
    )
    model_cache_size: int = Field(
        default=5,
        ge=1,
        description="Models the cloud keeps loaded to answer queries itself (a shared backbone counts as one).",
    )
    max_backbone_bytes: int = Field(
        default=MAX_BACKBONE_BYTES,
        gt=0,
        le=MAX_BACKBONE_BYTES,
        description="Largest `backbone.onnx` the registry stores (common.backbone.MAX_BACKBONE_BYTES at most).",
    )
    max_embeddings_upload_bytes: int = Field(
        default=64 * 1024 * 1024,
        gt=0,
        description="Largest embeddings upload (one .npy of float16 rows plus their ids); the trainer sends batches.",
    )

    # First start: accounts created when the user table is empty.
    bootstrap_admin_password: str = Field(
        default="",
        description=(
            "The first admin's password; empty: generated and kept in `<CLOUD_DATA_DIR>/credentials.json`."
        ),
    )
    bootstrap_reviewer_password: str = Field(
        default="",
        description=(
            "The first reviewer's password; empty: generated and kept in `<CLOUD_DATA_DIR>/credentials.json`."
        ),
    )
    bootstrap_api_token: str = Field(
        default="",
        description=(
            "The first device API token; empty: generated and kept in `<CLOUD_DATA_DIR>/credentials.json`."
        ),
    )
    bootstrap_print_secrets: bool = Field(
        default=True,
        description=(
            "Print the first start's generated passwords and token; `false` (the cloud-api image) prints "
            "only where they are, so none stays in `docker logs`."
        ),
    )
    api_token_file: str = Field(
        default=".intellioptics/api-token",
        description='Where the first start writes the device API token for scripts ("" = do not write).',
    )
    trainer_token_file: str | None = Field(
        default=None,
        json_schema_extra={"default_text": "`<CLOUD_DATA_DIR>/trainer-token`"},
        description=(
            "The first start also creates the `trainer` service account (admin role: a trainer queues "
            "exports, registers and promotes models) and writes its token here, never printed; empty: no "
            "such account (an administrator can make one with the admin API)."
        ),
    )

    # Worker (cloud.worker.jobs.retrain).
    retrain_first_min_per_class: int = Field(
        default=3,
        ge=1,
        description="A detector's first training job once every class has this many labels (COUNT: two classes).",
    )
    retrain_min_labels: int = Field(
        default=5,
        ge=1,
        description=(
            "After the first job, the next one when the new labels reach max(this, "
            "ceil(`CLOUD_RETRAIN_GROWTH` × the labels of the last job))."
        ),
    )
    retrain_growth: float = Field(
        default=0.10,
        ge=0,
        description="Share of the last job's labels that must be new before the next job (see `CLOUD_RETRAIN_MIN_LABELS`).",
    )
    retrain_interval_s: float = Field(
        default=600.0,
        gt=0,
        description="Also a job this long after the last one when any new label is waiting.",
    )
    worker_poll_s: float = Field(default=2.0, gt=0, description="Seconds between the worker's job polls.")

    webhook_timeout_s: float = Field(
        default=10.0, gt=0, le=60, description="How long the worker waits for a webhook receiver's answer."
    )
    webhook_retry_base_s: float = Field(
        default=10.0,
        gt=0,
        description="Wait before a failed webhook delivery's second attempt; doubled after each failure.",
    )
    webhook_retry_max_s: float = Field(
        default=3600.0, gt=0, description="The longest wait between two attempts of one webhook delivery."
    )
    webhook_max_attempts: int = Field(
        default=12,
        ge=1,
        le=100,
        description="Attempts of one webhook delivery before it is marked dead (an admin can resend it).",
    )
    edge_online_window_s: float = Field(
        default=180.0,
        gt=0,
        description="An edge counts as online while its last heartbeat is at most this old (three heartbeats).",
    )
    notify_edge_offline_s: float = Field(
        default=600.0,
        gt=0,
        description="An `edge_offline` notification once an edge has sent no heartbeat for this long.",
    )
    notify_waiting_repeat_s: float = Field(
        default=3600.0,
        gt=0,
        description=(
            "While a detector's review items wait past their patience, an `escalations_waiting` "
            "notification at most once per this many seconds."
        ),
    )

    log_level: str = Field(
        default="info",
        description="Log level (`debug`, `info`, `warning`, `error`) of the JSON log lines (API and worker).",
    )

    deleted_retention_s: float = Field(
        default=30 * 24 * 3600.0,
        ge=0,
        description=(
            "A deleted detector can be restored for this long (default 30 days); then the worker purges "
            "it with its image queries, labels, models and blobs."
        ),
    )

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
