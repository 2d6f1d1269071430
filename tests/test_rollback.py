"""A rollback on the cloud reaches the edge within one refresh period.

Real processes throughout: the cloud API (registry) on a fresh database, inference on an empty model
root, edge-api, nginx and the updater polling the cloud every REFRESH_S (the edge config's
refresh_rate). v1 is in production when the edge starts, v2 is promoted and served, then an admin rolls
back: the first answer after one refresh period plus a little slack for the swap names v1, which came
from the copy the updater kept on disk. The heartbeat reports it to the cloud, edge-api's /status shows
the updater's view, and SIGTERM stops the updater cleanly.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from common.bundle import current_bundle_dir
from tests.support.stack import ADMIN
from tests.support.updater import UpdaterEdge, bundle_archive, updater_edge, updater_status, wait_for

DIGIT = "det_DemoWhichDigit0000000000000"
REFRESH_S = 1.0
# The swap itself: a kept version is verified, repointed, loaded and warmed (well under a second on an
# idle box); the rest is room for a busy CI machine.
SLACK_S = 2.0


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, demo_models: Path) -> Iterator[UpdaterEdge]:
    bundle = current_bundle_dir(demo_models, DIGIT)
    assert bundle is not None
    with updater_edge(tmp_path_factory.mktemp("rollback"), bundle, "rb-1", refresh_rate_s=REFRESH_S) as loop:
        loop.registry.upload(
            DIGIT,
            bundle_archive(bundle, tmp_path_factory.mktemp("rb-archives") / "rb-2.tar.gz", version="rb-2"),
        )
        yield loop


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_rollback_on_the_cloud_is_served_by_the_edge_within_one_refresh_period(
    edge: UpdaterEdge, digits
) -> None:
    image = digits[0][0]
    edge.wait_until_served("rb-1", image)
    models = edge.registry.http.get(f"/api/v1/detectors/{DIGIT}/models").json()["results"]
    rb2 = next(m["id"] for m in models if m["version"] == "rb-2")
    edge.registry.promote(rb2)
    edge.wait_until_served("rb-2", image)

    assert edge.registry.rollback(DIGIT) == "rb-1"
    time.sleep(REFRESH_S + SLACK_S)

    with edge.camera() as camera:
        response = edge.ask(camera, image)
    assert response.status_code == 200, response.text
    assert response.json()["intellioptics"]["model_version"] == "rb-1"
    detector = next(d for d in updater_status(edge.updater_url)["detectors"] if d["detector_id"] == DIGIT)
    assert detector["version"] == "rb-1" and detector["deployed_from"] == "disk"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_heartbeat_and_edge_api_status_report_what_the_edge_serves(edge: UpdaterEdge, digits) -> None:
    with edge.camera() as camera:
        served = edge.served_version(camera, digits[1][0])
    assert served is not None
    edge_id = edge.stack.edge_env["EDGE_EDGE_ID"]

    hub = wait_for(
        lambda: (h := edge.registry.hub(edge_id)) and h["deployed_versions"].get(DIGIT) == served and h,
        f"a heartbeat from {edge_id} naming {served}",
    )
    assert hub["online"] is True and hub["outbox_depth"] == 0
    assert hub["info"]["updater"]["refresh_rate_s"] == REFRESH_S
    # The edge id and outbox depth came from edge-api (its /internal/facts).
    assert hub["info"]["updater"]["outbox_depth_known"] is True
    assert hub["info"]["updater"]["outbox_dead"] == 0  # the dashboard's "Dead" column
    assert hub["info"]["updater"]["edge_api_error"] is None

    status = httpx.get(f"{edge.stack.edge_url}/status", headers=ADMIN, timeout=10).json()
    assert status["updater"]["service"]["reachable"] is True
    assert [d["version"] for d in status["updater"]["detectors"] if d["detector_id"] == DIGIT] == [served]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigterm_stops_the_updater_cleanly(edge: UpdaterEdge) -> None:
    edge.updater.send_signal(signal.SIGTERM)

    # uvicorn re-raises the signal once its shutdown (ours included) has run.
    assert edge.updater.wait(timeout=30) in (0, -signal.SIGTERM)
    assert '"msg": "updater stopped", "cancelled": 0' in edge.updater.output_tail(400)
