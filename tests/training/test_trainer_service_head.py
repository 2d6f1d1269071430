"""The trainer's head engine end to end: a real cloud and worker, a trainer on the shared Lite0 backbone.

The first job registers the backbone, embeds every labelled image once and stores the vectors in the
cloud, registers a split bundle and promotes it; the second embeds nothing (the export carries the
stored embeddings and no images) and is judged against production; an edge installs the version from
fetch-model-urls with its backbone and answers with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from cloud.app.db.models import ImageEmbedding
from common.backbone import BackboneStore, sha256_path
from common.bundle_archive import install_bundle_archive
from common.imaging import ImageLimits
from common.runtime import BackbonePool, ModelRuntime
from tests.support.cloud import DEVICE_TOKEN, CloudServer
from tests.support.cloud_factories_registry import run_in_db
from tests.support.trainer import LabelledDetector, Trainer, labelled_detector
from tests.training.test_trainer_service import admin, cloud, cloud_db, create_job, trainer_token, wait_for

pytestmark = pytest.mark.slow
__all__ = ["admin", "cloud", "cloud_db", "trainer_token"]  # module-scoped fixtures shared with the CNN tests

HEAD = {"engine": "head", "min_test_items": 10}


def _stored_embeddings(cloud: CloudServer, detector: LabelledDetector) -> int:
    async def count(session: Any) -> int:
        from cloud.app.db.models import ImageQuery

        stmt = (
            select(func.count())
            .select_from(ImageEmbedding)
            .join(ImageQuery, ImageQuery.id == ImageEmbedding.image_query_id)
            .where(ImageQuery.detector_id == detector.id)
        )
        return int((await session.execute(stmt)).scalar_one())

    return run_in_db(cloud.database_url, count)


@pytest.fixture(scope="module")
def head_runs(
    cloud: CloudServer, admin: httpx.Client, trainer_token: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[LabelledDetector, dict[str, Any], dict[str, Any], str, str]:
    detector = labelled_detector(cloud)
    with Trainer(cloud, trainer_token, tmp_path_factory.mktemp("head")) as trainer:
        first = wait_for(admin, create_job(admin, detector.id, HEAD), "succeeded", "failed", "cancelled")
        first_logs = admin.get(f"/api/v1/training-jobs/{first['id']}/logs").text
        assert first["status"] == "succeeded", f"{first['error']}\n{first_logs}\n{trainer.output()}"
        second = wait_for(admin, create_job(admin, detector.id, HEAD), "succeeded", "failed", "cancelled")
        second_logs = admin.get(f"/api/v1/training-jobs/{second['id']}/logs").text
        assert second["status"] == "succeeded", f"{second['error']}\n{second_logs}\n{trainer.output()}"
    return detector, first, second, first_logs, second_logs


def test_the_first_head_job_registers_the_backbone_and_a_split_bundle(
    head_runs, admin: httpx.Client, cloud: CloudServer
) -> None:  # type: ignore[no-untyped-def]
    detector, first, _, logs, _ = head_runs
    model = admin.get(f"/api/v1/models/{first['result_version_id']}").json()
    assert model["promoted_at"] is not None  # promoted (the second job's version may have replaced it)
    backbone = model["predictor"]["backbone"]
    assert backbone["id"] == "efficientnet-lite0/imagenet"
    assert model["lineage"]["backbone"]["sha256"] == backbone["sha256"]
    assert admin.get(f"/api/v1/backbones/{backbone['sha256']}").status_code == 200
    point = model["metrics"]["operating_point"]
    assert point["threshold"] == 0.9 and point["n"] >= 10
    assert point["confident_accuracy"] is None or point["confident_accuracy"] >= 0.88
    # Every labelled image was embedded once and its vector kept in the cloud.
    assert _stored_embeddings(cloud, detector) == len(detector.images)
    assert f"({len(detector.images)} newly embedded)" in logs


def test_a_second_head_job_reads_no_image_and_is_judged_against_production(
    head_runs, admin: httpx.Client
) -> None:  # type: ignore[no-untyped-def]
    _, first, second, _, logs = head_runs
    assert "(0 newly embedded)" in logs
    parent = admin.get(f"/api/v1/models/{first['result_version_id']}").json()
    model = admin.get(f"/api/v1/models/{second['result_version_id']}").json()
    assert model["id"] != parent["id"]
    assert (
        model["lineage"]["parent_version"] == parent["version"]
        or model["metrics"]["operating_point"]["method"] == "cross_validation"
    )
    assert model["lineage"]["production_model_id"] == parent["id"]
    reasons = " ".join(model["metrics"]["promotion"]["reasons"])
    assert "production" in reasons or "labels" in reasons


def test_an_edge_installs_the_version_with_its_backbone_and_answers(
    head_runs, cloud: CloudServer, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    detector, *_ = head_runs
    with cloud.client(DEVICE_TOKEN) as device:
        info = device.get(f"/edge-api/v1/fetch-model-urls/{detector.id}/").json()
        assert info["backbone"] is not None
        backbone = tmp_path / "backbone.onnx"
        backbone.write_bytes(device.get(info["backbone"]["download_url"]).content)
        archive = tmp_path / "bundle.tar.gz"
        archive.write_bytes(device.get(info["download_url"]).content)
    assert sha256_path(backbone) == info["backbone"]["sha256"]
    root = tmp_path / "models"
    from common.backbone import BackboneRef

    store = BackboneStore.for_model_root(root)
    store.install_file(backbone)
    installed = install_bundle_archive(archive, root)
    runtime = ModelRuntime(installed, ["CPUExecutionProvider"], backbones=BackbonePool())
    assert isinstance(runtime.metadata.backbone, BackboneRef)
    try:
        answers = [runtime.predict(data, ImageLimits()) for data, _ in detector.images[:40]]
    finally:
        runtime.close()
    truth = [label for _, label in detector.images[:40]]
    assert sum(a.label == t for a, t in zip(answers, truth, strict=True)) >= 36
