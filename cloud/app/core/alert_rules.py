"""Alert rules (docs/alerts.md): admins set them per detector; edges watch their own answers with
them (they come with the detector's prior) and send what fired; the cloud watches the answers it gives
itself. Either way a firing becomes one `alert` notification event (cloud.app.core.notifications),
recorded once: an edge's by its `firing_id`, the cloud's by the query that completed the streak."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.auth import Principal
from cloud.app.core.audit import AuditAction, record
from cloud.app.core.detectors import get_detector, iso_utc
from cloud.app.core.notifications import EventKind, record_event
from cloud.app.db.models import AlertRuleRow, Webhook
from cloud.app.db.models import Detector as DetectorRow
from cloud.app.errors import BadRequestError, NotFoundError
from common.alerts import Streak, observe
from common.bundle import DetectorMode
from common.clock import as_utc
from common.ids import new_id
from common.wire.alerts import (
    AlertCondition,
    AlertConditionKind,
    AlertFiring,
    AlertFiringAck,
    AlertFiringBatch,
    AlertRule,
    AlertRuleSpec,
    FiringRefusal,
)

MAX_RULES_PER_DETECTOR = 20


def rule_to_wire(row: AlertRuleRow) -> AlertRule:
    return AlertRule(
        id=row.id,
        detector_id=row.detector_id,
        name=row.name,
        condition=AlertCondition.model_validate(row.condition),
        consecutive=row.consecutive,
        cooldown_s=row.cooldown_s,
        enabled=row.enabled,
        webhook_ids=list(row.webhook_ids),
        created_at=as_utc(row.created_at),
    )


async def list_rules(session: AsyncSession, detector_id: str | None = None) -> Sequence[AlertRuleRow]:
    stmt = select(AlertRuleRow).order_by(AlertRuleRow.created_at, AlertRuleRow.id)
    if detector_id is not None:
        stmt = stmt.where(AlertRuleRow.detector_id == detector_id)
    return (await session.execute(stmt)).scalars().all()


async def enabled_rules(session: AsyncSession, detector_id: str) -> list[AlertRule]:
    """What an edge watches for this detector."""
    return [rule_to_wire(row) for row in await list_rules(session, detector_id) if row.enabled]


async def get_rule(session: AsyncSession, rule_id: str) -> AlertRuleRow:
    row = await session.get(AlertRuleRow, rule_id)
    if row is None:
        raise NotFoundError(f"alert rule {rule_id} not found")
    return row


async def _check_spec(session: AsyncSession, detector: DetectorRow, spec: AlertRuleSpec) -> None:
    """A rule that could never fire, or names a webhook that does not exist, is refused (400)."""
    condition = spec.condition
    if condition.kind is AlertConditionKind.ANSWER_IS:
        if condition.label not in detector.labels:
            answers = ", ".join(str(label) for label in detector.labels)
            raise BadRequestError(f"{condition.label!r} is not an answer of this detector ({answers})")
    elif detector.mode != DetectorMode.COUNT:
        raise BadRequestError(f"{condition.kind.value} needs a COUNT detector; this one is {detector.mode}")
    if spec.webhook_ids:
        found = set(
            (await session.execute(select(Webhook.id).where(Webhook.id.in_(spec.webhook_ids)))).scalars()
        )
        missing = [hook for hook in spec.webhook_ids if hook not in found]
        if missing:
            raise BadRequestError(f"no webhook {missing[0]}")


async def create_rule(
    session: AsyncSession, detector_id: str, spec: AlertRuleSpec, admin: Principal
) -> AlertRuleRow:
    detector = await get_detector(session, detector_id)
    await _check_spec(session, detector, spec)
    if len(await list_rules(session, detector.id)) >= MAX_RULES_PER_DETECTOR:
        raise BadRequestError(f"a detector has at most {MAX_RULES_PER_DETECTOR} alert rules")
    row = AlertRuleRow(id=new_id("alr"), detector_id=detector.id, streak=0, **_columns(spec))
    session.add(row)
    record(session, admin, AuditAction.ALERT_RULE_CREATE, "alert_rule", row.id, _audit(detector, spec))
    await session.commit()
    return row


async def replace_rule(
    session: AsyncSession, rule_id: str, spec: AlertRuleSpec, admin: Principal
) -> AlertRuleRow:
    """A changed rule is a new watch: the cloud's streak starts again (edges' do too)."""
    row = await get_rule(session, rule_id)
    detector = await get_detector(session, row.detector_id)
    await _check_spec(session, detector, spec)
    for name, value in _columns(spec).items():
        setattr(row, name, value)
    row.streak = 0
    record(session, admin, AuditAction.ALERT_RULE_UPDATE, "alert_rule", row.id, _audit(detector, spec))
    await session.commit()
    return row


async def delete_rule(session: AsyncSession, rule_id: str, admin: Principal) -> None:
    row = await get_rule(session, rule_id)
    record(session, admin, AuditAction.ALERT_RULE_DELETE, "alert_rule", row.id, {"name": row.name})
    await session.delete(row)
    await session.commit()


def _columns(spec: AlertRuleSpec) -> dict[str, object]:
    return {
        "name": spec.name,
        "condition": spec.condition.model_dump(mode="json"),
        "consecutive": spec.consecutive,
        "cooldown_s": spec.cooldown_s,
        "enabled": spec.enabled,
        "webhook_ids": list(spec.webhook_ids),
    }


def _audit(detector: DetectorRow, spec: AlertRuleSpec) -> dict[str, object]:
    return {"detector_id": detector.id, "detector_name": detector.name, **spec.model_dump(mode="json")}


def _title(rule: AlertRuleRow, detector_name: str, streak: int, where: str) -> str:
    condition = AlertCondition.model_validate(rule.condition).describe()
    times = "once" if streak == 1 else f"{streak} times in a row"
    return f"{rule.name}: {condition} {times} on {detector_name} ({where})"


async def _record_alert(
    session: AsyncSession,
    rule: AlertRuleRow,
    detector: DetectorRow,
    dedupe_key: str,
    firing: AlertFiring,
    source: str,
    edge_id: str | None,
) -> bool:
    data = {
        "rule_name": rule.name,
        "condition": rule.condition,
        "consecutive": rule.consecutive,
        "detector_name": detector.name,
        "query": detector.query,
        "label": firing.label,
        "count": firing.count,
        "confidence": firing.confidence,
        "streak": firing.streak,
        "image_query_id": firing.image_query_id,
        "fired_at": iso_utc(firing.fired_at),
        "source": source,
        "edge_id": edge_id,
    }
    where = f"edge {edge_id}" if edge_id else "cloud"
    return await record_event(
        session,
        EventKind.ALERT,
        dedupe_key,
        _title(rule, detector.name, firing.streak, where),
        data,
        detector_id=detector.id,
        rule_id=rule.id,
        webhook_ids=list(rule.webhook_ids),
        at=firing.fired_at,
    )


async def record_edge_firings(session: AsyncSession, batch: AlertFiringBatch) -> AlertFiringAck:
    """Each firing once, whatever resends its edge makes; the ack tells the edge which to drop."""
    ack = AlertFiringAck()
    for firing in batch.firings:
        rule = await session.get(AlertRuleRow, firing.rule_id)
        detector = await session.get(DetectorRow, firing.detector_id)
        if rule is None or detector is None or detector.deleted_at is not None:
            ack.refused.append(FiringRefusal(firing_id=firing.firing_id, error="no such rule or detector"))
            continue
        if rule.detector_id != firing.detector_id:
            error = f"rule {rule.id} belongs to another detector"
            ack.refused.append(FiringRefusal(firing_id=firing.firing_id, error=error))
            continue
        if not rule.enabled:
            ack.refused.append(FiringRefusal(firing_id=firing.firing_id, error="the rule is disabled"))
            continue
        key = f"alert:edge:{firing.firing_id}"
        await _record_alert(session, rule, detector, key, firing, "edge", batch.edge_id or None)
        ack.recorded.append(firing.firing_id)
    await session.commit()
    return ack


async def observe_cloud_answer(
    session: AsyncSession,
    detector: DetectorRow,
    *,
    label: str,
    count: int | None,
    confidence: float,
    image_query_id: str,
) -> None:
    """A confident answer the cloud gave: its rules' streaks move in the caller's transaction (the
    rows locked, so concurrent answers count one by one); a firing records its event there too."""
    rows = (
        (
            await session.execute(
                select(AlertRuleRow)
                .where(AlertRuleRow.detector_id == detector.id, AlertRuleRow.enabled.is_(True))
                .order_by(AlertRuleRow.id)
                .with_for_update()
            )
        )
        .scalars()
        .all()
    )
    now = datetime.now(UTC)
    for row in rows:
        spec = rule_to_wire(row)
        last = row.last_fired_at
        streak = Streak(row.streak, None if last is None else as_utc(last).timestamp())
        fired = observe(spec, streak, label=label, count=count, now=now.timestamp())
        row.streak = streak.length
        if fired is None:
            continue
        row.last_fired_at = now
        firing = AlertFiring(
            firing_id=f"cloud-{image_query_id}"[:64],
            rule_id=row.id,
            detector_id=detector.id,
            image_query_id=image_query_id,
            label=label,
            count=count,
            confidence=confidence,
            streak=fired,
            fired_at=now,
        )
        await _record_alert(
            session, row, detector, f"alert:cloud:{row.id}:{image_query_id}", firing, "cloud", None
        )
