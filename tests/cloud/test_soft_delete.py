"""Deleting a detector is soft: it disappears from every lookup, list and queue at once, its name is
free again, an admin can restore it (with its queries and review items) for the retention period, and
after that the worker's purge removes its rows and blobs for good. The purge is driven with an explicit
clock, never by waiting."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.blobstore import LocalBlobStore
from cloud.app.core.model_reports import report_blob_key
from cloud.app.core.registry import model_blob_key
from cloud.app.db.models import (
    Backbone,
    Detector,
    ExportJob,
    ImageEmbedding,
    ImageQuery,
    JobStatus,
    Label,
    ModelVersion,
    ReviewItem,
    TrainingJob,
)
from cloud.app.schemas.model_reports import ReportName
from common.ids import new_id
from tests.support import cloud as support
from tests.support.cloud import CloudServer
from tests.support.cloud_factories import png
from tests.support.cloud_factories_http import (
    DETECTORS,
    new_detector,
    register_tiny_backbone,
    store_embeddings,
    upload_metrics_report,
    upload_tiny_version,
)
from tests.support.cloud_factories_worker import (
    Tokens,
    private_database,
    purge_deleted_detectors,
    run_sync,
    seed_tokens,
)

pytestmark = pytest.mark.in_process

IQS = "/device-api/v1/image-queries"
DELETED = "/api/v1/admin/detectors/deleted"
RETENTION = timedelta(days=30)  # CLOUD_DELETED_RETENTION_S's default


@pytest.fixture(scope="module")
def cloud_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.TestDatabase]:
    yield from private_database(tmp_path_factory)  # the purge looks at every deleted detector


@pytest.fixture(scope="module")
def tokens(cloud: CloudServer, cloud_db: support.TestDatabase) -> Tokens:
    return seed_tokens(cloud_db.url)


@pytest.fixture(scope="module")
def device(cloud: CloudServer) -> Iterator[httpx.Client]:
    with cloud.client() as client:
        yield client


@pytest.fixture(scope="module")
def admin(cloud: CloudServer, tokens: Tokens) -> Iterator[httpx.Client]:
    with cloud.client(tokens.admin) as client:
        yield client


@pytest.fixture(scope="module")
def reviewer(cloud: CloudServer, tokens: Tokens) -> Iterator[httpx.Client]:
    with cloud.client(tokens.reviewer) as client:
        yield client


def delete(admin: httpx.Client, detector_id: str) -> None:
    resp = admin.delete(f"{DETECTORS}/{detector_id}")
    assert resp.status_code == 204, resp.text


def pending_in_queue(reviewer: httpx.Client, detector_id: str) -> int | None:
    queues = reviewer.get("/api/v1/review/queues").json()
    return next((q["pending"] for q in queues if q["detector_id"] == detector_id), None)


def purge_until(cloud: CloudServer, detector_id: str, now: datetime) -> list[str]:
    """Worker purge steps at `now` until this detector is purged or nothing more is due."""
    purged: list[str] = []
    while batch := purge_deleted_detectors(cloud.database_url, cloud.data_dir, now):
        purged += batch
        if detector_id in purged:
            break
    return purged


def test_a_deleted_detector_is_hidden_everywhere(
    cloud: CloudServer, device: httpx.Client, admin: httpx.Client, reviewer: httpx.Client
) -> None:
    detector_id, queries = new_detector(device, images=2)
    name = device.get(f"{DETECTORS}/{detector_id}").json()["name"]
    assert pending_in_queue(reviewer, detector_id) == 2
    delete(admin, detector_id)

    assert device.get(f"{DETECTORS}/{detector_id}").status_code == 404
    assert detector_id not in {
        d["id"] for d in device.get(DETECTORS, params={"page_size": 1000}).json()["results"]
    }
    assert device.get(DETECTORS, params={"name": name}).json()["count"] == 0
    for iq_id in queries:
        assert device.get(f"{IQS}/{iq_id}").status_code == 404
        assert device.get(f"{IQS}/{iq_id}/image").status_code == 404
    assert not set(queries) & {q["id"] for q in device.get(IQS, params={"page_size": 500}).json()["results"]}
    refused = device.post(IQS, params={"detector_id": detector_id}, content=png(9))
    assert refused.status_code == 404, refused.text  # as for an unknown detector
    label = device.post("/device-api/v1/labels", json={"label": "YES", "image_query_id": queries[0]})
    assert label.status_code == 404
    assert device.get(f"/edge-api/v1/detectors/{detector_id}/prior").status_code == 404
    assert device.get(f"/edge-api/v1/fetch-model-urls/{detector_id}/").status_code == 404
    assert admin.get(f"/api/v1/detectors/{detector_id}/models").status_code == 404
    assert admin.post("/api/v1/training-jobs", json={"detector_id": detector_id}).status_code == 404
    assert admin.post(f"/api/v1/detectors/{detector_id}/exports").status_code == 404
    assert admin.patch(f"{DETECTORS}/{detector_id}", json={"status": "OFF"}).status_code == 404
    assert admin.delete(f"{DETECTORS}/{detector_id}").status_code == 404  # deleting twice
    # Out of the review queue: no summary, nothing to claim.
    assert pending_in_queue(reviewer, detector_id) is None
    assert reviewer.post("/api/v1/review/claim", params={"detector_id": detector_id}).status_code == 204

    listed = {d["id"]: d for d in admin.get(DELETED).json()}
    assert listed[detector_id]["name"] == name
    deleted_at = datetime.fromisoformat(listed[detector_id]["deleted_at"])
    assert datetime.fromisoformat(listed[detector_id]["purge_after"]) - deleted_at == RETENTION
    assert abs(datetime.now(UTC) - deleted_at) < timedelta(minutes=5)


def test_the_name_of_a_deleted_detector_is_free_at_once(device: httpx.Client, admin: httpx.Client) -> None:
    detector_id, _ = new_detector(device)
    name = device.get(f"{DETECTORS}/{detector_id}").json()["name"]
    delete(admin, detector_id)
    again = device.post(DETECTORS, json={"name": name, "query": "Is it there again?"})
    assert again.status_code == 201, again.text
    assert device.get(DETECTORS, params={"name": name}).json()["results"][0]["id"] == again.json()["id"]


def test_restore_brings_it_back_with_its_queries_and_review_items(
    device: httpx.Client, admin: httpx.Client, reviewer: httpx.Client
) -> None:
    detector_id, queries = new_detector(device, images=2)
    delete(admin, detector_id)
    restored = admin.post(f"/api/v1/admin/detectors/{detector_id}/restore")
    assert restored.status_code == 200, restored.text
    assert restored.json()["id"] == detector_id
    assert device.get(f"{DETECTORS}/{detector_id}").status_code == 200
    for iq_id in queries:
        assert device.get(f"{IQS}/{iq_id}").status_code == 200
        assert device.get(f"{IQS}/{iq_id}/image").status_code == 200
    assert pending_in_queue(reviewer, detector_id) == 2
    claimed = reviewer.post("/api/v1/review/claim", params={"detector_id": detector_id})
    assert claimed.status_code == 200 and claimed.json()["image_query_id"] in queries
    assert detector_id not in {d["id"] for d in admin.get(DELETED).json()}
    # Only a deleted detector can be restored.
    assert admin.post(f"/api/v1/admin/detectors/{detector_id}/restore").status_code == 404


def test_restore_under_another_name_when_its_own_was_taken(device: httpx.Client, admin: httpx.Client) -> None:
    detector_id, _ = new_detector(device)
    name = device.get(f"{DETECTORS}/{detector_id}").json()["name"]
    delete(admin, detector_id)
    new_detector(device, name=name)
    taken = admin.post(f"/api/v1/admin/detectors/{detector_id}/restore")
    assert taken.status_code == 409 and "another name" in taken.json()["detail"]
    assert device.get(f"{DETECTORS}/{detector_id}").status_code == 404  # still deleted
    renamed = admin.post(f"/api/v1/admin/detectors/{detector_id}/restore", json={"name": f"{name} (old)"})
    assert renamed.status_code == 200, renamed.text
    assert device.get(f"{DETECTORS}/{detector_id}").json()["name"] == f"{name} (old)"


def test_deleting_stops_its_training_jobs(
    cloud_db: support.TestDatabase, device: httpx.Client, admin: httpx.Client
) -> None:
    detector_id, _ = new_detector(device)
    job = admin.post("/api/v1/training-jobs", json={"detector_id": detector_id}).json()
    delete(admin, detector_id)

    async def status(session: AsyncSession) -> tuple[str, bool]:
        row = await session.get(TrainingJob, job["id"])
        assert row is not None
        return row.status, row.cancel_requested

    assert run_sync(cloud_db.url, status) == (JobStatus.CANCELLED, True)


def test_restore_is_refused_once_the_retention_is_over(
    cloud_db: support.TestDatabase, device: httpx.Client, admin: httpx.Client
) -> None:
    detector_id, _ = new_detector(device)
    delete(admin, detector_id)

    async def age(session: AsyncSession) -> None:
        when = datetime.now(UTC) - RETENTION - timedelta(minutes=1)
        await session.execute(update(Detector).where(Detector.id == detector_id).values(deleted_at=when))
        await session.commit()

    run_sync(cloud_db.url, age)
    late = admin.post(f"/api/v1/admin/detectors/{detector_id}/restore")
    assert late.status_code == 409 and "retention" in late.json()["detail"]


async def _counts(session: AsyncSession, detector_id: str, queries: list[str]) -> dict[str, int]:
    tables: dict[str, Any] = {
        "detectors": select(func.count()).select_from(Detector).where(Detector.id == detector_id),
        "image_queries": select(func.count())
        .select_from(ImageQuery)
        .where(ImageQuery.detector_id == detector_id),
        "labels": select(func.count()).select_from(Label).where(Label.detector_id == detector_id),
        "review_items": select(func.count())
        .select_from(ReviewItem)
        .where(ReviewItem.detector_id == detector_id),
        "model_versions": select(func.count())
        .select_from(ModelVersion)
        .where(ModelVersion.detector_id == detector_id),
        "training_jobs": select(func.count())
        .select_from(TrainingJob)
        .where(TrainingJob.detector_id == detector_id),
        "export_jobs": select(func.count())
        .select_from(ExportJob)
        .where(ExportJob.detector_id == detector_id),
        "embeddings": select(func.count())
        .select_from(ImageEmbedding)
        .where(ImageEmbedding.image_query_id.in_(queries)),
    }
    return {name: int((await session.execute(query)).scalar_one()) for name, query in tables.items()}


def test_the_purge_after_the_retention_removes_rows_and_blobs(
    cloud: CloudServer,
    cloud_db: support.TestDatabase,
    device: httpx.Client,
    admin: httpx.Client,
    tmp_path: Path,
) -> None:
    detector_id, queries = new_detector(device, images=2)
    assert (
        device.post("/device-api/v1/labels", json={"label": "YES", "image_query_id": queries[0]}).status_code
        == 201
    )
    backbone = register_tiny_backbone(admin, tmp_path)
    assert store_embeddings(admin, backbone, queries) == 2
    model = upload_tiny_version(admin, detector_id, backbone, tmp_path, promote=True)
    upload_metrics_report(admin, model["id"])
    admin.post("/api/v1/training-jobs", json={"detector_id": detector_id})
    blobs = LocalBlobStore(cloud.data_dir / "blobs")
    export_key = f"exports/{detector_id}/exp_purge.tar.gz"

    async def add_export(session: AsyncSession) -> list[str]:
        await blobs.put(export_key, b"archive")
        session.add(
            ExportJob(
                id=new_id("exp"), detector_id=detector_id, status=JobStatus.SUCCEEDED, blob_key=export_key
            )
        )
        await session.commit()
        images = (
            await session.scalars(select(ImageQuery.image_key).where(ImageQuery.detector_id == detector_id))
        ).all()
        return list(images)

    image_keys = run_sync(cloud_db.url, add_export)
    keys = [
        *image_keys,
        export_key,
        model_blob_key(detector_id, model["version"]),
        report_blob_key(detector_id, model["version"], ReportName.METRICS),
    ]
    assert all(asyncio.run(blobs.exists(key)) for key in keys)
    before = run_sync(cloud_db.url, lambda s: _counts(s, detector_id, queries))
    assert all(before.values()), before

    delete(admin, detector_id)
    deleted_at = datetime.now(UTC)
    # Within the retention nothing goes: the detector is still restorable.
    assert detector_id not in purge_until(cloud, detector_id, deleted_at + RETENTION - timedelta(hours=1))
    assert run_sync(cloud_db.url, lambda s: _counts(s, detector_id, queries)) == before

    assert detector_id in purge_until(cloud, detector_id, deleted_at + RETENTION + timedelta(minutes=5))
    after = run_sync(cloud_db.url, lambda s: _counts(s, detector_id, queries))
    assert not any(after.values()), after
    assert not any(asyncio.run(blobs.exists(key)) for key in keys)

    async def backbone_kept(session: AsyncSession) -> bool:
        return (
            await session.get(Backbone, backbone.sha256) is not None
        )  # shared: never purged with one detector

    assert run_sync(cloud_db.url, backbone_kept)
    assert admin.post(f"/api/v1/admin/detectors/{detector_id}/restore").status_code == 404
    assert detector_id not in {d["id"] for d in admin.get(DELETED).json()}
