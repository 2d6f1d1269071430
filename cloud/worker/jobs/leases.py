"""Expired leases: review items return to the queue and export jobs are requeued (training jobs:
`cloud.app.core.training_jobs.requeue_expired_training_jobs`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.db.models import ExportJob, JobStatus, ReviewItem, ReviewStatus


async def release_expired_review_leases(session: AsyncSession, now: datetime) -> int:
    """A reviewer who claimed an item and went away: anyone may claim it again."""
    result = await session.execute(
        update(ReviewItem)
        .where(
            ReviewItem.status == ReviewStatus.PENDING,
            ReviewItem.lease_expires_at.is_not(None),
            ReviewItem.lease_expires_at < now,
        )
        .values(lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    await session.commit()
    return _rowcount(result)


async def requeue_expired_exports(session: AsyncSession, now: datetime) -> int:
    """An export whose worker died mid-way is built again from the start."""
    result = await session.execute(
        update(ExportJob)
        .where(
            ExportJob.status == JobStatus.RUNNING,
            ExportJob.lease_expires_at.is_not(None),
            ExportJob.lease_expires_at < now,
        )
        .values(status=JobStatus.QUEUED, lease_owner=None, lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )
    await session.commit()
    return _rowcount(result)


def _rowcount(result: Any) -> int:
    count: int = result.rowcount
    return count
