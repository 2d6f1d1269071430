"""The audit log: one row per administrative change, written in the same transaction as the change
itself, so the log never claims what did not happen nor misses what did. The worker's own changes
(purges) are recorded with no actor id and the name `worker`."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.auth import Principal
from cloud.app.db.models import AuditEvent

WORKER = "worker"


class AuditAction(StrEnum):
    DETECTOR_CREATE = "detector.create"
    DETECTOR_UPDATE = "detector.update"
    DETECTOR_DELETE = "detector.delete"
    DETECTOR_RESTORE = "detector.restore"
    DETECTOR_PURGE = "detector.purge"
    MODEL_PROMOTE = "model.promote"
    MODEL_ROLLBACK = "model.rollback"
    MODEL_DELETE = "model.delete"
    USER_CREATE = "user.create"
    USER_UPDATE = "user.update"
    USER_DEACTIVATE = "user.deactivate"
    USER_ACTIVATE = "user.activate"
    TOKEN_CREATE = "token.create"
    TOKEN_REVOKE = "token.revoke"
    TRAINING_JOB_CREATE = "training_job.create"
    TRAINING_JOB_CANCEL = "training_job.cancel"
    WEBHOOK_CREATE = "webhook.create"
    WEBHOOK_UPDATE = "webhook.update"
    WEBHOOK_DELETE = "webhook.delete"
    WEBHOOK_REDELIVER = "webhook.redeliver"
    ALERT_RULE_CREATE = "alert_rule.create"
    ALERT_RULE_UPDATE = "alert_rule.update"
    ALERT_RULE_DELETE = "alert_rule.delete"


def record(
    session: AsyncSession,
    actor: Principal | None,
    action: AuditAction,
    target_type: str,
    target_id: str,
    detail: dict[str, Any] | None = None,
    *,
    at: datetime | None = None,
) -> AuditEvent:
    """Adds the event to the session; the caller's commit writes it with the change. `actor` None:
    the worker."""
    event = AuditEvent(
        at=at or datetime.now(UTC),
        actor_id=actor.user_id if actor is not None else None,
        actor_name=actor.username if actor is not None else WORKER,
        actor_role=actor.role.value if actor is not None else WORKER,
        action=action.value,
        target_type=target_type,
        target_id=target_id,
        detail=detail or {},
    )
    session.add(event)
    return event


async def list_events(
    session: AsyncSession,
    *,
    limit: int,
    offset: int = 0,
    action: str | None = None,
    target_id: str | None = None,
) -> tuple[list[AuditEvent], int]:
    """Newest first (ties broken by insertion order), with the count of all that match."""
    where: list[ColumnElement[bool]] = []
    if action is not None:
        where.append(AuditEvent.action == action)
    if target_id is not None:
        where.append(AuditEvent.target_id == target_id)
    count = (await session.execute(select(func.count()).select_from(AuditEvent).where(*where))).scalar_one()
    rows = (
        await session.scalars(
            select(AuditEvent)
            .where(*where)
            .order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
            .offset(offset)
            .limit(limit)
        )
    ).all()
    return list(rows), int(count)
