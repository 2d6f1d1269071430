"""The closed loop: the edge escalates what it is unsure of, a person answers in the cloud's review
queue, and the camera reads that answer from the edge.

Real processes throughout: the cloud API on a fresh PostgreSQL database (CLOUD_TEST_DB=sqlite: the
embedded one), the demo detectors registered by cloud.app.seed_demo, inference, edge-api and the
nginx gateway; the reviewer works through the review API, the camera through the gateway (plain HTTP
and the Groundlight SDK).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from groundlight import Groundlight

from cloud.app.seed_demo import DEMO_DETECTOR_IDS, DEMO_DIGIT_ID
from tests.support import cloud as cloud_support
from tests.support.cloud import DEVICE_TOKEN, CloudServer
from tests.support.stack import EdgeStack

IQ_PATH = "/device-api/v1/image-queries"
EDGE_CONFIG = {
    "global_config": {"confident_audit_rate": 0.0},
    "edge_inference_configs": {"demo": {"min_time_between_escalations": 0.001}},
    "detectors": [
        {"detector_id": detector_id, "edge_inference_config": "demo", "confidence_threshold": 0.9}
        for detector_id in DEMO_DETECTOR_IDS
    ],
}


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll until `check` returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_the_demo_detector_ids_are_those_of_the_demo_bundles() -> None:
    from training.demo_bundles import DEMO_DIGIT_ID as TRAINED_DIGIT
    from training.demo_bundles import DEMO_SEVEN_ID as TRAINED_SEVEN

    assert (TRAINED_DIGIT, TRAINED_SEVEN) == DEMO_DETECTOR_IDS


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory, demo_models: Path) -> Iterator[CloudServer]:
    database = cloud_support.TestDatabase(tmp_path_factory.mktemp("closed-loop-db")).create()
    server = CloudServer(database.url, tmp_path_factory.mktemp("closed-loop-cloud"))
    try:
        server.start()
        server.seed_demo(demo_models, "--cloud-url", server.url)
        yield server
    finally:
        server.stop()
        database.drop()


@pytest.fixture(scope="module")
def edge(
    cloud: CloudServer, demo_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EdgeStack]:
    stack = EdgeStack(
        tmp_path_factory.mktemp("closed-loop-edge"),
        demo_models,
        cloud,
        edge_env={"EDGE_API_TOKEN": DEVICE_TOKEN, "EDGE_CLOUD_ANSWER_TIMEOUT_S": "2"},
    )
    try:
        yield stack.start(EDGE_CONFIG)
    finally:
        stack.stop()


def claim_the_query(reviewer: httpx.Client, iq_id: str) -> dict[str, Any]:
    """Claim review items of the digit detector until this query's comes up (it must, once escalated)."""

    def claimed() -> dict[str, Any] | None:
        resp = reviewer.post("/api/v1/review/claim", params={"detector_id": DEMO_DIGIT_ID})
        assert resp.status_code in (200, 204), resp.text
        if resp.status_code == 204:
            return None
        item: dict[str, Any] = resp.json()
        if item["image_query_id"] != iq_id:
            reviewer.post(f"/api/v1/review/items/{item['id']}/skip")
            return None
        return item

    found: dict[str, Any] = wait_for(claimed, f"{iq_id} in the review queue")
    return found


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_reviewer_s_answer_reaches_the_camera_through_the_edge(
    cloud: CloudServer, edge: EdgeStack, photos: list[bytes]
) -> None:
    with (
        httpx.Client(base_url=edge.gateway_url, headers={"x-api-token": DEVICE_TOKEN}, timeout=30) as camera,
        closing(cloud.login()) as reviewer,
    ):
        loop_through_review(cloud, edge, camera, reviewer, photos[0])


def loop_through_review(
    cloud: CloudServer, edge: EdgeStack, camera: httpx.Client, reviewer: httpx.Client, photo: bytes
) -> None:
    # A photo is nothing like a handwritten digit: the edge answers at once, unsure, and escalates.
    posted = camera.post(IQ_PATH, params={"detector_id": DEMO_DIGIT_ID}, content=photo)
    assert posted.status_code == 200, posted.text
    iq = posted.json()
    iq_id = iq["id"]
    assert iq["intellioptics"]["escalated"] is True and iq["done_processing"] is False
    assert iq["result"]["source"] == "ALGORITHM" and iq["result"]["from_edge"] is True

    # It reaches the review queue through the edge's outbox.
    queues = wait_for(
        lambda: [
            q
            for q in reviewer.get("/api/v1/review/queues").json()
            if q["detector_id"] == DEMO_DIGIT_ID and q["pending"]
        ],
        "a pending item in the digit detector's queue",
    )
    assert queues[0]["query"] == "Which digit is this?"

    # Until a person answers, reading the query on the edge returns the edge's own answer.
    assert camera.get(f"{IQ_PATH}/{iq_id}").json()["done_processing"] is False

    item = claim_the_query(reviewer, iq_id)
    assert "3" in item["labels"]
    label = "3" if iq["result"]["label"] != "3" else "4"
    answered = reviewer.post(f"/api/v1/review/items/{item['id']}/answer", json={"label": label})
    assert answered.status_code == 200, answered.text

    human = {"label": label, "confidence": 1.0, "source": "HUMAN", "from_edge": False}
    on_edge = camera.get(f"{IQ_PATH}/{iq_id}")
    with cloud.client() as device:
        in_cloud = device.get(f"{IQ_PATH}/{iq_id}")
    for resp in (on_edge, in_cloud):
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["id"] == iq_id and body["done_processing"] is True
        assert {k: body["result"][k] for k in human} == human

    # The SDK sees it as well.
    sdk = Groundlight(endpoint=edge.gateway_url, api_token=DEVICE_TOKEN)
    fetched = sdk.get_image_query(iq_id)
    assert (
        fetched.result.label.value if hasattr(fetched.result.label, "value") else fetched.result.label
    ) == label
    assert fetched.result.confidence == 1.0

    # The edge kept the answer: it serves it with the cloud gone.
    cloud.stop()
    again = camera.get(f"{IQ_PATH}/{iq_id}")
    assert again.status_code == 200
    assert {k: again.json()["result"][k] for k in human} == human
