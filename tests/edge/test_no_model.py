"""A configured detector without a model on this edge answers at once with its label prior (fetched from
the cloud), source ALGORITHM, and escalates through the outbox (reason no_model) by the usual rules;
readiness and /status say so; a model that arrives later takes over without a restart.

Real processes (inference, edge-api, nginx) on a private copy of the demo model root, so a test can
install a model; the fake cloud serves the priors.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from common.bundle import DetectorMode, current_bundle_dir
from common.ids import new_detector_id
from tests.edge.conftest import DIGIT, assert_delivered_once, edge_config, fake_cloud_stack, wait_until
from tests.support.fake_cloud import FakeCloud
from tests.support.models import clone_bundle, copy_model_root
from tests.support.stack import ADMIN, DEVICE, EdgeStack

pytestmark = pytest.mark.processes

IQ_PATH = "/device-api/v1/image-queries"
# Short enough for a test to see a refresh and a model's arrival, long enough to be cached between calls.
EDGE_ENV = {"EDGE_PRIOR_TTL_S": "0.5", "EDGE_PRIOR_RETRY_S": "0.2", "EDGE_DETECTOR_INFO_TTL_S": "0.2"}


@pytest.fixture(scope="module")
def stack(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeStack]:
    workdir = tmp_path_factory.mktemp("edge-no-model")
    with fake_cloud_stack(copy_model_root(demo_models, workdir / "models"), workdir, EDGE_ENV) as s:
        yield s


@pytest.fixture
def cloud(stack: EdgeStack) -> FakeCloud:
    assert isinstance(stack.cloud, FakeCloud)
    stack.cloud.state.fail_escalations_with = None
    return stack.cloud


def configure(stack: EdgeStack, **presets: str) -> None:
    """The demo detectors plus these, with a slow-escalating preset on offer."""
    config = edge_config(**presets)
    config["edge_inference_configs"]["slow"] = {"min_time_between_escalations": 3600}
    stack.put_config(config)


def post(
    stack: EdgeStack, image: bytes, detector: str, *, url: str | None = None, **params: str
) -> httpx.Response:
    return httpx.post(
        f"{url or stack.gateway_url}{IQ_PATH}",
        params={"detector_id": detector, **params},
        content=image,
        headers={"Content-Type": "image/jpeg", **DEVICE},
        timeout=15,
    )


def answer(stack: EdgeStack, image: bytes, detector: str, **params: str) -> dict[str, Any]:
    resp = post(stack, image, detector, **params)
    assert resp.status_code == 200, resp.text
    iq: dict[str, Any] = resp.json()
    return iq


def readiness(stack: EdgeStack) -> dict[str, Any]:
    resp = httpx.get(f"{stack.gateway_url}/edge-detector-readiness", headers=DEVICE, timeout=10)
    assert resp.status_code == 200, resp.text
    ready: dict[str, Any] = resp.json()
    return ready


def detector_status(stack: EdgeStack, detector: str) -> dict[str, Any]:
    status = httpx.get(f"{stack.edge_url}/status", headers=ADMIN, timeout=10).json()
    (entry,) = [d for d in status["detectors"] if d["detector_id"] == detector]
    return entry  # type: ignore[no-any-return]


def test_a_detector_without_a_model_answers_with_its_prior_and_escalates_once_through_the_outbox(
    stack: EdgeStack, cloud: FakeCloud, digits
) -> None:
    detector = new_detector_id()
    cloud.set_prior(detector, ["YES", "NO"], [3, 7], query="Is the door open?")
    configure(stack, **{detector: "fast"})
    cloud.state.fail_escalations_with = 503  # held in the outbox until the cloud takes it
    before = len(cloud.state.fallbacks())
    image = digits[0][0]

    iq = answer(stack, image, detector)

    # The most frequent label, with its smoothed prior (7 + 1) / (10 + 2).
    result = iq["result"]
    assert (result["label"], result["confidence"]) == ("NO", round(8 / 12, 6))
    assert result["source"] == "ALGORITHM" and result["from_edge"] is True
    assert result["result_type"] == "binary_classification" and iq["query"] == "Is the door open?"
    assert iq["done_processing"] is False and iq["confidence_threshold"] == 0.9
    diag = iq["intellioptics"]
    assert diag["model_version"] is None and diag["escalated"] is True
    assert diag["escalation_reason"] == "no_model"
    assert (iq["id"], "no_model", "pending") in stack.outbox_rows()
    assert len(cloud.state.fallbacks()) == before  # answered by the edge, not handed to the cloud

    cloud.state.fail_escalations_with = None
    assert_delivered_once(stack, iq["id"])
    sent = cloud.state.escalations[iq["id"]]
    assert sent["reason"] == "no_model" and sent["image_query"]["result"]["label"] == "NO"
    assert cloud.state.images[iq["id"]] == image
    # The stored record is what a later read returns.
    got = httpx.get(f"{stack.gateway_url}{IQ_PATH}/{iq['id']}", headers=DEVICE, timeout=10).json()
    assert got["result"] == result


def test_multi_class_and_count_detectors_answer_with_their_most_frequent_label(
    stack: EdgeStack, cloud: FakeCloud, digits
) -> None:
    colours, counter = new_detector_id(), new_detector_id()
    cloud.set_prior(colours, ["red", "green", "blue"], [1, 5, 2], mode=DetectorMode.MULTI_CLASS)
    cloud.set_prior(counter, ["0", "1", "2"], [0, 0, 4], mode=DetectorMode.COUNT)
    configure(stack, **{colours: "fast", counter: "fast"})

    iq = answer(stack, digits[1][0], colours)
    assert iq["result_type"] == "multi_classification"
    assert (iq["result"]["label"], iq["result"]["confidence"]) == ("green", round(6 / 11, 6))
    iq = answer(stack, digits[1][0], counter)
    assert iq["result_type"] == "counting" and iq["result"]["count"] == 2
    assert iq["result"]["confidence"] == round(5 / 7, 6)
    # Before any label: the first class, at chance.
    fresh = new_detector_id()
    cloud.set_prior(fresh, ["YES", "NO"], [0, 0])
    configure(stack, **{fresh: "fast"})
    iq = answer(stack, digits[1][0], fresh)
    assert (iq["result"]["label"], iq["result"]["confidence"]) == ("YES", 0.5)


def test_the_escalation_rules_apply_to_prior_answers(stack: EdgeStack, cloud: FakeCloud, digits) -> None:
    fast, slow, edge_only = new_detector_id(), new_detector_id(), new_detector_id()
    for detector in (fast, slow, edge_only):
        cloud.set_prior(detector, ["YES", "NO"], [2, 1])
    configure(stack, **{fast: "fast", slow: "slow", edge_only: "no_cloud"})
    image = digits[2][0]

    never = answer(stack, image, fast, human_review="NEVER")
    assert never["done_processing"] is True and never["intellioptics"]["escalated"] is False
    assert never["intellioptics"]["escalation_reason"] == "human_review_never"

    offline = answer(stack, image, edge_only)
    assert offline["done_processing"] is True and offline["result"]["label"] == "YES"
    assert offline["intellioptics"]["escalation_reason"] == "cloud_escalation_disabled"

    first = answer(stack, image, slow)
    second = answer(stack, image, slow)
    assert first["intellioptics"]["escalation_reason"] == "no_model"
    assert second["intellioptics"]["escalation_reason"] == "rate_limited"
    assert second["done_processing"] is True

    pending = answer(stack, image, fast, want_async="True")
    assert pending["result"] is None and pending["intellioptics"]["escalation_reason"] == "want_async"
    always = answer(stack, image, fast, human_review="ALWAYS")
    assert always["intellioptics"]["escalation_reason"] == "human_review_always"
    assert always["query"] == "Is it there?" and always["result_type"] == "binary_classification"

    for iq in (first, pending, always):
        assert_delivered_once(stack, iq["id"])
    for iq in (never, offline, second):
        assert iq["id"] not in cloud.state.posts_per_id


def test_bad_input_to_a_detector_without_a_model_is_refused_and_never_escalated(
    stack: EdgeStack, cloud: FakeCloud, digits
) -> None:
    detector = new_detector_id()
    cloud.set_prior(detector, ["YES", "NO"], [1, 1])
    configure(stack, **{detector: "fast"})
    gif = io.BytesIO()
    Image.new("P", (16, 16)).save(gif, "GIF")
    big = io.BytesIO()
    Image.open(io.BytesIO(digits[3][0])).resize((256, 256)).save(big, "JPEG", quality=95)
    jpeg = big.getvalue()
    before_fallbacks, before_posts = len(cloud.state.fallbacks()), dict(cloud.state.posts_per_id)

    for name, body, status in [
        ("empty", b"", 400),
        ("gif", gif.getvalue(), 415),
        ("json", b'{"image": "no"}', 415),
        ("truncated jpeg", jpeg[: len(jpeg) // 2], 400),
    ]:
        for params in ({}, {"want_async": "True"}):
            resp = post(stack, body, detector, **params)
            assert resp.status_code == status, f"{name} {params}: {resp.status_code} {resp.text}"
            assert resp.json()["detail"], name
    assert len(cloud.state.fallbacks()) == before_fallbacks
    assert cloud.state.posts_per_id == before_posts
    assert stack.outbox_rows() == []


def test_readiness_and_status_report_a_detector_whose_prior_is_known(
    stack: EdgeStack, cloud: FakeCloud, digits
) -> None:
    detector, unknown = new_detector_id(), new_detector_id()
    configure(stack, **{detector: "fast", unknown: "fast"})
    # Neither is known to the cloud yet: not ready, and the edge cannot answer them.
    wait_until(lambda: cloud.state.prior_reads(detector) != [], what="prefetch after the config")
    assert readiness(stack)[detector] == {"ready": False}
    assert post(stack, digits[4][0], detector, url=stack.edge_url).status_code == 503
    assert detector_status(stack, detector)["state"] == "no model yet"
    assert detector_status(stack, detector)["answers_with"] is None

    cloud.set_prior(detector, ["YES", "NO"], [0, 3])
    wait_until(
        lambda: readiness(stack)[detector] == {"ready": True}, what="readiness once the prior is known"
    )
    assert readiness(stack)[unknown] == {"ready": False}
    assert readiness(stack)[DIGIT] == {"ready": True}
    status = detector_status(stack, detector)
    assert status["state"] == "no model yet" and status["answers_with"] == "label prior"
    assert status["model_version"] is None
    assert (status["prior"]["label"], status["prior"]["counts"]) == ("NO", [0, 3])
    assert detector_status(stack, DIGIT)["state"] == "serving"
    # The SDK's get_detector (asked before it waits for an answer) is served from the prior too.
    got = httpx.get(
        f"{stack.gateway_url}/device-api/v1/detectors/{detector}", headers=DEVICE, timeout=10
    ).json()
    assert got["id"] == detector and got["mode"] == "BINARY" and got["query"] == "Is it there?"


def test_the_prior_is_refreshed_in_the_background(stack: EdgeStack, cloud: FakeCloud, digits) -> None:
    detector = new_detector_id()
    cloud.set_prior(detector, ["YES", "NO"], [5, 0])
    configure(stack, **{detector: "fast"})
    assert answer(stack, digits[5][0], detector)["result"]["label"] == "YES"

    cloud.set_prior(detector, ["YES", "NO"], [5, 9])
    wait_until(
        lambda: answer(stack, digits[5][0], detector)["result"]["label"] == "NO",
        what="the new counts after the prior's TTL",
    )


def test_a_model_that_arrives_takes_over_without_a_restart(
    stack: EdgeStack, cloud: FakeCloud, digits
) -> None:
    detector = new_detector_id()
    cloud.set_prior(detector, [str(i) for i in range(10)], [0] * 10, mode=DetectorMode.MULTI_CLASS)
    configure(stack, **{detector: "fast"})
    image = digits[6][0]
    first = answer(stack, image, detector)
    assert first["intellioptics"]["model_version"] is None
    pid = stack.edge.pid if stack.edge is not None else None

    digit_bundle = current_bundle_dir(stack.model_root, DIGIT)
    assert digit_bundle is not None
    clone_bundle(digit_bundle, detector, stack.model_root, version="arrived-1")

    wait_until(
        lambda: answer(stack, image, detector)["intellioptics"]["model_version"] == "arrived-1",
        what="the model to answer",
    )
    iq = answer(stack, image, detector)
    assert iq["intellioptics"]["escalation_reason"] != "no_model"
    assert iq["intellioptics"]["in_domain_score"] is not None
    assert detector_status(stack, detector)["state"] == "serving"
    assert stack.edge is not None and stack.edge.pid == pid


def test_a_detector_the_cloud_does_not_know_still_falls_back_to_the_cloud(
    stack: EdgeStack, cloud: FakeCloud, digits
) -> None:
    detector = new_detector_id()
    configure(stack, **{detector: "fast"})
    before = len(cloud.state.fallbacks())
    resp = post(stack, digits[7][0], detector)
    assert resp.status_code == 200 and resp.json()["served_by"] == "cloud"
    assert len(cloud.state.fallbacks()) == before + 1
    assert stack.outbox_rows() == []
