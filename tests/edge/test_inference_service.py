"""The inference service as a real process: LRU cache under traffic, single-flight loads, errors."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.bundle import PRIMARY_FILE, current_bundle_dir
from launcher.processes import ManagedProcess, free_port
from tests.edge.conftest import DIGIT
from tests.support.models import clone_bundle
from tests.support.stack import INTERNAL, start_inference

pytestmark = pytest.mark.processes


def detector_id(name: str) -> str:
    return "det_" + name.ljust(27, "0")


DETECTORS = [detector_id(f"CacheTest{i}") for i in range(8)]
COLD = detector_id("ColdStartTest")
TAMPERED = detector_id("TamperedBundle")


@pytest.fixture(scope="module")
def service(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("models")
    src = current_bundle_dir(demo_models, DIGIT)
    assert src is not None
    for det in [*DETECTORS, COLD, TAMPERED]:
        clone_bundle(src, det, root)
    bad = current_bundle_dir(root, TAMPERED)
    assert bad is not None
    data = bytearray((bad / PRIMARY_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / PRIMARY_FILE).write_bytes(bytes(data))
    port = free_port()
    proc: ManagedProcess = start_inference(root, port, INFERENCE_CACHE_MAX_ENTRIES="5")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", headers=INTERNAL, timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def infer(url: str, detector: str, image: bytes) -> httpx.Response:
    return httpx.post(
        f"{url}/infer", params={"detector_id": detector}, content=image, headers=INTERNAL, timeout=30
    )


def test_round_robin_over_8_detectors_with_capacity_5_evicts_exactly_lru(service: str, digits) -> None:
    image = digits[0][0]
    sequence = DETECTORS * 3
    for det in sequence:
        assert infer(service, det, image).status_code == 200
    # Every access misses (8 keys cycling through 5 slots) and evicts the key used 5 steps earlier.
    evicted = sequence[: len(sequence) - 5]
    for det in DETECTORS:
        assert metric(service, "inference_cache_misses_total", detector_id=det) == 3
        assert metric(service, "inference_cache_hits_total", detector_id=det) == 0
        assert metric(service, "inference_cache_evictions_total", detector_id=det) == evicted.count(det)
    models = httpx.get(f"{service}/models", headers=INTERNAL, timeout=10).json()
    loaded = {m["detector_id"] for m in models["models"] if m["loaded"]}
    assert loaded == set(sequence[-5:])
    assert models["cache"]["entries"] == 5 and models["cache"]["max_entries"] == 5


def test_fifty_concurrent_first_requests_to_a_cold_detector_load_it_once(service: str, digits) -> None:
    image = digits[1][0]
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda _: infer(service, COLD, image), range(50)))
    assert all(a.status_code == 200 for a in answers)
    assert len({a.json()["label"] for a in answers}) == 1
    assert metric(service, "inference_model_loads_total", detector_id=COLD, outcome="ok") == 1
    assert metric(service, "inference_cache_misses_total", detector_id=COLD) == 50 - metric(
        service, "inference_cache_hits_total", detector_id=COLD
    )


def test_tampered_bundle_is_refused_and_others_keep_serving(service: str, digits) -> None:
    resp = infer(service, TAMPERED, digits[2][0])
    assert resp.status_code == 503 and "sha256" in resp.json()["detail"]
    assert infer(service, DETECTORS[0], digits[2][0]).status_code == 200


def test_unknown_and_malformed_detectors(service: str, digits) -> None:
    assert infer(service, "det_" + "Z" * 27, digits[0][0]).status_code == 404
    assert infer(service, "det_../../x", digits[0][0]).status_code == 400
    assert httpx.get(f"{service}/health/ready", timeout=5).json()["status"] == "ready"
