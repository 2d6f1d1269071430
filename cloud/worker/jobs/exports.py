"""Dataset exports: claim a waiting export job and build it. The building itself lives in
`cloud.app.core.exports` (`claim_next_export`, `run_export`); this step only drives it."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud.app.blobstore import BlobStore

EXPORTS_MODULE = "cloud.app.core.exports"
# Long enough for a large export; a worker that dies mid-way loses the lease and another builds it.
EXPORT_LEASE_S = 1800.0


def load_exports() -> ModuleType | None:
    """The export builder, or None while this installation has none."""
    try:
        module = importlib.import_module(EXPORTS_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name == EXPORTS_MODULE:
            return None
        raise
    if not all(callable(getattr(module, name, None)) for name in ("claim_next_export", "run_export")):
        return None
    return module


async def claim_export(
    module: ModuleType,
    sessions: async_sessionmaker[AsyncSession],
    owner: str,
    lease_s: float = EXPORT_LEASE_S,
) -> str | None:
    """The id of the export job now leased to `owner`, or None when none waits."""
    async with sessions() as session:
        job = await _maybe_await(module.claim_next_export(session, owner, lease_s))
    if job is None:
        return None
    return job if isinstance(job, str) else str(job.id)


async def build_export(
    module: ModuleType,
    sessions: async_sessionmaker[AsyncSession],
    blobs: BlobStore,
    job_id: str,
    scratch_root: Path,
) -> None:
    """Builds one export in a scratch directory of its own, removed afterwards."""
    workdir = Path(await asyncio.to_thread(_make_scratch, scratch_root, job_id))
    try:
        await _maybe_await(module.run_export(sessions, blobs, job_id, workdir))
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, True)


def _make_scratch(root: Path, job_id: str) -> str:
    root.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{job_id}-", dir=root)


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
