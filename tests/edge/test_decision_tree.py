"""One test per branch of the edge decision tree (docs/architecture.md §3), through the real nginx gateway (the
branches of a detector without a model, answered with its label prior, are in test_no_model.py)."""

from __future__ import annotations

import httpx
import pytest

from common.ids import new_detector_id
from tests.edge.conftest import DIGIT, NO_MODEL, SEVEN, UNKNOWN, edge_config, wait_until
from tests.support.stack import DEVICE, INTERNAL, EdgeStack

pytestmark = pytest.mark.processes

IQ_PATH = "/device-api/v1/image-queries"


def post(stack: EdgeStack, image: bytes, detector: str = DIGIT, **params: str) -> httpx.Response:
    return httpx.post(
        f"{stack.gateway_url}{IQ_PATH}",
        params={"detector_id": detector, **params},
        content=image,
        headers={"Content-Type": "image/jpeg", **DEVICE},
        timeout=15,
    )


def infer_direct(stack: EdgeStack, image: bytes, detector: str = DIGIT) -> dict:
    """What the inference service itself computes for these bytes."""
    resp = httpx.post(
        f"{stack.inference_url}/infer",
        params={"detector_id": detector},
        content=image,
        headers=INTERNAL,
        timeout=15,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def escalation_of(stack: EdgeStack, iq_id: str) -> dict:
    wait_until(lambda: iq_id in stack.cloud.state.escalations, what=f"escalation {iq_id} at the cloud")
    return stack.cloud.state.escalations[iq_id]


def test_confident_answer_comes_from_the_edge_and_is_not_escalated(stack: EdgeStack, digits) -> None:
    stack.put_config(edge_config())
    image, _ = digits[0]
    resp = post(stack, image)
    assert resp.status_code == 200, resp.text
    iq = resp.json()
    expected = infer_direct(stack, image)
    assert (iq["result"]["label"], iq["result"]["confidence"]) == (
        expected["label"],
        round(expected["confidence"], 6),
    )
    assert iq["result"]["from_edge"] is True and iq["result"]["source"] == "ALGORITHM"
    assert iq["result"]["confidence"] >= iq["confidence_threshold"] == 0.9
    assert iq["done_processing"] is True and iq["intellioptics"]["escalated"] is False
    # Escalations are written before the answer, so absence now means never.
    assert iq["id"] not in {row[0] for row in stack.outbox_rows()}
    assert iq["id"] not in stack.cloud.state.posts_per_id
    assert "edge;dur=" in resp.headers["server-timing"]


def test_low_confidence_is_escalated_through_the_outbox(stack: EdgeStack, digits) -> None:
    stack.put_config(edge_config())
    image, _ = digits[1]
    resp = post(stack, image, confidence_threshold="1.0")
    iq = resp.json()
    assert resp.status_code == 200 and iq["done_processing"] is False
    assert iq["result"]["confidence"] < 1.0 and iq["intellioptics"]["escalation_reason"] == "low_confidence"
    sent = escalation_of(stack, iq["id"])
    assert (
        sent["reason"] == "low_confidence" and sent["image_query"]["result"]["label"] == iq["result"]["label"]
    )
    assert stack.cloud.state.images[iq["id"]] == image
    wait_until(lambda: not stack.outbox_rows(), what="outbox to drain")


def test_out_of_domain_image_drifts_to_chance_and_escalates(stack: EdgeStack, photos) -> None:
    stack.put_config(edge_config())
    iq = post(stack, photos[0]).json()
    diag = iq["intellioptics"]
    assert diag["out_of_domain"] is True and diag["in_domain_score"] < 0.5
    # c' = q·c + (1−q)/K: with q small the answer sits close to chance (1/10), far below threshold.
    assert iq["result"]["confidence"] < 0.5 < iq["confidence_threshold"]
    assert diag["escalation_reason"] == "out_of_domain" and iq["done_processing"] is False
    assert escalation_of(stack, iq["id"])["reason"] == "out_of_domain"


def test_want_async_escalates_and_returns_a_pending_query(stack: EdgeStack, digits) -> None:
    stack.put_config(edge_config())
    image, _ = digits[2]
    iq = post(stack, image, want_async="True").json()
    assert iq["result"] is None and iq["done_processing"] is False
    assert escalation_of(stack, iq["id"])["reason"] == "want_async"


def test_human_review_always_escalates_even_a_confident_image(stack: EdgeStack, digits) -> None:
    stack.put_config(edge_config())
    image, _ = digits[3]
    iq = post(stack, image, human_review="ALWAYS").json()
    assert iq["done_processing"] is False
    assert escalation_of(stack, iq["id"])["reason"] == "human_review_always"


def test_unconfigured_detector_falls_back_to_the_cloud(stack: EdgeStack, digits) -> None:
    stack.put_config(edge_config())
    image, _ = digits[4]
    before = len(stack.cloud.state.fallbacks())
    resp = post(stack, image, detector=UNKNOWN)
    assert resp.status_code == 200 and resp.json()["served_by"] == "cloud"
    got = stack.cloud.state.fallbacks()[before:]
    assert len(got) == 1 and got[0].method == "POST" and got[0].body == image
    assert f"detector_id={UNKNOWN}" in got[0].query


def test_disabled_detector_falls_back_to_the_cloud(stack: EdgeStack, digits) -> None:
    stack.put_config(edge_config(**{SEVEN: "disabled"}))
    resp = post(stack, digits[5][0], detector=SEVEN)
    assert resp.status_code == 200 and resp.json()["served_by"] == "cloud"


def test_no_cloud_detector_without_a_model_or_prior_is_503_and_never_falls_back(
    stack: EdgeStack, digits
) -> None:
    # The cloud does not know NO_MODEL (no prior): the edge cannot answer, and must not hand it on.
    stack.put_config(edge_config(**{NO_MODEL: "no_cloud"}))
    before, posts = len(stack.cloud.state.fallbacks()), dict(stack.cloud.state.posts_per_id)
    resp = post(stack, digits[6][0], detector=NO_MODEL)
    assert resp.status_code == 503 and resp.headers["x-no-fallback"] == "1"
    assert "detail" in resp.json()
    assert len(stack.cloud.state.fallbacks()) == before and stack.cloud.state.posts_per_id == posts
    assert stack.outbox_rows() == []


def test_no_cloud_detector_without_a_model_answers_with_its_prior_as_final(stack: EdgeStack, digits) -> None:
    detector = new_detector_id()
    stack.cloud.set_prior(detector, ["YES", "NO"], [1, 4])
    stack.put_config(edge_config(**{detector: "no_cloud"}))
    before, posts = len(stack.cloud.state.fallbacks()), dict(stack.cloud.state.posts_per_id)
    resp = post(stack, digits[6][0], detector=detector)
    assert resp.status_code == 200, resp.text
    iq = resp.json()
    assert (iq["result"]["label"], iq["result"]["confidence"]) == ("NO", round(5 / 7, 6))
    assert iq["result"]["source"] == "ALGORITHM" and iq["done_processing"] is True
    assert iq["intellioptics"]["escalated"] is False
    assert iq["intellioptics"]["escalation_reason"] == "cloud_escalation_disabled"
    assert iq["id"] not in {row[0] for row in stack.outbox_rows()}
    assert len(stack.cloud.state.fallbacks()) == before and stack.cloud.state.posts_per_id == posts


def test_no_cloud_detector_answers_low_confidence_on_the_edge_without_escalating(
    stack: EdgeStack, digits, photos
) -> None:
    stack.put_config(edge_config(**{DIGIT: "no_cloud"}))
    before = dict(stack.cloud.state.posts_per_id)
    for image in (digits[7][0], photos[1]):
        iq = post(stack, image, confidence_threshold="1.0").json()
        assert iq["done_processing"] is True and iq["intellioptics"]["escalated"] is False
        assert iq["intellioptics"]["escalation_reason"] == "cloud_escalation_disabled"
        assert iq["id"] not in {row[0] for row in stack.outbox_rows()}
    assert stack.cloud.state.posts_per_id == before


def test_disable_cloud_escalation_in_a_custom_config(stack: EdgeStack, digits) -> None:
    stack.put_config(edge_config(**{DIGIT: "fast_edge_only"}))
    iq = post(stack, digits[8][0], confidence_threshold="1.0").json()
    assert iq["done_processing"] is True and iq["intellioptics"]["escalated"] is False
    assert iq["id"] not in stack.cloud.state.posts_per_id


def test_audit_rate_one_audits_every_confident_answer_without_changing_it(stack: EdgeStack, digits) -> None:
    stack.put_config(edge_config(audit_rate=1.0))
    answers = [post(stack, image).json() for image, _ in digits[10:15]]
    for iq, (image, _) in zip(answers, digits[10:15], strict=True):
        assert iq["done_processing"] is True and iq["result"]["label"] == infer_direct(stack, image)["label"]
        assert iq["intellioptics"]["audit"] is True
        assert escalation_of(stack, iq["id"])["reason"] == "audit"
    stack.put_config(edge_config())


def test_rate_limit_between_escalations_is_per_detector(stack: EdgeStack, digits) -> None:
    config = edge_config()
    config["edge_inference_configs"]["slow"] = {"min_time_between_escalations": 3600}
    config["detectors"][1]["edge_inference_config"] = "slow"  # SEVEN: no escalations yet in this module
    stack.put_config(config)
    first = post(stack, digits[16][0], detector=SEVEN, confidence_threshold="1.0").json()
    second = post(stack, digits[17][0], detector=SEVEN, confidence_threshold="1.0").json()
    assert first["intellioptics"]["escalated"] is True
    assert second["intellioptics"]["escalation_reason"] == "rate_limited"
    stack.put_config(edge_config())


def test_get_image_query_returns_the_edge_record(stack: EdgeStack, digits) -> None:
    stack.put_config(edge_config())
    iq = post(stack, digits[18][0]).json()
    got = httpx.get(f"{stack.gateway_url}{IQ_PATH}/{iq['id']}", headers=DEVICE, timeout=10)
    assert got.status_code == 200 and got.json() == iq
