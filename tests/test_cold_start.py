"""No dead start, through the unmodified Groundlight SDK, with the whole system as real processes: a
brand-new detector answers at once with its label prior (source ALGORITHM) on the cloud and on the
edge's gateway, `edge.set_config` with it returns ready, and after 3 labels per class the worker, the
trainer (a head on the shared backbone) and the updater bring a model to the edge by themselves."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from groundlight import ExperimentalApi, Groundlight

from launcher.processes import ManagedProcess, free_port
from tests.support import cloud as support
from tests.support.cloud import DEVICE_TOKEN, ROOT, CloudServer
from tests.support.cloud_factories_worker import private_database
from tests.support.stack import ADMIN_TOKEN, EdgeStack
from tests.support.trainer import Trainer, digit_images
from tests.support.updater import start_updater, updater_status

pytestmark = pytest.mark.slow


def wait_for(check: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    database: support.TestDatabase
    for database in private_database(tmp_path_factory):
        server = CloudServer(database.url, tmp_path_factory.mktemp("cold-cloud")).start()
        # The worker with its default cadence: the first job once every class has 3 labels.
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
        trainer = Trainer(server, trainer_token, tmp_path_factory.mktemp("cold-trainer")).start()
        try:
            yield server
        finally:
            trainer.stop()
            worker.stop()
            server.stop()


@pytest.fixture(scope="module")
def edge(cloud: CloudServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EdgeStack, str]]:
    work = tmp_path_factory.mktemp("cold-edge")
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


def _source(iq: Any) -> str:
    source = iq.result.source
    return str(getattr(source, "value", source))


def test_a_new_detector_answers_at_once_and_learns_from_its_first_labels(
    cloud: CloudServer, edge: tuple[EdgeStack, str]
) -> None:
    from groundlight.edge import EdgeEndpointConfig

    stack, updater_url = edge
    images = digit_images(12, seed=3)
    on_cloud = Groundlight(endpoint=cloud.url, api_token=DEVICE_TOKEN)
    detector = on_cloud.create_detector(name=f"is-it-a-one-{os.getpid()}", query="Is this digit a one?")

    # The cloud: no model, no label, yet ask_ml has an answer at once (the prior, 1/K).
    iq = on_cloud.ask_ml(detector, images[0][0], wait=2)
    assert iq.result is not None and _source(iq) == "ALGORITHM"
    assert iq.result.confidence == pytest.approx(0.5)
    iq = on_cloud.submit_image_query(detector, images[1][0], wait=5, human_review="NEVER")
    assert iq.result is not None and _source(iq) == "ALGORITHM"
    iq = on_cloud.wait_for_ml_result(iq, timeout_sec=5)
    assert iq.result is not None and _source(iq) == "ALGORITHM"

    # The edge: set_config (the edge operator's) returns only when the edge says the detector is ready.
    api = ExperimentalApi(endpoint=stack.gateway_url, api_token=ADMIN_TOKEN)
    config = {
        "global_config": {"confident_audit_rate": 0.0, "refresh_rate": 60},
        "edge_inference_configs": {"learn": {"min_time_between_escalations": 0.001}},
        "detectors": [{"detector_id": detector.id, "edge_inference_config": "learn"}],
    }
    api.edge.set_config(EdgeEndpointConfig.model_validate(config), timeout_sec=30)
    assert api.edge.get_detector_readiness()[detector.id] is True
    on_edge = Groundlight(endpoint=stack.gateway_url, api_token=DEVICE_TOKEN)
    iq = on_edge.ask_ml(detector, images[1][0], wait=2)
    assert iq.result is not None and _source(iq) == "ALGORITHM" and iq.result.from_edge is True
    iq = on_edge.submit_image_query(detector, images[2][0], wait=5)
    assert iq.result is not None and _source(iq) == "ALGORITHM"
    raw = httpx.post(
        f"{stack.gateway_url}/device-api/v1/image-queries",
        params={"detector_id": detector.id, "wait": 0},
        content=images[2][0],
        headers={"x-api-token": DEVICE_TOKEN},
        timeout=30,
    ).json()
    assert raw["result"]["source"] == "ALGORITHM"
    assert raw["intellioptics"]["escalation_reason"] == "no_model"

    # Three labels per class, given in the cloud as a customer does; nothing else is asked of anyone.
    per_class = {"YES": 0, "NO": 0}
    for data, label in images:
        if per_class[label] >= 3:
            continue
        query = on_cloud.submit_image_query(detector, data, wait=0, human_review="NEVER")
        on_cloud.add_label(query, label)
        per_class[label] += 1
    assert per_class == {"YES": 3, "NO": 3}

    def served() -> str | None:
        response = httpx.post(
            f"{stack.gateway_url}/device-api/v1/image-queries",
            params={"detector_id": detector.id},
            content=images[0][0],
            headers={"x-api-token": DEVICE_TOKEN},
            timeout=30,
        )
        if response.status_code != 200:
            return None
        version: str | None = (response.json().get("intellioptics") or {}).get("model_version")
        return version

    try:
        version = wait_for(served, "a model on the edge", timeout=240)
    except AssertionError:
        raise AssertionError(f"updater: {updater_status(updater_url)}") from None
    assert version.startswith("v1-")
    with httpx.Client(base_url=cloud.url, headers={"x-api-token": DEVICE_TOKEN}, timeout=10) as http:
        info = http.get(f"/edge-api/v1/fetch-model-urls/{detector.id}/").json()
    assert info["version"] == version and info["backbone"] is not None
    assert (stack.model_root / "backbones" / info["backbone"]["sha256"] / "backbone.onnx").is_file()
