"""Alert rules on the edge (docs/architecture.md §12): confident answers feed a detector's rules (from its
prior), a firing is stored before the answer returns and reaches the cloud exactly once, through 5xx
answers, a refusal, and a SIGKILL of edge-api while the cloud is down.

Real processes (inference on a private copy of the demo models, edge-api, nginx); the fake cloud serves
the priors with their rules and takes the firings. Each test gets a detector of its own: configured
without a model (so its prior, rules included, is fetched), then given a copy of the digit model.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.bundle import DetectorMode, current_bundle_dir
from common.ids import new_detector_id, new_id
from tests.edge.conftest import DIGIT, edge_config, fake_cloud_stack, wait_until
from tests.support.fake_cloud import FakeCloud, alert_rule
from tests.support.models import clone_bundle, copy_model_root
from tests.support.stack import ADMIN, DEVICE, INTERNAL, EdgeStack

pytestmark = pytest.mark.processes

IQ_PATH = "/device-api/v1/image-queries"
THRESHOLD = "0.6"  # sent with every query, so "confident" does not depend on where a threshold comes from
EDGE_ENV = {"EDGE_DETECTOR_INFO_TTL_S": "0.2", "EDGE_PRIOR_RETRY_S": "0.2"}


@pytest.fixture(scope="module")
def stack(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeStack]:
    workdir = tmp_path_factory.mktemp("edge-alerts")
    with fake_cloud_stack(copy_model_root(demo_models, workdir / "models"), workdir, EDGE_ENV) as s:
        yield s


@pytest.fixture
def cloud(stack: EdgeStack) -> FakeCloud:
    assert isinstance(stack.cloud, FakeCloud)
    return stack.cloud


@pytest.fixture(scope="module")
def answers(stack: EdgeStack, digits: list[tuple[bytes, int]]) -> dict[str, bytes]:
    """One image per label the digit model gives confidently and in domain (asked of inference
    directly, so no alert rule sees these)."""
    found: dict[str, bytes] = {}
    for image, _ in digits:
        resp = httpx.post(
            f"{stack.inference_url}/infer",
            params={"detector_id": DIGIT},
            content=image,
            headers=INTERNAL,
            timeout=15,
        )
        inf = resp.json()
        if inf["confidence"] >= 0.9 and inf["in_domain"] >= 0.5:
            found.setdefault(inf["label"], image)
    assert len(found) >= 2, found
    return found


def post(stack: EdgeStack, image: bytes, detector: str) -> dict[str, Any]:
    resp = httpx.post(
        f"{stack.edge_url}{IQ_PATH}",
        params={"detector_id": detector, "confidence_threshold": THRESHOLD},
        content=image,
        headers={"Content-Type": "image/jpeg", **DEVICE},
        timeout=15,
    )
    assert resp.status_code == 200, resp.text
    iq: dict[str, Any] = resp.json()
    return iq


def watched_detector(
    stack: EdgeStack, cloud: FakeCloud, photo: bytes, rules: list[tuple[str, str, int, float]]
) -> str:
    """A new detector with these (rule id, label, consecutive, cooldown_s) answer_is rules, answering
    with a copy of the digit model."""
    detector = new_detector_id()
    cloud.set_prior(
        detector,
        [str(i) for i in range(10)],
        [0] * 10,
        mode=DetectorMode.MULTI_CLASS,
        alert_rules=[
            alert_rule(
                rule_id,
                detector,
                {"kind": "answer_is", "label": label},
                consecutive=consecutive,
                cooldown_s=cooldown,
            )
            for rule_id, label, consecutive, cooldown in rules
        ],
    )
    config = edge_config()
    config["detectors"].append({"detector_id": detector, "edge_inference_config": "fast"})
    stack.put_config(config)
    wait_until(lambda: detector_status(stack, detector)["prior"] is not None, what="the prior with its rules")
    digit_bundle = current_bundle_dir(stack.model_root, DIGIT)
    assert digit_bundle is not None
    clone_bundle(digit_bundle, detector, stack.model_root, version="alerts-1")
    # A photo is out of domain, so the answers that show the model has arrived feed no rule.
    wait_until(
        lambda: post(stack, photo, detector)["intellioptics"]["model_version"] == "alerts-1",
        what="the model to answer",
    )
    return detector


def detector_status(stack: EdgeStack, detector: str) -> dict[str, Any]:
    (entry,) = [d for d in stack.status()["detectors"] if d["detector_id"] == detector]
    return entry  # type: ignore[no-any-return]


def stored_firings(stack: EdgeStack) -> list[tuple[str, str, str]]:
    """(firing_id, state, rule_id) of what edge-api still holds."""
    with sqlite3.connect(stack.data_dir / "edge.sqlite3") as conn:
        rows = conn.execute("SELECT firing_id, state, json_extract(body, '$.rule_id') FROM alert_firings")
        return [(str(i), str(s), str(r)) for i, s, r in rows]


def new_rule_id() -> str:
    return new_id("alr")


def test_a_streak_of_confident_answers_fires_once_and_reaches_the_cloud(
    stack: EdgeStack, cloud: FakeCloud, answers: dict[str, bytes], photos: list[bytes]
) -> None:
    (label, match), (_, other) = list(answers.items())[:2]
    rule = new_rule_id()
    detector = watched_detector(stack, cloud, photos[0], [(rule, label, 3, 300.0)])

    # A confident mismatch breaks the streak; an unsure (out-of-domain) answer neither breaks nor extends it.
    ids = [post(stack, image, detector)["id"] for image in (match, match, other, match, match, photos[1])]
    assert stored_firings(stack) == []  # stored before the answer returns: none yet means none
    last = post(stack, match, detector)
    wait_until(lambda: cloud.firings_of(rule) != [], what="the firing at the cloud")
    (firing,) = cloud.firings_of(rule)
    assert (firing["detector_id"], firing["label"], firing["streak"]) == (detector, label, 3)
    assert firing["image_query_id"] == last["id"] and last["id"] not in ids
    assert firing["confidence"] == last["result"]["confidence"] and firing["count"] is None
    assert cloud.state.firing_records[firing["firing_id"]] == 1 and cloud.state.firing_edges[-1]
    wait_until(lambda: stored_firings(stack) == [], what="the firing to leave the store")

    # Three more in a row, inside the rule's cooldown: no second firing.
    for _ in range(3):
        post(stack, match, detector)
    assert stored_firings(stack) == [] and len(cloud.firings_of(rule)) == 1
    alerts = stack.status()["alerts"]
    assert (alerts["pending"], alerts["last_sent_at"] is not None) == (0, True)
    metrics = httpx.get(f"{stack.edge_url}/metrics", headers=ADMIN, timeout=10).text
    assert f'edge_alert_firings_total{{detector_id="{detector}",rule_id="{rule}"}} 1.0' in metrics


def test_a_cloud_answering_500_gets_the_firing_again_and_records_it_once(
    stack: EdgeStack, cloud: FakeCloud, answers: dict[str, bytes], photos: list[bytes]
) -> None:
    label, image = next(iter(answers.items()))
    rule = new_rule_id()
    detector = watched_detector(stack, cloud, photos[0], [(rule, label, 1, 0.0)])
    cloud.state.fail_firings_with = 500
    try:
        post(stack, image, detector)
        ((firing_id, state, _),) = stored_firings(stack)
        assert state == "pending"
        wait_until(lambda: cloud.state.firing_posts.get(firing_id, 0) >= 2, what="retries")
        alerts = stack.status()["alerts"]
        assert alerts["pending"] == 1 and "500" in alerts["last_error"]
    finally:
        cloud.state.fail_firings_with = None
    wait_until(lambda: stored_firings(stack) == [], what="delivery after recovery")
    assert [f["firing_id"] for f in cloud.firings_of(rule)] == [firing_id]
    assert cloud.state.firing_records[firing_id] == 1


def test_a_refused_firing_is_dead_and_never_sent_again(
    stack: EdgeStack, cloud: FakeCloud, answers: dict[str, bytes], photos: list[bytes]
) -> None:
    label, image = next(iter(answers.items()))
    gone, kept = new_rule_id(), new_rule_id()
    detector = watched_detector(stack, cloud, photos[0], [(gone, label, 1, 0.0), (kept, label, 1, 0.0)])
    cloud.state.refused_rules[gone] = "alert rule not found"
    dead_before = stack.status()["alerts"]["dead"]

    post(stack, image, detector)  # both rules fire: one batch, one refusal
    wait_until(lambda: [r[1:] for r in stored_firings(stack)] == [("dead", gone)], what="the refusal")
    ((dead_id, _, _),) = stored_firings(stack)
    assert len(cloud.firings_of(kept)) == 1 and cloud.firings_of(gone) == []

    post(stack, image, detector)  # the next batch carries the new firings only
    wait_until(lambda: len(cloud.firings_of(kept)) == 2, what="the second firing")
    wait_until(lambda: len(stored_firings(stack)) == 2, what="the second refusal")
    assert cloud.state.firing_posts[dead_id] == 1
    alerts = stack.status()["alerts"]
    assert alerts["dead"] == dead_before + 2 and "alert rule not found" in alerts["last_error"]


def test_a_firing_kept_through_a_sigkill_with_the_cloud_down_arrives_once(
    stack: EdgeStack, cloud: FakeCloud, answers: dict[str, bytes], photos: list[bytes]
) -> None:
    label, image = next(iter(answers.items()))
    rule = new_rule_id()
    detector = watched_detector(stack, cloud, photos[0], [(rule, label, 2, 0.0)])
    dead = {r[0] for r in stored_firings(stack)}
    cloud.stop()
    try:
        post(stack, image, detector)
        last = post(stack, image, detector)
        ((firing_id, state, _),) = [r for r in stored_firings(stack) if r[0] not in dead]
        assert state == "pending"
        stack.kill_edge()
    finally:
        cloud.start()
    stack.start_edge()
    wait_until(lambda: cloud.firings_of(rule) != [], what="the firing after the restart")
    (firing,) = cloud.firings_of(rule)
    assert (firing["firing_id"], firing["image_query_id"], firing["streak"]) == (firing_id, last["id"], 2)
    wait_until(lambda: {r[0] for r in stored_firings(stack)} == dead, what="the store to drain")
    assert cloud.state.firing_records[firing_id] == cloud.state.firing_posts[firing_id] == 1
