"""Deleted detectors past their retention are purged for good (cloud.app.core.detector_lifecycle)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud.app.blobstore import BlobStore
from cloud.app.core.detector_lifecycle import Purged, purge_expired_detectors

# At most this many detectors per tick: one with many images takes a while, and leases must not wait.
PURGES_PER_TICK = 5


async def purge_deleted(
    sessions: async_sessionmaker[AsyncSession], blobs: BlobStore, retention_s: float, now: datetime
) -> list[Purged]:
    """Detectors deleted at or before `now - retention_s`, their rows and blobs, oldest first."""
    async with sessions() as session:
        return await purge_expired_detectors(session, blobs, retention_s, now, limit=PURGES_PER_TICK)
