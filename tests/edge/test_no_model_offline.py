"""A detector without a model keeps answering with its last prior while the cloud is down, and after an
edge-api restart (the prior is kept in the edge's SQLite store); with no prior ever fetched and the
cloud down, the edge answers 503 as before (the gateway then asks the cloud)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.ids import new_detector_id
from launcher.processes import free_port
from tests.edge.conftest import edge_config, wait_until
from tests.support.cloud import DEVICE_TOKEN
from tests.support.fake_cloud import FakeCloud
from tests.support.stack import DEVICE, EdgeStack

pytestmark = pytest.mark.processes

IQ_PATH = "/device-api/v1/image-queries"
DETECTOR = new_detector_id()


@pytest.fixture
def offline_stack(demo_models: Path, tmp_path: Path) -> Iterator[EdgeStack]:
    """The cloud is not started: each test starts it when it wants one."""
    cloud = FakeCloud(free_port())
    s = EdgeStack(
        tmp_path,
        demo_models,
        cloud,
        edge_env={"EDGE_PRIOR_TTL_S": "0.2", "EDGE_PRIOR_RETRY_S": "0.1"},
        # A box that boots offline accepts the cameras its local token file lists.
        local_tokens=(DEVICE_TOKEN,),
    )
    s.start(edge_config(**{DETECTOR: "fast"}))
    yield s
    s.stop()
    cloud.stop()


def ask(stack: EdgeStack, image: bytes) -> httpx.Response:
    """Straight to edge-api: its own answer, without the gateway's fallback."""
    return httpx.post(
        f"{stack.edge_url}{IQ_PATH}",
        params={"detector_id": DETECTOR},
        content=image,
        headers=DEVICE,
        timeout=15,
    )


def prior_answer(stack: EdgeStack, image: bytes) -> dict[str, Any]:
    resp = ask(stack, image)
    assert resp.status_code == 200, resp.text
    iq: dict[str, Any] = resp.json()
    assert iq["result"]["source"] == "ALGORITHM" and iq["intellioptics"]["model_version"] is None
    assert (iq["result"]["label"], iq["result"]["confidence"]) == ("NO", round(3 / 5, 6))
    assert iq["intellioptics"]["escalation_reason"] == "no_model"
    return iq


def ready(stack: EdgeStack) -> bool:
    return bool(
        httpx.get(f"{stack.edge_url}/edge-detector-readiness", headers=DEVICE, timeout=10).json()[DETECTOR][
            "ready"
        ]
    )


def test_a_prior_fetched_once_answers_with_the_cloud_down_and_after_a_restart(
    offline_stack: EdgeStack, digits
) -> None:
    s = offline_stack
    cloud = s.cloud
    assert isinstance(cloud, FakeCloud)
    cloud.set_prior(DETECTOR, ["YES", "NO"], [1, 2])
    cloud.start()
    wait_until(lambda: ready(s), what="the prior")
    ids = [prior_answer(s, digits[0][0])["id"]]

    cloud.stop()
    ids += [prior_answer(s, image)["id"] for image, _ in digits[1:3]]  # stale by now: still answered
    s.kill_edge()
    s.start_edge()
    ids.append(prior_answer(s, digits[3][0])["id"])
    assert ready(s)
    assert {row[0] for row in s.outbox_rows()} >= set(ids[1:])

    cloud.start()
    wait_until(lambda: set(cloud.state.escalations) == set(ids), what="every escalation delivered")
    wait_until(lambda: not s.outbox_rows(), what="outbox to drain")
    assert all(cloud.state.posts_per_id[i] == 1 for i in ids)
    assert {cloud.state.escalations[i]["reason"] for i in ids} == {"no_model"}


def test_with_no_prior_ever_fetched_and_the_cloud_down_the_edge_answers_503(
    offline_stack: EdgeStack, digits
) -> None:
    s = offline_stack
    resp = ask(s, digits[0][0])
    assert resp.status_code == 503
    assert "x-no-fallback" not in resp.headers  # the gateway may ask the cloud
    assert "label prior is not known" in resp.json()["detail"]
    assert not ready(s)
    assert s.outbox_rows() == []
