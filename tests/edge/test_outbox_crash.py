"""Escalations written before a SIGKILL of edge-api reach the cloud after restart, each exactly once."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from launcher.processes import free_port
from tests.edge.conftest import DIGIT, edge_config, wait_until
from tests.support.cloud import DEVICE_TOKEN
from tests.support.fake_cloud import FakeCloud
from tests.support.stack import ADMIN, DEVICE, EdgeStack

pytestmark = pytest.mark.processes


@pytest.fixture
def offline_stack(demo_models: Path, tmp_path: Path):
    cloud = FakeCloud(free_port())  # not started: the cloud is down
    s = EdgeStack(tmp_path, demo_models, cloud, local_tokens=(DEVICE_TOKEN,))
    s.start(edge_config())
    yield s
    s.stop()
    cloud.stop()


def submit_async(s: EdgeStack, image: bytes) -> str:
    """A want_async query: always escalated, so it always goes through the outbox."""
    resp = httpx.post(
        f"{s.edge_url}/device-api/v1/image-queries",
        params={"detector_id": DIGIT, "want_async": "true"},
        content=image,
        headers=DEVICE,
        timeout=15,
    )
    assert resp.status_code == 200, resp.text
    return str(resp.json()["id"])


def test_outbox_survives_sigkill_and_drains_exactly_once(offline_stack: EdgeStack, digits, photos) -> None:
    s = offline_stack
    images = [img for img, _ in digits[:20]] + photos[:10]
    ids = []
    for image in images:
        resp = httpx.post(
            f"{s.edge_url}/device-api/v1/image-queries",
            params={"detector_id": DIGIT, "confidence_threshold": "1.0"},
            content=image,
            headers=DEVICE,
            timeout=15,
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["intellioptics"]["escalated"] is True
        ids.append(resp.json()["id"])
    # Offline: everything is kept, and the edge says the cloud is unreachable.
    assert {row[0] for row in s.outbox_rows()} == set(ids)
    status = httpx.get(f"{s.edge_url}/status", headers=ADMIN, timeout=10).json()
    assert status["outbox"]["pending"] == len(ids) and status["cloud"]["reachable"] is False

    s.kill_edge()
    s.cloud.start()
    s.start_edge()
    wait_until(
        lambda: set(s.cloud.state.escalations) == set(ids), timeout=30, what="all escalations delivered"
    )
    wait_until(lambda: not s.outbox_rows(), what="outbox to drain")
    assert sorted(s.cloud.state.escalations) == sorted(ids)
    assert all(s.cloud.state.posts_per_id[i] == 1 for i in ids)
    for iq_id, image in zip(ids, images, strict=True):
        assert s.cloud.state.images[iq_id] == image
    # The backlog went many to a request.
    assert sum(s.cloud.state.batches) == len(ids) and max(s.cloud.state.batches) > 1


def test_a_cloud_without_the_batch_route_gets_them_one_by_one(offline_stack: EdgeStack, digits) -> None:
    s = offline_stack
    s.cloud.state.batch_route = False
    ids = [submit_async(s, image) for image, _ in digits[:6]]
    s.cloud.start()
    wait_until(lambda: set(s.cloud.state.escalations) == set(ids), timeout=30, what="delivery one by one")
    wait_until(lambda: not s.outbox_rows(), what="outbox to drain")
    assert all(s.cloud.state.posts_per_id[i] == 1 for i in ids) and not s.cloud.state.batches


def test_an_entry_refused_inside_a_batch_is_dead_and_the_others_delivered(
    offline_stack: EdgeStack, digits
) -> None:
    s = offline_stack
    ids = [submit_async(s, image) for image, _ in digits[:5]]
    s.cloud.state.entry_status[ids[2]] = 409
    s.cloud.start()
    wait_until(lambda: (ids[2], "want_async", "dead") in s.outbox_rows(), what="the refused entry dead")
    wait_until(lambda: set(s.cloud.state.escalations) == set(ids) - {ids[2]}, what="the others delivered")
    assert [row[0] for row in s.outbox_rows()] == [ids[2]]
    assert s.cloud.state.batches == [5]


def test_cloud_rejecting_an_escalation_keeps_it_as_dead_not_deleted(offline_stack: EdgeStack, digits) -> None:
    s = offline_stack
    s.cloud.state.fail_escalations_with = 400
    s.cloud.start()
    iq_id = submit_async(s, digits[0][0])
    wait_until(lambda: (iq_id, "want_async", "dead") in s.outbox_rows(), what="dead-lettered entry")
    assert httpx.get(f"{s.edge_url}/status", headers=ADMIN, timeout=10).json()["outbox"]["dead"] == 1


def test_cloud_5xx_is_retried_until_accepted(offline_stack: EdgeStack, digits) -> None:
    s = offline_stack
    s.cloud.state.fail_escalations_with = 503
    s.cloud.start()
    iq_id = submit_async(s, digits[1][0])
    wait_until(lambda: s.cloud.state.posts_per_id.get(iq_id, 0) >= 2, what="retries")
    s.cloud.state.fail_escalations_with = None
    wait_until(lambda: iq_id in s.cloud.state.escalations, what="delivery after recovery")
    wait_until(lambda: not s.outbox_rows(), what="outbox to drain")
