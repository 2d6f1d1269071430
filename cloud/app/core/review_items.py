"""Putting image queries in front of people, and closing their items when an answer arrives.

One review item per image query (unique `image_query_id`), so every path that queues (a cloud
submission, an edge escalation, a retry of either) can simply insert and ignore the duplicate.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import Insert

from cloud.app.db.models import Base, ReviewItem, ReviewStatus
from cloud.app.db.models import ImageQuery as ImageQueryRow
from common.clock import as_utc


def insert_ignoring_duplicates(
    session: AsyncSession, model: type[Base], values: dict[str, Any], index_elements: list[str] | None = None
) -> Insert:
    """`INSERT ... ON CONFLICT DO NOTHING` in the session's dialect: concurrent retries of the same
    thing then make one row, decided by the database's unique constraint, not by a prior SELECT."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model).values(**values).on_conflict_do_nothing(index_elements=index_elements)
    if dialect == "sqlite":
        return sqlite.insert(model).values(**values).on_conflict_do_nothing(index_elements=index_elements)
    raise RuntimeError(f"unsupported database dialect {dialect}")


async def enqueue_for_review(
    session: AsyncSession, image_query_row: ImageQueryRow, reason: str, uncertainty: float
) -> bool:
    """Queue the query unless it already is; True when this call queued it. The caller commits.

    The deadline is the query's patience: reviewers see the items whose callers give up first.
    """
    deadline = as_utc(image_query_row.created_at) + timedelta(seconds=image_query_row.patience_time)
    stmt = insert_ignoring_duplicates(
        session,
        ReviewItem,
        {
            "image_query_id": image_query_row.id,
            "detector_id": image_query_row.detector_id,
            "status": ReviewStatus.PENDING.value,
            "deadline": deadline,
            "uncertainty": min(1.0, max(0.0, uncertainty)),
            "created_at": datetime.now(UTC),
            "reason": reason[:40],
        },
        index_elements=["image_query_id"],
    ).returning(ReviewItem.id)
    return (await session.execute(stmt)).scalar_one_or_none() is not None


async def close_open_item(
    session: AsyncSession, image_query_id: str, answer: str, user_id: str | None
) -> int | None:
    """Mark the query's pending item answered (an answer arrived another way); its id, or None.
    The caller commits."""
    stmt = (
        update(ReviewItem)
        .where(ReviewItem.image_query_id == image_query_id, ReviewItem.status == ReviewStatus.PENDING.value)
        .values(
            status=ReviewStatus.ANSWERED.value,
            answer=answer,
            answered_by=user_id,
            answered_at=datetime.now(UTC),
            lease_owner=None,
            lease_expires_at=None,
        )
        .returning(ReviewItem.id)
    )
    item_id: int | None = (await session.execute(stmt)).scalar_one_or_none()
    return item_id
