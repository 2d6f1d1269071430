"""A detector that has a model on this edge answers at the cloud's current threshold for it (carried by
its prior), unless the request or the edge config sets one: a change in the cloud applies after the
next refresh, /status and the detector route say so, and with the cloud unreachable the last value
fetched keeps applying, also after an edge-api restart (it is kept in the edge's SQLite store).

Real processes (inference on the demo models, edge-api, nginx); the fake cloud serves the priors.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.bundle import DetectorMode
from tests.edge.conftest import DIGIT, edge_config, fake_cloud_stack, wait_until
from tests.support.fake_cloud import FakeCloud
from tests.support.stack import DEVICE, EdgeStack

pytestmark = pytest.mark.processes

IQ_PATH = "/device-api/v1/image-queries"
# Short, so a test sees a refresh; the retry short too, for the fetches the stopped cloud fails.
EDGE_ENV = {"EDGE_PRIOR_TTL_S": "0.5", "EDGE_PRIOR_RETRY_S": "0.2"}
DIGIT_DEFAULT = 0.9  # the demo digit model's default_confidence_threshold


@pytest.fixture(scope="module")
def stack(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeStack]:
    with fake_cloud_stack(demo_models, tmp_path_factory.mktemp("edge-cloud-threshold"), EDGE_ENV) as s:
        yield s


@pytest.fixture
def cloud(stack: EdgeStack) -> Iterator[FakeCloud]:
    assert isinstance(stack.cloud, FakeCloud)
    yield stack.cloud
    stack.cloud.state.priors.pop(DIGIT, None)
    stack.put_config(edge_config())


def set_cloud_threshold(cloud: FakeCloud, threshold: float, human_review: str = "DEFAULT") -> None:
    """The digit detector's threshold (and people-review policy) as an admin set it in the cloud."""
    cloud.set_prior(
        DIGIT,
        [str(i) for i in range(10)],
        [0] * 10,
        mode=DetectorMode.MULTI_CLASS,
        confidence_threshold=threshold,
        human_review=human_review,
    )


def answer(stack: EdgeStack, image: bytes, **params: str) -> dict[str, Any]:
    """edge-api's own answer (never the gateway's fallback to the cloud)."""
    resp = httpx.post(
        f"{stack.edge_url}{IQ_PATH}",
        params={"detector_id": DIGIT, **params},
        content=image,
        headers={"Content-Type": "image/jpeg", **DEVICE},
        timeout=15,
    )
    assert resp.status_code == 200, resp.text
    iq: dict[str, Any] = resp.json()
    assert iq["intellioptics"]["model_version"] is not None  # the model answered
    return iq


def answered_at(stack: EdgeStack, image: bytes, threshold: float) -> bool:
    return bool(answer(stack, image)["confidence_threshold"] == threshold)


def digit_status(stack: EdgeStack) -> dict[str, Any]:
    (entry,) = [d for d in stack.status()["detectors"] if d["detector_id"] == DIGIT]
    return entry  # type: ignore[no-any-return]


def detector_threshold(stack: EdgeStack) -> float:
    resp = httpx.get(f"{stack.gateway_url}/device-api/v1/detectors/{DIGIT}", headers=DEVICE, timeout=10)
    assert resp.status_code == 200, resp.text
    return float(resp.json()["confidence_threshold"])


def confident_image(stack: EdgeStack, digits: list[tuple[bytes, int]], above: float) -> tuple[bytes, float]:
    """A digit the model answers with confidence at least `above` (and below 1)."""
    for image, _ in digits[:40]:
        confidence = float(answer(stack, image, human_review="NEVER")["result"]["confidence"])
        if above <= confidence < 1.0:
            return image, confidence
    raise AssertionError(f"no demo digit answered with confidence in [{above}, 1)")


def test_a_served_detector_follows_the_clouds_threshold_after_the_next_refresh(
    stack: EdgeStack, cloud: FakeCloud, digits
) -> None:
    # Unknown to the cloud: the model's default.
    assert answer(stack, digits[0][0])["confidence_threshold"] == DIGIT_DEFAULT
    assert digit_status(stack)["confidence_threshold_source"] == "model"
    image, confidence = confident_image(stack, digits, above=0.5)

    set_cloud_threshold(cloud, 0.5)
    wait_until(lambda: answered_at(stack, image, 0.5), what="the cloud's threshold after a refresh")
    iq = answer(stack, image)
    assert iq["done_processing"] is True and iq["intellioptics"]["escalated"] is False
    status = digit_status(stack)
    assert (status["confidence_threshold"], status["confidence_threshold_source"]) == (0.5, "cloud")
    assert status["state"] == "serving" and status["prior"]["confidence_threshold"] == 0.5
    assert detector_threshold(stack) == 0.5

    # Above this image's confidence: the same image now escalates.
    set_cloud_threshold(cloud, 1.0)
    wait_until(lambda: answered_at(stack, image, 1.0), what="the changed threshold after a refresh")
    iq = answer(stack, image)
    assert iq["result"]["confidence"] == confidence < iq["confidence_threshold"]
    assert iq["done_processing"] is False and iq["intellioptics"]["escalated"] is True
    assert iq["intellioptics"]["escalation_reason"] == "low_confidence"
    assert detector_threshold(stack) == 1.0

    # The cloud no longer knows the detector: back to the model's default.
    cloud.state.priors.pop(DIGIT)
    wait_until(lambda: answered_at(stack, image, DIGIT_DEFAULT), what="the model's default again")
    assert digit_status(stack)["confidence_threshold_source"] == "model"


def test_the_edge_configs_threshold_wins_over_the_clouds(stack: EdgeStack, cloud: FakeCloud, digits) -> None:
    image = digits[1][0]
    set_cloud_threshold(cloud, 0.55)
    wait_until(lambda: answered_at(stack, image, 0.55), what="the cloud's threshold")
    config = edge_config()
    (digit,) = [d for d in config["detectors"] if d["detector_id"] == DIGIT]
    digit["confidence_threshold"] = 0.7
    stack.put_config(config)

    assert answer(stack, image)["confidence_threshold"] == 0.7
    status = digit_status(stack)
    assert (status["confidence_threshold"], status["confidence_threshold_source"]) == (0.7, "edge_config")
    assert detector_threshold(stack) == 0.7
    # The request's own wins over both.
    assert answer(stack, image, confidence_threshold="0.8")["confidence_threshold"] == 0.8


def test_with_the_cloud_unreachable_the_stored_threshold_is_used(
    stack: EdgeStack, cloud: FakeCloud, digits
) -> None:
    image = digits[2][0]
    set_cloud_threshold(cloud, 0.61)
    wait_until(lambda: answered_at(stack, image, 0.61), what="the cloud's threshold")
    cloud.stop()
    try:
        set_cloud_threshold(cloud, 0.99)  # never reaches the edge
        wait_until(lambda: digit_status(stack)["prior"]["last_error"] is not None, what="a failed refresh")
        assert answer(stack, image)["confidence_threshold"] == 0.61
        stack.kill_edge()
        stack.start_edge()
        assert answer(stack, image)["confidence_threshold"] == 0.61
        status = digit_status(stack)
        assert (status["confidence_threshold"], status["confidence_threshold_source"]) == (0.61, "cloud")
    finally:
        cloud.start()
    wait_until(lambda: answered_at(stack, image, 0.99), what="the cloud's value once it is back")


def raw_answer(stack: EdgeStack, image: bytes, **params: str) -> dict[str, Any]:
    resp = httpx.post(
        f"{stack.edge_url}{IQ_PATH}",
        params={"detector_id": DIGIT, **params},
        content=image,
        headers={"Content-Type": "image/jpeg", **DEVICE},
        timeout=15,
    )
    assert resp.status_code == 200, resp.text
    iq: dict[str, Any] = resp.json()
    return iq


def test_the_detectors_people_review_policy_applies_to_queries_that_leave_it_to_the_detector(
    stack: EdgeStack, cloud: FakeCloud, digits
) -> None:
    image, _ = confident_image(stack, digits, above=0.5)
    set_cloud_threshold(cloud, 0.5, human_review="ALWAYS")
    wait_until(
        lambda: raw_answer(stack, image)["confidence_threshold"] == 0.5, what="the policy after a refresh"
    )
    # A confident answer, but the detector wants people to see every query.
    iq = raw_answer(stack, image)
    assert iq["intellioptics"]["escalated"] is True and iq["done_processing"] is False
    assert iq["intellioptics"]["escalation_reason"] == "human_review_always"
    # The query's own choice wins.
    iq = raw_answer(stack, image, human_review="NEVER")
    assert iq["intellioptics"]["escalated"] is False and iq["result"]["label"] is not None

    # NEVER: even an answer below the threshold stays on the edge.
    set_cloud_threshold(cloud, 1.0, human_review="NEVER")
    wait_until(lambda: raw_answer(stack, image)["confidence_threshold"] == 1.0, what="NEVER after a refresh")
    iq = answer(stack, image)
    assert iq["result"]["confidence"] < 1.0 and iq["intellioptics"]["escalated"] is False
    assert iq["intellioptics"]["escalation_reason"] == "human_review_never"

    # An edge-only detector sends nothing to people: ALWAYS cannot hold there, the model answers.
    set_cloud_threshold(cloud, 0.5, human_review="ALWAYS")
    stack.put_config(edge_config(**{DIGIT: "fast_edge_only"}))
    wait_until(lambda: raw_answer(stack, image)["confidence_threshold"] == 0.5, what="ALWAYS after a refresh")
    iq = answer(stack, image)
    assert iq["intellioptics"]["escalated"] is False and iq["done_processing"] is True
