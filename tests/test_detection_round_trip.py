"""Boxes all the way round, through the unmodified Groundlight SDK on both ends and the whole system
as real processes: a customer labels counts with ROIs in the cloud (`add_label(iq, n, rois=...)`), the
worker queues a job, the trainer fits a detection head on the shared backbone from the exported
boxes, the updater brings the bundle to the edge, and the edge answers COUNT with `count` and as
many `rois` as the count (`greater_than_max` set) — and a person's boxes come back from the cloud."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from groundlight import Groundlight

from cloud.worker.jobs.retrain import Cadence, labels_needed
from launcher.processes import ManagedProcess, free_port
from tests.support import cloud as support
from tests.support.cloud import DEVICE_TOKEN, ROOT, CloudServer
from tests.support.cloud_factories_worker import private_database
from tests.support.stack import ADMIN_TOKEN, EdgeStack
from tests.support.trainer import Trainer
from tests.support.updater import Registry, start_updater, updater_status
from training.detection.synthetic import Sample, generate

pytestmark = pytest.mark.slow

MAX_COUNT = 5
LABELLED = 48
CADENCE = Cadence()  # the worker below runs with the default cadence


def wait_for(
    check: Callable[[], Any], what: str, timeout: float, state: Callable[[], Any] | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + (f": {state()}" if state else ""))
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    database: support.TestDatabase
    for database in private_database(tmp_path_factory):
        server = CloudServer(database.url, tmp_path_factory.mktemp("det-cloud")).start()
        worker = ManagedProcess(
            "cloud-worker",
            [sys.executable, "-m", "cloud.worker"],
            env={
                "DATABASE_URL": server.database_url,
                "CLOUD_DATA_DIR": str(server.data_dir),
                "CLOUD_WORKER_POLL_S": "0.5",
                "CLOUD_LOG_LEVEL": "warning",
            },
            cwd=ROOT,
        ).start()
        trainer_token = (server.data_dir / "trainer-token").read_text().strip()
        trainer = Trainer(server, trainer_token, tmp_path_factory.mktemp("det-trainer")).start()
        try:
            yield server
        finally:
            trainer.stop()
            worker.stop()
            server.stop()


@pytest.fixture(scope="module")
def edge(cloud: CloudServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EdgeStack, str]]:
    work = tmp_path_factory.mktemp("det-edge")
    models = work / "models"
    models.mkdir()
    updater_port = free_port()
    stack = EdgeStack(
        work,
        models,
        cloud,
        edge_env={"EDGE_API_TOKEN": DEVICE_TOKEN, "EDGE_UPDATER_URL": f"http://127.0.0.1:{updater_port}"},
    )
    stack.start({"global_config": {"confident_audit_rate": 0.0}, "detectors": []})
    updater, url = start_updater(
        cloud_url=cloud.url,
        model_root=models,
        inference_url=stack.inference_url,
        edge_api_url=stack.edge_url,
        port=updater_port,
    )
    try:
        yield stack, url
    finally:
        updater.stop()
        stack.stop()


def _rois(gl: Groundlight, sample: Sample) -> list[Any]:
    return [
        gl.create_roi("coin", (float(b[0]), float(b[1])), (float(b[2]), float(b[3])))
        for b in sample.boxes.tolist()
    ]


def test_boxes_labelled_in_the_cloud_come_back_from_the_edge(
    cloud: CloudServer, edge: tuple[EdgeStack, str]
) -> None:
    stack, updater_url = edge
    samples = generate(LABELLED + 12, seed=11, max_count=MAX_COUNT)
    on_cloud = Groundlight(endpoint=cloud.url, api_token=DEVICE_TOKEN)
    detector = on_cloud.create_counting_detector(
        name=f"coins-{os.getpid()}", query="How many coins?", class_name="coin", max_count=MAX_COUNT
    )

    # Labels with boxes, as a customer gives them; the first one is read back as stored.
    for i, sample in enumerate(samples[:LABELLED]):
        iq = on_cloud.submit_image_query(detector, sample.jpeg(), wait=0, human_review="NEVER")
        on_cloud.add_label(iq, sample.count, rois=_rois(on_cloud, sample))
        if i == 0:
            back = on_cloud.get_image_query(iq.id)
            assert back.result.count == sample.count
            assert len(back.rois or []) == sample.count
            for got, want in zip(back.rois or [], sample.boxes.tolist(), strict=True):
                assert got.geometry.left == pytest.approx(want[0], abs=1e-6)
                assert got.geometry.bottom == pytest.approx(want[3], abs=1e-6)

    with httpx.Client(base_url=stack.gateway_url, headers={"x-api-token": DEVICE_TOKEN}, timeout=30) as http:
        resp = http.put(
            "/edge-config",
            json={
                "global_config": {"confident_audit_rate": 0.0, "refresh_rate": 5},
                "edge_inference_configs": {"learn": {"min_time_between_escalations": 0.001}},
                "detectors": [{"detector_id": detector.id, "edge_inference_config": "learn"}],
            },
            headers={"x-api-token": ADMIN_TOKEN},
        )
        assert resp.status_code == 200, resp.text

    def served() -> str | None:
        response = httpx.post(
            f"{stack.gateway_url}/device-api/v1/image-queries",
            params={"detector_id": detector.id, "human_review": "NEVER"},
            content=samples[-1].jpeg(),
            headers={"x-api-token": DEVICE_TOKEN},
            timeout=30,
        )
        if response.status_code != 200:
            return None
        version: str | None = (response.json().get("intellioptics") or {}).get("model_version")
        return version

    def jobs() -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] = httpx.get(
            f"{cloud.url}/api/v1/training-jobs",
            params={"detector_id": detector.id},
            headers={"x-api-token": DEVICE_TOKEN},
            timeout=10,
        ).json()
        return listed

    def settled() -> dict[str, Any] | None:
        """The newest job once training has caught up with the labels: none queued or running, and too
        few labels since the newest for the worker to queue another (its own rule)."""
        listed = jobs()
        for job in listed:
            if job["status"] in ("failed", "cancelled"):
                raise AssertionError(f"a job ended {job['status']}: {job.get('error')}")
        if not listed or any(job["status"] in ("queued", "running") for job in listed):
            return None
        newest = max(listed, key=lambda job: int(job["labels_at_creation"]))
        made_with = int(newest["labels_at_creation"])
        if LABELLED - made_with >= labels_needed(made_with, CADENCE.min_labels, CADENCE.growth):
            return None
        return newest

    def decision(job: dict[str, Any]) -> dict[str, Any]:
        """The trainer's promotion decision, from the registered version's metrics.json report."""
        report = httpx.get(
            f"{cloud.url}/api/v1/models/{job['result_version_id']}/reports/metrics.json",
            headers={"x-api-token": DEVICE_TOKEN},
            timeout=10,
        )
        assert report.status_code == 200, report.text
        decided: dict[str, Any] = report.json().get("promotion") or {}
        return decided

    job = wait_for(settled, "training to catch up with the labels", timeout=240, state=jobs)
    final = str(job["progress"]["version"])
    decided = decision(job)
    assert decided.get("promote") is bool(job["progress"].get("promoted")), (decided, job)
    if not decided["promote"]:
        # Judged on the dozen held-out images of this small set, the rule may hold a version back; its
        # reasons are on record, and a person promotes it as from the version page.
        assert decided.get("reasons"), decided
        registry = Registry(cloud)
        try:
            registry.promote(str(job["result_version_id"]))
        finally:
            registry.close()
    try:
        wait_for(lambda: served() == final, f"{final} on the edge", timeout=120)
    except AssertionError:
        raise AssertionError(f"updater: {updater_status(updater_url)}") from None

    # The edge answers COUNT with the count, greater_than_max and the boxes that make the count.
    on_edge = Groundlight(endpoint=stack.gateway_url, api_token=DEVICE_TOKEN)
    right = 0
    held = samples[LABELLED:]
    for sample in held:
        iq = on_edge.ask_ml(detector, sample.jpeg(), wait=0)
        assert iq.result is not None and iq.result.from_edge is True
        assert iq.result.count is not None and iq.result.greater_than_max is not None
        # As many boxes as the count; more than max_count: every box that passed, count = max_count.
        assert iq.rois is not None
        if iq.result.greater_than_max:
            assert iq.result.count == MAX_COUNT and len(iq.rois) > MAX_COUNT
        else:
            assert len(iq.rois) == iq.result.count
        for roi in iq.rois:
            g = roi.geometry
            assert 0 <= g.left < g.right <= 1 and 0 <= g.top < g.bottom <= 1
            assert roi.label == "coin" and 0 <= roi.score <= 1
        right += iq.result.count == sample.count
    # Far better than guessing among 0..5 (1 in 6) after a few dozen labelled images.
    assert right >= len(held) // 2, f"{right} of {len(held)} counts right"

    # A person's boxes reach the edge's record: label one of the edge's queries in the cloud.
    sample = held[0]
    iq = on_edge.submit_image_query(detector, sample.jpeg(), wait=0, human_review="ALWAYS")
    wait_for(
        lambda: (
            httpx.get(
                f"{cloud.url}/device-api/v1/image-queries/{iq.id}", headers={"x-api-token": DEVICE_TOKEN}
            ).status_code
            == 200
        ),
        "the escalation in the cloud",
        timeout=30,
    )
    on_cloud.add_label(iq.id, sample.count, rois=_rois(on_cloud, sample))
    answered = wait_for(
        lambda: (lambda q: q if q.result is not None and str(q.result.source) != "ALGORITHM" else None)(
            on_edge.get_image_query(iq.id)
        ),
        "the person's answer on the edge",
        timeout=30,
    )
    assert answered.result.count == sample.count
    assert len(answered.rois or []) == sample.count
