"""A person's answer from the cloud reaches a client that reads an escalated query on the edge.

Through the real nginx gateway and edge-api, with the fake cloud serving the answer a test sets.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from launcher.processes import free_port
from tests.edge.conftest import DIGIT, edge_config, wait_until
from tests.support.fake_cloud import FakeCloud
from tests.support.stack import DEVICE, EdgeStack

pytestmark = pytest.mark.processes

IQ_PATH = "/device-api/v1/image-queries"
TOKEN = "io_edgetokenforcloudanswers_" + "a" * 16


@pytest.fixture(scope="module")
def stack(demo_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeStack]:
    cloud = FakeCloud(free_port()).start()
    s = EdgeStack(tmp_path_factory.mktemp("edge"), demo_models, cloud, edge_env={"EDGE_API_TOKEN": TOKEN})
    try:
        s.start(edge_config())
        yield s
    finally:
        s.stop()
        cloud.stop()


def post(stack: EdgeStack, image: bytes, **params: str) -> dict[str, Any]:
    resp = httpx.post(
        f"{stack.gateway_url}{IQ_PATH}",
        params={"detector_id": DIGIT, **params},
        content=image,
        headers=DEVICE,
        timeout=15,
    )
    assert resp.status_code == 200, resp.text
    iq: dict[str, Any] = resp.json()
    return iq


def get(stack: EdgeStack, iq_id: str) -> httpx.Response:
    return httpx.get(f"{stack.gateway_url}{IQ_PATH}/{iq_id}", headers=DEVICE, timeout=15)


def escalated(stack: EdgeStack, image: bytes) -> dict[str, Any]:
    """A query the edge is unsure of: answered at once, escalated, not final."""
    iq = post(stack, image, confidence_threshold="1.0")
    assert iq["intellioptics"]["escalated"] is True and iq["done_processing"] is False
    return iq


def cloud_view(iq: dict[str, Any], label: str, source: str = "HUMAN") -> dict[str, Any]:
    """The query as the cloud shows it once someone (or something) has answered."""
    return {
        **{k: v for k, v in iq.items() if k != "intellioptics"},
        "result": {
            "result_type": iq["result_type"],
            "confidence": 1.0 if source != "ALGORITHM" else 0.42,
            "source": source,
            "from_edge": False,
            "label": label,
        },
        "done_processing": source != "ALGORITHM",
    }


def test_a_person_s_answer_from_the_cloud_appears_on_the_edge_and_is_kept(stack: EdgeStack, digits) -> None:
    stack.put_config(edge_config())
    iq = escalated(stack, digits[30][0])

    before = get(stack, iq["id"])
    assert before.status_code == 200 and before.json() == iq
    (asked,) = stack.cloud.state.reads_of(iq["id"])
    assert asked.headers["x-api-token"] == TOKEN

    label = "3" if iq["result"]["label"] != "3" else "4"
    stack.cloud.state.answers[iq["id"]] = cloud_view(iq, label)
    after = get(stack, iq["id"])

    assert after.status_code == 200
    answered = after.json()
    assert answered["result"] == {
        "result_type": "multi_classification",
        "confidence": 1.0,
        "source": "HUMAN",
        "from_edge": False,
        "label": label,
    }
    assert answered["done_processing"] is True
    assert answered["id"] == iq["id"] and answered["created_at"] == iq["created_at"]
    assert answered["intellioptics"]["escalated"] is True  # the edge's diagnostics stay

    # Kept in the local record: later reads need no cloud, and survive it going away.
    reads = len(stack.cloud.state.reads_of(iq["id"]))
    stack.cloud.state.answers.pop(iq["id"])
    assert get(stack, iq["id"]).json() == answered
    assert len(stack.cloud.state.reads_of(iq["id"])) == reads


def test_a_customer_label_counts_as_a_person_s_answer(stack: EdgeStack, digits) -> None:
    stack.put_config(edge_config())
    iq = escalated(stack, digits[31][0])
    stack.cloud.state.answers[iq["id"]] = cloud_view(iq, "7", source="USER")

    answered = get(stack, iq["id"]).json()

    assert answered["result"]["source"] == "USER" and answered["result"]["label"] == "7"
    assert answered["done_processing"] is True


def test_a_model_answer_in_the_cloud_does_not_end_the_wait_for_a_person(stack: EdgeStack, digits) -> None:
    stack.put_config(edge_config())
    iq = escalated(stack, digits[32][0])
    stack.cloud.state.answers[iq["id"]] = cloud_view(iq, "1", source="ALGORITHM")

    assert get(stack, iq["id"]).json() == iq
    assert get(stack, iq["id"]).json() == iq
    assert len(stack.cloud.state.reads_of(iq["id"])) == 2  # still asking


def test_only_escalated_queries_ask_the_cloud(stack: EdgeStack, digits) -> None:
    stack.put_config(edge_config())
    iq = post(stack, digits[33][0], confidence_threshold="0.0")
    assert iq["intellioptics"]["escalated"] is False and iq["done_processing"] is True
    # Even an answer waiting in the cloud is not asked for.
    stack.cloud.state.answers[iq["id"]] = cloud_view(iq, "5")

    for _ in range(3):
        got = get(stack, iq["id"])
        assert got.status_code == 200 and got.json() == iq

    assert stack.cloud.state.reads_of(iq["id"]) == []


def test_with_the_cloud_down_the_edge_returns_its_own_record(stack: EdgeStack, digits) -> None:
    stack.put_config(edge_config())
    iq = escalated(stack, digits[34][0])
    stack.cloud.stop()
    try:
        started = time.monotonic()
        for _ in range(5):
            got = get(stack, iq["id"])
            assert got.status_code == 200 and got.json() == iq
        # Every read answered without waiting out the cloud's timeouts.
        assert time.monotonic() - started < 10
    finally:
        stack.cloud.start()

    # Back up: the answer arrives on the next read once the edge sees the cloud again.
    stack.cloud.state.answers[iq["id"]] = cloud_view(iq, "8")
    wait_until(
        lambda: get(stack, iq["id"]).json()["done_processing"] is True, what="the answer after the outage"
    )
    assert get(stack, iq["id"]).json()["result"]["label"] == "8"
