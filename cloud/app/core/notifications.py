"""Notification events and their webhook deliveries (docs/alerts.md).

An event is recorded once per `dedupe_key` (INSERT … ON CONFLICT DO NOTHING), and in the same
transaction one pending delivery per webhook that takes its kind. Nothing is sent here: the worker
sends (cloud.app.core.webhook_delivery), so a crash or a restart between the event and the first
attempt loses nothing, and a slow receiver never holds up the request that caused the event.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.db.models import NotificationEvent, Webhook, WebhookDelivery
from common.ids import new_id


class EventKind(StrEnum):
    ALERT = "alert"  # an alert rule fired (on an edge or in the cloud)
    ESCALATIONS_WAITING = "escalations_waiting"  # review items past their patience deadline
    EDGE_OFFLINE = "edge_offline"  # no heartbeat from an edge for a while
    TRAINING_FAILED = "training_failed"
    MODEL_PROMOTED = "model_promoted"  # promoted or rolled back: the version edges will serve changed


def new_event_id() -> str:
    return new_id("evt")


def new_delivery_id() -> str:
    return new_id("dlv")


async def record_event(
    session: AsyncSession,
    kind: EventKind,
    dedupe_key: str,
    title: str,
    data: dict[str, Any],
    *,
    detector_id: str | None = None,
    rule_id: str | None = None,
    webhook_ids: Sequence[str] = (),
    at: datetime | None = None,
) -> bool:
    """Adds the event and its deliveries to the session (the caller commits); False when an event with
    this key exists already. `webhook_ids` narrows an alert to the rule's webhooks (empty: all)."""
    now = at or datetime.now(UTC)
    event_id = new_event_id()
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(NotificationEvent)
        .values(
            id=event_id,
            kind=kind.value,
            dedupe_key=dedupe_key[:200],
            detector_id=detector_id,
            rule_id=rule_id,
            title=title[:300],
            data=data,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=[NotificationEvent.dedupe_key])
        .returning(NotificationEvent.id)
    )
    if (await session.execute(stmt)).scalar_one_or_none() is None:
        return False
    for hook in await subscribed_webhooks(session, kind, webhook_ids):
        session.add(
            WebhookDelivery(id=new_delivery_id(), event_id=event_id, webhook_id=hook.id, next_attempt_at=now)
        )
    await session.flush()
    return True


async def recorded_keys(session: AsyncSession, keys: Sequence[str]) -> set[str]:
    """Which of these dedupe keys have their event already: a scan that sees the same state on every
    tick reads once instead of attempting an insert per candidate."""
    if not keys:
        return set()
    rows = await session.execute(
        select(NotificationEvent.dedupe_key).where(NotificationEvent.dedupe_key.in_([k[:200] for k in keys]))
    )
    return set(rows.scalars())


async def subscribed_webhooks(
    session: AsyncSession, kind: EventKind, only: Sequence[str] = ()
) -> list[Webhook]:
    rows = (await session.execute(select(Webhook).where(Webhook.enabled.is_(True)))).scalars().all()
    return [hook for hook in rows if kind.value in hook.events and (not only or hook.id in only)]


async def recent_events(
    session: AsyncSession, limit: int = 50, detector_id: str | None = None
) -> list[tuple[NotificationEvent, list[WebhookDelivery]]]:
    """Newest first, each with its deliveries (the delivery log admins read)."""
    stmt = select(NotificationEvent).order_by(
        NotificationEvent.created_at.desc(), NotificationEvent.id.desc()
    )
    if detector_id is not None:
        stmt = stmt.where(NotificationEvent.detector_id == detector_id)
    events = (await session.execute(stmt.limit(limit))).scalars().all()
    if not events:
        return []
    deliveries = (
        (
            await session.execute(
                select(WebhookDelivery)
                .where(WebhookDelivery.event_id.in_([e.id for e in events]))
                .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
            )
        )
        .scalars()
        .all()
    )
    by_event: dict[str, list[WebhookDelivery]] = {}
    for delivery in deliveries:
        by_event.setdefault(delivery.event_id, []).append(delivery)
    return [(event, by_event.get(event.id, [])) for event in events]
