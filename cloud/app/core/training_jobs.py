"""Training jobs: a queue that trainers lease from.

queued ──lease──▶ running ──complete──▶ succeeded
   │                 │ └────fail──────▶ failed (cancelled when a cancel was requested)
   └──cancel──▶ cancelled   lease expires ──▶ queued again (worker) or leased by another trainer

A lease is an owner name plus an expiry; the owner extends it with heartbeats (cloud.app.core.lease_queue
has the claim, heartbeat and expiry statements). Every transition is a conditional UPDATE on the state it
expects, so concurrent trainers, API replicas and workers never both win; on PostgreSQL the lease also
skips rows that another transaction is taking (`FOR UPDATE SKIP LOCKED`). A trainer whose lease lapsed
may still heartbeat as long as nobody took the job meanwhile. At most one job per detector is queued or
running: the partial unique index `uq_training_jobs_one_active` refuses a second one, which surfaces as
ConflictError.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, Update, case, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.auth import Principal
from cloud.app.core.audit import AuditAction, record
from cloud.app.core.lease_queue import LeaseQueue
from cloud.app.db.models import Detector, JobStatus, Label, ModelVersion, TrainingJob
from cloud.app.errors import BadRequestError, ConflictError, NotFoundError
from common.ids import new_id

FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
# The log keeps its newest characters when a long run writes more than this.
MAX_LOG_CHARS = 1_000_000
_LEASE_ATTEMPTS = 5
QUEUE = LeaseQueue(
    cast(Table, TrainingJob.__table__),
    waiting=JobStatus.QUEUED.value,
    leased=JobStatus.RUNNING.value,
    order=("created_at", "id"),
    renew_lapsed=True,
)


def new_training_job_id() -> str:
    return new_id("trj")


async def count_labels(session: AsyncSession, detector_id: str) -> int:
    """Labels that count for training: every label of the detector that was not undone."""
    return (
        await session.execute(
            select(func.count())
            .select_from(Label)
            .where(Label.detector_id == detector_id, Label.undone_at.is_(None))
        )
    ).scalar_one()


async def create_training_job(
    session: AsyncSession,
    detector_id: str,
    *,
    trigger: str = "manual",
    config: dict[str, Any] | None = None,
    labels_at_creation: int | None = None,
    audited_by: Principal | None = None,
) -> TrainingJob:
    """Queues a job (committed). ConflictError when the detector already has a queued or running one.
    `audited_by`: the admin who asked (the worker's own jobs are not administrative changes)."""
    detector = await session.get(Detector, detector_id)
    if detector is None or detector.deleted_at is not None:
        raise NotFoundError(f"detector {detector_id} not found")
    if labels_at_creation is None:
        labels_at_creation = await count_labels(session, detector_id)
    job = TrainingJob(
        id=new_training_job_id(),
        detector_id=detector_id,
        status=JobStatus.QUEUED,
        trigger=trigger,
        labels_at_creation=labels_at_creation,
        config=config or {},
        progress={},
        logs="",
        cancel_requested=False,
    )
    session.add(job)
    if audited_by is not None:
        detail = {"detector_id": detector_id, "trigger": trigger}
        record(session, audited_by, AuditAction.TRAINING_JOB_CREATE, "training_job", job.id, detail)
    try:
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise ConflictError(f"detector {detector_id} already has a queued or running training job") from exc
    return job


async def get_training_job(session: AsyncSession, job_id: str) -> TrainingJob:
    job = (
        await session.execute(
            select(TrainingJob).where(TrainingJob.id == job_id).execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if job is None:
        raise NotFoundError(f"training job {job_id} not found")
    return job


async def list_training_jobs(
    session: AsyncSession,
    *,
    detector_id: str | None = None,
    status: JobStatus | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Sequence[TrainingJob]:
    """Newest first."""
    query = select(TrainingJob).order_by(TrainingJob.created_at.desc(), TrainingJob.id.desc())
    if detector_id is not None:
        query = query.where(TrainingJob.detector_id == detector_id)
    if status is not None:
        query = query.where(TrainingJob.status == status)
    return (await session.execute(query.limit(limit).offset(offset))).scalars().all()


async def lease_training_job(session: AsyncSession, owner: str, lease_s: float) -> TrainingJob | None:
    """The oldest waiting job (or a running one whose trainer stopped renewing its lease, unless a
    cancel was asked for: the worker ends that one), now running under `owner`; None when nothing waits."""
    now = datetime.now(UTC)
    job_id = (
        await session.execute(
            QUEUE.claim(
                owner,
                now + timedelta(seconds=lease_s),
                now,
                TrainingJob.cancel_requested.is_(False),
                started_at=now,
                progress={},
                logs=_append_log(_log_line(now, f"leased by {owner}")),
            ).returning(TrainingJob.id)
        )
    ).scalar_one_or_none()
    await session.commit()
    return None if job_id is None else await get_training_job(session, job_id)


async def heartbeat_training_job(
    session: AsyncSession,
    job_id: str,
    owner: str,
    *,
    progress: dict[str, Any],
    log_lines: Sequence[str],
    lease_s: float,
) -> TrainingJob:
    """Extends the lease, replaces the progress and appends the log lines. ConflictError when the
    lease is not `owner`'s (another trainer took the job, or it finished)."""
    now = datetime.now(UTC)
    values: dict[str, Any] = {"progress": progress}
    if log_lines:
        values["logs"] = _append_log("".join(line.rstrip("\n") + "\n" for line in log_lines))
    renewed = QUEUE.renew(job_id, owner, now, now + timedelta(seconds=lease_s)).values(**values)
    await _transition(session, job_id, renewed, "heartbeat")
    return await get_training_job(session, job_id)


async def complete_training_job(
    session: AsyncSession, job_id: str, owner: str, result_version_id: str | None = None
) -> TrainingJob:
    now = datetime.now(UTC)
    if result_version_id is not None:
        job = await get_training_job(session, job_id)
        version = await session.get(ModelVersion, result_version_id)
        if version is None or version.detector_id != job.detector_id:
            raise BadRequestError(
                f"model version {result_version_id} is not registered for {job.detector_id}"
            )
    values = {
        "status": JobStatus.SUCCEEDED,
        "finished_at": now,
        "lease_expires_at": None,
        "result_version_id": result_version_id,
        "logs": _append_log(_log_line(now, f"succeeded ({owner})")),
    }
    await _transition(session, job_id, QUEUE.as_holder(job_id, owner).values(**values), "complete")
    return await get_training_job(session, job_id)


async def fail_training_job(session: AsyncSession, job_id: str, owner: str, error: str) -> TrainingJob:
    """A trainer gives up; a job whose cancel was requested ends as cancelled instead of failed."""
    now = datetime.now(UTC)
    values = {
        "status": case(
            (TrainingJob.cancel_requested, JobStatus.CANCELLED.value), else_=JobStatus.FAILED.value
        ),
        "finished_at": now,
        "lease_expires_at": None,
        "error": error,
        "logs": _append_log(_log_line(now, f"stopped ({owner}): {error.splitlines()[0] if error else ''}")),
    }
    await _transition(session, job_id, QUEUE.as_holder(job_id, owner).values(**values), "fail")
    return await get_training_job(session, job_id)


async def cancel_training_job(
    session: AsyncSession, job_id: str, audited_by: Principal | None = None
) -> TrainingJob:
    """A queued job is cancelled at once; a running one is asked to stop (its trainer sees
    `cancel_requested` in the answer to its next heartbeat). Cancelling a cancelled job is a no-op."""
    now = datetime.now(UTC)
    for _ in range(_LEASE_ATTEMPTS):
        job = await get_training_job(session, job_id)
        if job.status == JobStatus.CANCELLED:
            return job
        if job.status in FINISHED:
            raise ConflictError(f"training job {job_id} already {job.status}")
        if job.status == JobStatus.QUEUED:
            values: dict[str, Any] = {
                "status": JobStatus.CANCELLED,
                "cancel_requested": True,
                "finished_at": now,
                "lease_owner": None,
                "lease_expires_at": None,
                "logs": _append_log(_log_line(now, "cancelled while queued")),
            }
        else:
            values = {"cancel_requested": True, "logs": _append_log(_log_line(now, "cancel requested"))}
        changed = await session.execute(
            update(TrainingJob)
            .where(TrainingJob.id == job_id, TrainingJob.status == job.status)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if _rowcount(changed) == 1:
            if audited_by is not None:
                detail = {"detector_id": job.detector_id, "was": job.status}
                record(session, audited_by, AuditAction.TRAINING_JOB_CANCEL, "training_job", job_id, detail)
            await session.commit()
            return await get_training_job(session, job_id)
        await session.rollback()
        # It changed state meanwhile (leased, finished): look again.
    raise ConflictError(f"training job {job_id} keeps changing state; try again")


async def stop_detector_jobs(session: AsyncSession, detector_id: str, why: str) -> None:
    """Its queued job is cancelled and its running one asked to stop, as a cancel would (not
    committed: part of the caller's change, a detector's deletion)."""
    now = datetime.now(UTC)
    await session.execute(
        update(TrainingJob)
        .where(TrainingJob.detector_id == detector_id, TrainingJob.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.CANCELLED,
            cancel_requested=True,
            finished_at=now,
            lease_owner=None,
            lease_expires_at=None,
            logs=_append_log(_log_line(now, f"cancelled while queued: {why}")),
        )
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(TrainingJob)
        .where(TrainingJob.detector_id == detector_id, TrainingJob.status == JobStatus.RUNNING)
        .values(cancel_requested=True, logs=_append_log(_log_line(now, f"cancel requested: {why}")))
        .execution_options(synchronize_session=False)
    )


async def requeue_expired_training_jobs(
    session: AsyncSession, now: datetime | None = None
) -> tuple[int, int]:
    """Running jobs whose lease expired go back to the queue, or end as cancelled when a cancel was
    requested. Returns (requeued, cancelled)."""
    now = now or datetime.now(UTC)
    cancelled = await session.execute(
        # Ends rather than returns: the trainer's name stays on the job, as on any finished one.
        update(TrainingJob)
        .where(QUEUE.lapsed(now), TrainingJob.cancel_requested.is_(True))
        .values(
            status=JobStatus.CANCELLED,
            finished_at=now,
            lease_expires_at=None,
            logs=_append_log(_log_line(now, "lease expired after a cancel request: cancelled")),
        )
        .execution_options(synchronize_session=False)
    )
    requeued = await session.execute(
        QUEUE.expire(
            now,
            TrainingJob.cancel_requested.is_(False),
            logs=_append_log(_log_line(now, "lease expired: back in the queue")),
        )
    )
    await session.commit()
    return _rowcount(requeued), _rowcount(cancelled)


async def _transition(session: AsyncSession, job_id: str, statement: Update, action: str) -> None:
    """Runs a holder's UPDATE (QUEUE.as_holder / renew); when it matched no row, explains why not."""
    changed = await session.execute(statement)
    await session.commit()
    if _rowcount(changed) == 1:
        return
    job = await get_training_job(session, job_id)
    if job.status != JobStatus.RUNNING:
        raise ConflictError(f"{action}: training job {job_id} is {job.status}, not running")
    raise ConflictError(f"{action}: the lease of training job {job_id} is held by another trainer")


def _append_log(text: str) -> ColumnElement[str]:
    """`logs || text`, keeping the newest MAX_LOG_CHARS characters."""
    joined = TrainingJob.logs + text
    return case(
        (func.length(joined) > MAX_LOG_CHARS, func.substr(joined, func.length(joined) - MAX_LOG_CHARS + 1)),
        else_=joined,
    )


def _log_line(now: datetime, message: str) -> str:
    return f"{now.isoformat(timespec='seconds')} [cloud] {message}\n"


def _rowcount(result: Any) -> int:
    count: int = result.rowcount
    return count
