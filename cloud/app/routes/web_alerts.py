"""The administrators' alerts page (`/ui/alerts`): what was notified and whether each webhook got it,
the alert rules of every detector, and the webhooks. The page shows; its script makes every change
through the alerts API (cloud.app.routes.alerts) with the session cookie, as a script would."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import select
from starlette.responses import Response

from cloud.app.core import alert_rules, notifications, webhooks
from cloud.app.core.notifications import EventKind
from cloud.app.db.models import Detector
from cloud.app.deps import SessionDep
from cloud.app.schemas.alerts import NotificationPublic, WebhookPublic
from cloud.app.web.pages import PageUser, admins_only, render, to_login
from common.wire.alerts import AlertCondition

router = APIRouter(prefix="", tags=["web"], include_in_schema=False)

EVENT_NAMES = {
    EventKind.ALERT: "an alert rule fired",
    EventKind.ESCALATIONS_WAITING: "escalations wait past patience",
    EventKind.EDGE_OFFLINE: "an edge went offline",
    EventKind.TRAINING_FAILED: "a training job failed",
    EventKind.MODEL_PROMOTED: "a version was promoted or rolled back",
}


@router.get("/ui/alerts")
async def alerts_page(request: Request, session: SessionDep, user: PageUser) -> Response:
    if user is None:
        return to_login(request)
    if (refused := admins_only(request, user, "alerts")) is not None:
        return refused
    detectors = (
        (await session.execute(select(Detector).where(Detector.deleted_at.is_(None)).order_by(Detector.name)))
        .scalars()
        .all()
    )
    names = {d.id: d.name for d in detectors}
    hooks = [WebhookPublic.of(hook) for hook in await webhooks.list_webhooks(session)]
    rules = [
        (alert_rules.rule_to_wire(row), AlertCondition.model_validate(row.condition).describe())
        for row in await alert_rules.list_rules(session)
        if row.detector_id in names
    ]
    events = [NotificationPublic.of(e, d) for e, d in await notifications.recent_events(session, 100)]
    return render(
        request,
        "alerts.html",
        user,
        detectors=detectors,
        detector_names=names,
        webhooks=hooks,
        webhook_names={h.id: h.name for h in hooks},
        rules=rules,
        events=events,
        event_names=EVENT_NAMES,
        nav="alerts",
    )
