"""Alerts and notifications (docs/alerts.md): webhooks and alert rules (admins), the notification log
with its delivery attempts (admins), and the route edges send their alert firings to (devices)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, status
from starlette.responses import Response

from cloud.app.core import alert_rules, notifications, webhook_delivery, webhooks
from cloud.app.core.audit import AuditAction, record
from cloud.app.deps import AdminDep, DeviceDep, SessionDep
from cloud.app.schemas.alerts import (
    DeliveryPublic,
    NotificationPublic,
    WebhookCreate,
    WebhookCreated,
    WebhookPublic,
    WebhookUpdate,
)
from cloud.app.schemas.fields import ID_PATTERN
from common.wire.alerts import AlertFiringAck, AlertFiringBatch, AlertRule, AlertRuleSpec

router = APIRouter(tags=["alerts"])

Id = Annotated[str, Path(max_length=40, pattern=ID_PATTERN)]


@router.get("/api/v1/webhooks")
async def list_webhooks(session: SessionDep, admin: AdminDep) -> list[WebhookPublic]:
    return [WebhookPublic.of(hook) for hook in await webhooks.list_webhooks(session)]


@router.post("/api/v1/webhooks", status_code=status.HTTP_201_CREATED)
async def create_webhook(body: WebhookCreate, session: SessionDep, admin: AdminDep) -> WebhookCreated:
    """The answer holds the signing secret; later reads show only its first characters."""
    hook = await webhooks.create_webhook(session, body, admin)
    return WebhookCreated(**WebhookPublic.of(hook).model_dump(), secret=hook.secret)


@router.patch("/api/v1/webhooks/{webhook_id}")
async def update_webhook(
    webhook_id: Id, body: WebhookUpdate, session: SessionDep, admin: AdminDep
) -> WebhookPublic:
    return WebhookPublic.of(await webhooks.update_webhook(session, webhook_id, body, admin))


@router.delete("/api/v1/webhooks/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_webhook(webhook_id: Id, session: SessionDep, admin: AdminDep) -> Response:
    await webhooks.delete_webhook(session, webhook_id, admin)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/api/v1/alert-rules")
async def list_alert_rules(
    session: SessionDep,
    admin: AdminDep,
    detector_id: Annotated[str | None, Query(max_length=40, pattern=ID_PATTERN)] = None,
) -> list[AlertRule]:
    return [alert_rules.rule_to_wire(row) for row in await alert_rules.list_rules(session, detector_id)]


@router.post(
    "/api/v1/detectors/{detector_id}/alert-rules",
    status_code=status.HTTP_201_CREATED,
    responses={400: {"description": "a condition the detector cannot meet, or an unknown webhook"}},
)
async def create_alert_rule(
    detector_id: Id, body: AlertRuleSpec, session: SessionDep, admin: AdminDep
) -> AlertRule:
    return alert_rules.rule_to_wire(await alert_rules.create_rule(session, detector_id, body, admin))


@router.put("/api/v1/alert-rules/{rule_id}")
async def replace_alert_rule(
    rule_id: Id, body: AlertRuleSpec, session: SessionDep, admin: AdminDep
) -> AlertRule:
    return alert_rules.rule_to_wire(await alert_rules.replace_rule(session, rule_id, body, admin))


@router.delete("/api/v1/alert-rules/{rule_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_alert_rule(rule_id: Id, session: SessionDep, admin: AdminDep) -> Response:
    await alert_rules.delete_rule(session, rule_id, admin)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/api/v1/notifications")
async def list_notifications(
    session: SessionDep,
    admin: AdminDep,
    detector_id: Annotated[str | None, Query(max_length=40, pattern=ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[NotificationPublic]:
    """Newest first, each with its deliveries: status, attempts, the receiver's last answer."""
    events = await notifications.recent_events(session, limit, detector_id)
    return [NotificationPublic.of(event, deliveries) for event, deliveries in events]


@router.post("/api/v1/webhook-deliveries/{delivery_id}/redeliver")
async def redeliver(delivery_id: Id, session: SessionDep, admin: AdminDep) -> DeliveryPublic:
    """Sent again with the same id (its Idempotency-Key), so a receiver that had it can tell."""
    row = await webhook_delivery.redeliver(session, delivery_id)
    record(
        session, admin, AuditAction.WEBHOOK_REDELIVER, "webhook_delivery", row.id, {"event_id": row.event_id}
    )
    await session.commit()
    return DeliveryPublic.of(row)


@router.post("/edge-api/v1/alerts/firings")
async def record_firings(body: AlertFiringBatch, session: SessionDep, device: DeviceDep) -> AlertFiringAck:
    """Each firing is recorded once by its `firing_id`; a resend is acked as recorded again."""
    return await alert_rules.record_edge_firings(session, body)
