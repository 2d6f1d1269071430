"""The training-jobs API's bodies are common.wire.training_jobs; this builds the public view of a row."""

from __future__ import annotations

from datetime import UTC, datetime

from cloud.app.db.models import TrainingJob
from common.wire.fields import as_utc
from common.wire.training_jobs import JobStatus, TrainingJobPublic


def training_job_public(job: TrainingJob) -> TrainingJobPublic:
    duration = None
    if job.started_at is not None:
        end = as_utc(job.finished_at) if job.finished_at else datetime.now(UTC)
        duration = max(0.0, (end - as_utc(job.started_at)).total_seconds())
    return TrainingJobPublic(
        id=job.id,
        detector_id=job.detector_id,
        status=JobStatus(job.status),
        trigger=job.trigger,
        labels_at_creation=job.labels_at_creation,
        config=job.config,
        lease_owner=job.lease_owner,
        lease_expires_at=job.lease_expires_at,
        cancel_requested=job.cancel_requested,
        progress=job.progress,
        result_version_id=job.result_version_id,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        duration_s=duration,
    )
