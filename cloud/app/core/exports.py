"""Dataset exports: a detector's labelled images as one tar.gz, built by the worker, read by training.

Format (version 3; models in common.wire.dataset_export):

    exports/<detector_id>/<job_id>.tar.gz
      manifest.json                first member
        {"format_version": 3,
         "export_id": "exp_…",
         "detector": {"id", "name", "query", "mode", "labels", "mode_configuration"},
         "created_at": "2026-01-01T00:00:00Z",
         "items": [{"image_query_id", "label", "source", "labeled_at",
                    "image": "images/<iq_id>.<ext>" or null, "content_type",
                    "rois": [{"label", "score", "geometry": {...}}] or null}, ...],
         "excluded": {"OLD_CLASS": 3, "missing_image": 1},
         "embeddings": {"<sha256>": {"file": "embeddings/<sha256>.npy", "dim", "dtype": "float16",
                                     "image_query_ids": [...]}}}
      embeddings/<sha256>.npy      float16 (len(image_query_ids), dim), rows in that order
      images/<iq_id>.<ext>         the image bytes as received (ext: jpg, png, bmp, webp, bin)

One item per image query of the detector: its latest label (by time) among those not undone and
coming from a reviewer (HUMAN) or the device API (CUSTOMER). UNCLEAR items go in too: they are what
reviewers say the detector should not answer, and the trainer calibrates its out-of-domain score on
them. When the label is a class removed since, the query is left out and counted under `excluded`; so
is a query with neither its image nor an included embedding (`missing_image`), so every item is usable
as it is.

An export may be asked for with a `common.wire.dataset_export.ExportRequest`: with `backbone_sha256`
the stored embeddings of the items by that backbone are included (no entry when there are none);
with `images="missing"` an item that has one comes with `image: null`, and its image is neither
fetched nor written. Images are compressed already, so the archive is gzipped at level 1.

Jobs: `create_export` queues one (API); the worker leases the oldest with `claim_next_export`
(`QUEUE`, a cloud.app.core.lease_queue: SKIP LOCKED on PostgreSQL, one conditional update everywhere;
an expired lease returns the job), renews the lease with `renew_export_lease` while it builds
(cloud.worker.jobs.exports), and calls `run_export`, which marks the job succeeded with its blob key
and item count, or failed with the error; given the owner, only while that owner still holds the lease.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import shutil
import tarfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import CursorResult, Table, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud.app.blobstore import BlobNotFoundError, BlobStore
from cloud.app.core.backbones import embeddings_of
from cloud.app.core.detectors import UNCLEAR
from cloud.app.core.lease_queue import LeaseQueue
from cloud.app.db.models import Detector, ExportJob, ImageQuery, JobStatus, Label, LabelSource
from cloud.app.errors import BadRequestError, ConflictError, NotFoundError
from cloud.app.schemas.exports import ExportJobOut
from common.bundle import DetectorMode
from common.clock import as_utc
from common.clock import utcnow as _utcnow
from common.ids import new_id
from common.wire.dataset_export import (
    EMBEDDING_DTYPE,
    EMBEDDINGS_DIR,
    EXPORT_FORMAT_VERSION,
    IMAGES_DIR,
    MANIFEST_NAME,
    ExportDetector,
    ExportEmbeddings,
    ExportItem,
    ExportManifest,
    ExportRequest,
)
from common.wire.device_api import Roi

log = logging.getLogger("cloud.exports")

EXPORT_CONTENT_TYPE = "application/gzip"
EXPORTED_SOURCES = (LabelSource.HUMAN, LabelSource.CUSTOMER)
MISSING_IMAGE = "missing_image"
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/bmp": "bmp", "image/webp": "webp"}
_FETCH_CONCURRENCY = 8
_MAX_ERROR_CHARS = 2000
# Images are JPEG/PNG already: a harder gzip level costs CPU and saves next to nothing.
_GZIP_LEVEL = 1
_FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
# A worker that stops renewing gives its job up; a lapsed lease nobody took may still be renewed.
QUEUE = LeaseQueue(
    cast(Table, ExportJob.__table__),
    waiting=JobStatus.QUEUED.value,
    leased=JobStatus.RUNNING.value,
    order=("created_at", "id"),
    renew_lapsed=True,
)


def new_export_id() -> str:
    return new_id("exp")


def export_blob_key(detector_id: str, job_id: str) -> str:
    return f"exports/{detector_id}/{job_id}.tar.gz"


def image_extension(content_type: str) -> str:
    return _EXTENSIONS.get(content_type.split(";")[0].strip().lower(), "bin")


def _iso(moment: datetime) -> str:
    return as_utc(moment).astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- API side -------------------------------------------------------------------------------------


async def create_export(
    session: AsyncSession, detector_id: str, requested_by: str | None, request: ExportRequest | None = None
) -> ExportJob:
    """No request: every image and no embeddings. 400 for images="missing" without a backbone."""
    detector = await session.get(Detector, detector_id)
    if detector is None or detector.deleted_at is not None:
        raise NotFoundError(f"detector {detector_id} not found")
    if request is not None and request.images == "missing" and request.backbone_sha256 is None:
        raise BadRequestError('images="missing" needs backbone_sha256: whose embeddings replace the images')
    job = ExportJob(
        id=new_export_id(),
        detector_id=detector_id,
        status=JobStatus.QUEUED,
        requested_by=requested_by,
        backbone_sha256=request.backbone_sha256 if request is not None else None,
        images=request.images if request is not None else None,
    )
    session.add(job)
    await session.commit()
    log.info("export queued", extra={"fields": {"export_id": job.id, "detector_id": detector_id}})
    return job


async def get_export(session: AsyncSession, export_id: str) -> ExportJob:
    """A deleted detector's exports are hidden with it."""
    job = await session.get(ExportJob, export_id)
    detector = await session.get(Detector, job.detector_id) if job is not None else None
    if job is None or detector is None or detector.deleted_at is not None:
        raise NotFoundError(f"export {export_id} not found")
    return job


def export_out(job: ExportJob, public_url: str) -> ExportJobOut:
    done = job.status == JobStatus.SUCCEEDED and job.blob_key is not None
    return ExportJobOut(
        id=job.id,
        detector_id=job.detector_id,
        status=JobStatus(job.status),
        item_count=job.item_count,
        error=job.error,
        requested_by=job.requested_by,
        created_at=as_utc(job.created_at),
        finished_at=as_utc(job.finished_at) if job.finished_at else None,
        download_url=f"{public_url.rstrip('/')}/api/v1/exports/{job.id}/download" if done else None,
        backbone_sha256=job.backbone_sha256,
        images=job.images or "all",
    )


async def download_export_to(
    session: AsyncSession, blobs: BlobStore, export_id: str, dest: Path
) -> ExportJob:
    """Copy the finished archive to `dest`; 409 while the job is not done, 404 if its blob is gone."""
    job = await get_export(session, export_id)
    if job.status != JobStatus.SUCCEEDED or job.blob_key is None:
        raise ConflictError(f"export {export_id} is {job.status}; its archive exists once it has succeeded")
    await blobs.get_to_file(job.blob_key, dest)
    return job


# --- worker side ----------------------------------------------------------------------------------


async def claim_next_export(session: AsyncSession, owner: str, lease_s: float) -> str | None:
    """Lease the oldest queued export (or one whose lease expired) to `owner`; its id, or None.

    One statement (QUEUE.claim): UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING
    id. On PostgreSQL concurrent workers skip each other's rows; on SQLite the statement takes the write
    lock up front, so two workers never hold the same job there either.
    """
    now = _utcnow()
    job_id = (
        await session.execute(
            QUEUE.claim(owner, now + timedelta(seconds=lease_s), now).returning(ExportJob.id)
        )
    ).scalar_one_or_none()
    await session.commit()
    if job_id is not None:
        log.info("export claimed", extra={"fields": {"export_id": job_id, "owner": owner}})
    return job_id


async def renew_export_lease(session: AsyncSession, job_id: str, owner: str, lease_s: float) -> bool:
    """Heartbeat for long exports; False when the lease is no longer `owner`'s."""
    now = _utcnow()
    result = await session.execute(QUEUE.renew(job_id, owner, now, now + timedelta(seconds=lease_s)))
    await session.commit()
    return cast(CursorResult[Any], result).rowcount == 1


async def requeue_expired_exports(session: AsyncSession, now: datetime) -> int:
    """An export whose worker died mid-way (stopped renewing) is built again from the start."""
    result = await session.execute(QUEUE.expire(now))
    await session.commit()
    return cast(CursorResult[Any], result).rowcount


@dataclass(frozen=True)
class _Labelled:
    image_query_id: str
    label: str
    source: str
    labeled_at: datetime
    image_key: str
    content_type: str
    rois: list[Any] | None = None


async def latest_labels(session: AsyncSession, detector_id: str) -> list[_Labelled]:
    """The latest non-undone HUMAN or CUSTOMER label of each image query of the detector, with the
    boxes that came with it."""
    ranked = (
        select(
            Label.image_query_id,
            Label.label,
            Label.source,
            Label.created_at,
            Label.rois,
            func.row_number()
            .over(partition_by=Label.image_query_id, order_by=(Label.created_at.desc(), Label.id.desc()))
            .label("rank"),
        )
        .where(
            Label.detector_id == detector_id,
            Label.undone_at.is_(None),
            Label.source.in_([s.value for s in EXPORTED_SOURCES]),
        )
        .subquery()
    )
    rows = await session.execute(
        select(
            ranked.c.image_query_id,
            ranked.c.label,
            ranked.c.source,
            ranked.c.created_at,
            ImageQuery.image_key,
            ImageQuery.image_content_type,
            ranked.c.rois,
        )
        .join(ImageQuery, ImageQuery.id == ranked.c.image_query_id)
        .where(ranked.c.rank == 1, ImageQuery.detector_id == detector_id)
        .order_by(ranked.c.image_query_id)
    )
    return [_Labelled(*row) for row in rows]


async def _start(
    sessions: async_sessionmaker[AsyncSession], job_id: str, owner: str | None
) -> tuple[ExportDetector, ExportRequest] | None:
    """Mark a queued job running (direct calls skip the claim); None when there is nothing to do
    (with `owner`: also when the job is not leased to it)."""
    async with sessions() as session:
        job = await session.get(ExportJob, job_id)
        if job is None:
            log.warning("export job not found", extra={"fields": {"export_id": job_id}})
            return None
        if job.status in _FINISHED:
            return None
        if owner is not None and (job.status != JobStatus.RUNNING or job.lease_owner != owner):
            log.warning("export not leased to us", extra={"fields": {"export_id": job_id, "owner": owner}})
            return None
        detector = await session.get(Detector, job.detector_id)
        if detector is None or detector.deleted_at is not None:
            raise NotFoundError(f"detector {job.detector_id} no longer exists")
        if job.status == JobStatus.QUEUED:
            job.status = JobStatus.RUNNING
            await session.commit()
        request = ExportRequest(
            backbone_sha256=job.backbone_sha256, images="missing" if job.images == "missing" else "all"
        )
        exported = ExportDetector(
            id=detector.id,
            name=detector.name,
            query=detector.query,
            mode=DetectorMode(detector.mode),
            labels=[str(x) for x in detector.labels],
            mode_configuration=detector.mode_configuration,
        )
        return exported, request


async def _finish(
    sessions: async_sessionmaker[AsyncSession], job_id: str, owner: str | None, **values: Any
) -> bool:
    """Record the outcome; with `owner`, only while it holds the lease. Whether it was recorded."""
    done = {"finished_at": _utcnow(), "lease_owner": None, "lease_expires_at": None, **values}
    statement = (
        update(ExportJob).where(ExportJob.id == job_id) if owner is None else QUEUE.as_holder(job_id, owner)
    )
    async with sessions() as session:
        result = await session.execute(statement.values(done))
        await session.commit()
    if cast(CursorResult[Any], result).rowcount == 1:
        return True
    log.warning("export lease lost: outcome not recorded", extra={"fields": {"export_id": job_id}})
    return False


async def _fetch_images(
    blobs: BlobStore, labelled: list[_Labelled], images_dir: Path
) -> dict[str, Path | None]:
    """iq id -> local file, or None when the blob is gone; at most a few transfers at a time."""
    gate = asyncio.Semaphore(_FETCH_CONCURRENCY)

    async def one(item: _Labelled) -> tuple[str, Path | None]:
        target = images_dir / f"{item.image_query_id}.{image_extension(item.content_type)}"
        async with gate:
            try:
                await blobs.get_to_file(item.image_key, target)
            except (BlobNotFoundError, ValueError):
                log.warning(
                    "export: image missing",
                    extra={"fields": {"image_query_id": item.image_query_id, "key": item.image_key}},
                )
                return item.image_query_id, None
        return item.image_query_id, target

    return dict(await asyncio.gather(*(one(item) for item in labelled)))


def _npy(matrix: NDArray[np.float16]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, matrix, allow_pickle=False)
    return buffer.getvalue()


def _write_archive(
    out: Path, manifest: ExportManifest, files: dict[str, Path], embeddings: dict[str, bytes]
) -> None:
    """Blocking: manifest.json first, then the embeddings, then the images in manifest order."""
    body = json.dumps(manifest.model_dump(mode="json"), indent=1).encode()
    now = int(time.time())

    def member(name: str, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = now
        info.mode = 0o644
        return info

    with tarfile.open(out, "w:gz", format=tarfile.PAX_FORMAT, compresslevel=_GZIP_LEVEL) as tar:
        tar.addfile(member(MANIFEST_NAME, len(body)), io.BytesIO(body))
        for sha, entry in manifest.embeddings.items():
            data = embeddings[sha]
            tar.addfile(member(entry.file, len(data)), io.BytesIO(data))
        for item in manifest.items:
            if item.image is None:
                continue
            src = files[item.image_query_id]
            with src.open("rb") as fh:
                tar.addfile(member(item.image, src.stat().st_size), fh)


async def run_export(
    sessions: async_sessionmaker[AsyncSession],
    blobs: BlobStore,
    job_id: str,
    workdir: Path,
    owner: str | None = None,
) -> bool:
    """Build, store and record one export. Errors mark the job failed; they are not raised. With
    `owner` (the worker's lease holder) nothing is recorded unless it still holds the job's lease.
    Whether an outcome was recorded (False: nothing to do, or the lease was lost)."""
    job_dir = workdir / f"export-{job_id}"
    try:
        started = await _start(sessions, job_id, owner)
        if started is None:
            return False
        detector, request = started
        async with sessions() as session:
            labelled = await latest_labels(session, detector.id)
            vectors = (
                await embeddings_of(session, detector.id, request.backbone_sha256)
                if request.backbone_sha256 is not None
                else {}
            )
        excluded: dict[str, int] = {}
        usable = []
        for item in labelled:
            if item.label in detector.labels or item.label == UNCLEAR:
                usable.append(item)
            else:
                excluded[item.label] = excluded.get(item.label, 0) + 1
        # images="missing": an item whose embedding goes in needs no image, so it is not even fetched.
        wanted = [i for i in usable if not (request.images == "missing" and i.image_query_id in vectors)]
        images_dir = job_dir / IMAGES_DIR
        await asyncio.to_thread(images_dir.mkdir, parents=True, exist_ok=True)
        fetched = await _fetch_images(blobs, wanted, images_dir)
        items: list[ExportItem] = []
        files: dict[str, Path] = {}
        for item in usable:
            path = fetched.get(item.image_query_id)
            if path is None and item.image_query_id not in vectors:
                excluded[MISSING_IMAGE] = excluded.get(MISSING_IMAGE, 0) + 1
                continue
            if path is not None:
                files[item.image_query_id] = path
            items.append(
                ExportItem(
                    image_query_id=item.image_query_id,
                    label=item.label,
                    source=item.source,
                    labeled_at=_iso(item.labeled_at),
                    image=f"{IMAGES_DIR}/{path.name}" if path is not None else None,
                    content_type=item.content_type,
                    rois=[Roi.model_validate(roi) for roi in item.rois] if item.rois is not None else None,
                )
            )
        entries: dict[str, ExportEmbeddings] = {}
        npy: dict[str, bytes] = {}
        embedded = [item.image_query_id for item in items if item.image_query_id in vectors]
        if request.backbone_sha256 is not None and embedded:
            sha = request.backbone_sha256
            matrix = np.stack([vectors[iq_id] for iq_id in embedded]).astype(EMBEDDING_DTYPE)
            npy[sha] = await asyncio.to_thread(_npy, matrix)
            entries[sha] = ExportEmbeddings(
                file=f"{EMBEDDINGS_DIR}/{sha}.npy", dim=int(matrix.shape[1]), image_query_ids=embedded
            )
        manifest = ExportManifest(
            format_version=EXPORT_FORMAT_VERSION,
            export_id=job_id,
            detector=detector,
            created_at=_iso(_utcnow()),
            items=items,
            excluded=excluded,
            embeddings=entries,
        )
        archive = job_dir / "export.tar.gz"
        await asyncio.to_thread(_write_archive, archive, manifest, files, npy)
        key = export_blob_key(detector.id, job_id)
        await blobs.put_file(key, archive, EXPORT_CONTENT_TYPE)
        if not await _finish(
            sessions,
            job_id,
            owner,
            status=JobStatus.SUCCEEDED,
            blob_key=key,
            item_count=len(items),
            error=None,
        ):
            return False
        log.info(
            "export succeeded",
            extra={
                "fields": {
                    "export_id": job_id,
                    "items": len(items),
                    "images": len(files),
                    "embeddings": len(embedded),
                    "excluded": excluded,
                }
            },
        )
        return True
    except Exception as exc:
        log.exception("export failed", extra={"fields": {"export_id": job_id}})
        error = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]
        return await _finish(sessions, job_id, owner, status=JobStatus.FAILED, error=error)
    finally:
        await asyncio.to_thread(shutil.rmtree, job_dir, True)
