"""Dataset exports: the worker functions in-process against the test database (claim, build, record),
and the admin API around them (queue, status, download)."""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import tarfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud.app.blobstore import BlobStore, LocalBlobStore
from cloud.app.core.exports import claim_next_export, create_export, renew_export_lease, run_export
from cloud.app.db.engine import make_engine, make_sessionmaker
from cloud.app.db.models import ExportJob, JobStatus, LabelSource
from cloud.app.settings import to_async_url
from common.bundle import DetectorMode
from common.wire.dataset_export import ExportManifest
from tests.support.cloud import CloudServer
from tests.support.cloud_factories_registry import (
    add_image_query,
    add_label,
    ensure_detector,
    run_in_db,
    token_for,
)


def image_bytes(fmt: str = "PNG") -> bytes:
    """A small image unique to this call (random pixels), so each item's bytes can be told apart."""
    img = Image.frombytes("RGB", (8, 8), secrets.token_bytes(8 * 8 * 3))
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


def read_export(data: bytes) -> tuple[list[str], ExportManifest, dict[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = tar.getnames()
        files = {}
        for member in tar.getmembers():
            fh = tar.extractfile(member)
            assert fh is not None
            files[member.name] = fh.read()
    return names, ExportManifest.model_validate_json(files.pop("manifest.json")), files


@pytest.fixture
async def sessions(cloud: CloudServer) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(to_async_url(cloud.database_url), pool_size=4)
    yield make_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
def blobs(cloud: CloudServer) -> LocalBlobStore:
    """The server's own local store: what the API serves is what the worker writes."""
    return LocalBlobStore(cloud.data_dir / "blobs")


async def labelled_detector(
    sessions: async_sessionmaker[AsyncSession], blobs: BlobStore
) -> tuple[str, dict[str, Any]]:
    """A BINARY detector with a mix of labels; returns its id and what the export should hold."""
    t0 = datetime.now(UTC) - timedelta(hours=1)
    async with sessions() as s:
        detector = await ensure_detector(s, mode=DetectorMode.BINARY, query="Is the door open?")
        det = detector.id
        images: dict[str, bytes] = {}

        async def iq(fmt: str = "PNG", **kw: Any) -> str:
            data = image_bytes(fmt)
            iq_id = await add_image_query(s, blobs, det, data, f"image/{fmt.lower()}", **kw)
            images[iq_id] = data
            return iq_id

        plain = await iq()
        await add_label(s, det, plain, "YES", at=t0)
        relabelled = await iq()
        await add_label(s, det, relabelled, "YES", at=t0)
        await add_label(s, det, relabelled, "NO", source=LabelSource.CUSTOMER, at=t0 + timedelta(minutes=5))
        undone = await iq()
        await add_label(s, det, undone, "NO", at=t0)
        await add_label(s, det, undone, "YES", at=t0 + timedelta(minutes=5), undone=True)
        unclear = await iq()
        await add_label(s, det, unclear, "YES", at=t0)
        await add_label(s, det, unclear, "UNCLEAR", at=t0 + timedelta(minutes=1))
        await iq()  # never labelled
        lost = await iq(store_image=False)
        await add_label(s, det, lost, "NO", at=t0)
        jpeg = await iq("JPEG")
        await add_label(s, det, jpeg, "NO", source=LabelSource.CUSTOMER, at=t0)
        # Another detector's labels stay out of this export.
        other = await ensure_detector(s)
        other_iq = await add_image_query(s, blobs, other.id, image_bytes())
        await add_label(s, other.id, other_iq, "YES")
    expected = {
        "labels": {
            plain: ("YES", "HUMAN"),
            relabelled: ("NO", "CUSTOMER"),
            undone: ("NO", "HUMAN"),
            jpeg: ("NO", "CUSTOMER"),
            unclear: ("UNCLEAR", "HUMAN"),  # in: the trainer's out-of-domain examples
        },
        "images": images,
        "jpeg": jpeg,
        "excluded": {"missing_image": 1},
    }
    return det, expected


def check_archive(data: bytes, detector_id: str, expected: dict[str, Any], job_id: str) -> None:
    names, manifest, files = read_export(data)
    assert names[0] == "manifest.json"
    assert manifest.format_version == 3 and manifest.embeddings == {}
    assert manifest.export_id == job_id
    assert manifest.detector.id == detector_id
    assert manifest.detector.mode == "BINARY"
    assert sorted(manifest.detector.labels) == ["NO", "YES"]
    assert manifest.detector.query == "Is the door open?"
    got = {item.image_query_id: (item.label, item.source) for item in manifest.items}
    assert got == expected["labels"]
    assert manifest.excluded == expected["excluded"]
    for item in manifest.items:
        assert files[item.image] == expected["images"][item.image_query_id]
        assert (
            item.image
            == f"images/{item.image_query_id}.{'jpg' if item.image_query_id == expected['jpeg'] else 'png'}"
        )
        assert item.content_type == ("image/jpeg" if item.image_query_id == expected["jpeg"] else "image/png")
        assert item.labeled_at.endswith("Z")
    assert sorted(files) == sorted(item.image for item in manifest.items)


async def test_run_export_writes_the_latest_labels_and_their_images(
    sessions: async_sessionmaker[AsyncSession], blobs: LocalBlobStore, tmp_path: Path
) -> None:
    detector_id, expected = await labelled_detector(sessions, blobs)
    async with sessions() as s:
        job = await create_export(s, detector_id, requested_by=None)
    assert job.status == JobStatus.QUEUED

    await run_export(sessions, blobs, job.id, tmp_path)

    async with sessions() as s:
        done = await s.get(ExportJob, job.id)
    assert done is not None
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert done.item_count == 5  # four labelled, one UNCLEAR
    assert done.blob_key == f"exports/{detector_id}/{job.id}.tar.gz"
    assert done.finished_at is not None and done.lease_owner is None
    check_archive(await blobs.get(done.blob_key), detector_id, expected, job.id)
    assert os.listdir(tmp_path) == []  # the work directory is cleaned up

    # Running a finished job again does nothing.
    await run_export(sessions, blobs, job.id, tmp_path)


class FailingStore(LocalBlobStore):
    async def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> None:
        raise OSError("disk full")


async def test_a_failing_export_is_marked_failed_with_its_error(
    sessions: async_sessionmaker[AsyncSession], blobs: LocalBlobStore, tmp_path: Path
) -> None:
    detector_id, _ = await labelled_detector(sessions, blobs)
    async with sessions() as s:
        job = await create_export(s, detector_id, requested_by=None)
    await run_export(sessions, FailingStore(blobs.root), job.id, tmp_path)
    async with sessions() as s:
        failed = await s.get(ExportJob, job.id)
    assert failed is not None
    assert failed.status == JobStatus.FAILED
    assert failed.error == "OSError: disk full"
    assert failed.blob_key is None


async def claim_all(sessions: async_sessionmaker[AsyncSession], owner: str) -> list[str]:
    """Everything claimable now (other modules may have left queued exports in the shared database)."""
    claimed = []
    async with sessions() as s:
        while (job_id := await claim_next_export(s, owner, lease_s=60)) is not None:
            claimed.append(job_id)
    return claimed


async def test_claims_take_the_oldest_first_and_an_expired_lease_returns_the_job(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as s:
        detector = await ensure_detector(s)
        first = await create_export(s, detector.id, None)
        second = await create_export(s, detector.id, None)
    claimed = await claim_all(sessions, "worker-a")
    assert claimed.index(first.id) < claimed.index(second.id)
    assert await claim_all(sessions, "worker-b") == []  # leased jobs are not handed out again

    async with sessions() as s:
        job = await s.get(ExportJob, first.id)
        assert job is not None and job.status == JobStatus.RUNNING and job.lease_owner == "worker-a"
        await s.execute(
            update(ExportJob)
            .where(ExportJob.id == first.id)
            .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await s.commit()
    assert await claim_all(sessions, "worker-b") == [first.id]
    async with sessions() as s:
        job = await s.get(ExportJob, first.id)
        assert job is not None and job.lease_owner == "worker-b"


async def test_concurrent_claims_never_hand_out_a_job_twice(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as s:
        detector = await ensure_detector(s)
        jobs = {(await create_export(s, detector.id, None)).id for _ in range(6)}

    async def worker(name: str) -> list[str]:
        got = []
        async with sessions() as s:
            for _ in range(10):
                job_id = await claim_next_export(s, name, lease_s=60)
                if job_id is None:
                    break
                got.append(job_id)
        return got

    results = await asyncio.gather(*(worker(f"w{i}") for i in range(4)))
    handed_out = [job_id for got in results for job_id in got]
    assert len(handed_out) == len(set(handed_out))
    leftover = await claim_all(sessions, "sweeper")
    assert jobs <= set(handed_out) | set(leftover)


async def test_renewing_an_export_lease_is_its_holders_only(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as s:
        detector = await ensure_detector(s)
        job = await create_export(s, detector.id, None)
    assert job.id in await claim_all(sessions, "worker-a")
    async with sessions() as s:
        assert await renew_export_lease(s, job.id, "worker-b", 60) is False
        # A lapsed lease nobody took is still its holder's to renew.
        await s.execute(
            update(ExportJob)
            .where(ExportJob.id == job.id)
            .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await s.commit()
        assert await renew_export_lease(s, job.id, "worker-a", 60) is True
    assert job.id not in await claim_all(sessions, "worker-b")


async def test_a_build_that_lost_its_lease_meanwhile_records_nothing(
    sessions: async_sessionmaker[AsyncSession], blobs: LocalBlobStore, tmp_path: Path
) -> None:
    """Another worker takes the job while the first one builds it (its lease ran out between two
    renewals): the first build's outcome must not overwrite the new holder's job."""
    async with sessions() as s:
        detector = await ensure_detector(s)
        job = await create_export(s, detector.id, None)
    assert job.id in await claim_all(sessions, "worker-slow")

    class TakenDuringUpload(LocalBlobStore):
        async def put_file(
            self, key: str, path: Path, content_type: str = "application/octet-stream"
        ) -> None:
            async with sessions() as s:
                await s.execute(
                    update(ExportJob)
                    .where(ExportJob.id == job.id)
                    .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
                )
                await s.commit()
                assert await claim_next_export(s, "worker-new", 60) == job.id
            await super().put_file(key, path, content_type)

    assert (
        await run_export(sessions, TakenDuringUpload(blobs.root), job.id, tmp_path, owner="worker-slow")
        is False
    )
    async with sessions() as s:
        held = await s.get(ExportJob, job.id, populate_existing=True)
        assert held is not None
        assert (held.status, held.lease_owner, held.finished_at) == (JobStatus.RUNNING, "worker-new", None)
        assert await renew_export_lease(s, job.id, "worker-slow", 60) is False
    # Nor does a build start for a job that is not (or no longer) the caller's.
    assert await run_export(sessions, blobs, job.id, tmp_path, owner="worker-slow") is False
    # Its holder builds and records it.
    assert await run_export(sessions, blobs, job.id, tmp_path, owner="worker-new") is True
    async with sessions() as s:
        done = await s.get(ExportJob, job.id, populate_existing=True)
    assert done is not None and done.status == JobStatus.SUCCEEDED and done.lease_owner is None


# --- through the API ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokens(cloud: CloudServer) -> dict[str, str]:
    return {
        "admin": run_in_db(cloud.database_url, lambda s: token_for(s, "admin")),
        "reviewer": run_in_db(cloud.database_url, lambda s: token_for(s, "reviewer")),
    }


async def test_export_through_the_api_queues_reports_and_downloads(
    cloud: CloudServer,
    tokens: dict[str, str],
    sessions: async_sessionmaker[AsyncSession],
    blobs: LocalBlobStore,
    tmp_path: Path,
) -> None:
    detector_id, expected = await labelled_detector(sessions, blobs)
    api = httpx.AsyncClient(base_url=cloud.url, headers={"x-api-token": tokens["admin"]}, timeout=30)
    async with api:
        created = await api.post(f"/api/v1/detectors/{detector_id}/exports")
        assert created.status_code == 202
        job = created.json()
        assert job["status"] == "queued" and job["download_url"] is None and job["detector_id"] == detector_id
        assert (await api.get(f"/api/v1/exports/{job['id']}/download")).status_code == 409

        # The worker's part, in-process against the same database and blob store.
        claimed = await claim_all(sessions, "test-worker")
        assert job["id"] in claimed
        for job_id in claimed:
            await run_export(sessions, blobs, job_id, tmp_path)

        status = (await api.get(f"/api/v1/exports/{job['id']}")).json()
        assert status["status"] == "succeeded"
        assert status["item_count"] == 5
        assert status["download_url"] == f"{cloud.url}/api/v1/exports/{job['id']}/download"
        download = await api.get(status["download_url"])
        assert download.status_code == 200
        assert download.headers["content-type"] == "application/gzip"
        check_archive(download.content, detector_id, expected, job["id"])

        assert (await api.get("/api/v1/exports/exp_unknown")).status_code == 404
        assert (await api.post("/api/v1/detectors/det_unknown/exports")).status_code == 404
        reviewer = {"x-api-token": tokens["reviewer"]}
        assert (
            await api.post(f"/api/v1/detectors/{detector_id}/exports", headers=reviewer)
        ).status_code == 403
        assert (await api.get(f"/api/v1/exports/{job['id']}", headers=reviewer)).status_code == 403
        assert status["error"] is None
    async with httpx.AsyncClient(base_url=cloud.url) as anonymous:
        assert (await anonymous.get(f"/api/v1/exports/{job['id']}")).status_code == 401
