"""What an administrator does on the cloud's pages reaches a running edge, driven in headless Chromium.

Real processes throughout, one loop for the module (tests.support.updater): the cloud API on a fresh
database, inference on an empty model root, edge-api, nginx and the updater polling the cloud every
REFRESH_S. In order:

a. A threshold saved on the detector page is what the edge answers at after its prior's next refresh
   (EDGE_PRIOR_TTL_S is short here): an image the model was confident about is escalated above it.
a'. A detector created on the queues page and changed on its page: the edge, told to serve it,
   answers it with its label prior at the threshold set there, and at the new one after a refresh.
b. Promote and roll back on the detector's training page (the version list): the edge serves each
   after a refresh.
c. An alert rule set in the cloud fires on the edge's own confident answers; its firing reaches the
   cloud once and the worker delivers it to a webhook, signed, retried after a 500.
d. The edges dashboard shows the edge online from its real heartbeats, and offline once the updater
   (which sends them) is stopped and the online window (CLOUD_EDGE_ONLINE_WINDOW_S, six heartbeats
   here) has passed with none.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from playwright.sync_api import Dialog, expect
from sqlalchemy import update

from cloud.app.core.webhook_delivery import verify_signature
from cloud.app.db.models import Hub
from common.bundle import current_bundle_dir
from tests.support import updater
from tests.support.browser import chromium
from tests.support.cloud_factories import Reviewer
from tests.support.cloud_factories_registry import run_in_db
from tests.support.stack import ADMIN, DEVICE
from tests.support.ui_pages import log_in
from tests.support.updater import UpdaterEdge, bundle_archive, updater_edge
from tests.support.webhooks import WebhookReceiver, run_worker

pytestmark = pytest.mark.slow

DIGIT = "det_DemoWhichDigit0000000000000"
REFRESH_S = 1.0
PRIOR_TTL_S = 1.0
HEARTBEAT_S = 1.0  # tests.support.updater.start_updater's UPDATER_HEARTBEAT_INTERVAL_S
# The cloud's online window here: six heartbeats, so a busy machine does not flap the edge offline.
ONLINE_WINDOW_S = 6 * HEARTBEAT_S
# The default preset, so that an answer below the threshold is escalated; it escalates a detector at
# most once per this many seconds (common.edge_config.InferenceConfig).
MIN_TIME_BETWEEN_ESCALATIONS_S = 2.0
# A refresh, the fetch or swap after it, and room for a busy CI machine.
WITHIN_S = 30.0

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], what: str, timeout: float = WITHIN_S) -> T:
    return updater.wait_for(check, what, timeout)


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, demo_models: Path) -> Iterator[UpdaterEdge]:
    bundle = current_bundle_dir(demo_models, DIGIT)
    assert bundle is not None
    with updater_edge(
        tmp_path_factory.mktemp("ui-flows"),
        bundle,
        "ui-1",
        refresh_rate_s=REFRESH_S,
        preset="default",
        edge_env={"EDGE_PRIOR_TTL_S": str(PRIOR_TTL_S), "EDGE_PRIOR_RETRY_S": "0.5"},
        cloud_env={"CLOUD_EDGE_ONLINE_WINDOW_S": str(ONLINE_WINDOW_S)},
    ) as loop:
        archives = tmp_path_factory.mktemp("ui-archives")
        loop.registry.upload(DIGIT, bundle_archive(bundle, archives / "ui-2.tar.gz", version="ui-2"))
        yield loop


@pytest.fixture(scope="module")
def admin(edge: UpdaterEdge) -> Reviewer:
    # Made before any browser starts: the factory runs an event loop, which Playwright's sync API forbids.
    return edge.new_admin()


def ask(edge: UpdaterEdge, image: bytes) -> dict[str, Any]:
    """An image query through the edge's gateway, answered by the edge's model."""
    with edge.camera() as camera:
        response = edge.ask(camera, image)
    assert response.status_code == 200, response.text
    iq: dict[str, Any] = response.json()
    assert iq["intellioptics"]["model_version"] is not None, iq
    return iq


def at_the_cloud(edge: UpdaterEdge, image_query_id: str) -> dict[str, Any] | None:
    """The cloud's copy of an image query; None until the edge's outbox delivered it."""
    with edge.cloud.client() as device:
        response = device.get(f"/device-api/v1/image-queries/{image_query_id}")
    if response.status_code != 200:
        return None
    iq: dict[str, Any] = response.json()
    return iq


def threshold_source(edge: UpdaterEdge) -> str:
    status = httpx.get(f"{edge.stack.edge_url}/status", headers=ADMIN, timeout=10).json()
    (digit,) = [d for d in status["detectors"] if d["detector_id"] == DIGIT]
    return str(digit["confidence_threshold_source"])


def accept_dialogs(asked: list[str]) -> Callable[[Dialog], None]:
    def accept(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.accept()

    return accept


@pytest.mark.timeout(300)
def test_a_threshold_changed_on_the_detector_page_reaches_the_running_edge(
    edge: UpdaterEdge, admin: Reviewer, digits
) -> None:
    edge.wait_until_served("ui-1", digits[0][0])
    before = wait_for(lambda: ask(edge, digits[0][0])["confidence_threshold"], "a threshold")
    # A digit the model is sure of at the cloud's threshold now.
    for image, _ in digits[:40]:
        iq = ask(edge, image)
        if iq["done_processing"] and not iq["intellioptics"]["escalated"] and iq["result"]["confidence"] < 1:
            break
    else:
        raise AssertionError(f"no demo digit was answered confidently at {before}")
    confidence = iq["result"]["confidence"]
    assert iq["confidence_threshold"] == before
    wait_for(lambda: threshold_source(edge) == "cloud", "the cloud's threshold at the edge")
    # The next step of the form (0.01) above this image's confidence.
    raised = min(1.0, math.floor(confidence * 100 + 1) / 100)
    assert confidence < raised

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        log_in(page, edge.cloud.url, admin)
        page.goto(f"{edge.cloud.url}/ui/detectors/{DIGIT}")
        page.fill("#settings-form input[name=confidence_threshold]", f"{raised:g}")
        page.click("#settings-form button[type=submit]")
        expect(page.locator("#settings-status")).to_contain_text(f"Saved: threshold {raised:g},")
        page.close()

    wait_for(
        lambda: ask(edge, image)["confidence_threshold"] == raised,
        f"the edge to answer at {raised} after a refresh of its prior",
    )
    assert threshold_source(edge) == "cloud"
    time.sleep(MIN_TIME_BETWEEN_ESCALATIONS_S + 0.5)  # past the escalation that answer may have made
    iq = ask(edge, image)
    assert iq["confidence_threshold"] == raised and iq["result"]["confidence"] == confidence
    assert iq["done_processing"] is False and iq["intellioptics"]["escalated"] is True
    assert iq["intellioptics"]["escalation_reason"] == "low_confidence"
    # The escalation reaches the cloud with the threshold it was judged at.
    escalated = wait_for(lambda: at_the_cloud(edge, iq["id"]), "the escalation at the cloud")
    assert escalated["confidence_threshold"] == raised

    # Back to where it was, so the later tests' answers are confident again.
    response = edge.registry.http.patch(
        f"/device-api/v1/detectors/{DIGIT}", json={"confidence_threshold": before}
    )
    assert response.status_code == 200, response.text
    wait_for(lambda: ask(edge, image)["confidence_threshold"] == before, "the threshold restored")


def edge_answer(edge: UpdaterEdge, detector_id: str, image: bytes) -> dict[str, Any] | None:
    """edge-api's own answer (not the gateway's fallback to the cloud); None while it cannot give one."""
    response = httpx.post(
        f"{edge.stack.edge_url}/device-api/v1/image-queries",
        params={"detector_id": detector_id},
        content=image,
        headers={"Content-Type": "image/jpeg", **DEVICE},
        timeout=30,
    )
    if response.status_code != 200:
        return None
    iq: dict[str, Any] = response.json()
    return iq


@pytest.mark.timeout(300)
def test_a_detector_created_on_the_page_is_answered_by_the_edge_at_the_threshold_set_there(
    edge: UpdaterEdge, admin: Reviewer, digits
) -> None:
    """Created and then changed on the pages; the edge, told to serve it, answers it (with its label
    prior: no model yet) at the threshold of the moment, after a refresh."""
    image = digits[4][0]
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        log_in(page, edge.cloud.url, admin)
        page.click("#new-detector summary")
        page.fill("#create-form input[name=name]", f"dock-door-{admin.username}")
        page.fill("#create-form input[name=query]", "Is the dock door open?")
        page.select_option("#create-form select[name=mode]", "BINARY")
        page.fill("#create-form input[name=confidence_threshold]", "0.75")
        page.click("#create-form button[type=submit]")
        page.wait_for_url("**/ui/detectors/det_*")
        created = page.url.rsplit("/", 1)[1]

        edge.stack.put_config(
            {
                "global_config": {"refresh_rate": REFRESH_S, "confident_audit_rate": 0.0},
                "detectors": [
                    {"detector_id": DIGIT, "edge_inference_config": "default"},
                    {"detector_id": created, "edge_inference_config": "default"},
                ],
            }
        )
        first = wait_for(lambda: edge_answer(edge, created, image), "the edge's first answer")
        assert first["confidence_threshold"] == 0.75 and first["result"]["from_edge"] is True
        assert first["query"] == "Is the dock door open?"

        page.fill("#settings-form input[name=confidence_threshold]", "0.6")
        page.click("#settings-form button[type=submit]")
        expect(page.locator("#settings-status")).to_contain_text("Saved: threshold 0.6,")
        page.close()
    later = wait_for(
        lambda: (
            (a := edge_answer(edge, created, image)) is not None and a["confidence_threshold"] == 0.6 and a
        ),
        "the edge to answer at 0.6 after a refresh",
    )
    assert later["result"]["from_edge"] is True


@pytest.mark.timeout(300)
def test_promote_and_rollback_on_the_training_page_reach_the_running_edge(
    edge: UpdaterEdge, admin: Reviewer, digits
) -> None:
    image = digits[1][0]
    edge.wait_until_served("ui-1", image)
    asked: list[str] = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.on("dialog", accept_dialogs(asked))
        log_in(page, edge.cloud.url, admin)
        page.goto(f"{edge.cloud.url}/ui/detectors/{DIGIT}/training")
        page.click('button[data-action="promote"][data-version="ui-2"]')
        expect(page.locator('button[data-action="rollback"][data-version="ui-2"]')).to_be_visible()
        edge.wait_until_served("ui-2", image, timeout=WITHIN_S)

        page.click('button[data-action="rollback"][data-version="ui-2"]')
        expect(page.locator('button[data-action="rollback"][data-version="ui-1"]')).to_be_visible()
        edge.wait_until_served("ui-1", image, timeout=WITHIN_S)
        page.close()
    assert len(asked) == 2 and "Make ui-2 the production version?" in asked[0]
    assert "Roll back from ui-2" in asked[1]
    assert ask(edge, image)["intellioptics"]["model_version"] == "ui-1"


@pytest.mark.timeout(300)
def test_an_alert_rule_fires_on_the_running_edge_and_its_webhook_is_delivered_once(
    edge: UpdaterEdge, digits, tmp_path: Path
) -> None:
    """The rule reaches the edge with the detector's prior; the edge's firing reaches the cloud once
    (a cooldown of an hour holds further streaks); the worker delivers it signed, after a 500."""
    edge_id = edge.stack.edge_env["EDGE_EDGE_ID"]
    edge.wait_until_served("ui-1", digits[0][0])
    for image, _ in digits[:40]:  # a digit the model answers confidently (alert rules watch those)
        iq = ask(edge, image)
        if (
            iq["result"]["confidence"] >= iq["confidence_threshold"]
            and not iq["intellioptics"]["out_of_domain"]
        ):
            break
    else:
        raise AssertionError("no demo digit was answered confidently")
    label = iq["result"]["label"]
    receiver = WebhookReceiver().start()
    try:
        hook = edge.registry.http.post(
            "/api/v1/webhooks", json={"name": "edge-alerts", "url": receiver.url, "events": ["alert"]}
        ).json()
        rule = edge.registry.http.post(
            f"/api/v1/detectors/{DIGIT}/alert-rules",
            json={
                "name": f"always {label}",
                "condition": {"kind": "answer_is", "label": label},
                "consecutive": 3,
                "cooldown_s": 3600,
            },
        )
        assert rule.status_code == 201, rule.text
        rule_id = rule.json()["id"]

        def fired() -> list[dict[str, Any]] | None:
            ask(edge, image)
            events = edge.registry.http.get("/api/v1/notifications", params={"detector_id": DIGIT}).json()
            alerts = [e for e in events if e["kind"] == "alert"]
            return alerts or None

        (event,) = wait_for(fired, "the edge's firing at the cloud")
        for _ in range(5):  # more matching answers inside the cooldown: no second firing
            ask(edge, image)
        assert edge.stack.status()["alerts"]["pending"] == 0
        assert event["rule_id"] == rule_id and event["data"]["source"] == "edge"
        assert event["data"]["edge_id"] == edge_id and event["data"]["streak"] == 3

        receiver.answers.append(500)
        database = edge.cloud.database_url
        with ThreadPoolExecutor(1) as pool:
            for _ in range(50):
                pool.submit(run_worker, database, tmp_path).result()
                if receiver.delivered():
                    break
                time.sleep(0.2)
        events = edge.registry.http.get("/api/v1/notifications", params={"detector_id": DIGIT}).json()
        assert [e["id"] for e in events if e["kind"] == "alert"] == [event["id"]]
    finally:
        receiver.stop()
    attempts = [r for r in receiver.requests if r.json["event_id"] == event["id"]]
    assert [r.status for r in attempts] == [500, 200]
    assert len({r.headers["idempotency-key"] for r in attempts}) == 1
    assert all(
        verify_signature(hook["secret"], r.headers["x-intellioptics-signature"], r.body) for r in attempts
    )
    assert attempts[1].json["data"]["label"] == label


def silence(edge: UpdaterEdge, edge_id: str) -> None:
    """Move the hub's last heartbeat back past the online window (in a thread: Playwright's sync API
    keeps an event loop running in this one)."""
    then = datetime.now(UTC) - timedelta(seconds=ONLINE_WINDOW_S + 30)

    async def work(session: Any) -> None:
        await session.execute(update(Hub).where(Hub.id == edge_id).values(last_seen_at=then))
        await session.commit()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(run_in_db, edge.cloud.database_url, work).result()


def heard_within(edge: UpdaterEdge, edge_id: str, seconds: float) -> bool:
    """Whether the cloud's last heartbeat from this edge is at most `seconds` old."""
    hub = edge.registry.hub(edge_id)
    if hub is None:
        return False
    age = datetime.now(UTC) - datetime.fromisoformat(hub["last_seen_at"])
    return age <= timedelta(seconds=seconds)


@pytest.mark.timeout(300)
def test_the_edges_dashboard_shows_the_edge_online_until_its_heartbeats_stop(
    edge: UpdaterEdge, admin: Reviewer, digits
) -> None:
    edge_id = edge.stack.edge_env["EDGE_EDGE_ID"]
    with edge.camera() as camera:
        served = wait_for(lambda: edge.served_version(camera, digits[2][0]), "a served version")
    wait_for(
        lambda: (h := edge.registry.hub(edge_id)) is not None and h["deployed_versions"].get(DIGIT) == served,
        f"a heartbeat naming {served}",
    )
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        log_in(page, edge.cloud.url, admin)
        page.goto(f"{edge.cloud.url}/ui/edges")
        row = page.locator(f'tr[data-edge-id="{edge_id}"]')
        expect(row).to_have_attribute("data-online", "true")
        assert "online" in row.inner_text() and f"{served} (production)" in row.inner_text()

        # The heartbeats are live: an edge made to look silent is online again after the next one.
        silence(edge, edge_id)
        wait_for(lambda: heard_within(edge, edge_id, 10 * HEARTBEAT_S), "the next heartbeat")
        page.reload()
        expect(row).to_have_attribute("data-online", "true")

        # The updater stops, and its heartbeats with it.
        edge.updater.stop()
        last = edge.registry.hub(edge_id)
        assert last is not None
        time.sleep(3 * HEARTBEAT_S)
        hub = edge.registry.hub(edge_id)
        assert hub is not None and hub["last_seen_at"] == last["last_seen_at"]
        page.reload()
        expect(row).to_have_attribute("data-online", "true")  # still inside the online window
        # The window passes with no heartbeat: the next look says offline.
        time.sleep(max(0.0, ONLINE_WINDOW_S - 3 * HEARTBEAT_S) + 1.0)
        page.reload()
        expect(row).to_have_attribute("data-online", "false")
        assert "offline" in row.inner_text() and " s ago" in row.inner_text()
        page.close()
