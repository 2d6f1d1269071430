"""Bodies of the alerts API: webhooks (the secret appears only in the answer to their creation),
alert rules (common.wire.alerts) and the notification log with its deliveries."""

from __future__ import annotations

from typing import Any

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator

from cloud.app.core.notifications import EventKind
from cloud.app.db.models import DeliveryStatus, NotificationEvent, Webhook, WebhookDelivery
from cloud.app.schemas.fields import StorableStr, UtcDatetime
from common.wire.alerts import AlertRule

__all__ = ["AlertRule"]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StorableStr = Field(min_length=1, max_length=100, examples=["ops channel"])
    url: AnyHttpUrl = Field(examples=["https://hooks.example.com/intellioptics"])
    events: list[EventKind] = Field(min_length=1, examples=[["alert", "edge_offline"]])
    secret: StorableStr | None = Field(
        default=None, min_length=16, max_length=200, description="to sign with; generated when absent"
    )
    enabled: bool = True

    @field_validator("url")
    @classmethod
    def _short(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        if len(str(value)) > 2000:
            raise ValueError("at most 2000 characters")
        return value


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl | None = None
    events: list[EventKind] | None = Field(default=None, min_length=1)
    enabled: bool | None = None


class WebhookPublic(BaseModel):
    id: str
    name: str
    url: str
    events: list[str]
    enabled: bool
    created_at: UtcDatetime
    secret_hint: str = Field(description="the secret's first characters, to recognise it")

    @classmethod
    def of(cls, hook: Webhook) -> WebhookPublic:
        return cls(
            id=hook.id,
            name=hook.name,
            url=hook.url,
            events=list(hook.events),
            enabled=hook.enabled,
            created_at=hook.created_at,
            secret_hint=hook.secret[:8] + "…",
        )


class WebhookCreated(WebhookPublic):
    secret: str = Field(description="shown once: receivers verify the signature with it")


class DeliveryPublic(BaseModel):
    id: str
    webhook_id: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: UtcDatetime | None
    last_attempt_at: UtcDatetime | None
    last_status: int | None
    last_error: str | None
    delivered_at: UtcDatetime | None

    @classmethod
    def of(cls, row: WebhookDelivery) -> DeliveryPublic:
        pending = row.status == DeliveryStatus.PENDING
        return cls(
            id=row.id,
            webhook_id=row.webhook_id,
            status=DeliveryStatus(row.status),
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at if pending else None,
            last_attempt_at=row.last_attempt_at,
            last_status=row.last_status,
            last_error=row.last_error,
            delivered_at=row.delivered_at,
        )


class NotificationPublic(BaseModel):
    id: str
    kind: str
    title: str
    detector_id: str | None
    rule_id: str | None
    data: dict[str, Any]
    created_at: UtcDatetime
    deliveries: list[DeliveryPublic]

    @classmethod
    def of(cls, event: NotificationEvent, deliveries: list[WebhookDelivery]) -> NotificationPublic:
        return cls(
            id=event.id,
            kind=event.kind,
            title=event.title,
            detector_id=event.detector_id,
            rule_id=event.rule_id,
            data=event.data,
            created_at=event.created_at,
            deliveries=[DeliveryPublic.of(d) for d in deliveries],
        )
