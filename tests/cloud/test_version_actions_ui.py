"""Promote and roll back from the version page, as an administrator in headless Chromium: each asks
first, then the registry's production version is the one chosen (edges follow it at their next
refresh, which tests/updater covers)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from playwright.sync_api import Dialog, expect

from cloud.app.db.models import Role
from tests.support.browser import chromium
from tests.support.cloud import CloudServer
from tests.support.cloud_factories import CloudFactory
from tests.support.cloud_factories_http import new_detector, register_tiny_backbone, upload_tiny_version
from tests.support.ui_pages import log_in

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    pass

pytestmark = pytest.mark.slow


def production_of(http: httpx.Client, detector_id: str) -> str | None:
    listed = http.get(f"/api/v1/detectors/{detector_id}/models").json()
    by_id = {m["id"]: m["version"] for m in listed["results"]}
    return by_id.get(listed["production_version_id"])


def test_an_administrator_promotes_and_rolls_back_from_the_version_page(
    cloud: CloudServer, factory: CloudFactory, admin: httpx.Client, tmp_path: Path
) -> None:
    # A seed no other module registers: the backbone row is shared by the session database, its blob is not.
    ref = register_tiny_backbone(admin, tmp_path, seed=1051)
    with cloud.client() as device:
        detector_id, _ = new_detector(device)
    upload_tiny_version(admin, detector_id, ref, tmp_path, "v1-tinyhead0001", promote=True)
    upload_tiny_version(admin, detector_id, ref, tmp_path, "v2-tinyhead0002")
    assert production_of(admin, detector_id) == "v1-tinyhead0001"
    asked: list[str] = []
    # Accounts first: the factory runs its own event loop, which Playwright's sync API does not allow inside.
    boss, reader = factory.reviewer(Role.ADMIN), factory.reviewer()

    def accept(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.accept()

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.on("dialog", accept)
        log_in(page, cloud.url, boss)
        page.goto(f"{cloud.url}/ui/detectors/{detector_id}/training")
        page.click('button[data-action="promote"][data-version="v2-tinyhead0002"]')
        expect(page.locator('button[data-action="rollback"][data-version="v2-tinyhead0002"]')).to_be_visible()
        assert production_of(admin, detector_id) == "v2-tinyhead0002"
        page.click('button[data-action="rollback"][data-version="v2-tinyhead0002"]')
        expect(page.locator('button[data-action="rollback"][data-version="v1-tinyhead0001"]')).to_be_visible()
        assert production_of(admin, detector_id) == "v1-tinyhead0001"
        page.close()
    assert len(asked) == 2 and "Make v2-tinyhead0002 the production version?" in asked[0]
    assert "Roll back from v2-tinyhead0002" in asked[1]

    # A reviewer sees the versions but no buttons.
    with chromium() as browser:
        page = browser.new_page()
        log_in(page, cloud.url, reader)
        page.goto(f"{cloud.url}/ui/detectors/{detector_id}/training")
        expect(page.locator("article.version")).to_have_count(2)
        assert page.locator(".version-actions button").count() == 0
        page.close()
