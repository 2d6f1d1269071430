"""Deleting a detector is soft (docs/architecture.md §10): it is marked deleted, hidden from every lookup, list and
queue, and an admin can restore it with all its data until the retention (`deleted_retention_s`)
runs out. After that the worker purges it: its rows go (image queries, escalations, review items,
labels, model versions, training and export jobs, embeddings: ON DELETE CASCADE), then its blobs.

Names stay unique with a plain unique constraint: on deletion the name moves to `deleted_name` and
`name` takes a tombstone that starts with a space, which no live name can (names are stored trimmed,
common.validation.check_name), so the name is free for a new detector at once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.auth import Principal
from cloud.app.blobstore import BlobStore
from cloud.app.core.audit import AuditAction, record
from cloud.app.core.detectors import get_detector, iso_utc
from cloud.app.core.model_reports import report_blob_key
from cloud.app.core.training_jobs import stop_detector_jobs
from cloud.app.db.models import (
    Detector,
    ExportJob,
    ImageQuery,
    ModelVersion,
    ReviewItem,
    ReviewStatus,
)
from cloud.app.errors import ConflictError, NotFoundError
from cloud.app.schemas.model_reports import ReportName
from common.clock import as_utc, utcnow
from common.ids import is_detector_id

log = logging.getLogger("cloud.detector_lifecycle")

# Blob deletes in flight at once while purging one detector.
_BLOB_CONCURRENCY = 16


def tombstone(detector_id: str) -> str:
    return f" deleted {detector_id}"


def purge_after(row: Detector, retention_s: float) -> datetime:
    assert row.deleted_at is not None
    return as_utc(row.deleted_at) + timedelta(seconds=retention_s)


async def delete_detector(
    session: AsyncSession, detector_id: str, actor: Principal, retention_s: float
) -> Detector:
    """Marks it deleted, holds its pending review items and stops its training jobs (a queued one is
    cancelled, a running one asked to stop). Deleting it again is a 404, as for any unknown id."""
    row = await get_detector(session, detector_id)
    now = utcnow()
    name = row.name
    row.deleted_name, row.name = name, tombstone(row.id)
    row.deleted_at, row.deleted_by = now, actor.user_id
    await session.execute(
        update(ReviewItem)
        .where(ReviewItem.detector_id == row.id, ReviewItem.status == ReviewStatus.PENDING)
        .values(status=ReviewStatus.HELD, lease_owner=None, lease_expires_at=None, claimed_at=None)
        .execution_options(synchronize_session=False)
    )
    await stop_detector_jobs(session, row.id, "the detector was deleted")
    record(
        session,
        actor,
        AuditAction.DETECTOR_DELETE,
        "detector",
        row.id,
        {"name": name, "purge_after": iso_utc(now + timedelta(seconds=retention_s))},
        at=now,
    )
    await session.commit()
    return row


async def get_deleted_detector(session: AsyncSession, detector_id: str) -> Detector:
    row = await session.get(Detector, detector_id) if is_detector_id(detector_id) else None
    if row is None or row.deleted_at is None:
        raise NotFoundError(f"no deleted detector {detector_id[:60]}")
    return row


async def list_deleted_detectors(session: AsyncSession) -> list[Detector]:
    """Most recently deleted first."""
    rows = await session.scalars(
        select(Detector).where(Detector.deleted_at.is_not(None)).order_by(Detector.deleted_at.desc())
    )
    return list(rows)


async def restore_detector(
    session: AsyncSession,
    detector_id: str,
    actor: Principal,
    retention_s: float,
    name: str | None = None,
) -> Detector:
    """Back as it was, with its queries and held review items; under `name` when given (its own name
    may have been taken since: 409). Past the retention it is the worker's to purge: 409."""
    row = await get_deleted_detector(session, detector_id)
    if purge_after(row, retention_s) <= utcnow():
        raise ConflictError(
            f"detector {detector_id} was deleted longer ago than the retention and is being purged"
        )
    assert row.deleted_name is not None
    old_name, new_name = row.deleted_name, name or row.deleted_name
    deleted_at = row.deleted_at
    row.name, row.deleted_name, row.deleted_at, row.deleted_by = new_name, None, None, None
    try:
        await session.flush()  # the unique name decides here, before anything else is written
    except IntegrityError:
        await session.rollback()
        raise ConflictError(
            f"a detector named {new_name!r} exists now; restore this one under another name"
        ) from None
    await session.execute(
        update(ReviewItem)
        .where(ReviewItem.detector_id == row.id, ReviewItem.status == ReviewStatus.HELD)
        .values(status=ReviewStatus.PENDING)
        .execution_options(synchronize_session=False)
    )
    detail = {"name": new_name, "deleted_at": iso_utc(as_utc(deleted_at)) if deleted_at else None}
    if new_name != old_name:
        detail["deleted_name"] = old_name
    record(session, actor, AuditAction.DETECTOR_RESTORE, "detector", row.id, detail)
    await session.commit()
    return row


@dataclass(frozen=True)
class Purged:
    detector_id: str
    name: str
    image_queries: int
    model_versions: int
    blobs_deleted: int
    blobs_failed: int


async def purge_expired_detectors(
    session: AsyncSession, blobs: BlobStore, retention_s: float, now: datetime, limit: int = 5
) -> list[Purged]:
    """Purges (at most `limit`) detectors deleted at or before `now - retention_s`, oldest first."""
    cutoff = now - timedelta(seconds=retention_s)
    due = (
        await session.scalars(
            select(Detector.id)
            .where(Detector.deleted_at.is_not(None), Detector.deleted_at <= cutoff)
            .order_by(Detector.deleted_at)
            .limit(limit)
        )
    ).all()
    await session.commit()
    purged = []
    for detector_id in due:
        done = await purge_detector(session, blobs, detector_id, cutoff)
        if done is not None:
            purged.append(done)
    return purged


async def _blob_keys(session: AsyncSession, detector_id: str) -> list[str]:
    images = await session.scalars(select(ImageQuery.image_key).where(ImageQuery.detector_id == detector_id))
    models = (
        await session.execute(
            select(ModelVersion.version, ModelVersion.blob_key).where(ModelVersion.detector_id == detector_id)
        )
    ).all()
    exports = await session.scalars(
        select(ExportJob.blob_key).where(
            ExportJob.detector_id == detector_id, ExportJob.blob_key.is_not(None)
        )
    )
    keys = [*images, *(key for _, key in models), *(key for key in exports if key)]
    keys += [report_blob_key(detector_id, version, name) for version, _ in models for name in ReportName]
    return keys


async def purge_detector(
    session: AsyncSession, blobs: BlobStore, detector_id: str, cutoff: datetime
) -> Purged | None:
    """Rows first (one transaction, guarded so that a detector restored meanwhile stays), then the
    blobs: a blob left behind by a crash is harmless, a row without its blob would not be."""
    row = await session.get(Detector, detector_id)
    if row is None or row.deleted_at is None:
        return None
    name = row.deleted_name or row.name
    keys = await _blob_keys(session, detector_id)
    counts = (
        await session.execute(
            select(
                select(func.count()).where(ImageQuery.detector_id == detector_id).scalar_subquery(),
                select(func.count()).where(ModelVersion.detector_id == detector_id).scalar_subquery(),
            )
        )
    ).one()
    gone = await session.execute(
        delete(Detector)
        .where(Detector.id == detector_id, Detector.deleted_at.is_not(None), Detector.deleted_at <= cutoff)
        .execution_options(synchronize_session=False)
    )
    if getattr(gone, "rowcount", 0) != 1:
        await session.rollback()
        return None
    detail = {
        "name": name,
        "image_queries": int(counts[0]),
        "model_versions": int(counts[1]),
        "blobs": len(keys),
    }
    record(session, None, AuditAction.DETECTOR_PURGE, "detector", detector_id, detail)
    await session.commit()
    session.expunge_all()
    failed = await _delete_blobs(blobs, keys)
    log.info(
        "deleted detector purged",
        extra={"fields": {"detector_id": detector_id, **detail, "blobs_failed": failed}},
    )
    return Purged(detector_id, name, int(counts[0]), int(counts[1]), len(keys) - failed, failed)


async def _delete_blobs(blobs: BlobStore, keys: list[str]) -> int:
    """Deletes them a few at a time; returns how many could not be deleted (logged, left behind)."""
    gate = asyncio.Semaphore(_BLOB_CONCURRENCY)

    async def one(key: str) -> bool:
        async with gate:
            try:
                await blobs.delete(key)
            except Exception:
                log.warning("could not delete blob of a purged detector", extra={"fields": {"key": key}})
                return False
            return True

    results = await asyncio.gather(*(one(key) for key in keys))
    return sum(1 for ok in results if not ok)
