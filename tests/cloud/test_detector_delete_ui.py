"""Deleting a detector from its page (administrators, headless Chromium): the confirmation asks for its
name, typed; a wrong name or Cancel deletes nothing; the right one soft-deletes it through the device
API's DELETE, and the queues page then says how to get it back."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest
from playwright.sync_api import expect

from cloud.app.db.models import Role
from tests.support.browser import artifact, chromium
from tests.support.cloud import CloudServer
from tests.support.cloud_factories import CloudFactory
from tests.support.ui_pages import log_in

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    pass

pytestmark = pytest.mark.slow


def test_an_administrator_deletes_a_detector_by_typing_its_name(
    cloud: CloudServer, factory: CloudFactory, admin: httpx.Client
) -> None:
    boss, reader = factory.reviewer(Role.ADMIN), factory.reviewer()
    name = f"doomed-{boss.username}"
    detector_id = factory.detector(name=name)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        log_in(page, cloud.url, boss)
        page.goto(f"{cloud.url}/ui/detectors/{detector_id}")
        dialog, typed, confirm = (
            page.locator("#delete-dialog"),
            page.locator("#delete-form input"),
            page.locator("#delete-confirm"),
        )

        # A wrong name: the button stays off and Enter does nothing.
        page.click("#delete-detector")
        expect(dialog).to_be_visible()
        typed.fill(name[:-1])
        expect(confirm).to_be_disabled()
        typed.press("Enter")
        expect(dialog).to_be_visible()
        assert admin.get(f"/device-api/v1/detectors/{detector_id}").status_code == 200
        # Cancel closes it; nothing is deleted either.
        page.click("#delete-cancel")
        expect(dialog).to_be_hidden()
        assert admin.get(f"/device-api/v1/detectors/{detector_id}").status_code == 200

        # The right name: deleted, and the queues page says so and how to restore it.
        page.click("#delete-detector")
        expect(typed).to_have_value("")
        typed.fill(name)
        expect(confirm).to_be_enabled()
        page.screenshot(path=str(artifact("detector-delete-dialog.png")))
        confirm.click()
        page.wait_for_url("**/ui/queues")
        note = page.locator("#page-note")
        expect(note).to_contain_text(f"Deleted the detector {name}")
        expect(note).to_contain_text(f"/api/v1/admin/detectors/{detector_id}/restore")
        expect(page.locator(f'tr[data-detector-id="{detector_id}"]')).to_have_count(0)
        page.reload()
        expect(page.locator("#page-note")).to_have_count(0)  # shown once
        page.close()
    assert admin.get(f"/device-api/v1/detectors/{detector_id}").status_code == 404
    deleted = admin.get("/api/v1/admin/detectors/deleted").json()
    assert [d["name"] for d in deleted if d["id"] == detector_id] == [name]
    assert next(d for d in deleted if d["id"] == detector_id)["deleted_by"] == boss.user_id

    # A reviewer gets no delete button.
    other = factory.detector(name=f"kept-{boss.username}")
    reviewer = cloud.login(reader.username, reader.password)
    try:
        assert 'id="delete-detector"' not in reviewer.get(f"/ui/detectors/{other}").text
    finally:
        reviewer.close()
