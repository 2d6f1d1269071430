"""Retrain triggers: queue a training job for a detector when it has enough labels to learn from, and
again whenever labels have grown enough since its last job.

Labels = the detector's labels that were not undone (what `labels_at_creation` records); classes are
counted as a dataset export would train on them (per image query its latest HUMAN or CUSTOMER label,
UNCLEAR not counted).
- "labels", first job: as soon as every class has at least `first_min_per_class` labels (COUNT: at
  least two classes have), since a head needs every answer it is to give (a count detector sees only
  some counts);
- "labels", later: new labels since the last job (labels now minus its `labels_at_creation`) reach
  max(`min_labels`, ceil(`growth` x its `labels_at_creation`)): a young detector retrains every few
  labels, a mature one when its data has grown by a tenth;
- "timer": at least one new label and the last job finished (or was made) more than `interval_s` ago.
A detector with a queued or running job is left alone: requests coalesce while one runs. Two workers
deciding at once both try to insert; the partial unique index keeps one job and the other gets
ConflictError, which is expected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.core.priors import label_counts
from cloud.app.core.training_jobs import create_training_job
from cloud.app.db.models import ACTIVE_JOB_STATUSES, Detector, Label, TrainingJob
from cloud.app.errors import ConflictError, NotFoundError
from cloud.app.schemas.fields import as_utc
from common.bundle import DetectorMode

# Growth products like 0.1 x 30 come out a hair above the integer; this keeps ceil on the integer.
_EPS = 1e-9


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


@dataclass(frozen=True)
class Cadence:
    first_min_per_class: int = 3
    min_labels: int = 5
    growth: float = 0.10
    interval_s: float = 600.0


def first_job_ready(mode: str, labels: Sequence[object], counts: dict[str, int], min_per_class: int) -> bool:
    """Every class has `min_per_class` labels; for COUNT and BOUNDING_BOX (whose top buckets, many
    objects, may never be answered), two classes have."""
    per_class = [counts.get(str(label), 0) for label in labels]
    if mode in (DetectorMode.COUNT.value, DetectorMode.BOUNDING_BOX.value):
        return sum(n >= min_per_class for n in per_class) >= 2
    return bool(per_class) and all(n >= min_per_class for n in per_class)


def labels_needed(labels_at_last_job: int, min_labels: int, growth: float) -> int:
    """New labels that make a retrain after a job that was made with `labels_at_last_job`."""
    return max(min_labels, math.ceil(growth * labels_at_last_job - _EPS))


async def find_due_retrains(session: AsyncSession, cadence: Cadence, now: datetime) -> list[RetrainDue]:
    detectors = (
        await session.execute(
            select(Detector.id, Detector.created_at, Detector.mode, Detector.labels).where(
                Detector.deleted_at.is_(None)
            )
        )
    ).all()
    label_totals = (
        select(Label.detector_id, func.count()).where(Label.undone_at.is_(None)).group_by(Label.detector_id)
    )
    totals: dict[str, int] = {
        detector_id: n for detector_id, n in (await session.execute(label_totals)).all()
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
    # Class counts only for detectors that never had a job and have labels: the others need totals only.
    untrained = [
        detector_id
        for detector_id, *_ in detectors
        if detector_id not in last_jobs and detector_id not in active and totals.get(detector_id, 0) > 0
    ]
    class_counts = await label_counts(session, untrained)
    due = []
    interval = timedelta(seconds=cadence.interval_s)
    for detector_id, _created_at, mode, labels in detectors:
        if detector_id in active:
            continue
        total = totals.get(detector_id, 0)
        last = last_jobs.get(detector_id)
        if last is None:
            counts = class_counts.get(detector_id, {})
            if total > 0 and first_job_ready(mode, labels or [], counts, cadence.first_min_per_class):
                due.append(RetrainDue(detector_id, "labels", total, total))
            continue
        new = total - last.labels_at_creation
        if new >= labels_needed(last.labels_at_creation, cadence.min_labels, cadence.growth):
            due.append(RetrainDue(detector_id, "labels", new, total))
        elif new >= 1 and now - as_utc(last.finished_at or last.created_at) > interval:
            due.append(RetrainDue(detector_id, "timer", new, total))
    return due


async def queue_due_retrains(session: AsyncSession, cadence: Cadence, now: datetime) -> list[RetrainOutcome]:
    outcomes = []
    for due in await find_due_retrains(session, cadence, now):
        try:
            job = await create_training_job(
                session, due.detector_id, trigger=due.trigger, labels_at_creation=due.total_labels
            )
        except (ConflictError, NotFoundError):  # lost the race, or the detector was deleted meanwhile
            outcomes.append(RetrainOutcome(due, None))
            continue
        outcomes.append(RetrainOutcome(due, job.id))
    return outcomes
