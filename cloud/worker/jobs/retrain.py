"""Retrain triggers: queue a training job for a detector when labels have piled up since its last one.

New labels = the detector's labels that were not undone, minus the count its last training job was
made with (`labels_at_creation`; all of them when it never had one).
- "labels": at least `min_labels` new labels;
- "timer": at least one new label, and the last job finished (or the detector was made, when it never
  had one) more than `interval_s` ago.
A detector with a queued or running job is left alone. Two workers deciding at once both try to
insert; the partial unique index keeps one job and the other gets ConflictError, which is expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.core.training_jobs import create_training_job
from cloud.app.db.models import ACTIVE_JOB_STATUSES, Detector, Label, TrainingJob
from cloud.app.errors import ConflictError, NotFoundError
from cloud.app.schemas.fields import as_utc


@dataclass(frozen=True)
class RetrainDue:
    detector_id: str
    trigger: str  # "labels" | "timer"
    new_labels: int
    total_labels: int


@dataclass(frozen=True)
class RetrainOutcome:
    due: RetrainDue
    job_id: str | None  # None: another worker (or an administrator) queued one first


async def find_due_retrains(
    session: AsyncSession, *, min_labels: int, interval_s: float, now: datetime
) -> list[RetrainDue]:
    detectors = (await session.execute(select(Detector.id, Detector.created_at))).all()
    label_counts = (
        select(Label.detector_id, func.count()).where(Label.undone_at.is_(None)).group_by(Label.detector_id)
    )
    counts: dict[str, int] = {
        detector_id: n for detector_id, n in (await session.execute(label_counts)).all()
    }
    active_jobs = select(TrainingJob.detector_id).where(TrainingJob.status.in_(ACTIVE_JOB_STATUSES))
    active = set((await session.execute(active_jobs)).scalars().all())
    newest = (
        select(TrainingJob.detector_id, func.max(TrainingJob.created_at).label("created_at"))
        .group_by(TrainingJob.detector_id)
        .subquery()
    )
    last_jobs_query = select(TrainingJob).join(
        newest,
        (TrainingJob.detector_id == newest.c.detector_id) & (TrainingJob.created_at == newest.c.created_at),
    )
    last_jobs = {job.detector_id: job for job in (await session.execute(last_jobs_query)).scalars().all()}
    due = []
    interval = timedelta(seconds=interval_s)
    for detector_id, created_at in detectors:
        if detector_id in active:
            continue
        total = counts.get(detector_id, 0)
        last = last_jobs.get(detector_id)
        new = total - (last.labels_at_creation if last is not None else 0)
        if new >= min_labels:
            due.append(RetrainDue(detector_id, "labels", new, total))
        elif new >= 1:
            since = created_at if last is None else (last.finished_at or last.created_at)
            if now - as_utc(since) > interval:
                due.append(RetrainDue(detector_id, "timer", new, total))
    return due


async def queue_due_retrains(
    session: AsyncSession, *, min_labels: int, interval_s: float, now: datetime
) -> list[RetrainOutcome]:
    outcomes = []
    for due in await find_due_retrains(session, min_labels=min_labels, interval_s=interval_s, now=now):
        try:
            job = await create_training_job(
                session, due.detector_id, trigger=due.trigger, labels_at_creation=due.total_labels
            )
        except (ConflictError, NotFoundError):  # lost the race, or the detector was deleted meanwhile
            outcomes.append(RetrainOutcome(due, None))
            continue
        outcomes.append(RetrainOutcome(due, job.id))
    return outcomes
