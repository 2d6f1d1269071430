"""Shared backbones in the inference service as a real process: 20 split-bundle detectors on one
backbone hold one backbone session (counted once in the cache's entries and bytes); one image asked of
three of them runs the backbone once; a head swap under load drops no request and reloads nothing;
a single-file bundle served beside them is unaffected."""

from __future__ import annotations

import concurrent.futures
import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from common.backbone import BackboneRef
from common.bundle import bundle_bytes, current_bundle_dir
from launcher.processes import ManagedProcess, free_port
from tests.edge.conftest import DIGIT, wait_until
from tests.edge.test_inference_service import metric
from tests.support.models import clone_bundle
from tests.support.split_bundles import install_tiny_backbone, install_tiny_split_bundle
from tests.support.stack import INTERNAL, start_inference

pytestmark = pytest.mark.processes


def detector_id(name: str) -> str:
    return "det_" + name.ljust(27, "0")


HEADS = [detector_id(f"SharedHead{i:02d}") for i in range(20)]
SINGLE = detector_id("SingleFileBeside")
SWAPPED = HEADS[7]


@dataclass
class Served:
    url: str
    root: Path
    backbone: BackboneRef


@pytest.fixture(scope="module")
def served(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("shared-models")
    ref = install_tiny_backbone(root)
    for i, det in enumerate(HEADS):
        install_tiny_split_bundle(root, det, ref, seed=100 + i)
    src = current_bundle_dir(demo_models, DIGIT)
    assert src is not None
    clone_bundle(src, SINGLE, root)
    port = free_port()
    proc: ManagedProcess = start_inference(
        root,
        port,
        INFERENCE_CACHE_MAX_ENTRIES="25",
        INFERENCE_WORKER_THREADS="2",
        # Long enough that no reuse in these tests depends on how fast the machine is.
        INFERENCE_EMBEDDING_CACHE_TTL_S="3600",
    )
    try:
        yield Served(f"http://127.0.0.1:{port}", root, ref)
    finally:
        proc.stop()


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def infer(url: str, detector: str, image: bytes) -> httpx.Response:
    return httpx.post(
        f"{url}/infer", params={"detector_id": detector}, content=image, headers=INTERNAL, timeout=30
    )


def models(url: str) -> dict[str, object]:
    body: dict[str, object] = httpx.get(f"{url}/models", headers=INTERNAL, timeout=10).json()
    return body


def backbone_loads(s: Served) -> float:
    return metric(s.url, "inference_backbone_loads_total", backbone=s.backbone.sha256[:12])


def backbone_images(s: Served) -> float:
    return metric(s.url, "inference_backbone_images_total", backbone=s.backbone.sha256[:12])


def test_twenty_detectors_on_one_backbone_hold_one_session_counted_once(served: Served) -> None:
    image = png(1)
    for det in HEADS:
        response = infer(served.url, det, image)
        assert response.status_code == 200, response.text
        assert response.json()["detector_id"] == det
    listing = models(served.url)
    cache = listing["cache"]
    assert isinstance(cache, dict)
    loaded = [m for m in listing["models"] if m["loaded"]]  # type: ignore[attr-defined]
    heads = [m for m in loaded if m["detector_id"] in HEADS]
    assert len(heads) == 20
    for m in heads:
        assert m["backbone"] == served.backbone.sha256
        bundle = current_bundle_dir(served.root, m["detector_id"])
        assert bundle is not None and m["bytes"] == bundle_bytes(bundle)  # the head's own graphs only
    assert cache["backbones"] == 1
    assert cache["backbone_bytes"] == served.backbone.bytes
    assert cache["bytes"] == sum(m["bytes"] for m in loaded) + served.backbone.bytes
    assert cache["entries"] == len(loaded) + 1
    assert backbone_loads(served) == 1
    assert metric(served.url, "inference_backbones_loaded") == 1
    assert metric(served.url, "inference_backbone_bytes") == served.backbone.bytes
    assert metric(served.url, "inference_cache_bytes") == cache["bytes"]
    assert metric(served.url, "inference_cache_entries") == cache["entries"]


def test_one_image_asked_of_three_detectors_runs_the_backbone_once(served: Served) -> None:
    image = png(2)
    three = HEADS[:3]
    before = backbone_images(served)
    misses = metric(served.url, "inference_embedding_cache_total", result="miss")
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        together = list(pool.map(lambda det: infer(served.url, det, image), three))
    in_turn = [infer(served.url, det, image) for det in three]
    assert [r.status_code for r in together + in_turn] == [200] * 6
    assert backbone_images(served) - before == 1
    assert metric(served.url, "inference_embedding_cache_total", result="miss") - misses == 1
    # Each detector still answers with its own head, the same whether the output was fresh or reused.
    for det, a, b in zip(three, together, in_turn, strict=True):
        assert a.json()["detector_id"] == det and b.json()["detector_id"] == det
        assert a.json()["probabilities"] == pytest.approx(b.json()["probabilities"], abs=1e-6)
    assert len({tuple(r.json()["probabilities"]) for r in together}) == 3  # three different heads


def test_an_image_that_does_not_decode_fails_alone(served: Served) -> None:
    whole = png(3)
    broken = whole[: len(whole) // 2]  # the header reads, the pixels do not: fails in the batcher
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: infer(served.url, HEADS[i], broken if i == 0 else whole), range(4)))
    assert answers[0].status_code == 400
    assert [a.status_code for a in answers[1:]] == [200, 200, 200]


def test_a_head_swap_under_load_drops_no_request_and_keeps_the_backbone(served: Served) -> None:
    images = [png(10 + i) for i in range(8)]
    loads_before = backbone_loads(served)
    assert loads_before == 1
    stop = threading.Event()
    answered = [0]
    lock = threading.Lock()

    def client(n: int) -> list[tuple[int, str]]:
        out = []
        with httpx.Client(base_url=served.url, headers=INTERNAL, timeout=30, trust_env=False) as http:
            i = 0
            while not stop.is_set():
                det = SWAPPED if i % 2 == 0 else HEADS[(n + i) % len(HEADS)]
                response = http.post("/infer", params={"detector_id": det}, content=images[(n + i) % 8])
                body = response.json()
                out.append((response.status_code, body.get("model_version", "") if det == SWAPPED else ""))
                with lock:
                    answered[0] += 1
                i += 1
        return out

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client, n) for n in range(8)]
        wait_until(lambda: answered[0] >= 80, timeout=120, what="load before the swap")
        install_tiny_split_bundle(served.root, SWAPPED, served.backbone, version="v2-tinyhead0002", seed=999)
        swap = httpx.post(
            f"{served.url}/models/{SWAPPED}/swap", headers=INTERNAL, timeout=60, trust_env=False
        )
        assert swap.status_code == 200, swap.text
        assert swap.json()["swapped"] is True and swap.json()["version"] == "v2-tinyhead0002"
        at_swap = answered[0]
        wait_until(lambda: answered[0] >= max(200, at_swap + 80), timeout=120, what="load after the swap")
        stop.set()
        results = [r for f in futures for r in f.result()]

    assert len(results) >= 200
    assert [r for r in results if r[0] != 200] == []
    versions = {v for _, v in results if v}
    assert versions <= {"v1-tinyhead0001", "v2-tinyhead0002"}
    assert "v2-tinyhead0002" in versions
    after = infer(served.url, SWAPPED, images[0])
    assert after.status_code == 200 and after.json()["model_version"] == "v2-tinyhead0002"
    assert backbone_loads(served) == 1  # the new head found the backbone loaded: no second session
    assert metric(served.url, "inference_backbones_loaded") == 1


def test_a_single_file_bundle_beside_them_still_works(served: Served, digits) -> None:
    image, _ = digits[0]
    response = infer(served.url, SINGLE, image)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["detector_id"] == SINGLE and body["label"] in body["labels"] and len(body["labels"]) == 10
    info = httpx.get(f"{served.url}/models/{SINGLE}", headers=INTERNAL, timeout=10).json()
    assert info["loaded"] is True and info["backbone"] is None
    assert models(served.url)["cache"]["backbones"] == 1  # type: ignore[index]
