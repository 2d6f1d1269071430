"""Expired leases: review items return to the queue and export jobs are requeued (training jobs:
`cloud.app.core.training_jobs.requeue_expired_training_jobs`). The statements are the queues' own
(cloud.app.core.lease_queue)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.core import exports
from cloud.app.core.review_queue import REVIEW_QUEUE


async def release_expired_review_leases(session: AsyncSession, now: datetime) -> int:
    """A reviewer who claimed an item and went away: anyone may claim it again."""
    result = await session.execute(REVIEW_QUEUE.expire(now))
    await session.commit()
    return cast(CursorResult[Any], result).rowcount


async def requeue_expired_exports(session: AsyncSession, now: datetime) -> int:
    """An export whose worker died mid-way is built again from the start."""
    return await exports.requeue_expired_exports(session, now)
