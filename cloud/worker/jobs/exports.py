"""Dataset exports: lease a waiting export job and build it (`cloud.app.core.exports` builds it),
renewing the lease while the build runs. A short lease kept alive by renewal means a worker that dies
mid-way gives its job up within one lease, while a large export on a live worker is never taken from
it; a worker that finds its lease gone (another worker took the job) abandons its build, and the build
itself records its outcome only while the lease is still this worker's (`run_export(owner=...)`), so a
lease lost between two renewals cannot overwrite the new holder's job either."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud.app.blobstore import BlobStore
from cloud.app.core import exports as core_exports

log = logging.getLogger("cloud.worker")

EXPORT_LEASE_S = 120.0
# Renewed four times per lease: one slow or failed renewal still leaves the lease standing.
RENEW_EVERY_S = EXPORT_LEASE_S / 4


async def claim_export(
    sessions: async_sessionmaker[AsyncSession], owner: str, lease_s: float = EXPORT_LEASE_S
) -> str | None:
    """The id of the export job now leased to `owner`, or None when none waits."""
    async with sessions() as session:
        return await core_exports.claim_next_export(session, owner, lease_s)


async def build_export(
    sessions: async_sessionmaker[AsyncSession],
    blobs: BlobStore,
    job_id: str,
    owner: str,
    scratch_root: Path,
    *,
    lease_s: float = EXPORT_LEASE_S,
    renew_every_s: float = RENEW_EVERY_S,
) -> bool:
    """Build one export in a scratch directory of its own (removed afterwards), renewing `owner`'s
    lease on it; False when the lease was lost and the build abandoned (or its outcome not recorded)."""
    workdir = Path(await asyncio.to_thread(_make_scratch, scratch_root, job_id))
    build = asyncio.create_task(core_exports.run_export(sessions, blobs, job_id, workdir, owner=owner))
    try:
        while True:
            done, _ = await asyncio.wait({build}, timeout=renew_every_s)
            if done:
                return build.result()
            if not await _renew(sessions, job_id, owner, lease_s):
                log.warning(
                    "export lease lost: build abandoned",
                    extra={"fields": {"export_id": job_id, "owner": owner}},
                )
                return False
    finally:
        if not build.done():
            build.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await build
        await asyncio.to_thread(shutil.rmtree, workdir, True)


async def _renew(sessions: async_sessionmaker[AsyncSession], job_id: str, owner: str, lease_s: float) -> bool:
    """False only when the lease is someone else's now; a failed renewal is retried at the next one."""
    try:
        async with sessions() as session:
            return await core_exports.renew_export_lease(session, job_id, owner, lease_s)
    except Exception:  # the database may be away for a moment; the lease outlives a few misses
        log.warning("export lease renewal failed", exc_info=True, extra={"fields": {"export_id": job_id}})
        return True


def _make_scratch(root: Path, job_id: str) -> str:
    root.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{job_id}-", dir=root)
