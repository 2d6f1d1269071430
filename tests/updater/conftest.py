"""The updater's tests: a real cloud (registry) per module, and a real inference process on a model
root the updater under test installs into."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from common.bundle import current_bundle_dir
from launcher.processes import free_port
from tests.support.cloud import CloudServer
from tests.support.stack import INTERNAL, start_inference
from tests.support.updater import Registry, registry_cloud

DIGIT = "det_DemoWhichDigit0000000000000"
SEVEN = "det_DemoIsThisASeven00000000000"


@pytest.fixture(scope="module")
def digit_bundle(demo_models: Path) -> Path:
    bundle = current_bundle_dir(demo_models, DIGIT)
    assert bundle is not None
    return bundle


@pytest.fixture(scope="module")
def seven_bundle(demo_models: Path) -> Path:
    bundle = current_bundle_dir(demo_models, SEVEN)
    assert bundle is not None
    return bundle


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    with registry_cloud(tmp_path_factory.mktemp("updater-cloud")) as server:
        yield server


@pytest.fixture(scope="module")
def registry(cloud: CloudServer) -> Iterator[Registry]:
    admin = Registry(cloud)
    yield admin
    admin.close()


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def inference(model_root: Path) -> Iterator[str]:
    port = free_port()
    proc = start_inference(model_root, port, INFERENCE_WORKER_THREADS="2")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def served_version(inference_url: str, detector_id: str, image: bytes) -> str:
    response = httpx.post(
        f"{inference_url}/infer",
        params={"detector_id": detector_id},
        content=image,
        headers=INTERNAL,
        timeout=30,
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    version: str = response.json()["model_version"]
    return version
