"""The worker's watch for what ops must hear about (docs/alerts.md): review items waiting past their
patience, edges gone quiet, training jobs that failed. Each scan is idempotent, its events keyed so
that seeing the same state again records nothing: an offline edge by its last heartbeat, a failed
job by its id, waiting escalations by detector and a `notify_waiting_repeat_s` window. Promotions and
rollbacks are recorded where they happen (cloud.app.core.registry), in their own transaction."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.core.detectors import iso_utc
from cloud.app.core.notifications import EventKind, record_event, recorded_keys
from cloud.app.db.models import (
    Detector,
    Hub,
    JobStatus,
    NotificationEvent,
    ReviewItem,
    ReviewStatus,
    TrainingJob,
)
from common.clock import as_utc

# Failed jobs older than this when first seen (a database from before notifications) are not news.
FAILED_JOB_LOOKBACK = timedelta(days=1)


async def notify_waiting(session: AsyncSession, now: datetime, repeat_s: float) -> int:
    overdue = (
        await session.execute(
            select(ReviewItem.detector_id, func.count(), func.min(ReviewItem.deadline))
            .join(Detector, Detector.id == ReviewItem.detector_id)
            .where(
                ReviewItem.status == ReviewStatus.PENDING,
                ReviewItem.deadline < now,
                Detector.deleted_at.is_(None),
            )
            .group_by(ReviewItem.detector_id)
        )
    ).all()
    recorded = 0
    window = int(now.timestamp() // repeat_s)
    for detector_id, waiting, oldest in overdue:
        last = (
            await session.execute(
                select(func.max(NotificationEvent.created_at)).where(
                    NotificationEvent.kind == EventKind.ESCALATIONS_WAITING.value,
                    NotificationEvent.detector_id == detector_id,
                )
            )
        ).scalar_one_or_none()
        if last is not None and (now - as_utc(last)).total_seconds() < repeat_s:
            continue
        detector = await session.get(Detector, detector_id)
        name = detector.name if detector is not None else detector_id
        late_s = (now - as_utc(oldest)).total_seconds()
        title = f"{name}: {waiting} escalation{'s' if waiting != 1 else ''} waiting past patience"
        data = {"detector_name": name, "waiting": waiting, "oldest_overdue_s": round(late_s, 1)}
        key = f"waiting:{detector_id}:{window}"
        if await record_event(
            session, EventKind.ESCALATIONS_WAITING, key, title, data, detector_id=detector_id
        ):
            recorded += 1
    await session.commit()
    return recorded


async def notify_offline_edges(session: AsyncSession, now: datetime, offline_s: float) -> int:
    quiet = (
        (await session.execute(select(Hub).where(Hub.last_seen_at < now - timedelta(seconds=offline_s))))
        .scalars()
        .all()
    )
    # One per silence: the next heartbeat moves last_seen_at, and a later silence is a new event.
    keys = {hub.id: f"edge_offline:{hub.id}:{iso_utc(as_utc(hub.last_seen_at))}" for hub in quiet}
    known = await recorded_keys(session, list(keys.values()))
    recorded = 0
    for hub in quiet:
        if keys[hub.id] in known:
            continue
        seen = as_utc(hub.last_seen_at)
        silent_min = (now - seen).total_seconds() / 60
        title = f"edge {hub.name or hub.id} offline: no heartbeat for {silent_min:.0f} min"
        data = {
            "edge_id": hub.id,
            "name": hub.name,
            "last_seen_at": iso_utc(seen),
            "outbox_depth": hub.outbox_depth,
            "deployed_versions": hub.deployed_versions,
        }
        if await record_event(session, EventKind.EDGE_OFFLINE, keys[hub.id], title, data):
            recorded += 1
    await session.commit()
    return recorded


async def notify_failed_jobs(session: AsyncSession, now: datetime) -> int:
    failed = (
        (
            await session.execute(
                select(TrainingJob).where(
                    TrainingJob.status == JobStatus.FAILED,
                    TrainingJob.finished_at >= now - FAILED_JOB_LOOKBACK,
                )
            )
        )
        .scalars()
        .all()
    )
    keys = {job.id: f"training_failed:{job.id}" for job in failed}
    known = await recorded_keys(session, list(keys.values()))
    recorded = 0
    for job in failed:
        key = keys[job.id]
        if key in known:
            continue
        detector = await session.get(Detector, job.detector_id)
        name = detector.name if detector is not None else job.detector_id
        error = (job.error or "").splitlines()[0][:200] if job.error else "no error given"
        data = {"job_id": job.id, "detector_name": name, "trigger": job.trigger, "error": error}
        title = f"{name}: training job {job.id} failed: {error}"
        if await record_event(
            session, EventKind.TRAINING_FAILED, key, title, data, detector_id=job.detector_id
        ):
            recorded += 1
    await session.commit()
    return recorded
