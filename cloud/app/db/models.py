"""Tables of the cloud (docs/architecture.md §7). One module so that Alembic sees the whole schema in one place.

Ids are the wire ids (`det_…`, `iq_…`) or our own prefixed ids; times are timezone-aware UTC.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from common.clock import utcnow

# Enums that travel on the wire live with their contracts; the tables store their values.
from common.wire.device_api import Role as Role
from common.wire.model_registry import ModelStatus as ModelStatus
from common.wire.training_jobs import JobStatus as JobStatus

# common.wire.device_api.Roi lists; None is SQL NULL ("no boxes given"), never JSON 'null'.
RoisJson = JSON(none_as_null=True)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    email: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(20))
    password_hash: Mapped[str | None] = mapped_column(String(300), nullable=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """Only the sha256 of a token is stored; the snippet (first 20 chars) is kept for display."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    snippet: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)


class WebSession(Base):
    """A reviewer's browser session; the cookie holds the token, the table its sha256."""

    __tablename__ = "web_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class Detector(Base):
    """Deleting one only marks it (`deleted_at`, `deleted_by`): it is hidden everywhere, an admin can
    restore it for `CloudSettings.deleted_retention_s`, and the worker purges it after that. While it
    is deleted its name is kept in `deleted_name` and `name` holds a tombstone that no live name can
    equal (cloud.app.core.detector_lifecycle), so the name is free for a new detector at once."""

    __tablename__ = "detectors"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    query: Mapped[str] = mapped_column(Text)
    group_name: Mapped[str] = mapped_column(String(200), default="")
    mode: Mapped[str] = mapped_column(String(20))  # common.bundle.DetectorMode
    mode_configuration: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    # The answers a reviewer can give besides UNCLEAR and skip, in key order (YES/NO, class names, counts).
    labels: Mapped[list[Any]] = mapped_column()
    confidence_threshold: Mapped[float] = mapped_column(Float, default=0.9)
    patience_time: Mapped[float] = mapped_column(Float, default=30.0)
    # common.wire.device_api.HumanReview: what a query that says DEFAULT gets (common.params).
    human_review: Mapped[str] = mapped_column(String(10), default="DEFAULT", server_default="DEFAULT")
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", nullable=True)
    status: Mapped[str] = mapped_column(String(10), default="ON")
    # The registry alias edges follow; NULL = no model yet (queries get the label prior and go to review).
    production_version_id: Mapped[str | None] = mapped_column(
        ForeignKey("model_versions.id", use_alter=True, name="fk_detector_production"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(nullable=True)
    deleted_by: Mapped[str | None] = mapped_column(String(40), nullable=True)  # a user id
    deleted_name: Mapped[str | None] = mapped_column(String(200), nullable=True)


class ImageQuery(Base):
    __tablename__ = "image_queries"

    id: Mapped[str] = mapped_column(String(120), primary_key=True)
    detector_id: Mapped[str] = mapped_column(ForeignKey("detectors.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    query: Mapped[str] = mapped_column(Text)
    result_type: Mapped[str] = mapped_column(String(40))
    # common.wire.device_api.Result as JSON, or NULL while nothing has answered it.
    result: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    patience_time: Mapped[float] = mapped_column(Float)
    confidence_threshold: Mapped[float] = mapped_column(Float)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", nullable=True)
    done_processing: Mapped[bool] = mapped_column(Boolean, default=False)
    human_review: Mapped[str] = mapped_column(String(10), default="DEFAULT")
    # common.wire.device_api.EdgeDiagnostics of whoever answered first (edge or cloud model).
    diagnostics: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    # The current answer's boxes: the model's (edge escalation or cloud model) until a person answers,
    # then that person's (NULL when they drew none).
    rois: Mapped[list[Any] | None] = mapped_column(RoisJson, nullable=True)
    image_key: Mapped[str] = mapped_column(String(300))
    image_content_type: Mapped[str] = mapped_column(String(40))
    # "cloud" (posted here) or "edge" (arrived as an escalation); edge_id names the hub.
    origin: Mapped[str] = mapped_column(String(10), default="cloud")
    edge_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # Idempotency key of the POST that made it (common.validation.idempotency_key of its X-Request-Id):
    # a retried POST with the same detector and image returns the same query.
    request_id: Mapped[str | None] = mapped_column(String(140), unique=True, nullable=True)
    # sha256 of the image bytes, which a repeat under either key must match; NULL for older rows.
    image_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (Index("ix_image_queries_detector_created", "detector_id", "created_at"),)


class Escalation(Base):
    """One per image query: the unique key is what makes edge retries harmless."""

    __tablename__ = "escalations"

    image_query_id: Mapped[str] = mapped_column(
        ForeignKey("image_queries.id", ondelete="CASCADE"), primary_key=True
    )
    detector_id: Mapped[str] = mapped_column(ForeignKey("detectors.id", ondelete="CASCADE"), index=True)
    edge_id: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(String(40))
    edge_created_at: Mapped[str] = mapped_column(String(40))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReviewStatus(StrEnum):
    PENDING = "pending"
    ANSWERED = "answered"
    # Pending, but its detector is deleted: out of the queue until the detector is restored.
    HELD = "held"


class ReviewItem(Base):
    """A query waiting for a person. Claimed with a lease: `lease_owner` + `lease_expires_at`."""

    __tablename__ = "review_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_query_id: Mapped[str] = mapped_column(
        ForeignKey("image_queries.id", ondelete="CASCADE"), unique=True
    )
    detector_id: Mapped[str] = mapped_column(ForeignKey("detectors.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(20), default=ReviewStatus.PENDING)
    # Queue order: patience deadline, then uncertainty (higher first), then age.
    deadline: Mapped[datetime] = mapped_column()
    uncertainty: Mapped[float] = mapped_column(Float, default=1.0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    reason: Mapped[str] = mapped_column(String(40), default="")
    lease_owner: Mapped[str | None] = mapped_column(String(40), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    answered_by: Mapped[str | None] = mapped_column(String(40), nullable=True)
    answered_at: Mapped[datetime | None] = mapped_column(nullable=True)
    answer: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # The image query's result and done_processing before the answer, restored by an undo.
    prior_result: Mapped[dict[str, Any] | None] = mapped_column(nullable=True)
    prior_done_processing: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    prior_rois: Mapped[list[Any] | None] = mapped_column(RoisJson, nullable=True)

    __table_args__ = (Index("ix_review_items_answered_at", "answered_at"),)


# The claim scans pending items in queue order, across detectors or within one; partial indexes on
# pending rows keep that scan short however many answered items pile up.
_PENDING = text("status = 'pending'")
Index(
    "ix_review_items_claim",
    ReviewItem.deadline,
    ReviewItem.uncertainty.desc(),
    ReviewItem.created_at,
    ReviewItem.id,
    postgresql_where=_PENDING,
    sqlite_where=_PENDING,
)
Index(
    "ix_review_items_claim_detector",
    ReviewItem.detector_id,
    ReviewItem.deadline,
    ReviewItem.uncertainty.desc(),
    ReviewItem.created_at,
    ReviewItem.id,
    postgresql_where=_PENDING,
    sqlite_where=_PENDING,
)


class ReviewSkip(Base):
    """A reviewer skipped an item: it goes back to the queue, but not to them."""

    __tablename__ = "review_skips"

    review_item_id: Mapped[int] = mapped_column(
        ForeignKey("review_items.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReviewExclusion(Base):
    """A reviewer left this detector out of "Label all queues"; its own queue still offers its items."""

    __tablename__ = "review_exclusions"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    detector_id: Mapped[str] = mapped_column(ForeignKey("detectors.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LabelSource(StrEnum):
    HUMAN = "HUMAN"  # a reviewer in the queue
    CUSTOMER = "CUSTOMER"  # add_label from the device API


class Label(Base):
    """Ground truth for training. An undone label stays, marked, so history is never rewritten."""

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_query_id: Mapped[str] = mapped_column(
        ForeignKey("image_queries.id", ondelete="CASCADE"), index=True
    )
    detector_id: Mapped[str] = mapped_column(ForeignKey("detectors.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(20))
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), nullable=True)
    review_item_id: Mapped[int | None] = mapped_column(
        ForeignKey("review_items.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    undone_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # The boxes that came with the answer (common.wire.device_api.Roi as JSON); NULL when none did.
    rois: Mapped[list[Any] | None] = mapped_column(RoisJson, nullable=True)


class Hub(Base):
    """An edge box: registered by its first heartbeat."""

    __tablename__ = "hubs"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    # {detector_id: version} as the edge reports it.
    deployed_versions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    outbox_depth: Mapped[int] = mapped_column(Integer, default=0)
    info: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ModelVersion(Base):
    """A registered bundle: the tar.gz is a blob; its manifest and metrics are kept here."""

    __tablename__ = "model_versions"

    id: Mapped[str] = mapped_column(String(60), primary_key=True)
    detector_id: Mapped[str] = mapped_column(ForeignKey("detectors.id", ondelete="CASCADE"), index=True)
    version: Mapped[str] = mapped_column(String(100))  # model_id.txt of the bundle
    status: Mapped[str] = mapped_column(String(20), default=ModelStatus.CANDIDATE)
    blob_key: Mapped[str] = mapped_column(String(300))
    sha256: Mapped[str] = mapped_column(String(64))  # of the tar.gz
    size_bytes: Mapped[int] = mapped_column(Integer)
    manifest: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # From predictor_metadata.json and pipeline_config.yaml: mode, labels, temperature, pipeline, ...
    predictor: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    lineage: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(nullable=True)

    __table_args__ = (UniqueConstraint("detector_id", "version", name="uq_model_versions_detector_version"),)


ACTIVE_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


class TrainingJob(Base):
    """At most one queued or running job per detector (partial unique index)."""

    __tablename__ = "training_jobs"

    id: Mapped[str] = mapped_column(String(60), primary_key=True)
    detector_id: Mapped[str] = mapped_column(ForeignKey("detectors.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED)
    trigger: Mapped[str] = mapped_column(String(20), default="manual")  # labels | timer | manual
    labels_at_creation: Mapped[int] = mapped_column(Integer, default=0)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    lease_owner: Mapped[str | None] = mapped_column(String(100), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # {epoch, epochs, history: [...], eta_s, ...} as the trainer reports it.
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    logs: Mapped[str] = mapped_column(Text, default="")
    result_version_id: Mapped[str | None] = mapped_column(String(60), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)

    __table_args__ = (
        Index(
            "uq_training_jobs_one_active",
            "detector_id",
            unique=True,
            postgresql_where=text("status IN ('queued', 'running')"),
            sqlite_where=text("status IN ('queued', 'running')"),
        ),
    )


class ExportJob(Base):
    """A dataset export (labels + images, tar.gz with a JSON manifest), built by the worker."""

    __tablename__ = "export_jobs"

    id: Mapped[str] = mapped_column(String(60), primary_key=True)
    detector_id: Mapped[str] = mapped_column(ForeignKey("detectors.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED)
    requested_by: Mapped[str | None] = mapped_column(String(40), nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(100), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    blob_key: Mapped[str | None] = mapped_column(String(300), nullable=True)
    item_count: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # common.wire.dataset_export.ExportRequest; NULL = every image and no embeddings (format 1's content).
    backbone_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    images: Mapped[str | None] = mapped_column(String(10), nullable=True)  # all | missing


class Backbone(Base):
    """A shared backbone (common.backbone) the registry knows: its bytes are the blob
    `backbones/<sha256>.onnx`, checked to hash to `sha256` and to load in ONNX Runtime when stored."""

    __tablename__ = "backbones"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    id: Mapped[str] = mapped_column(String(200))
    size_bytes: Mapped[int] = mapped_column(Integer)
    # common.backbone.BackboneRef as uploaded (input and output names, embedding_dim, source, ...).
    ref: Mapped[dict[str, Any]] = mapped_column()
    blob_key: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ImageEmbedding(Base):
    """An image's pooled embedding by one backbone, computed once (by the trainer) and kept, so a
    retrain fits a head without decoding the image again. `vector` holds `dim` little-endian float16."""

    __tablename__ = "image_embeddings"

    image_query_id: Mapped[str] = mapped_column(
        ForeignKey("image_queries.id", ondelete="CASCADE"), primary_key=True
    )
    backbone_sha256: Mapped[str] = mapped_column(
        ForeignKey("backbones.sha256", ondelete="CASCADE"), primary_key=True
    )
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEvent(Base):
    """One administrative change: who (the user, or NULL for the worker), what, when, to what, and the
    details that make it readable later (the detector's name, the version promoted, ...)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    actor_name: Mapped[str] = mapped_column(String(100))
    actor_role: Mapped[str] = mapped_column(String(20))
    action: Mapped[str] = mapped_column(String(60))  # cloud.app.core.audit.AuditAction
    target_type: Mapped[str] = mapped_column(String(40))
    target_id: Mapped[str] = mapped_column(String(120))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)

    __table_args__ = (
        Index("ix_audit_events_at", "at", "id"),
        Index("ix_audit_events_target", "target_type", "target_id"),
    )


class LoginAttempt(Base):
    """A login attempt whose password was wrong, or is being checked: the login throttle counts these
    per username and per client address (cloud.app.core.login_limits). Both are kept as sha256, so
    what people mistype as a username is not stored; rows older than the window are deleted."""

    __tablename__ = "login_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(10))  # "user" | "address"
    subject: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column()

    __table_args__ = (
        Index("ix_login_attempts_subject", "kind", "subject", "at"),
        Index("ix_login_attempts_at", "at"),
    )


class Webhook(Base):
    """Where notifications go: an HTTPS (or, for local receivers, HTTP) URL, the event kinds it takes
    (cloud.app.core.notifications.EventKind values) and the secret its deliveries are signed with.
    The secret is kept as given (signing needs it); the API shows it once, at creation."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[str] = mapped_column(String(200))
    events: Mapped[list[Any]] = mapped_column()
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(40), nullable=True)


class AlertRuleRow(Base):
    """A detector's alert rule (common.wire.alerts.AlertRuleSpec). `streak` and `last_fired_at` are
    the cloud's own watch over the answers it gives; every edge keeps its own."""

    __tablename__ = "alert_rules"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    detector_id: Mapped[str] = mapped_column(ForeignKey("detectors.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    condition: Mapped[dict[str, Any]] = mapped_column()
    consecutive: Mapped[int] = mapped_column(Integer, default=1)
    cooldown_s: Mapped[float] = mapped_column(Float, default=300.0)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    webhook_ids: Mapped[list[Any]] = mapped_column(default=list)
    streak: Mapped[int] = mapped_column(Integer, default=0)
    last_fired_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class NotificationEvent(Base):
    """Something people are told about: an alert firing or an ops event. `dedupe_key` makes each one
    happen once (a resent edge firing, a worker scan that sees the same failed job again)."""

    __tablename__ = "notification_events"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    detector_id: Mapped[str | None] = mapped_column(String(40), nullable=True, index=True)
    rule_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    title: Mapped[str] = mapped_column(String(300))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_notification_events_created", "created_at", "id"),)


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # waiting for its next attempt (or being sent: see lease_expires_at)
    DELIVERED = "delivered"  # the receiver answered 2xx
    DEAD = "dead"  # every attempt failed; an admin can send it again


class WebhookDelivery(Base):
    """One event to one webhook, stored in the event's transaction, before any attempt: a restart
    loses none. The worker claims due rows with a lease; a worker that dies mid-send leaves the row to
    be sent again after the lease, so receivers dedupe on the delivery id (the Idempotency-Key)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("notification_events.id", ondelete="CASCADE"))
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(20), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(100), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_attempt_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("event_id", "webhook_id", name="uq_webhook_deliveries_event_webhook"),
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )
