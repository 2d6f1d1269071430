"""The edges dashboard (administrators): every edge that sent a heartbeat, online until its heartbeats
stop for three intervals, its outbox and the version it serves beside production's; in headless
Chromium, as an administrator would look at it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from playwright.sync_api import expect
from sqlalchemy import update

from cloud.app.core.hubs import ONLINE_WINDOW_S
from cloud.app.db.models import Hub, Role
from tests.support.browser import chromium
from tests.support.cloud import CloudServer
from tests.support.cloud_factories import CloudFactory
from tests.support.cloud_factories_registry import run_in_db
from tests.support.ui_pages import log_in

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    pass


def heartbeat(
    cloud: CloudServer,
    edge_id: str,
    versions: dict[str, str],
    outbox: int,
    info: dict[str, Any] | None = None,
) -> None:
    with cloud.client() as device:
        resp = device.post(
            "/api/v1/hubs/heartbeat",
            json={
                "edge_id": edge_id,
                "name": f"{edge_id} east door",
                "deployed_versions": versions,
                "outbox_depth": outbox,
                "info": info,
            },
        )
        assert resp.status_code == 200, resp.text


def silence(cloud: CloudServer, edge_id: str, seconds: float) -> None:
    """As if its heartbeats had stopped `seconds` ago."""
    then = datetime.now(UTC) - timedelta(seconds=seconds)

    async def work(session):  # type: ignore[no-untyped-def]
        await session.execute(update(Hub).where(Hub.id == edge_id).values(last_seen_at=then))
        await session.commit()

    # Playwright's sync API keeps an event loop running in this thread: the database call gets its own.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(run_in_db, cloud.database_url, work).result()


@pytest.mark.slow
def test_an_edge_turns_offline_when_its_heartbeats_stop(cloud: CloudServer, factory: CloudFactory) -> None:
    detector_id = factory.detector(name=f"door-{datetime.now(UTC):%H%M%S%f}")
    factory.model_version(detector_id, "v1", "retired")
    factory.model_version(detector_id, "v2", "production", current=True)
    stamp = f"{datetime.now(UTC):%H%M%S%f}"
    quiet, busy = f"edge-quiet-{stamp}", f"edge-busy-{stamp}"
    heartbeat(cloud, quiet, {detector_id: "v2"}, 0)
    troubled = {
        "updater": {
            "outbox_dead": 2,
            "edge_api_error": None,
            "config_error": "detectors[1].detector_id is not a detector id",
            "detectors": {
                detector_id: {"last_error": None, "rejected": {"version": "v3", "reason": "warm-up failed"}}
            },
        }
    }
    heartbeat(cloud, busy, {detector_id: "v1"}, 37, troubled)
    admin = factory.reviewer(Role.ADMIN)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        log_in(page, cloud.url, admin)
        page.goto(f"{cloud.url}/ui/edges")
        row = page.locator(f'tr[data-edge-id="{quiet}"]')
        expect(row).to_have_attribute("data-online", "true")
        assert "online" in row.inner_text() and "(production)" in row.inner_text()
        behind = page.locator(f'tr[data-edge-id="{busy}"]')
        assert "37" in behind.inner_text() and "production is v2" in behind.inner_text()
        # What its updater reported: dead escalations and each problem, in words.
        expect(behind.locator("[data-field=dead]")).to_have_text("2")
        expect(behind.locator("[data-field=problems]")).to_contain_text(
            "version v3 rejected (warm-up failed)"
        )
        expect(behind.locator("[data-field=problems]")).to_contain_text("edge config: detectors[1]")
        expect(row.locator("[data-field=dead]")).to_have_text("–")  # nothing reported, nothing claimed
        expect(row.locator("[data-field=problems]")).to_have_text("none")
        # Its heartbeats stop: past three intervals it is offline, and listed first.
        silence(cloud, quiet, ONLINE_WINDOW_S + 30)
        page.reload()
        expect(row).to_have_attribute("data-online", "false")
        assert "offline" in row.inner_text() and "min ago" in row.inner_text()
        ids = page.locator("#edges tbody tr").evaluate_all("rows => rows.map((r) => r.dataset.edgeId)")
        assert ids.index(quiet) < ids.index(busy)
        # A heartbeat brings it back.
        heartbeat(cloud, quiet, {detector_id: "v2"}, 0)
        page.reload()
        expect(row).to_have_attribute("data-online", "true")
        page.close()


def test_the_edges_page_is_for_administrators(cloud: CloudServer, factory: CloudFactory) -> None:
    who = factory.reviewer()
    with httpx.Client(base_url=cloud.url, timeout=30, follow_redirects=False) as http:
        assert http.get("/ui/edges").status_code == 303  # no session: to the login page
        assert (
            http.post("/login", data={"username": who.username, "password": who.password}).status_code == 303
        )
        refused = http.get("/ui/edges")
        assert refused.status_code == 403 and "administrators" in refused.text
        assert 'href="/ui/edges"' not in http.get("/ui/queues").text
